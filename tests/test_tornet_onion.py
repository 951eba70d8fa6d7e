"""
Opt-in (C{ANNEXD_TEST_TORNET=1}): an L{annexd.p2p.tor.OnionService}
reached for real, through tor.  A private tor network
(L{tests.support.tornet}: 7 tor processes, 30 s to 120 s to bootstrap)
hosts the onion on its C{hs} tor; the onion's port leads to a small echo
server on a unix socket; a client connects through the network's client
tor (SOCKS on 127.0.0.1:9050, like git-annex) and gets its line back.

Tor uploads the onion's descriptor shortly after C{ADD_ONION}.  The test
waits for tor's C{HS_DESC UPLOADED} event for it (on a control connection
of its own) before connecting, since a client that asks for a descriptor
too early does not ask the same directories again for a while; the
connection is still retried for a bounded time.
"""

import os
import shutil
import tempfile
import time

import txtorcon
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.endpoints import (
    TCP4ClientEndpoint, UNIXClientEndpoint, UNIXServerEndpoint)
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial import unittest

from annexd.p2p.tor import OnionService
from tests.support.tornet import TorNetwork

ENABLED = os.environ.get("ANNEXD_TEST_TORNET") == "1"

#: Seconds the network has to bootstrap.
BOOTSTRAP_TIMEOUT = 180

#: Seconds for the descriptor upload, and for connecting through tor.
UPLOAD_TIMEOUT = 120
CONNECT_TIMEOUT = 120

_log = Logger()


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class LineClient(LineOnlyReceiver):
    """
    Sends one line, reads one line and hangs up; once the connection is
    closed, C{received} fires with the line read (or fails if none came).
    """

    delimiter = b"\n"

    def __init__(self, line, received):
        self.line = line
        self.received = received
        self.answer = None

    def connectionMade(self):
        self.sendLine(self.line)

    def lineReceived(self, line):
        if self.answer is None:
            self.answer = line
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.answer is not None:
            self.received.callback(self.answer)
        else:
            self.received.errback(reason)


def closeControl(tor):
    """
    Close a txtorcon control connection.

    @return: a Deferred that fires once it is closed.
    """
    d = tor.protocol.when_disconnected()
    d.addErrback(lambda _: None)
    tor.protocol.transport.loseConnection()
    return d


class DescriptorUploads:
    """
    The onions whose descriptor tor says it uploaded (C{HS_DESC UPLOADED}
    events).
    """

    def __init__(self):
        self.uploaded = set()
        self._waiting = {}

    def event(self, text):
        words = text.split()
        if len(words) >= 2 and words[0] == "UPLOADED":
            self.uploaded.add(words[1])
            for d in self._waiting.pop(words[1], []):
                d.callback(None)

    def whenUploaded(self, serviceID):
        if serviceID in self.uploaded:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.setdefault(serviceID, []).append(d)
        return d


