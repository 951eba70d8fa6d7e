# -*- test-case-name: tests.test_tor -*-
"""
annexd's tor onion service: the gateway's P2P sockets reachable as
C{tor-annex::<onion>.onion:<port>} addresses.

L{OnionService} asks a tor, through its control port, for an ephemeral
onion service (C{ADD_ONION}) whose virtual ports lead to annexd's own
sockets.  Either it connects to a tor that already runs (C{control}: a
Twisted client endpoint string such as C{"unix:/run/tor/control"}), or it
starts a private one (C{launch=True}).

The onion lives exactly as long as the control connection (no
C{Flags=Detach}): when annexd stops, or dies, tor forgets it.  Its key is
kept in the state directory, so the address stays the same across
restarts::

    <stateDir>/            mode 0700
        onion_key          "ED25519-V3:<base64>", mode 0600
        hostname           "<56 base32 characters>.onion" and a newline
        tor/               a launched tor's DataDirectory, torrc,
                           control.sock, notice.log (and the previous
                           run's, notice.log.1)

C{ADD_ONION} is sent as it is, not through txtorcon's
C{create_onion_service}: that waits until tor has uploaded a descriptor,
which never happens while tor has no network.  Tor answers C{ADD_ONION} at
once and publishes the onion whenever it can.

A launched tor is started by this module, not by C{txtorcon.launch}:
C{txtorcon.launch} only returns once tor's bootstrap reaches 100%, so
without a reachable tor network it waits for ever (or until its
C{timeout}, when it kills tor).  Here tor runs with a generated torrc
(C{SocksPort 0}, a unix control socket with cookie authentication), the
service connects as soon as the control socket is there and then takes
ownership of tor (C{TAKEOWNERSHIP}): tor exits when the control connection
closes, whether annexd stops or is killed.
"""

import base64
import binascii
import collections
import fcntl
import os
import re
import shutil

import txtorcon
from twisted.application import service
from twisted.internet import defer, error, protocol, task
from twisted.internet.endpoints import UNIXClientEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: The scheme of git-annex's tor P2P addresses.
TOR_SCHEME = "tor-annex::"

#: The only key type annexd creates or accepts (onion services v3).
KEY_TYPE = "ED25519-V3"

#: File names in the state directory.
KEY_FILE = "onion_key"
HOSTNAME_FILE = "hostname"
TOR_DIR = "tor"

#: Seconds a launched tor has to open its control socket.
LAUNCH_TIMEOUT = 30.0

#: Seconds L{OnionService.stopService} waits for each step (tor's answer
#: to C{DEL_ONION}, the connection closing, a launched tor exiting).
STOP_TIMEOUT = 10.0

#: The longest path a unix socket can have (C{sun_path} less its NUL).
UNIX_PATH_MAX = 107

_HOSTNAME = re.compile(r"^[a-z2-7]{56}\.onion$")
_SERVICE_ID = re.compile(r"^[a-z2-7]{56}$")

# Characters that a torrc value or an ADD_ONION argument cannot hold
# unquoted.
_UNSAFE = re.compile(r"[\s\"'\\#]")


class OnionServiceError(Exception):
    """
    The onion service could not be set up; the message says why, in one
    line.
    """


def readHostname(stateDir):
    """
    The onion address saved in C{stateDir} by an earlier start, without
    asking tor.

    @param stateDir: an L{OnionService}'s state directory.
    @return: C{"<56 characters>.onion"}, or L{None} when there is no valid
        saved address.
    """
    try:
        with open(os.path.join(stateDir, HOSTNAME_FILE)) as f:
            hostname = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return hostname if _HOSTNAME.match(hostname) else None


