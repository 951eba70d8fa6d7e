"""
A real, private OpenSSH server for integration tests.

L{PrivateSSHD} runs C{/usr/sbin/sshd} in the foreground on C{127.0.0.1} and
a free port, with its own host key and one authorized client key whose
C{authorized_keys} line forces a command (C{command="...",restrict}).  A
stock git-annex client then reaches the forced command over real ssh:
C{git-annex-shell -c "$SSH_ORIGINAL_COMMAND"} for baseline tests, or
annexd's own C{annexd-shell}.  The recipe is the verified one of
C{/work/shared/spec/transports.md}, section A.

Layout of the base directory::

    hostkey, hostkey.pub        the server's ed25519 host key
    clientkey, clientkey.pub    the client's ed25519 key
    forced-command              the wrapper named by authorized_keys
    authorized_keys
    sshd_config
    sshd.log                    sshd's own log (-e: to stderr)
    commands.log                one SSH_ORIGINAL_COMMAND per line
    home/                       default $HOME of the forced command

Client side (see L{PrivateSSHD.client_env}): git-annex ignores
C{core.sshCommand}, so the client uses C{GIT_SSH_COMMAND} and
C{GIT_ANNEX_USE_GIT_SSH=1}; then git-annex uses that command for all of
its ssh calls and never uses connection caching (so no ControlMaster mux
outlives a test).

Discovering a gateway's proxied remotes over real ssh (L{add_ssh_remote}):
git-annex makes the remotes C{NAME-<cluster>} and C{NAME-<node>} from two
things, (1) C{remote.NAME.annex-uuid}, which it records on first contact
(C{git-annex-shell 'configlist' ...}), and (2) the gateway's proxy and
cluster logs in the client's C{git-annex} branch, which arrive with
C{git fetch NAME} (C{git-upload-pack ...}) and C{git annex merge}.  Both
are needed and their order does not matter (verified with a fresh
client: C{info} alone records the uuid but shows no proxies; C{fetch}
alone, then any command naming C{NAME-node1}, works, since git-annex
auto-merges fetched C{git-annex} branches and contacts a remote whose
uuid it does not know yet).  C{git annex info NAME} does the
configlist but never fetches.  C{git annex sync --no-content --no-push
NAME} does both too, but also merges the remote's branches and sends
C{git-annex-shell 'configlist' '/path' '--' 'autoinit=1' '--'}.
"""

import errno
import os
import pwd
import shlex
import signal
import socket
import subprocess
import time
import unittest

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = "/run/sshd"

INSTALL_HINT = (
    "%s is not installed: apt-get install -y --no-install-recommends "
    "openssh-server openssh-client" % (SSHD,))

# How long start() waits for the port to accept connections.
START_TIMEOUT = 10.0
# How long stop() waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
# Attempts at finding a port nobody grabs between our probe and sshd's bind.
PORT_ATTEMPTS = 3

# Characters that would need quoting in sshd_config or authorized_keys
# (paths there are written as they are; sshd expands % tokens).
_UNSAFE = set(' \t\n"\'%\\')


class SSHDError(RuntimeError):
    """
    The private sshd could not be configured, started or stopped.
    """


def _check_path(path):
    if _UNSAFE & set(path):
        raise ValueError(
            "path %r holds characters sshd_config/authorized_keys would "
            "need quoted" % (path,))
    return path


def free_port(host="127.0.0.1"):
    """
    A TCP port on C{host} that was free a moment ago (bound to port 0 and
    closed again).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    """
    Whether a TCP connection to C{host:port} is accepted right now.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ssh_banner(port, host="127.0.0.1", timeout=0.5):
    """
    The SSH identification line a server on C{host:port} sends first
    (C{b"SSH-2.0-OpenSSH_9.2p1 ..."}), or L{None} when nothing accepts
    connections there or what does sends no such line in time.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return line if line.startswith(b"SSH-") else None


def listening(port, host="127.0.0.1"):
    """
    Whether a TCP socket in this network namespace listens on
    C{host:port} (read from C{/proc/net/tcp}: unlike a connection attempt,
    this has no side effect on the server).
    """
    want = "%s:%04X" % (
        "".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    any_ = "00000000:%04X" % (port,)
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] in (want, any_) and fields[3] == "0A":
                    return True
    except OSError:
        return port_accepts(port, host)
    return False


def pid_alive(pid):
    """
    Whether a process C{pid} exists (and is not a zombie).
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            # "pid (comm) S ...": the state follows the last ')'.
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def child_pids(pid):
    """
    The pids of the live children of C{pid} (read from C{/proc}).
    """
    children = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (name,)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[1]) == pid:
            children.append(int(name))
    return children


