"""
L{annexd.p2p.tor.OnionService} with a real tor that has no network
(C{DisableNetwork 1}, spec C): tor answers C{ADD_ONION} at once, so the
onion's set-up, key, address, restart and removal are all checked offline
in about a second.

C{GETINFO onions/current} lists only the onions of the control connection
that asks, so from a second connection the tests ask tor in another way
whether it serves an onion: C{ADD_ONION} with the same key fails with
"Onion address collision" exactly while it does.
"""

import base64
import os
import re
import shutil
import stat
import subprocess

import txtorcon
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from annexd.p2p.tor import (
    KEY_FILE, OnionService, OnionServiceError, checkPorts, launchTorrc,
    readHostname)
from tests.support.daemon import shortTempDir

TOR = shutil.which("tor")

NO_TOR = ("no tor program on PATH: these tests run a real tor "
          "(apt-get install -y --no-install-recommends tor)")

#: Seconds a test's tor has to open its control socket.
TOR_START_TIMEOUT = 30.0

_HOSTNAME = re.compile(r"^[a-z2-7]{56}\.onion$")


async def pollUntil(predicate, what, seconds=TOR_START_TIMEOUT, step=0.05):
    """
    Poll C{predicate} until it is true; fail after C{seconds}.
    """
    for _ in range(int(seconds / step)):
        if predicate():
            return
        await task.deferLater(reactor, step, lambda: None)
    raise AssertionError("%s: not within %s s" % (what, seconds))


def pidAlive(pid):
    """
    Whether the process C{pid} exists and is not a zombie.
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class OfflineTor:
    """
    A private tor without network, as in spec C: C{DisableNetwork 1},
    C{SocksPort 0}, a unix control socket with cookie authentication in a
    0700 directory.

    @ivar control: the path of its control socket.
    @ivar process: its L{subprocess.Popen}.
    """

    def __init__(self, baseDir):
        self.baseDir = baseDir
        self.control = os.path.join(baseDir, "control.sock")
        self.cookie = os.path.join(baseDir, "data", "control_auth_cookie")
        self.notice = os.path.join(baseDir, "notice.log")
        self.process = None

    async def start(self):
        os.chmod(self.baseDir, 0o700)
        torrc = os.path.join(self.baseDir, "torrc")
        with open(torrc, "w") as f:
            f.write("DataDirectory %s\n"
                    "ControlPort unix:%s\n"
                    "CookieAuthentication 1\n"
                    "SocksPort 0\n"
                    "DisableNetwork 1\n"
                    "Log notice file %s\n"
                    % (os.path.join(self.baseDir, "data"), self.control,
                       self.notice))
        with open(os.path.join(self.baseDir, "tor.out"), "wb") as out:
            self.process = subprocess.Popen(
                [TOR, "-f", torrc, "--defaults-torrc", os.devnull],
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)

        def ready():
            if self.process.poll() is not None:
                raise AssertionError("tor exited (%s): %s" % (
                    self.process.returncode, self.tail()))
            return os.path.exists(self.control) and os.path.exists(
                self.cookie)
        await pollUntil(ready, "tor's control socket " + self.control)

    def tail(self):
        lines = []
        for name in ("tor.out", "notice.log"):
            try:
                with open(os.path.join(self.baseDir, name)) as f:
                    lines += f.read().splitlines()[-5:]
            except OSError:
                pass
        return " | ".join(lines)

    def stop(self):
        """
        Kill tor (by its pid) and wait for it.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def controlConnection(case, path):
    """
    A second control connection to the tor at C{path}, closed after the
    test.

    @return: its L{txtorcon.TorControlProtocol}.
    """
    tor = await txtorcon.connect(reactor, UNIXClientEndpoint(reactor, path))
    proto = tor.protocol

    def close():
        d = proto.when_disconnected()
        d.addErrback(lambda _: None)
        proto.transport.loseConnection()
        return d
    case.addCleanup(close)
    return proto


async def onionServed(proto, key):
    """
    Whether the tor of C{proto} serves the onion of C{key} for another
    control connection: adding it again collides exactly then.
    """
    try:
        reply = await proto.queue_command(
            "ADD_ONION %s Port=9,127.0.0.1:9" % (key,))
    except txtorcon.TorProtocolError as e:
        if "collision" in str(e):
            return True
        raise
    serviceID = reply.split("ServiceID=", 1)[1].split()[0]
    await proto.queue_command("DEL_ONION " + serviceID)
    return False


