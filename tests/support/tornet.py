"""
A private tor network on 127.0.0.1, for the opt-in end-to-end onion test
(C{tests/test_tornet_onion.py}, run only with C{ANNEXD_TEST_TORNET=1}: the
network takes 30 s to 120 s to bootstrap).

A port of part C of C{/work/shared/spec/transports-e2e.sh}: Debian's
C{tor} and C{tor-gencert}, no chutney, no internet.  Seven tor processes:

  - C{a0}: the only directory authority (also a relay);
  - C{r1} to C{r4}: relays (guards, HSDirs; no exits: onion circuits need
    none);
  - C{hs}: the tor that hosts onion services (L{TorNetwork.hsControl});
  - C{c}: a client tor with C{SocksPort 127.0.0.1:9050} (git-annex's tor
    client always uses SOCKS on 127.0.0.1:9050, so that port must be
    free).

Every tor has a unix control socket with cookie authentication
(C{<baseDir>/<node>/control.sock}) and logs notices to
C{<baseDir>/<node>/notice.log}; ports are free ones on 127.0.0.1.
Readiness is C{Bootstrapped 100%} in the notice logs of C{hs} and C{c}.

L{TorNetwork} is blocking (subprocess-based): from a Twisted test, run
L{TorNetwork.start} with C{deferToThread}.
"""

import os
import shutil
import socket
import subprocess
import time

#: git-annex's tor client always uses this SOCKS port.
SOCKS_PORT = 9050

#: The directory authority and the relays, in this order.
RELAYS = ("a0", "r1", "r2", "r3", "r4")

#: Every node, in the order they start (and the reverse of how they stop).
NODES = RELAYS + ("hs", "c")

#: The longest path a unix socket can have.
UNIX_PATH_MAX = 107

#: Seconds stop() waits for a tor after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0

_COMMON = """\
TestingTorNetwork 1
DataDirectory {dir}
Nickname {name}
Log notice file {dir}/notice.log
ControlPort unix:{dir}/control.sock
CookieAuthentication 1
PathsNeededToBuildCircuits 0.25
TestingDirAuthVoteExit *
TestingDirAuthVoteHSDir *
TestingDirAuthVoteGuard *
V3AuthNIntervalsValid 2
DirAuthority a0 orport={authOR} no-v2 v3ident={v3ident} 127.0.0.1:{authDir} {fingerprint}
"""

_RELAY = """\
SocksPort 0
Address 127.0.0.1
ORPort 127.0.0.1:{orPort}
DirPort 127.0.0.1:{dirPort}
AssumeReachable 1
ExitPolicy reject *:*
ContactInfo {name}@test.invalid
"""

_AUTHORITY = """\
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
TestingV3AuthInitialVotingInterval 5
TestingV3AuthInitialVoteDelay 2
TestingV3AuthInitialDistDelay 2
V3AuthVotingInterval 10
V3AuthVoteDelay 2
V3AuthDistDelay 2
"""


class TorNetworkError(RuntimeError):
    """
    The private tor network could not be set up or did not bootstrap.
    """


def freePorts(count, host="127.0.0.1"):
    """
    C{count} different TCP ports on C{host} that were free a moment ago.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def checkPortFree(port, host="127.0.0.1"):
    """
    @raise TorNetworkError: if something listens on C{host:port}.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as e:
        raise TorNetworkError(
            "%s:%d is already in use (%s): the private network's client tor "
            "needs it, since git-annex's tor client always uses SOCKS on "
            "127.0.0.1:9050; stop whatever holds it (a system tor? "
            "systemctl disable --now tor)" % (host, port, e.strerror or e))
    finally:
        s.close()


def tail(path, lines=8):
    """
    The last C{lines} lines of the file C{path}, or a note that it is
    missing.
    """
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(%s: %s)" % (path, e.strerror or e)
    return "\n".join(text.splitlines()[-lines:])