def readKey(path):
    """
    Read a saved onion key.

    @param path: the key file.
    @return: C{"ED25519-V3:<base64>"}, or L{None} if the file is missing.
    @raise OnionServiceError: if the file holds no such key.
    """
    try:
        with open(path) as f:
            key = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise OnionServiceError("cannot read the onion key %s: %s"
                                % (path, e))
    keyType, sep, blob = key.partition(":")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if keyType != KEY_TYPE or not sep or len(raw) != 64:
        raise OnionServiceError("%s does not hold an %s onion key"
                                % (path, KEY_TYPE))
    return key


def writeAtomically(path, text, mode):
    """
    Replace the file C{path} with C{text}: written to a temporary file of
    mode C{mode} in the same directory, synced, then renamed over C{path}.
    """
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def checkPorts(ports):
    """
    Check an onion's port mappings.

    @param ports: C{(virtualPort, target)} pairs; C{target} in tor's
        C{HiddenServicePort} syntax: C{"unix:/abs/path"} or
        C{"127.0.0.1:PORT"}.
    @return: the mappings as a list of C{(int, str)}.
    @raise ValueError: if one is not valid.
    """
    checked = []
    for virtualPort, target in ports:
        if (not isinstance(virtualPort, int) or isinstance(virtualPort, bool)
                or not 0 < virtualPort < 65536):
            raise ValueError("onion virtual port %r is not a port number"
                             % (virtualPort,))
        if not isinstance(target, str) or not target or _UNSAFE.search(
                target):
            raise ValueError("onion port target %r is empty or holds "
                             "whitespace or quotes" % (target,))
        if target.startswith("unix:"):
            if not os.path.isabs(target[len("unix:"):]):
                raise ValueError("onion port target %r: the socket path "
                                 "must be absolute" % (target,))
        else:
            host, sep, port = target.rpartition(":")
            if not (sep and host and port.isdigit()
                    and 0 < int(port) < 65536):
                raise ValueError("onion port target %r is neither "
                                 "unix:/PATH nor HOST:PORT" % (target,))
        checked.append((virtualPort, target))
    if not checked:
        raise ValueError("an onion service needs at least one port")
    if len({v for v, _ in checked}) != len(checked):
        raise ValueError("onion virtual ports repeat: %r" % (checked,))
    return checked


def launchTorrc(torDir, options=()):
    """
    The torrc of a tor started by L{OnionService} (C{launch=True}).

    @param torDir: tor's DataDirectory; its control socket is
        C{torDir/control.sock}.
    @param options: more C{(option, value)} lines (tests add
        C{("DisableNetwork", "1")}; a production tor must not).
    @return: the torrc's text.
    """
    lines = [
        ("DataDirectory", torDir),
        ("ControlPort", "unix:" + os.path.join(torDir, "control.sock")),
        ("CookieAuthentication", "1"),
        # The gateway only serves: no SOCKS listener.
        ("SocksPort", "0"),
        ("Log", "notice file " + os.path.join(torDir, "notice.log")),
    ] + [(str(k), str(v)) for k, v in options]
    for k, v in lines:
        if "\n" in k + v or "\r" in k + v or not k.isidentifier():
            raise ValueError("bad tor option %r %r" % (k, v))
    return "".join("%s %s\n" % line for line in lines)