def captureLog(case):
    """
    The log events emitted during the test.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def ofLevel(events, level):
    return [e for e in events
            if e.get("log_namespace", "").startswith("annexd.p2p.tor")
            and e["log_level"].name == level]


class OnionServiceTests(unittest.TestCase):
    """
    An L{OnionService} on a running tor, reached through C{control}.
    """

    if TOR is None:
        skip = NO_TOR

    timeout = 30

    def setUp(self):
        self.tmp = shortTempDir(self)
        self.stateDir = os.path.join(self.tmp, "onion")
        torDir = os.path.join(self.tmp, "tor")
        os.mkdir(torDir, 0o700)
        self.torProcess = OfflineTor(torDir)
        self.addCleanup(self.torProcess.stop)
        self.control = "unix:" + self.torProcess.control
        self.p2pSocket = os.path.join(self.tmp, "p2p.sock")
        return defer.ensureDeferred(self.torProcess.start())

    def service(self, **kw):
        """
        A started L{OnionService} on the test's tor, stopped after the
        test (stopping twice is harmless).
        """
        kw.setdefault("control", self.control)
        kw.setdefault("ports", [(4242, "unix:" + self.p2pSocket),
                                (4343, "127.0.0.1:5555")])
        svc = OnionService(reactor, self.stateDir, **kw)
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def readKey(self):
        with open(os.path.join(self.stateDir, KEY_FILE)) as f:
            return f.read()

    async def test_addOnion(self):
        """
        The first start makes a key (mode 0600, in a 0700 directory) and an
        onion with both ports; its address is saved and logged.
        """
        events = captureLog(self)
        svc = self.service()
        hostname = await svc.whenReady()
        self.assertRegex(hostname, _HOSTNAME)
        self.assertEqual(svc.hostname, hostname)
        self.assertEqual(svc.serviceID + ".onion", hostname)
        self.assertEqual(
            svc.addresses(),
            [(4242, "tor-annex::%s:4242" % (hostname,)),
             (4343, "tor-annex::%s:4343" % (hostname,))])
        # Saved: the key tor needs, and the address.
        key = self.readKey()
        self.assertTrue(key.startswith("ED25519-V3:"), key[:20])
        self.assertEqual(len(base64.b64decode(key[len("ED25519-V3:"):])), 64)
        keyMode = stat.S_IMODE(os.stat(os.path.join(self.stateDir,
                                                    KEY_FILE)).st_mode)
        self.assertEqual(oct(keyMode), oct(0o600))
        self.assertEqual(oct(stat.S_IMODE(os.stat(self.stateDir).st_mode)),
                         oct(0o700))
        with open(os.path.join(self.stateDir, "hostname")) as f:
            self.assertEqual(f.read(), hostname + "\n")
        self.assertEqual(readHostname(self.stateDir), hostname)
        self.assertEqual([n for n in os.listdir(self.stateDir)
                          if ".tmp" in n], [])
        # The service's own connection lists it; another one cannot add it.
        current = await svc.tor.protocol.get_info("onions/current")
        self.assertEqual(current["onions/current"].split(), [svc.serviceID])
        other = await controlConnection(self, self.torProcess.control)
        self.assertTrue(await onionServed(other, key))
        # One line in the log says so.
        [ready] = [e for e in ofLevel(events, "info")
                   if "ready" in e["log_format"]]
        self.assertEqual(ready["hostname"], hostname)
        self.assertIn(
            "4242 -> unix:%s, 4343 -> 127.0.0.1:5555" % (self.p2pSocket,),
            ready["ports"])
        self.assertEqual(ofLevel(events, "error"), [])

    async def test_restartSameAddress(self):
        """
        Stopping removes the onion from tor; a new service with the same
        state directory knows the address before it starts, and serves
        the same onion with the saved key.
        """
        first = self.service()
        hostname = await first.whenReady()
        key = self.readKey()
        other = await controlConnection(self, self.torProcess.control)
        self.assertTrue(await onionServed(other, key))
        await first.stopService()
        self.assertIsNone(first.tor)
        self.assertFalse(await onionServed(other, key))

        second = OnionService(reactor, self.stateDir,
                              [(4242, "unix:" + self.p2pSocket)],
                              control=self.control)
        self.assertEqual(second.hostname, hostname)
        self.assertEqual(second.addresses(),
                         [(4242, "tor-annex::%s:4242" % (hostname,))])
        second.startService()
        self.addCleanup(second.stopService)
        self.assertEqual(await second.whenReady(), hostname)
        self.assertEqual(self.readKey(), key)
        self.assertTrue(await onionServed(other, key))
        # Whoever asks later is told at once.
        self.assertEqual(await second.whenReady(), hostname)

    async def test_alreadyServed(self):
        """
        A second service with the same state directory on the same tor
        (another annexd, say) fails with a one-line error saying the onion
        is already served; the first one keeps it.
        """
        first = self.service()
        hostname = await first.whenReady()
        events = captureLog(self)
        second = self.service()
        failure = await self.assertFailure(second.whenReady(),
                                           OnionServiceError)
        self.assertIn("tor refused ADD_ONION: 550 Onion address collision",
                      str(failure))
        self.assertIn(self.stateDir, str(failure))
        [logged] = ofLevel(events, "error")
        self.assertIn("collision", logged["error"])
        self.assertNotIn("log_failure", logged)
        self.assertIsNone(second.tor)
        await second.stopService()
        current = await first.tor.protocol.get_info("onions/current")
        self.assertEqual(current["onions/current"], hostname[:-6])

    async def test_badSavedKey(self):
        """
        A key file that holds no key fails the start, saying which file.
        """
        os.mkdir(self.stateDir, 0o700)
        with open(os.path.join(self.stateDir, KEY_FILE), "w") as f:
            f.write("RSA1024:abcd")
        svc = self.service()
        failure = await self.assertFailure(svc.whenReady(),
                                           OnionServiceError)
        self.assertIn("does not hold an ED25519-V3 onion key", str(failure))
        self.assertIn(KEY_FILE, str(failure))


class LaunchTests(unittest.TestCase):
    """
    An L{OnionService} that starts its own tor (C{launch=True}).  The tests
    add C{DisableNetwork 1} to its torrc so that the tor stays offline.
    """

    if TOR is None:
        skip = NO_TOR

    timeout = 30

    def setUp(self):
        self.stateDir = os.path.join(shortTempDir(self), "onion")

    def service(self, **kw):
        kw.setdefault("ports", [(4242, "unix:/run/annexd-test/p2p.sock")])
        kw["torOptions"] = [("DisableNetwork", "1")] + kw.get(
            "torOptions", [])
        svc = OnionService(reactor, self.stateDir, launch=True, **kw)
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    async def test_launch(self):
        """
        The launched tor has no SOCKS port and serves the onion at once;
        stopping the service stops that tor; launching again gives the
        same onion.
        """
        svc = self.service()
        hostname = await svc.whenReady()
        self.assertRegex(hostname, _HOSTNAME)
        pid = svc._process.transport.pid
        self.assertTrue(pidAlive(pid))
        socks = await svc.tor.protocol.get_conf("SocksPort")
        self.assertEqual(socks["SocksPort"], "0")
        current = await svc.tor.protocol.get_info("onions/current")
        self.assertEqual(current["onions/current"], svc.serviceID)
        await svc.stopService()
        self.assertFalse(pidAlive(pid))

        again = self.service()
        self.assertEqual(await again.whenReady(), hostname)
        await again.stopService()

    async def test_stateDirInUse(self):
        """
        A second service launching tor in the same state directory fails
        and leaves the first one's tor alone.
        """
        first = self.service()
        hostname = await first.whenReady()
        second = self.service()
        failure = await self.assertFailure(second.whenReady(),
                                           OnionServiceError)
        self.assertIn("another tor uses %s/tor" % (self.stateDir,),
                      str(failure))
        current = await first.tor.protocol.get_info("onions/current")
        self.assertEqual(current["onions/current"] + ".onion", hostname)

    async def test_torExitsWithConnection(self):
        """
        The service owns the launched tor: when its control connection
        closes (annexd killed, say), tor exits by itself.
        """
        svc = self.service()
        await svc.whenReady()
        process = svc._process
        svc.tor.protocol.transport.loseConnection()
        await process.whenEnded().addTimeout(10, reactor)
        self.assertEqual(process.ended.value.exitCode, 0)

    async def test_noTorProgram(self):
        """
        A tor program that does not exist fails the start with a one-line
        error naming it.
        """
        events = captureLog(self)
        svc = self.service(torBinary="/nonexistent/tor")
        failure = await self.assertFailure(svc.whenReady(),
                                           OnionServiceError)
        self.assertIn("/nonexistent/tor", str(failure))
        [logged] = ofLevel(events, "error")
        self.assertNotIn("log_failure", logged)
        await svc.stopService()

    async def test_torRefusesConfig(self):
        """
        When the launched tor exits at once (here: an option it does not
        know), the start fails with tor's own complaint.
        """
        svc = self.service(torOptions=[("NoSuchOption", "1")])
        failure = await self.assertFailure(svc.whenReady(),
                                           OnionServiceError)
        self.assertIn("ended before opening its control socket: tor exited "
                      "with code 1", str(failure))
        self.assertIn("Unknown option 'NoSuchOption'", str(failure))

    def test_torrc(self):
        """
        The torrc of a launched tor (as in production, without the tests'
        options): no SOCKS port, a unix control socket with cookie
        authentication, network enabled.
        """
        torrc = launchTorrc("/var/lib/annexd/onion/tor").splitlines()
        self.assertEqual(torrc, [
            "DataDirectory /var/lib/annexd/onion/tor",
            "ControlPort unix:/var/lib/annexd/onion/tor/control.sock",
            "CookieAuthentication 1",
            "SocksPort 0",
            "Log notice file /var/lib/annexd/onion/tor/notice.log",
        ])
        self.assertIn("DisableNetwork 1", launchTorrc(
            "/x", [("DisableNetwork", 1)]).splitlines())


class WithoutTorTests(unittest.TestCase):
    """
    What happens when no tor answers; checks of the arguments.
    """

    timeout = 30

    def setUp(self):
        self.tmp = shortTempDir(self)
        self.stateDir = os.path.join(self.tmp, "onion")

    async def test_unreachable(self):
        """
        Without a tor at the control socket, startService does not raise,
        whenReady fails with a one-line error naming the socket, and
        stopService completes.
        """
        events = captureLog(self)
        control = "unix:%s/nothing/control.sock" % (self.tmp,)
        svc = OnionService(reactor, self.stateDir, [(1, "127.0.0.1:2")],
                           control=control)
        svc.startService()
        failure = await self.assertFailure(svc.whenReady(),
                                           OnionServiceError)
        self.assertIn("cannot use tor's control port " + control,
                      str(failure))
        self.assertNotIn("\n", str(failure))
        [logged] = ofLevel(events, "error")
        self.assertNotIn("log_failure", logged)
        self.assertIn(control, logged["error"])
        self.assertIsNone(svc.hostname)
        self.assertEqual(svc.addresses(), [])
        await svc.stopService()
        self.assertFalse(svc.running)

    async def test_stopWhileStarting(self):
        """
        Stopping while the control connection is being set up (here: a
        socket that accepts and never answers) cancels the start and closes
        the connection; whenReady fails.
        """
        lost = defer.Deferred()
        accepted = defer.Deferred()

        class Silent(protocol.Protocol):
            def connectionMade(self):
                accepted.callback(None)

            def connectionLost(self, reason):
                lost.callback(None)

        path = os.path.join(self.tmp, "silent.sock")
        port = await UNIXServerEndpoint(reactor, path).listen(
            protocol.Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        events = captureLog(self)
        svc = OnionService(reactor, self.stateDir, [(1, "127.0.0.1:2")],
                           control="unix:" + path)
        svc.startService()
        ready = svc.whenReady()
        await accepted
        await svc.stopService()
        await lost
        failure = await self.assertFailure(ready, OnionServiceError)
        self.assertIn("stopped before the onion was ready", str(failure))
        self.assertEqual(ofLevel(events, "error"), [])

    def test_badArguments(self):
        """
        Bad ports, or neither or both of control and launch, are refused
        when the service is made.
        """
        good = [(80, "127.0.0.1:8080")]
        for ports in ([], [(0, "127.0.0.1:1")], [("80", "127.0.0.1:1")],
                      [(80, "unix:relative/path")], [(80, "nowhere")],
                      [(80, "unix:/a b")], [(80, "127.0.0.1:1\r\nQUIT")],
                      [(80, "127.0.0.1:1"), (80, "127.0.0.1:2")]):
            self.assertRaises(ValueError, checkPorts, ports)
        self.assertEqual(checkPorts([(80, "unix:/run/x.sock")]),
                         [(80, "unix:/run/x.sock")])
        self.assertRaises(ValueError, OnionService, reactor, self.stateDir,
                          good)
        self.assertRaises(ValueError, OnionService, reactor, self.stateDir,
                          good, control="unix:/x", launch=True)
        self.assertRaises(ValueError, OnionService, reactor, self.stateDir,
                          good, launch=True,
                          torOptions=[("Bad\nOption", "1")])

    def test_readHostname(self):
        """
        readHostname gives the saved address, or None when there is none or
        it is not an onion address.
        """
        self.assertIsNone(readHostname(self.stateDir))
        os.mkdir(self.stateDir)
        path = os.path.join(self.stateDir, "hostname")
        with open(path, "w") as f:
            f.write("not an onion\n")
        self.assertIsNone(readHostname(self.stateDir))
        onion = "a" * 56 + ".onion"
        with open(path, "w") as f:
            f.write(onion + "\n")
        self.assertEqual(readHostname(self.stateDir), onion)
        # Without a key the service does not claim that address.
        svc = OnionService(reactor, self.stateDir, [(1, "127.0.0.1:2")],
                           control="unix:/x")
        self.assertIsNone(svc.hostname)