class TorNetwork:
    """
    One directory authority, four relays, an onion-host tor and a client
    tor, all on 127.0.0.1.

    @ivar baseDir: the directory of everything (one subdirectory per node).
    @ivar hsControl: the control socket of the onion-host tor.
    @ivar clientControl: the control socket of the client tor.
    @ivar socksPort: the client tor's SOCKS port on 127.0.0.1 (9050).
    @ivar processes: C{(node, Popen)} of the tor processes started.
    @ivar bootstrapSeconds: how long the last L{start} waited for the
        bootstrap.
    @ivar joinOptions: C{(option, value)} torrc lines with which another
        tor joins this network as a client or onion host (for
        C{OnionService(launch=True, torOptions=...)}); set by L{start}.
    """

    socksPort = SOCKS_PORT

    def __init__(self, baseDir, tor=None, torGencert=None):
        self.baseDir = os.path.abspath(baseDir)
        self.tor = tor or shutil.which("tor")
        self.torGencert = torGencert or shutil.which("tor-gencert")
        self.hsControl = self._path("hs", "control.sock")
        self.clientControl = self._path("c", "control.sock")
        self.processes = []
        self.bootstrapSeconds = None
        self.joinOptions = None

    def _path(self, *names):
        return os.path.join(self.baseDir, *names)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout=180):
        """
        Generate the keys and torrcs, start the seven tors and wait (at
        most C{timeout} seconds) until the onion-host and client tors have
        bootstrapped.  On any failure every tor started is stopped again.

        @raise TorNetworkError: if a program is missing, port 9050 is
            taken, a tor exits, or the bootstrap times out (with the tails
            of the logs).
        """
        for program, what in ((self.tor, "tor"),
                              (self.torGencert, "tor-gencert")):
            if program is None:
                raise TorNetworkError(
                    "%s is not installed (apt-get install -y "
                    "--no-install-recommends tor)" % (what,))
        if len(os.fsencode(self.hsControl)) > UNIX_PATH_MAX:
            raise TorNetworkError("%s is too long for a unix socket: use a "
                                  "shorter base directory" % (self.hsControl,))
        checkPortFree(self.socksPort)
        try:
            self._configure()
            for node in NODES:
                self._spawn(node)
            self._waitBootstrapped(timeout)
        except BaseException:
            self.stop()
            raise

    def _run(self, argv, what, input=b""):
        result = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=self.baseDir,
                                timeout=60)
        if result.returncode != 0:
            raise TorNetworkError("%s failed (%d): %s" % (
                what, result.returncode,
                result.stdout.decode("utf-8", "replace")[-2000:]))
        return result

    def _configure(self):
        """
        Make the directories, the authority's keys and every torrc.
        """
        os.makedirs(self.baseDir, mode=0o700, exist_ok=True)
        os.chmod(self.baseDir, 0o700)
        for node in NODES:
            os.makedirs(self._path(node), mode=0o700, exist_ok=True)
            os.chmod(self._path(node), 0o700)
        keys = self._path("a0", "keys")
        os.makedirs(keys, mode=0o700, exist_ok=True)
        ports = freePorts(2 * len(RELAYS))
        self.orPorts = dict(zip(RELAYS, ports[:len(RELAYS)]))
        self.dirPorts = dict(zip(RELAYS, ports[len(RELAYS):]))
        certificate = os.path.join(keys, "authority_certificate")
        if not os.path.exists(certificate):
            self._run(
                [self.torGencert, "--create-identity-key", "-m", "12",
                 "-a", "127.0.0.1:%d" % (self.dirPorts["a0"],),
                 "-i", os.path.join(keys, "authority_identity_key"),
                 "-s", os.path.join(keys, "authority_signing_key"),
                 "-c", certificate, "--passphrase-fd", "0"],
                "tor-gencert", input=b"\n")
        with open(certificate) as f:
            v3ident = [line.split()[1] for line in f
                       if line.startswith("fingerprint ")][0]
        self._run(
            [self.tor, "--list-fingerprint", "--defaults-torrc", os.devnull,
             "--ignore-missing-torrc", "-f", self._path("none"),
             "--DataDirectory", self._path("a0"),
             "--ORPort", "127.0.0.1:%d" % (self.orPorts["a0"],),
             "--Nickname", "a0"], "tor --list-fingerprint")
        with open(self._path("a0", "fingerprint")) as f:
            fingerprint = f.read().split()[1]
        self.joinOptions = [
            ("TestingTorNetwork", "1"),
            ("DirAuthority", "a0 orport=%d no-v2 v3ident=%s 127.0.0.1:%d %s"
             % (self.orPorts["a0"], v3ident, self.dirPorts["a0"],
                fingerprint)),
            ("PathsNeededToBuildCircuits", "0.25"),
            ("V3AuthNIntervalsValid", "2"),
        ]
        for node in NODES:
            text = _COMMON.format(
                dir=self._path(node), name=node, authOR=self.orPorts["a0"],
                authDir=self.dirPorts["a0"], v3ident=v3ident,
                fingerprint=fingerprint)
            if node in RELAYS:
                text += _RELAY.format(name=node, orPort=self.orPorts[node],
                                      dirPort=self.dirPorts[node])
            if node == "a0":
                text += _AUTHORITY
            elif node == "hs":
                text += "SocksPort 0\n"
            elif node == "c":
                text += "SocksPort 127.0.0.1:%d\n" % (self.socksPort,)
            with open(self._path(node, "torrc"), "w") as f:
                f.write(text)

    def _spawn(self, node):
        for stale in ("control.sock", "control_auth_cookie", "notice.log"):
            if os.path.lexists(self._path(node, stale)):
                os.unlink(self._path(node, stale))
        with open(self._path(node, "stdout.log"), "wb") as out:
            process = subprocess.Popen(
                [self.tor, "-f", self._path(node, "torrc"),
                 "--defaults-torrc", os.devnull],
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.baseDir)
        self.processes.append((node, process))

    def _bootstrapped(self, node):
        try:
            with open(self._path(node, "notice.log"), "rb") as f:
                return b"Bootstrapped 100%" in f.read()
        except FileNotFoundError:
            return False

    def _waitBootstrapped(self, timeout):
        started = time.monotonic()
        deadline = started + timeout
        while True:
            for node, process in self.processes:
                if process.poll() is not None:
                    raise TorNetworkError(
                        "tor %s exited with code %s:\n%s\n%s" % (
                            node, process.returncode,
                            tail(self._path(node, "stdout.log")),
                            tail(self._path(node, "notice.log"))))
            if self._bootstrapped("hs") and self._bootstrapped("c"):
                self.bootstrapSeconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise TorNetworkError(
                    "the private tor network did not bootstrap within %s s; "
                    "last lines of the logs:\n%s" % (timeout, "\n".join(
                        "--- %s\n%s" % (node, tail(self._path(
                            node, "notice.log"))) for node in ("a0", "hs",
                                                                "c"))))
            time.sleep(0.2)

    def stop(self):
        """
        Stop every tor started, in the reverse order (SIGTERM, then SIGKILL
        after L{STOP_TIMEOUT} seconds), and wait for them.
        """
        processes, self.processes = self.processes, []
        for node, process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for node, process in reversed(processes):
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