def _keygen(path):
    if os.path.exists(path):
        return
    result = subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C",
         "annexd-tests", "-f", path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SSHDError("ssh-keygen for %s failed (%d):\n%s" % (
            path, result.returncode,
            result.stdout.decode("utf-8", "replace")))


class PrivateSSHD:
    """
    A private sshd on C{127.0.0.1} whose only login runs a forced command.

    @ivar base_dir: absolute path of the directory holding its files.
    @ivar forced_command: the shell command string the wrapper runs with
        C{/bin/sh -c} (C{$SSH_ORIGINAL_COMMAND} is set in its
        environment).
    @ivar env_path: the C{PATH} the forced command runs with.
    @ivar env: the other variables the wrapper exports (C{HOME} at least).
    @ivar port: the port sshd listens on (chosen in L{start}; a fresh
        one each start).
    @ivar user: the login name (the current user: when it is not root,
        only the user running sshd can log in).
    @ivar process: the L{subprocess.Popen} of the listener, or L{None}.
    @ivar client_key, host_key, wrapper, config, log, commands_log,
        authorized_keys: paths of the files.
    """

    def __init__(self, base_dir, forced_command, env_path, env=None):
        """
        Write the keys, the wrapper, authorized_keys and sshd_config.

        @param forced_command: e.g. C{'git-annex-shell -c
            "$SSH_ORIGINAL_COMMAND"'} or C{'/path/python -m annexd.shell'}.
        @param env_path: the C{PATH} of the forced command (sshd gives it a
            minimal one): put the directory holding C{git-annex} and
            C{git-annex-shell} first.
        @param env: extra variables to export in the wrapper, e.g. the
            cluster's C{HOME}, C{GIT_CONFIG_NOSYSTEM} and git-annex's
            C{MAGIC}; C{HOME} defaults to C{base_dir/home} (so that the
            login user's own git config is not read).
        """
        os.makedirs(base_dir, exist_ok=True)
        self.base_dir = _check_path(os.path.realpath(base_dir))
        self.forced_command = forced_command
        self.env_path = env_path
        entry = pwd.getpwuid(os.getuid())
        self.user = entry.pw_name
        if os.path.basename(entry.pw_shell or "/bin/sh") in (
                "nologin", "false"):
            # sshd runs the forced command with the user's login shell.
            raise SSHDError(
                "user %s has the login shell %s: sshd could not run the "
                "forced command" % (entry.pw_name, entry.pw_shell))
        self.port = None
        self.process = None

        def path(name):
            return os.path.join(self.base_dir, name)

        self.host_key = path("hostkey")
        self.client_key = path("clientkey")
        self.wrapper = path("forced-command")
        self.authorized_keys = path("authorized_keys")
        self.config = path("sshd_config")
        self.log = path("sshd.log")
        self.commands_log = path("commands.log")

        self.env = {"HOME": path("home")}
        self.env.update(env or {})
        if self.env["HOME"] == path("home"):
            os.makedirs(self.env["HOME"], exist_ok=True)

        _keygen(self.host_key)
        _keygen(self.client_key)
        self._write_wrapper()
        self._write_authorized_keys()

    # ------------------------------------------------------------ files

    def _write_wrapper(self):
        lines = [
            "#!/bin/sh",
            "# forced command of a private test sshd "
            "(tests/support/sshd.py)",
            "printf '%%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> %s" % (
                shlex.quote(self.commands_log),),
            "PATH=%s; export PATH" % (shlex.quote(self.env_path),),
        ]
        for name, value in sorted(self.env.items()):
            lines.append("%s=%s; export %s"
                         % (name, shlex.quote(value), name))
        lines.append("exec /bin/sh -c %s"
                     % (shlex.quote(self.forced_command),))
        tmp = self.wrapper + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, self.wrapper)

    def _write_authorized_keys(self):
        with open(self.client_key + ".pub") as f:
            pub = f.read().strip()
        with open(self.authorized_keys, "w") as f:
            f.write('command="%s",restrict %s\n' % (self.wrapper, pub))
        os.chmod(self.authorized_keys, 0o600)

    def _write_config(self):
        lines = [
            "ListenAddress 127.0.0.1",
            "Port %d" % (self.port,),
            "HostKey %s" % (self.host_key,),
            "PidFile none",
            "AuthorizedKeysFile %s" % (self.authorized_keys,),
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "UseDNS no",
        ]
        if os.getuid() == 0:
            lines.append("PermitRootLogin prohibit-password")
        # No AcceptEnv/SetEnv: the wrapper alone decides the environment.
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    # ------------------------------------------------------- lifecycle

    def _sshd_log(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self):
        """
        Check the config (C{sshd -t}), start C{sshd -D -e} and wait until
        its port accepts connections and sends an SSH banner (sshd has no
        other readiness signal).  If sshd exits because its port was taken
        meanwhile, try again on another port.

        @raise SSHDError: when the config is refused or sshd does not
            listen within L{START_TIMEOUT} seconds (the message holds
            sshd's log).
        """
        if self.process is not None:
            raise SSHDError("sshd is already running (pid %d)"
                            % (self.process.pid,))
        if os.getuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
            # Root sshd needs its privilege separation directory, even for -t.
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = free_port()
            self._write_config()
            check = subprocess.run(
                [SSHD, "-t", "-f", self.config], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if check.returncode != 0:
                raise SSHDError("%s -t -f %s refused the config (%d):\n%s" % (
                    SSHD, self.config, check.returncode,
                    check.stdout.decode("utf-8", "replace")))
            if self._launch():
                return
            log = self._sshd_log()
            if "Address already in use" not in log or \
                    attempt == PORT_ATTEMPTS:
                raise SSHDError(
                    "sshd did not start listening on 127.0.0.1:%d; its "
                    "log %s:\n%s" % (self.port, self.log, log))

    def _launch(self):
        """
        Start sshd and poll its port.

        @return: C{True} once it accepts connections, C{False} if sshd
            exited (the caller looks at the log).
        @raise SSHDError: when it runs but does not listen in time.
        """
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                # Not in the test runner's process group: ^C goes to
                # trial, which stops us through the cleanups.
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.01
        while True:
            if self.process.poll() is not None:
                self.process = None
                return False
            # Not just "the port accepts": a process that grabbed the port
            # between free_port() and sshd's bind would pass that test.
            if ssh_banner(self.port) is not None:
                return True
            if time.monotonic() > deadline:
                pid = self.process.pid
                self.stop()
                raise SSHDError(
                    "sshd (pid %d) was not listening on 127.0.0.1:%d after "
                    "%.0f s; its log %s:\n%s" % (
                        pid, self.port, START_TIMEOUT, self.log,
                        self._sshd_log()))
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    @property
    def pid(self):
        """
        The listener's pid, or L{None} when not started.
        """
        return None if self.process is None else self.process.pid

    def stop(self):
        """
        Stop sshd: SIGTERM to the listener, and SIGKILL if it has not
        exited after L{STOP_TIMEOUT} seconds.  Then wait (as long again)
        until nothing listens on the port any more, and for the
        per-connection sshd processes that were running to end, as they do
        once their client has gone (SIGTERM to those still running after
        that).  Calling it again is harmless.

        The port can outlive the listener for a moment: a connection
        accepted just before SIGTERM forks a child that still shares the
        listening socket until it closes its copy (seen in about 1 stop in
        6 when a connection came in just before), and a connection attempt
        then is queued, i.e. "accepted", and reset a moment later.
        """
        process, self.process = self.process, None
        if process is None:
            return
        sessions = []
        if process.poll() is None:
            sessions = child_pids(process.pid)
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
                process.wait()
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            sessions = [pid for pid in sessions if pid_alive(pid)]
            if not sessions and not listening(self.port):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # ---------------------------------------------------------- client

    @property
    def ssh_command(self):
        """
        The ssh command line (C{GIT_SSH_COMMAND}) that logs in with the
        client key, trusts any host key, never prompts and never
        multiplexes.  C{-F /dev/null}: no user or system ssh_config.
        """
        return (
            "ssh -F /dev/null -i %s -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o LogLevel=ERROR -o ControlMaster=no -o ControlPath=none"
            % (shlex.quote(self.client_key),))

    def url(self, path):
        """
        The ssh URL of the absolute C{path} on this server:
        C{ssh://USER@127.0.0.1:PORT/PATH}.
        """
        if self.port is None:
            raise SSHDError("sshd has no port yet: start() it first")
        if not path.startswith("/"):
            raise ValueError("need an absolute path, not %r" % (path,))
        return "ssh://%s@127.0.0.1:%d%s" % (self.user, self.port, path)

    def client_env(self):
        """
        Environment variables for a git/git-annex client of this server:
        C{GIT_SSH_COMMAND} (git-annex ignores C{core.sshCommand}),
        C{GIT_ANNEX_USE_GIT_SSH=1} (git-annex uses it too, and no
        connection caching), and C{GIT_SSH_VARIANT=ssh} (the URL has a
        port, which git refuses to pass to a C{simple} ssh, the variant the
        fixture's fake ssh sets).
        """
        return {
            "GIT_SSH_COMMAND": self.ssh_command,
            "GIT_ANNEX_USE_GIT_SSH": "1",
            "GIT_SSH_VARIANT": "ssh",
        }

    def commands(self):
        """
        The C{SSH_ORIGINAL_COMMAND}s the forced command received so far, in
        order.

        @rtype: L{list} of L{str}
        """
        try:
            with open(self.commands_log, "rb") as f:
                data = f.read().decode("utf-8", "surrogateescape")
        except OSError as e:
            if e.errno == errno.ENOENT:
                return []
            raise
        return data.splitlines()


def sshd_for(testcase, forced_command, env_path, env=None):
    """
    A started L{PrivateSSHD} in C{testcase.mktemp()}, stopped when the test
    ends.

    @raise unittest.SkipTest: when C{/usr/sbin/sshd} is not installed (CI
        installs openssh-server, so this never skips there).
    """
    if not os.access(SSHD, os.X_OK):
        raise unittest.SkipTest(INSTALL_HINT)
    server = PrivateSSHD(testcase.mktemp(), forced_command, env_path, env)
    server.start()
    testcase.addCleanup(server.stop)
    return server


def add_ssh_remote(cluster, sshd, name, repo_path):
    """
    Give the client of C{cluster} (L{tests.support.annex.Cluster}) a
    remote C{name} reaching C{repo_path} through C{sshd}, and make it learn
    the remote's uuid and, when C{repo_path} is a gateway, its proxied
    remotes (C{NAME-mycluster}, C{NAME-node1}, ...).

    The recipe: C{git remote add}, C{annex.sshcaching false}, C{git fetch
    NAME} (the gateway's C{git-annex} branch, with its proxy and cluster
    logs), C{git annex merge}, then C{git annex info NAME}, whose first
    contact (C{configlist}) records C{remote.NAME.annex-uuid}.  Every
    command runs with C{sshd.client_env()}.

    @return: the output of C{git annex info NAME}.
    @rtype: L{str}
    """
    env = sshd.client_env()
    cluster.client_git("remote", "add", name, sshd.url(repo_path))
    cluster.client_git("config", "annex.sshcaching", "false")
    cluster.client_git("fetch", "-q", name, env=env)
    cluster.client_annex("merge", "--quiet", env=env)
    return cluster.client_annex("info", name, env=env)
