"""
Targets on the gateway's onion service (annexd.p2p.onion), with a real tor
that has no network (DisableNetwork 1): annexd creates the onion through
tor's control port, publishes tor-annex:: addresses that survive a
restart, and serves AUTH on every virtual port.
"""

import io
import re
import time

from twisted.internet import defer, endpoints, protocol, reactor, threads
from twisted.trial import unittest

from annexd.p2p.command import p2p
from annexd.p2p.frontend import AddressBook, P2PFrontends
from annexd.p2p.onion import OnionFrontend
from annexd.protocol import messages as m
from annexd.protocol.framing import P2PConnection
from annexd.router.host import GatewayHost
from tests.support.annex import cluster_for
from tests.support.daemon import startDaemon
from tests.support.daemon import shortTempDir
from tests.test_tor import TOR, OfflineTor

ONION = re.compile(r"tor-annex::([a-z2-7]{56}\.onion):(\d+)$")


def skipWithoutTor(case):
    if TOR is None:
        raise unittest.SkipTest("tor is not installed")


class OnionFrontendTests(unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        skipWithoutTor(self)
        self.cluster = cluster_for(self)
        self.tor = OfflineTor(shortTempDir(self))
        self.addCleanup(self.tor.stop)
        yield defer.ensureDeferred(self.tor.start())
        self.host = GatewayHost(reactor, self.cluster.gateway.path,
                                environment=self.cluster.env.env)
        self.addCleanup(self.host.close)
        self.frontends = P2PFrontends(reactor)

    def frontend(self):
        [onion] = OnionFrontend.forOptions(
            reactor, [self.host], ["5555", "5556 mycluster"], self.frontends,
            control="unix:" + self.tor.control)
        onion.startService()
        return onion

    @defer.inlineCallbacks
    def test_virtualPorts(self):
        """
        One onion, a virtual port per target, each answering AUTH with its
        target's uuid for the onion's (bare) tor token; the address is the
        same after a restart.
        """
        onion = self.frontend()
        hostname = yield onion.ready
        published = {name: address for address, uuid, name in
                     AddressBook.read(self.host.state.gitDir)}
        self.assertEqual(published, {
            self.host.name: "tor-annex::%s:5555" % (hostname,),
            "mycluster": "tor-annex::%s:5556" % (hostname,)})
        out = io.StringIO()
        self.assertEqual(p2p([self.host.state.gitDir, "--gen-addresses"],
                             stdout=out, stderr=io.StringIO()), 0)
        lines = out.getvalue().split()
        self.assertEqual(len(lines), 2)
        tokens = {line.rsplit(":", 1)[1] for line in lines}
        self.assertEqual(len(tokens), 1, "one token for the whole onion")
        [token] = tokens
        for vport, uuid in ((5555, self.host.uuid),
                            (5556, self.cluster.cluster_uuid.encode())):
            port = onion.factories[vport]
            listening = [p for p in onion.listening
                         if p.factory is port][0].getHost().port
            client = yield endpoints.TCP4ClientEndpoint(
                reactor, "127.0.0.1", listening).connect(
                    protocol.Factory.forProtocol(P2PConnection))
            client.sendMessage(m.Auth(b"c1", token.encode()))
            self.assertEqual((yield client.readMessage()), m.AuthSuccess(uuid))
            client.close()
            yield client.whenClosed()
        yield onion.stopService()
        again = self.frontend()
        self.addCleanup(again.stopService)
        self.assertEqual((yield again.ready), hostname)

    @defer.inlineCallbacks
    def test_noTor(self):
        """
        Without a reachable tor the onion is not available (ready fails
        with the reason), and stopping is clean.
        """
        [onion] = OnionFrontend.forOptions(
            reactor, [self.host], ["5555"], self.frontends,
            control="unix:" + self.tor.control + ".missing")
        onion.startService()
        yield self.assertFailure(onion.ready, Exception)
        yield onion.stopService()


class OnionDaemonTests(unittest.TestCase):
    """
    The daemon with --onion: it prints its tor-annex:: addresses, the same
    after a restart.
    """

    @defer.inlineCallbacks
    def test_sameAddressAfterRestart(self):
        skipWithoutTor(self)
        cluster = cluster_for(self)
        tor = OfflineTor(shortTempDir(self))
        self.addCleanup(tor.stop)
        yield defer.ensureDeferred(tor.start())
        gateway = cluster.gateway.path
        args = ["--repo", gateway, "--onion", "7000 mycluster",
                "--tor-control", "unix:" + tor.control]

        def run(number):
            # Blocking: the daemon is another process.
            daemon = startDaemon(self, cluster.env.env, args)
            try:
                return self._waitAddress(daemon, number)
            finally:
                daemon.stop()
        first = yield threads.deferToThread(run, 0)
        second = yield threads.deferToThread(run, 1)
        self.assertRegex(first, ONION)
        self.assertEqual(first, second)

    def _waitAddress(self, daemon, run):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"tor address (tor-annex::\S+) serves mycluster",
                              daemon.output())
            if match:
                return match.group(1)
            time.sleep(0.1)
        raise AssertionError("run %d printed no tor-annex address:\n%s"
                             % (run, daemon.output()[-3000:]))
