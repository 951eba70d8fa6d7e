"""
The files operators install: C{etc/annexd.conf.example}, the systemd units
in C{etc/}, and the examples in C{contrib/}.  They must name only real
settings, be accepted by the programs that read them, and, where those
tools are installed, pass C{systemd-analyze verify}, C{nginx -t},
C{haproxy -c} and C{tor --verify-config}.
"""

import configparser
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys

from twisted.trial import unittest

from annexd import cli, shell, tap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "etc", "annexd.conf.example")
SERVICE = os.path.join(ROOT, "etc", "annexd.service")
SOCKET = os.path.join(ROOT, "etc", "annexd.socket")
CONTRIB = os.path.join(ROOT, "contrib")
AUTHORIZED_KEYS = os.path.join(CONTRIB, "authorized_keys")
NGINX = os.path.join(CONTRIB, "nginx-annexd.conf")
HAPROXY = os.path.join(CONTRIB, "haproxy-annexd.cfg")
TORRC = os.path.join(CONTRIB, "torrc.example")

#: Every key of the daemon's [annexd] section (keep in sync with
#: L{annexd.tap.Options}).
ANNEXD_SETTINGS = (
    "repo", "http", "wideopen", "unauth-readonly", "unauth-appendonly",
    "unauth-nolocking", "authenv", "authenv-http", "users", "lockedfiles",
    "control", "admin", "shutdown-grace", "idle-timeout", "log-format",
    "p2p", "onion", "tor-control", "tor-launch", "tor-binary")

#: Every key of annexd-shell's [shell] section (keep in sync with
#: L{annexd.shell.loadConfig}).
SHELL_SETTINGS = ("repo", "readonly", "appendonly", "control")

#: Where the examples say the configuration file is installed.
INSTALLED_CONF = "/etc/annexd.conf"

#: Tools get this long; each check takes well under a second.
TOOL_TIMEOUT = 60


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def parseConf(path=CONF):
    parser = configparser.ConfigParser()
    with open(path, encoding="utf-8") as f:
        parser.read_file(f)
    return parser


def commentedKeys(text):
    """
    The keys shown commented out (C{#key = value}), by section.
    """
    keys = {}
    section = None
    for line in text.splitlines():
        header = re.fullmatch(r"\[([^\]]+)\]\s*", line)
        if header:
            section = header.group(1)
            continue
        match = re.match(r"[#;]\s*([a-z][a-z0-9-]*)\s*=", line)
        if match and section is not None:
            keys.setdefault(section, set()).add(match.group(1))
    return keys


class UnitSyntaxError(ValueError):
    """
    A line of a systemd unit file is neither a section header nor a
    key=value assignment.
    """


def parseUnit(path):
    """
    Read a systemd unit file: C{{section: [(key, value), ...]}}, comments
    and blank lines skipped, backslash continuations joined.

    @raise UnitSyntaxError: for any other kind of line.
    """
    sections = {}
    current = None
    pending = ""
    for number, raw in enumerate(read(path).splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        assignment = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)", line)
        if assignment is None or current is None:
            raise UnitSyntaxError("%s:%d: %r" % (path, number, raw))
        current.append((assignment.group(1), assignment.group(2)))
    if pending:
        raise UnitSyntaxError("%s: ends in a continuation" % (path,))
    return sections


def unitValues(section, key):
    return [value for name, value in section if name == key]


def unitValue(testcase, section, key):
    values = unitValues(section, key)
    testcase.assertEqual(len(values), 1, "%s set %d times" % (key, len(values)))
    return values[0]