class TorNetworkOnionTests(unittest.TestCase):
    """
    An onion of L{OnionService}, reached through a private tor network.
    """

    if not ENABLED:
        skip = ("opt-in: set ANNEXD_TEST_TORNET=1 to run a private tor "
                "network of 7 tor processes (30 s to 120 s to bootstrap; "
                "needs tor, tor-gencert and a free 127.0.0.1:9050)")
    elif not (shutil.which("tor") and shutil.which("tor-gencert")):
        skip = ("ANNEXD_TEST_TORNET=1 but tor or tor-gencert is missing "
                "(apt-get install -y --no-install-recommends tor)")

    timeout = BOOTSTRAP_TIMEOUT + UPLOAD_TIMEOUT + CONNECT_TIMEOUT + 60

    async def test_echoThroughOnion(self):
        """
        A line sent to the onion's virtual port through the client tor's
        SOCKS port comes back from the echo server behind the onion: with
        the onion on the network's C{hs} tor (C{control=}), then on a tor
        the service launches itself (C{launch=True}, joining the private
        network through C{torOptions}).
        """
        base = tempfile.mkdtemp(prefix="annexd-tornet-")
        self.addCleanup(shutil.rmtree, base, True)
        network = TorNetwork(os.path.join(base, "net"))
        self.addCleanup(network.stop)
        begin = time.monotonic()
        await threads.deferToThread(network.start, BOOTSTRAP_TIMEOUT)
        bootstrapped = time.monotonic()

        echoPath = os.path.join(base, "echo.sock")
        port = await UNIXServerEndpoint(reactor, echoPath).listen(
            protocol.Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)

        # Tor's HS_DESC events go to every controller that asks: this one
        # listens before the onion exists, so it cannot miss the upload.
        watcher = await txtorcon.connect(
            reactor, UNIXClientEndpoint(reactor, network.hsControl))
        self.addCleanup(closeControl, watcher)
        uploads = DescriptorUploads()
        await watcher.protocol.add_event_listener("HS_DESC", uploads.event)

        svc = OnionService(reactor, os.path.join(base, "onion"),
                           [(4242, "unix:" + echoPath)],
                           control="unix:" + network.hsControl)
        svc.startService()
        self.addCleanup(svc.stopService)
        hostname = await svc.whenReady()
        ready = time.monotonic()
        await uploads.whenUploaded(svc.serviceID).addTimeout(UPLOAD_TIMEOUT,
                                                             reactor)
        uploaded = time.monotonic()
        line, attempts = await self.echoThroughTor(hostname, 4242,
                                                   b"hello through tor")
        done = time.monotonic()
        self.assertEqual(line, b"hello through tor")
        _log.info(
            "tor network bootstrap {bootstrap:.1f} s, ADD_ONION "
            "{add:.2f} s, descriptor upload {upload:.1f} s, echo through "
            "SOCKS {echo:.2f} s ({attempts} attempt(s))",
            bootstrap=bootstrapped - begin, add=ready - bootstrapped,
            upload=uploaded - ready, echo=done - uploaded, attempts=attempts)

        # The same with a tor of the service's own.
        launched = OnionService(reactor, os.path.join(base, "launched"),
                                [(4343, "unix:" + echoPath)], launch=True,
                                torOptions=network.joinOptions)
        launched.startService()
        self.addCleanup(launched.stopService)
        start = time.monotonic()
        hostname = await launched.whenReady()
        ready = time.monotonic()
        # Its tor has to bootstrap before it uploads anything, which takes
        # far longer than subscribing here.
        uploads = DescriptorUploads()
        await launched.tor.protocol.add_event_listener("HS_DESC",
                                                       uploads.event)
        await uploads.whenUploaded(launched.serviceID).addTimeout(
            UPLOAD_TIMEOUT, reactor)
        uploaded = time.monotonic()
        line, attempts = await self.echoThroughTor(hostname, 4343,
                                                   b"hello again")
        done = time.monotonic()
        self.assertEqual(line, b"hello again")
        _log.info(
            "launched tor: ready {ready:.2f} s, descriptor upload "
            "{upload:.1f} s, echo through SOCKS {echo:.2f} s ({attempts} "
            "attempt(s)); whole test {total:.1f} s",
            ready=ready - start, upload=uploaded - ready,
            echo=done - uploaded, attempts=attempts,
            total=done - begin)
        pid = launched._process.transport.pid
        await launched.stopService()
        self.assertFalse(os.path.exists("/proc/%d/cmdline" % (pid,)))

    async def echoThroughTor(self, host, port, line):
        """
        Connect to C{host:port} through the client tor's SOCKS port, send
        C{line} and return the line that comes back; retry failed
        connections for at most L{CONNECT_TIMEOUT} seconds.

        @return: the line received and the number of attempts.
        """
        deadline = time.monotonic() + CONNECT_TIMEOUT
        attempts = 0
        while True:
            attempts += 1
            received = defer.Deferred()
            endpoint = txtorcon.TorClientEndpoint(
                host, port, reactor=reactor,
                socks_endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                  TorNetwork.socksPort))
            factory = protocol.Factory.forProtocol(
                lambda: LineClient(line, received))
            try:
                await endpoint.connect(factory).addTimeout(60, reactor)
                return (await received.addTimeout(30, reactor)), attempts
            except Exception as e:
                # A late failure of this attempt is of no interest.
                received.addErrback(lambda _: None)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        "no echo through tor from %s:%d after %d attempts "
                        "in %d s: %s" % (host, port, attempts,
                                         CONNECT_TIMEOUT, e))
                _log.info("attempt {n} through tor failed: {error}",
                          n=attempts, error=e)
            await task.deferLater(reactor, 1.0, lambda: None)