def _lockedByTor(dataDirectory):
    """
    Whether a running tor holds the lock of C{dataDirectory} (tor locks the
    file C{lock} there with C{flock} for as long as it runs).
    """
    try:
        fd = os.open(os.path.join(dataDirectory, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        # Closing also drops the lock, if we got it.
        os.close(fd)
    return False


def _describe(failure):
    """
    One line saying what went wrong.
    """
    message = " ".join(failure.getErrorMessage().split())
    if isinstance(failure.value, (OnionServiceError, txtorcon.TorProtocolError,
                                  error.ConnectError)):
        return message or failure.type.__name__
    return "%s: %s" % (failure.type.__name__, message)


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """
    An endpoint that hands the protocol of its connection to C{record} as
    soon as it exists, so that a connection can be closed even when
    txtorcon's set-up on it is cancelled half-way.
    """

    def __init__(self, endpoint, record):
        self._endpoint = endpoint
        self._record = record

    def connect(self, factory):
        def connected(proto):
            self._record(proto)
            return proto
        return self._endpoint.connect(factory).addCallback(connected)


class _TorProcess(protocol.ProcessProtocol):
    """
    A tor launched by an L{OnionService}: keeps the last lines it printed
    and tells when it ends.

    @ivar ended: L{None} while tor runs, then the reason it ended.
    @ivar onEnd: called with the reason when tor ends.
    """

    def __init__(self, noticeLog=None, onEnd=None):
        self.ended = None
        self.noticeLog = noticeLog
        self.onEnd = onEnd
        self.output = collections.deque(maxlen=10)
        self._partial = b""
        self._waiters = []

    def outReceived(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4096:]
        for line in lines:
            line = line.decode("utf-8", "replace").strip()
            if line:
                self.output.append(line)

    errReceived = outReceived

    def processEnded(self, reason):
        self.outReceived(b"\n")
        self.ended = reason
        if self.onEnd is not None:
            self.onEnd(reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def whenEnded(self):
        """
        @return: a Deferred that fires once tor has ended.
        """
        if self.ended is not None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def signal(self, name):
        """
        Send tor the signal C{name} (C{"TERM"}, C{"KILL"}) if it runs.
        """
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def describe(self):
        """
        How tor ended, and the last lines it printed.
        """
        failed = True
        if self.ended is None:
            how = "tor is still running"
        else:
            status = self.ended.value
            if getattr(status, "signal", None):
                how = "tor was killed by signal %d" % (status.signal,)
            else:
                code = getattr(status, "exitCode", None)
                failed = code != 0
                how = "tor exited with code %s" % (code,)
        # Tor's warnings and errors say what went wrong (a bad option, a
        # directory it cannot use); without them, the last lines it printed
        # if it failed.
        lines = list(self.output)
        if self.noticeLog is not None:
            # Once tor has read its torrc it logs there, not on stdout.
            try:
                with open(self.noticeLog, "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                    lines += f.read().decode("utf-8", "replace").splitlines(
                        )[-10:]
            except OSError:
                pass
        lines = [line[line.index("["):] if "[" in line else line.strip()
                 for line in lines]
        shown = [line for line in lines
                 if line.startswith(("[warn]", "[err]"))]
        if not shown and failed:
            shown = lines
        if shown:
            how += " (%s)" % (" | ".join(shown[-3:]),)
        return how


class OnionService(service.Service):
    """
    An onion service for annexd's sockets, on a tor reached through its
    control port or launched for the purpose.

    @ivar hostname: C{"<56 characters>.onion"} once known: after the
        onion was added, or before the first start when the state
        directory holds a key and its address; else L{None}.
    @ivar serviceID: the onion's service id while tor serves it.
    @ivar tor: the L{txtorcon.Tor} of the control connection while it is
        open.
    @ivar ports: the C{(virtualPort, target)} mappings.
    @ivar label: the C{name} given, used in log lines.
    """

    _log = Logger()

    def __init__(self, reactor, stateDir, ports, control=None, launch=False,
                 torBinary=None, name="annexd", torOptions=()):
        """
        @param reactor: the reactor.
        @param stateDir: the directory of the onion's key and address
            (made, mode 0700, if missing).
        @param ports: C{(virtualPort, target)} pairs, C{target} in tor's
            C{HiddenServicePort} syntax: C{"unix:/abs/path"} or
            C{"127.0.0.1:PORT"}.
        @param control: a Twisted client endpoint string for the control
            port of a running tor (C{"unix:/run/tor/control"},
            C{"tcp:127.0.0.1:9051"}).
        @param launch: instead of C{control}, start a private tor (data in
            C{stateDir/tor}); it lives as long as the service.
        @param torBinary: the tor program to launch (default: C{tor} on
            C{PATH}).
        @param name: what log lines call this onion service.
        @param torOptions: more C{(option, value)} lines for a launched
            tor's torrc (for tests: C{("DisableNetwork", "1")}).
        @raise ValueError: if the ports are not valid, or if neither or
            both of C{control} and C{launch} are given.
        """
        if (control is None) == (not launch):
            raise ValueError("an onion service needs either control= "
                             "(a running tor) or launch=True")
        self.reactor = reactor
        self.stateDir = os.path.abspath(stateDir)
        self.ports = checkPorts(ports)
        self.control = control
        self.launch = bool(launch)
        self.torBinary = torBinary
        self.label = name
        self.torOptions = list(torOptions)
        # Checked now: a bad option is a configuration error.
        launchTorrc(self._torDir(), self.torOptions)
        self.hostname = None
        if os.path.exists(self._keyPath()):
            self.hostname = readHostname(self.stateDir)
        self.serviceID = None
        self.tor = None
        self._protocol = None
        self._process = None
        self._starting = None
        self._cleaning = None
        self._stopping = False
        self._result = None
        self._waiters = []

    def _keyPath(self):
        return os.path.join(self.stateDir, KEY_FILE)

    def _torDir(self):
        return os.path.join(self.stateDir, TOR_DIR)

    def whenReady(self):
        """
        @return: a Deferred that fires with the hostname once tor serves
            the onion, or fails with an L{OnionServiceError} saying why it
            could not be set up (or that the service stopped first).
        """
        d = defer.Deferred()
        if self._result is None:
            self._waiters.append(d)
        else:
            d.callback(self._result)
        return d

    def addresses(self):
        """
        @return: C{(virtualPort, "tor-annex::<hostname>:<virtualPort>")}
            for each port, or an empty list while the hostname is not
            known.
        """
        if self.hostname is None:
            return []
        return [(virtualPort, "%s%s:%d" % (TOR_SCHEME, self.hostname,
                                           virtualPort))
                for virtualPort, _ in self.ports]

    def startService(self):
        """
        Set the onion up in the background: never raises, never waits;
        see L{whenReady}.
        """
        service.Service.startService(self)
        self._stopping = False
        self._result = None
        d = self._starting = defer.Deferred.fromCoroutine(self._start())
        d.addBoth(self._startDone)

    def stopService(self):
        """
        Remove the onion (C{DEL_ONION}), close the control connection and
        stop a launched tor; cancel a start still under way.

        @return: a Deferred that fires when all that is done (errors are
            logged, never passed on).
        """
        service.Service.stopService(self)
        self._stopping = True
        if self._starting is not None:
            self._starting.cancel()
        return defer.Deferred.fromCoroutine(self._teardown())

    async def _start(self):
        """
        Connect to (or launch) tor and add the onion.

        @return: the hostname.
        """
        try:
            os.makedirs(self.stateDir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise OnionServiceError("cannot make the state directory %s: %s"
                                    % (self.stateDir, e.strerror or e))
        key = readKey(self._keyPath())
        if self.launch:
            endpoint = await self._launch()
            where = "the launched tor (%s)" % (self._torDir(),)
        else:
            try:
                endpoint = clientFromString(self.reactor, self.control)
            except Exception as e:
                raise OnionServiceError("bad tor control endpoint %r: %s"
                                        % (self.control, e))
            where = self.control
        try:
            self.tor = await txtorcon.connect(
                self.reactor, _RecordingEndpoint(endpoint, self._connected))
        except defer.CancelledError:
            raise
        except Exception:
            raise OnionServiceError(
                "cannot use tor's control port %s: %s"
                % (where, _describe(Failure())))
        if self.launch:
            # From now on tor exits when this connection closes.
            await self._command("TAKEOWNERSHIP")
            await self._command("RESETCONF __OwningControllerProcess")
        reply = await self._command("ADD_ONION %s %s" % (
            key or "NEW:" + KEY_TYPE,
            " ".join("Port=%d,%s" % mapping for mapping in self.ports)))
        fields = dict(line.split("=", 1) for line in reply.splitlines()
                      if "=" in line)
        serviceID = fields.get("ServiceID", "")
        if not _SERVICE_ID.match(serviceID):
            # (Not quoting the answer: it may hold the private key.)
            raise OnionServiceError("tor's answer to ADD_ONION has no v3 "
                                    "ServiceID")
        self.serviceID = serviceID
        hostname = serviceID + ".onion"
        try:
            if key is None:
                newKey = fields.get("PrivateKey", "")
                if not newKey.startswith(KEY_TYPE + ":"):
                    raise OnionServiceError("tor's answer to ADD_ONION NEW "
                                            "has no %s PrivateKey"
                                            % (KEY_TYPE,))
                writeAtomically(self._keyPath(), newKey, 0o600)
            if readHostname(self.stateDir) != hostname:
                writeAtomically(os.path.join(self.stateDir, HOSTNAME_FILE),
                                hostname + "\n", 0o644)
        except OSError as e:
            raise OnionServiceError("cannot save the onion's key or address "
                                    "in %s: %s" % (self.stateDir, e))
        self.hostname = hostname
        return hostname

    async def _command(self, command):
        """
        Send tor one control command.

        @return: tor's answer.
        @raise OnionServiceError: if tor refuses it.
        """
        try:
            return await self._protocol.queue_command(command)
        except txtorcon.TorProtocolError as e:
            verb = command.split(" ", 1)[0]
            message = "tor refused %s: %s" % (verb, " ".join(str(e).split()))
            if "collision" in str(e).lower():
                message += (" (this onion is already served by that tor: "
                            "is another annexd using %s?)" % (self.stateDir,))
            raise OnionServiceError(message)

    async def _launch(self):
        """
        Start a private tor and wait for its control socket.

        @return: an endpoint for its control socket.
        """
        binary = self.torBinary or shutil.which("tor")
        if binary is None:
            raise OnionServiceError("cannot launch tor: no tor program on "
                                    "PATH (install tor, or give torBinary)")
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise OnionServiceError("cannot launch tor: %s is not an "
                                    "executable program" % (binary,))
        torDir = self._torDir()
        socketPath = os.path.join(torDir, "control.sock")
        cookiePath = os.path.join(torDir, "control_auth_cookie")
        if _UNSAFE.search(torDir):
            raise OnionServiceError("cannot launch tor in %s: the path holds "
                                    "whitespace or quotes" % (torDir,))
        if len(os.fsencode(socketPath)) > UNIX_PATH_MAX:
            raise OnionServiceError(
                "cannot launch tor: its control socket %s would be longer "
                "than %d bytes; use a shorter state directory"
                % (socketPath, UNIX_PATH_MAX))
        torrc = os.path.join(torDir, "torrc")
        try:
            os.makedirs(torDir, mode=0o700, exist_ok=True)
            os.chmod(torDir, 0o700)
            if _lockedByTor(torDir):
                raise OnionServiceError(
                    "cannot launch tor: another tor uses %s (another annexd "
                    "with the same state directory?)" % (torDir,))
            # Left by a tor that was killed: they would look ready.
            for stale in (socketPath, cookiePath):
                if os.path.lexists(stale):
                    os.unlink(stale)
            # One log per run (the previous one is kept).
            noticeLog = os.path.join(torDir, "notice.log")
            if os.path.exists(noticeLog):
                os.replace(noticeLog, noticeLog + ".1")
            writeAtomically(torrc, launchTorrc(torDir, self.torOptions),
                            0o600)
        except OSError as e:
            raise OnionServiceError("cannot prepare %s for tor: %s"
                                    % (torDir, e))
        process = self._process = _TorProcess(noticeLog,
                                              self._processEnded)
        # __OwningControllerProcess: tor exits if annexd dies before it
        # has taken ownership over the control connection.
        self.reactor.spawnProcess(
            process, binary,
            [binary, "-f", torrc, "--defaults-torrc", os.devnull,
             "__OwningControllerProcess", str(os.getpid())],
            env=dict(os.environ), path=torDir)
        deadline = self.reactor.seconds() + LAUNCH_TIMEOUT
        while not (os.path.exists(socketPath) and os.path.exists(cookiePath)):
            if process.ended is not None:
                raise OnionServiceError(
                    "tor (%s) ended before opening its control socket: %s"
                    % (binary, process.describe()))
            if self.reactor.seconds() > deadline:
                raise OnionServiceError(
                    "tor did not open its control socket %s within %d s "
                    "(see %s)" % (socketPath, LAUNCH_TIMEOUT,
                                  os.path.join(torDir, "notice.log")))
            await task.deferLater(self.reactor, 0.05, lambda: None)
        return UNIXClientEndpoint(self.reactor, socketPath)

    def _connected(self, proto):
        """
        The control connection is open (txtorcon has not set it up yet).
        """
        self._protocol = proto
        proto.when_disconnected().addErrback(self._disconnected, proto)

    def _disconnected(self, reason, proto):
        if proto is self._protocol and not self._stopping:
            self._protocol = self.tor = None
            if self.serviceID is not None:
                self._log.error(
                    "onion service {hostname}: lost the connection to tor's "
                    "control port; the onion is no longer served",
                    hostname=self.hostname)
                self.serviceID = None

    def _processEnded(self, reason):
        # Not when a tear-down stopped it (that forgets the process first),
        # nor during the start (which fails, saying why).
        if (self._process is not None and not self._stopping
                and isinstance(self._result, str)):
            self._log.error(
                "onion service {hostname}: the launched {status}; the onion "
                "is no longer served", hostname=self.hostname,
                status=self._process.describe())

    def _startDone(self, result):
        self._starting = None
        if isinstance(result, Failure):
            if self._stopping and result.check(defer.CancelledError):
                message = "stopped before the onion was ready"
                self._log.info("onion service {name}: {error}",
                               name=self.label, error=message)
            else:
                message = _describe(result)
                self._log.error("onion service {name} not started: {error}",
                                name=self.label, error=message)
                # Leave nothing behind: the connection, a launched tor.
                self._cleaning = defer.Deferred.fromCoroutine(
                    self._teardown())
            self._result = Failure(OnionServiceError(message))
        else:
            self._result = result
            self._log.info(
                "onion service {hostname} ready: virtual ports {ports}",
                hostname=result, ports=", ".join(
                    "%d -> %s" % mapping for mapping in self.ports))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self._result)
        return None

    async def _teardown(self):
        """
        Remove the onion, close the control connection, stop a launched
        tor; each step bounded by L{STOP_TIMEOUT}.
        """
        cleaning, self._cleaning = self._cleaning, None
        proto, process = self._protocol, self._process
        serviceID = self.serviceID
        self._protocol = self._process = self.tor = self.serviceID = None
        if proto is not None:
            if serviceID is not None:
                try:
                    await proto.queue_command(
                        "DEL_ONION " + serviceID).addTimeout(
                            STOP_TIMEOUT, self.reactor)
                except Exception:
                    pass
            disconnected = proto.when_disconnected()
            disconnected.addErrback(lambda _: None)
            proto.transport.loseConnection()
            try:
                await disconnected.addTimeout(STOP_TIMEOUT, self.reactor)
            except defer.TimeoutError:
                proto.transport.abortConnection()
        if process is not None:
            process.signal("TERM")
            try:
                await process.whenEnded().addTimeout(STOP_TIMEOUT,
                                                     self.reactor)
            except defer.TimeoutError:
                self._log.warn("onion service {name}: tor did not exit in "
                               "{seconds} s after SIGTERM: killed",
                               name=self.label, seconds=STOP_TIMEOUT)
                process.signal("KILL")
                await process.whenEnded()
        if cleaning is not None:
            await cleaning