def seconds(text):
    """
    A systemd time span (C{45}, C{45s}, C{1min 30s}) in seconds.
    """
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def selfSignedPEM(directory):
    """
    Write a throwaway self-signed certificate and its key for
    C{localhost}; return C{(certPath, keyPath, combinedPath)}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    certPEM = cert.public_bytes(serialization.Encoding.PEM)
    keyPEM = key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    paths = []
    for name, data in (("cert.pem", certPEM), ("key.pem", keyPEM),
                       ("combined.pem", certPEM + keyPEM)):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return tuple(paths)


def runTool(argv, cwd=None):
    """
    Run a checker: C{(exit status, stdout and stderr together)}.
    """
    result = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=TOOL_TIMEOUT)
    return result.returncode, result.stdout.decode("utf-8", "replace")


class ConfExampleTests(unittest.TestCase):
    """
    C{etc/annexd.conf.example} is valid INI that documents every setting,
    names no other, and is accepted by the daemon and by annexd-shell.
    """

    def test_parses(self):
        """
        configparser reads it; it has the daemon's and the shell's sections
        and nothing in [DEFAULT] (which would leak into both).
        """
        parser = parseConf()
        self.assertEqual(sorted(parser.sections()), ["annexd", "shell"])
        self.assertEqual(dict(parser.defaults()), {})

    def test_onlyKnownKeys(self):
        """
        Every key set in it is a setting of its section, including the ones
        shown commented out.
        """
        parser = parseConf()
        commented = commentedKeys(read(CONF))
        known = {"annexd": ANNEXD_SETTINGS, "shell": SHELL_SETTINGS}
        for section, settings in known.items():
            for key in set(parser[section]) | commented.get(section, set()):
                self.assertIn(key, settings, "unknown key %r in [%s]" % (
                    key, section))
        self.assertEqual(set(commented) - set(known), set())

    def test_everySettingDocumented(self):
        """
        Every setting appears, set or commented out, in its section.
        """
        parser = parseConf()
        commented = commentedKeys(read(CONF))
        for section, settings in (("annexd", ANNEXD_SETTINGS),
                                  ("shell", SHELL_SETTINGS)):
            present = set(parser[section]) | commented.get(section, set())
            self.assertEqual(sorted(set(settings) - present), [],
                             "undocumented in [%s]" % (section,))

    def test_daemonAcceptsIt(self):
        """
        C{annexd -c} takes it: every value has the right type and meaning,
        and it serves the gateway repository on loopback.
        """
        options = tap.Options()
        options.parseOptions(["-c", CONF])
        self.assertEqual(options["repo"], ["/srv/annex/gateway.git"])
        self.assertEqual(options["http"], ["tcp:9417:interface=127.0.0.1"])
        self.assertEqual(options["control"], "/run/annexd/control.sock")
        self.assertIn("interface=127.0.0.1", options["admin"])

    def test_p2pExamples(self):
        """
        The commented-out P2P listeners and onion ports are valid.
        """
        from annexd.p2p.frontend import parseListener, parseOnionPort
        text = read(CONF)
        block = None
        seen = {"p2p": 0, "onion": 0}
        for line in text.splitlines():
            match = re.fullmatch(r"#(p2p|onion) =\s*", line)
            if match:
                block = match.group(1)
                continue
            if block and re.fullmatch(r"#\s{4}\S.*", line):
                spec = line[1:].strip()
                (parseListener if block == "p2p" else parseOnionPort)(spec)
                seen[block] += 1
            else:
                block = None
        self.assertGreaterEqual(seen["p2p"], 2)
        self.assertGreaterEqual(seen["onion"], 2)

    def test_defaultsShown(self):
        """
        Where the example gives a tuning value or a flag, it is the
        daemon's default, so the example documents the defaults.
        """
        defaults = tap.Options()
        defaults.parseOptions([])
        options = tap.Options()
        options.parseOptions(["-c", CONF])
        for name in ("lockedfiles", "shutdown-grace", "idle-timeout",
                     "log-format", "wideopen", "unauth-readonly",
                     "unauth-appendonly", "unauth-nolocking", "authenv",
                     "authenv-http"):
            if name in tap._FLAGS:
                self.assertEqual(bool(options[name]), bool(defaults[name]),
                                 name)
            else:
                self.assertEqual(options[name], defaults[name], name)

    def test_shellAcceptsIt(self):
        """
        C{annexd-shell --config} takes it: the gateway repository,
        unrestricted, relaying through the daemon's control socket.
        """
        repos, readonly, appendonly, control = shell.loadConfig(CONF)
        self.assertEqual(repos, ["/srv/annex/gateway.git"])
        self.assertEqual((readonly, appendonly), (False, False))
        self.assertEqual(control, parseConf()["annexd"]["control"])


class ServiceUnitTests(unittest.TestCase):
    """
    C{etc/annexd.service}.
    """

    def service(self):
        unit = parseUnit(SERVICE)
        self.assertEqual(sorted(unit), ["Install", "Service", "Unit"])
        return unit["Service"]

    def test_sections(self):
        """
        A simple service run as the annex user, reloaded with SIGHUP, stopped
        with SIGTERM to the daemon alone, restarted on failure, with its
        runtime directory.
        """
        service = self.service()
        self.assertEqual(unitValue(self, service, "Type"), "simple")
        self.assertEqual(unitValue(self, service, "User"), "annex")
        self.assertEqual(shlex.split(unitValue(self, service, "ExecReload")),
                         ["/bin/kill", "-HUP", "$MAINPID"])
        self.assertEqual(unitValue(self, service, "KillSignal"), "SIGTERM")
        self.assertEqual(unitValue(self, service, "KillMode"), "mixed")
        self.assertEqual(unitValue(self, service, "Restart"), "on-failure")
        self.assertEqual(unitValue(self, service, "RuntimeDirectory"),
                         "annexd")
        self.assertEqual(unitValue(self, parseUnit(SERVICE)["Install"],
                                   "WantedBy"), "multi-user.target")

    def test_hardening(self):
        """
        Sandboxed: no new privileges, a read-only system but for the
        repositories, a private /tmp.
        """
        service = self.service()
        self.assertEqual(unitValue(self, service, "NoNewPrivileges"), "yes")
        self.assertEqual(unitValue(self, service, "ProtectSystem"), "strict")
        self.assertEqual(unitValue(self, service, "PrivateTmp"), "yes")
        self.assertIn(unitValue(self, service, "ProtectHome"),
                      ("read-only", "tmpfs", "yes"))
        writable = " ".join(unitValues(service, "ReadWritePaths")).split()
        self.assertIn("/srv/annex", writable)
        # The control socket the example configuration names is in the
        # runtime directory, which ProtectSystem=strict leaves writable.
        control = parseConf()["annexd"]["control"]
        self.assertEqual(os.path.dirname(control), "/run/annexd")

    def test_execStart(self):
        """
        ExecStart runs the annexd console script with the installed
        configuration file, and the command line it makes (twistd's options,
        then the plugin's) parses: the plugin's options get the file.
        """
        argv = shlex.split(unitValue(self, self.service(), "ExecStart"))
        self.assertEqual(os.path.basename(argv[0]), "annexd")
        self.assertTrue(os.path.isabs(argv[0]))
        args = argv[1:]
        self.assertIn("-c", args)
        self.assertEqual(args[args.index("-c") + 1], INSTALLED_CONF)
        args[args.index("-c") + 1] = CONF

        from twisted.application import app
        parsed = []

        def run(runApp, optionsFactory):
            # What app.run does first, without running anything.
            config = optionsFactory()
            config.parseOptions()
            parsed.append(config)

        self.patch(app, "run", run)
        self.patch(sys, "argv", list(sys.argv))
        cli.main(args)
        [config] = parsed
        self.assertEqual(config.subCommand, "annexd")
        self.assertTrue(config["nodaemon"])
        self.assertEqual(config.subOptions["config"], CONF)
        self.assertEqual(config.subOptions["repo"], ["/srv/annex/gateway.git"])

    def test_stopTimeoutAboveGrace(self):
        """
        systemd waits longer than the example's shutdown grace before it
        kills the daemon.
        """
        timeout = seconds(unitValue(self, self.service(), "TimeoutStopSec"))
        grace = float(parseConf()["annexd"]["shutdown-grace"])
        self.assertGreater(timeout, grace)


def listenFamily(listen):
    """
    The address family systemd gives a C{ListenStream=} socket: INET for
    an IPv4 address, INET6 for an IPv6 address or a bare port (a dual-stack
    socket where IPv6 is available), UNIX for a path.
    """
    if listen.startswith(("/", "@")):
        return "UNIX"
    if listen.isdigit() or listen.startswith("["):
        return "INET6"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", listen):
        return "INET"
    raise ValueError("unexpected ListenStream=%s" % (listen,))


class SocketUnitTests(unittest.TestCase):
    """
    C{etc/annexd.socket}.
    """

    def test_sections(self):
        """
        A socket unit listening on git-annex's annex+http port, wanted by
        sockets.target, for the service of the same name.
        """
        unit = parseUnit(SOCKET)
        self.assertEqual(sorted(unit), ["Install", "Socket", "Unit"])
        listens = unitValues(unit["Socket"], "ListenStream")
        self.assertEqual(len(listens), 1)
        self.assertTrue(listens[0].endswith("9417"))
        self.assertEqual(unitValue(self, unit["Install"], "WantedBy"),
                         "sockets.target")
        self.assertEqual(unitValues(unit["Socket"], "Service"), [])
        self.assertEqual(unitValues(unit["Socket"], "Accept"), [])

    def test_domainMatches(self):
        """
        The systemd: endpoint the unit's comments tell annexd to use names
        the address family the socket really has (Twisted adopts the socket
        with the family it is told, and misreads addresses otherwise).
        """
        text = read(SOCKET)
        domains = set(re.findall(r"http\s*=\s*systemd:domain=(\w+)", text))
        self.assertEqual(len(domains), 1, domains)
        [listen] = unitValues(parseUnit(SOCKET)["Socket"], "ListenStream")
        self.assertEqual(domains.pop(), listenFamily(listen))
        self.assertIn("systemd:domain=%s:index=0" % (listenFamily(listen),),
                      read(CONF))


class SystemdAnalyzeTests(unittest.TestCase):
    """
    C{systemd-analyze verify} accepts both units.
    """

    def setUp(self):
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        # verify checks that ExecStart's program exists: a stand-in.
        self.program = os.path.join(self.directory, "annexd")
        with open(self.program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.program, 0o755)

    def verify(self, *units):
        code, output = runTool([self.analyze, "verify"] + [
            "./" + unit for unit in units], cwd=self.directory)
        return code, output

    def test_verify(self):
        """
        No errors and no warnings about either unit.
        """
        # First make sure verify reports problems at all here.
        with open(os.path.join(self.directory, "probe.service"), "w") as f:
            f.write("[Service]\nExecStart=%s\nNoSuchKey=1\n" % (self.program,))
        code, output = self.verify("probe.service")
        if "NoSuchKey" not in output:
            raise unittest.SkipTest("systemd-analyze verify reports nothing "
                                    "in this environment: %r" % (output,))
        os.remove(os.path.join(self.directory, "probe.service"))

        shutil.copy(SOCKET, self.directory)
        text = read(SERVICE)
        executable = shlex.split(re.search(r"^ExecStart=(.*)$", text,
                                           re.M).group(1))[0]
        with open(os.path.join(self.directory, "annexd.service"), "w") as f:
            f.write(text.replace("ExecStart=" + executable,
                                 "ExecStart=" + self.program))
        code, output = self.verify("annexd.socket", "annexd.service")
        ours = [line for line in output.splitlines() if "annexd" in line]
        self.assertEqual((code, ours), (0, []), output)


class NginxTests(unittest.TestCase):
    """
    C{contrib/nginx-annexd.conf}.
    """

    def test_streaming(self):
        """
        Bodies stream unbuffered and unlimited, over HTTP/1.1 to annexd on
        loopback, with long timeouts, Host and X-Forwarded-Proto passed on.
        """
        text = read(NGINX)
        for directive in ("proxy_request_buffering off;",
                          "proxy_buffering off;", "client_max_body_size 0;",
                          "proxy_http_version 1.1;",
                          "proxy_set_header Host $http_host;",
                          "proxy_set_header X-Forwarded-Proto $scheme;",
                          "server 127.0.0.1:9417;"):
            self.assertIn(directive, text)
        for name in ("proxy_read_timeout", "proxy_send_timeout",
                     "client_body_timeout"):
            value = re.search(r"^\s*%s\s+([^;]+);" % (name,), text, re.M)
            self.assertIsNotNone(value, name)
            self.assertGreaterEqual(seconds(value.group(1)), 1200, name)

    def test_adminNotProxied(self):
        """
        Nothing is proxied to the admin listener of the example
        configuration.
        """
        admin = parseConf()["annexd"]["admin"]
        port = re.match(r"tcp6?:(\d+)", admin).group(1)
        proxied = re.findall(r"(?:server|proxy_pass)\s+(?:http://)?([^;\s]+)",
                             read(NGINX))
        self.assertTrue(proxied)
        for target in proxied:
            self.assertNotIn(":" + port, target)

    def test_nginxAccepts(self):
        """
        C{nginx -t} accepts it in an http block (certificate paths pointed
        at a throwaway certificate).
        """
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
            else None)
        if nginx is None:
            raise unittest.SkipTest("nginx is not installed")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key, _ = selfSignedPEM(directory)
        text = read(NGINX)
        text, n = re.subn(r"ssl_certificate\s+[^;]+;",
                          "ssl_certificate %s;" % (cert,), text)
        self.assertEqual(n, 1)
        text, n = re.subn(r"ssl_certificate_key\s+[^;]+;",
                          "ssl_certificate_key %s;" % (key,), text)
        self.assertEqual(n, 1)
        site = os.path.join(directory, "annexd.conf")
        with open(site, "w") as f:
            f.write(text)
        main = os.path.join(directory, "nginx.conf")
        with open(main, "w") as f:
            f.write(
                "pid %(d)s/nginx.pid;\n"
                "error_log %(d)s/error.log;\n"
                "events {}\n"
                "http {\n"
                "    access_log off;\n"
                "    client_body_temp_path %(d)s/body;\n"
                "    proxy_temp_path %(d)s/proxy;\n"
                "    fastcgi_temp_path %(d)s/fastcgi;\n"
                "    uwsgi_temp_path %(d)s/uwsgi;\n"
                "    scgi_temp_path %(d)s/scgi;\n"
                "    include %(site)s;\n"
                "}\n" % {"d": directory, "site": site})
        code, output = runTool([nginx, "-t", "-p", directory, "-c", main,
                                "-e", os.path.join(directory, "error.log")])
        self.assertEqual(code, 0, output)


class HAProxyTests(unittest.TestCase):
    """
    C{contrib/haproxy-annexd.cfg}.
    """

    def test_streaming(self):
        """
        Request bodies are not buffered, TLS is terminated, X-Forwarded-Proto
        is set, and the backend is annexd on loopback.
        """
        text = read(HAPROXY)
        active = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        self.assertNotIn("http-buffer-request", active)
        self.assertRegex(active, r"bind\s+\S+:443\s.*\bssl\b")
        self.assertIn("X-Forwarded-Proto https", active)
        self.assertRegex(active, r"server\s+\S+\s+127\.0\.0\.1:9417\b")
        for name in ("client", "server"):
            value = re.search(r"timeout %s\s+(\S+)" % (name,), active)
            self.assertGreaterEqual(seconds(value.group(1)), 1200, name)
        admin = parseConf()["annexd"]["admin"]
        port = re.match(r"tcp6?:(\d+)", admin).group(1)
        self.assertNotIn(":" + port, active)

    def test_haproxyAccepts(self):
        """
        C{haproxy -c} accepts it (the certificate path pointed at a
        throwaway certificate).
        """
        haproxy = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK)
            else None)
        if haproxy is None:
            raise unittest.SkipTest("haproxy is not installed")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        _, _, combined = selfSignedPEM(directory)
        text, n = re.subn(r"\bcrt\s+\S+", "crt " + combined, read(HAPROXY))
        self.assertEqual(n, 1)
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(text)
        code, output = runTool([haproxy, "-c", "-f", path])
        self.assertEqual(code, 0, output)


class TorrcTests(unittest.TestCase):
    """
    C{contrib/torrc.example}.
    """

    def lines(self):
        return [line.strip() for line in read(TORRC).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    def test_onionService(self):
        """
        One onion service, its HiddenServicePort lines right after its
        HiddenServiceDir, forwarding to loopback or a unix socket.
        """
        lines = self.lines()
        dirs = [i for i, line in enumerate(lines)
                if line.split()[0] == "HiddenServiceDir"]
        self.assertEqual(len(dirs), 1)
        ports = [line.split() for line in lines[dirs[0] + 1:]
                 if line.split()[0] == "HiddenServicePort"]
        self.assertTrue(ports)
        self.assertEqual(lines[dirs[0] + 1].split()[0], "HiddenServicePort")
        for _, virtual, target in ports:
            self.assertTrue(1 <= int(virtual) <= 65535)
            self.assertRegex(target, r"^(127\.0\.0\.1:\d+|unix:/\S+)$")

    def test_torAccepts(self):
        """
        C{tor --verify-config} accepts it.
        """
        tor = shutil.which("tor") or (
            "/usr/sbin/tor" if os.access("/usr/sbin/tor", os.X_OK) else None)
        if tor is None:
            raise unittest.SkipTest("tor is not installed")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        code, output = runTool([
            tor, "--verify-config", "--defaults-torrc", os.devnull,
            "-f", TORRC, "--DataDirectory", os.path.join(directory, "data")])
        self.assertEqual(code, 0, output)
        self.assertIn("Configuration was valid", output)


def authorizedKeyOptions(line):
    """
    Split an authorized_keys line into its options (C{name} or
    C{(name, value)}, values unquoted) and the rest (key type, key,
    comment).
    """
    options = []
    position = 0
    while True:
        match = re.compile(r'([A-Za-z-]+)(?:="((?:[^"\\]|\\.)*)")?').match(
            line, position)
        if match is None:
            raise ValueError("cannot parse options of %r" % (line,))
        name, value = match.group(1), match.group(2)
        options.append(name if value is None else
                       (name, value.replace('\\"', '"')))
        position = match.end()
        if line[position:position + 1] == ",":
            position += 1
            continue
        if line[position:position + 1] == " ":
            return options, line[position + 1:].split()
        raise ValueError("cannot parse options of %r" % (line,))


class AuthorizedKeysTests(unittest.TestCase):
    """
    C{contrib/authorized_keys}.
    """

    def entries(self):
        entries = []
        for line in read(AUTHORIZED_KEYS).splitlines():
            if line.strip() and not line.startswith("#"):
                entries.append(authorizedKeyOptions(line))
        return entries

    def test_forcedAnnexdShell(self):
        """
        Every key is restricted and forced to annexd-shell with a distinct
        --user, and annexd-shell takes each command line.
        """
        users = []
        modes = set()
        entries = self.entries()
        self.assertTrue(entries)
        for options, rest in entries:
            self.assertIn("restrict", options)
            commands = [o[1] for o in options
                        if isinstance(o, tuple) and o[0] == "command"]
            self.assertEqual(len(commands), 1)
            argv = shlex.split(commands[0])
            self.assertEqual(os.path.basename(argv[0]), "annexd-shell")
            self.assertTrue(os.path.isabs(argv[0]))
            try:
                args = shell._arguments(argv[1:])
            except SystemExit:
                self.fail("annexd-shell refuses %r" % (argv,))
            self.assertTrue(args.user)
            self.assertIsNone(args.command)
            self.assertEqual(args.words, [])
            self.assertTrue(args.config or args.repo)
            if args.config:
                self.assertEqual(args.config, INSTALLED_CONF)
            users.append(args.user)
            modes.add("readonly" if args.readonly else
                      "appendonly" if args.appendonly else "full")
            self.assertIn(rest[0], ("ssh-ed25519", "ssh-rsa",
                                    "ecdsa-sha2-nistp256",
                                    "sk-ssh-ed25519@openssh.com"))
        self.assertEqual(len(users), len(set(users)))
        self.assertEqual(modes, {"full", "readonly", "appendonly"})

    def test_optionParser(self):
        """
        The test's option parser splits quoted values with commas in them.
        """
        self.assertEqual(
            authorizedKeyOptions('from="a,b",command="x \\"y\\"",restrict '
                                 "ssh-ed25519 AAAA c"),
            ([("from", "a,b"), ("command", 'x "y"'), "restrict"],
             ["ssh-ed25519", "AAAA", "c"]))


class ContribIndexTests(unittest.TestCase):
    """
    C{contrib/README.md}.
    """

    def test_everyFileListed(self):
        """
        The index names every file in contrib/.
        """
        index = read(os.path.join(CONTRIB, "README.md"))
        files = [name for name in os.listdir(CONTRIB)
                 if name != "README.md" and not name.startswith(".")]
        self.assertTrue(files)
        for name in files:
            self.assertIn("`%s`" % (name,), index)
