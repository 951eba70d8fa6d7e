"""
Nodes reached at P2P addresses (annexd.nodes.p2paddr) against real
servers: a real C{git annex remotedaemon} at a C{p2p-annex::testnet:...}
address (through shared/spec/git-annex-p2p-testnet), annexd's own P2P
front-end (through contrib/git-annex-p2p-annexd), and, for
C{tor-annex::} addresses, a test SOCKS5 server standing in for tor's SOCKS
port (tests/support/socks5.py) in front of the remotedaemon.

Content is checked on the serving repository itself (the object file's
sha256), not only by what the node reports.
"""

import hashlib
import os

from twisted.internet import endpoints, protocol, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from annexd.interfaces import IRepository, RepositoryUnavailable
from annexd.nodes.p2paddr import (
    P2PAddressNode, credsFileName, parseAddress, readToken)
from annexd.p2p.tokens import BadAddress
from annexd.protocol.keys import Key
from annexd.streams import HashingConsumer
from tests.support.annex import cluster_for
from tests.support.daemon import shortTempDir
from tests.support.remotedaemon import startRemoteDaemon, testnetEnvironment
from tests.support.socks5 import SocksFactory

GATEWAY_UUID = b"11111111-2222-3333-4444-555555555555"

CONTRIB = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "contrib")

#: A v3 onion name (56 base32 characters); no tor knows it.
ONION = "annexdtestonionaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaad.onion"

#: The remotedaemon's address: a ":" after the netname's (git-annex splits
#: the netname at the first one), and characters the creds file name
#: escapes.
ADDR = "n1:a.b-c"


def keyOf(data):
    return Key.parse(b"SHA256E-s%d--%s.bin" % (
        len(data), hashlib.sha256(data).hexdigest().encode()))


class AddressTests(unittest.TestCase):
    """
    Addresses and creds file names, as git-annex has them.
    """

    def test_parseAddress(self):
        self.assertEqual(parseAddress("p2p-annex::testnet:127.0.0.1:23457"),
                         ("p2p", "testnet", "127.0.0.1:23457"))
        self.assertEqual(parseAddress("tor-annex::%s:4242" % (ONION,)),
                         ("tor", ONION, 4242))
        for bad in ("p2p-annex::testnet", "tor-annex::x.onion",
                    "tor-annex::a:b.onion:1", "tor-annex::x.onion:0",
                    "ssh://host/x", "p2p-annex::a/b:c",
                    "p2p-annex::net:a b"):
            self.assertRaises(BadAddress, parseAddress, bad)

    def test_credsFileName(self):
        """
        Every character but letters and digits is %XX (upper-case hex of
        its UTF-8 bytes); tor addresses leave the port out.
        (shared/spec/transports.md, verified against git-annex.)
        """
        for address, name in [
                ("p2p-annex::testnet:srv1", "testnet%3Asrv1"),
                ("p2p-annex::testnet:tcp-23456", "testnet%3Atcp%2D23456"),
                ("p2p-annex::testnet:127.0.0.1:23457",
                 "testnet%3A127%2E0%2E0%2E1%3A23457"),
                ("p2p-annex::annexd:/run/a_b.sock",
                 "annexd%3A%2Frun%2Fa%5Fb%2Esock"),
                ("p2p-annex::n:\u00e9~", "n%3A\u00e9%7E"),
                ("tor-annex::%s:4242" % (ONION,),
                 ONION[:-6] + "%2Eonion")]:
            self.assertEqual(credsFileName(address), name)

    def test_readToken(self):
        """
        The environment variable wins (even empty); else the creds file's
        first line, lower-cased; nothing, or not a token: L{None}.
        """
        gitDir = self.mktemp()
        creds = os.path.join(gitDir, "annex", "creds")
        os.makedirs(creds)
        address = "p2p-annex::testnet:127.0.0.1:23457"
        self.assertIsNone(readToken(gitDir, address, {}))
        with open(os.path.join(creds, "testnet%3A127%2E0%2E0%2E1%3A23457"),
                  "w") as f:
            f.write("ABCdef0123\nsecond line")
        self.assertEqual(readToken(gitDir, address, {}), "abcdef0123")
        self.assertEqual(readToken(
            gitDir, address, {"GIT_ANNEX_P2P_AUTHTOKEN": "Zz9"}), "zz9")
        self.assertEqual(readToken(
            gitDir, address, {"GIT_ANNEX_P2P_AUTHTOKEN": ""}), "")
        self.assertIsNone(readToken(gitDir, "p2p-annex::testnet:other", {}))
        with open(os.path.join(creds, "testnet%3Aother"), "w") as f:
            f.write("not a token")
        self.assertIsNone(readToken(gitDir, "p2p-annex::testnet:other", {}))

    def test_badArguments(self):
        self.assertRaises(BadAddress, P2PAddressNode, reactor, "ssh://h/x",
                          b"u", GATEWAY_UUID, "t")
        self.assertRaises(ValueError, P2PAddressNode, reactor,
                          "p2p-annex::testnet:x", b"u", GATEWAY_UUID,
                          "bad token")


class _NodeTests:
    """
    Helpers for tests of a L{P2PAddressNode} against a real server.
    """

    def makeNode(self, address=None, token=None, uuid=None, **kw):
        kw.setdefault("environment", self.env)
        kw.setdefault("name", "node1")
        node = P2PAddressNode(
            reactor, address or self.address,
            (uuid or self.repo.uuid).encode(), GATEWAY_UUID,
            self.token if token is None else token, **kw)
        self.addCleanup(node.close)
        return node

    def sha256(self, key):
        return self.cluster.node_sha256(self.repo, key.raw.decode())

    async def put(self, node, data):
        key = keyOf(data)
        upload = await node.put(key, b"some file.bin")
        sink = upload.receive(len(data) - upload.offset)
        sink.write(data[upload.offset:])
        outcome = await upload.finish(True)
        return key, outcome

    async def getAll(self, node, key):
        download = await node.get(key, b"some file.bin", 0)
        consumer = HashingConsumer()
        valid = await download.deliver(consumer)
        await download.finish(True)
        return download.length, valid, consumer.hexdigest()

    async def roundTrip(self, node, size=3 * 1024 * 1024 + 5):
        """
        put (checked on the repository), checkPresent, get, remove.
        """
        data = os.urandom(size)
        digest = hashlib.sha256(data).hexdigest()
        key = keyOf(data)
        self.assertFalse(await node.checkPresent(key))
        key, outcome = await self.put(node, data)
        self.assertTrue(outcome.ok)
        self.assertEqual(self.sha256(key), digest)
        self.assertTrue(await node.checkPresent(key))
        self.assertEqual(await self.getAll(node, key),
                         (len(data), True, digest))
        self.assertTrue((await node.remove(key)).ok)
        self.assertIsNone(self.sha256(key))
        self.assertFalse(await node.checkPresent(key))
        return key

    async def assertUnavailable(self, node, *texts, started=0):
        """
        A request fails with L{RepositoryUnavailable} saying C{texts}, and
        the node is marked down with that error.

        @return: the error's text.
        """
        error = None
        try:
            await node.checkPresent(keyOf(b"x"))
        except RepositoryUnavailable as e:
            error = str(e)
        self.assertIsNotNone(error, "the request did not fail")
        for text in texts:
            self.assertIn(text, error)
        status = node.status()
        self.assertFalse(status["up"])
        self.assertEqual(status["error"], error)
        self.assertEqual(status["started"], started)
        return error


class RemoteDaemonTests(_NodeTests, unittest.TestCase):
    """
    A node served by a real git-annex remotedaemon at a p2p-annex address.
    """

    timeout = 120

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)
        self.repo = self.cluster.nodes[0]
        self.env = testnetEnvironment(self, self.cluster.env.env)
        self.daemon = startRemoteDaemon(self, self.env, self.repo.path, ADDR)
        self.address = self.daemon.address
        self.token = self.daemon.token

    def test_interface(self):
        self.assertTrue(verifyObject(IRepository, self.makeNode()))

    async def test_roundTrip(self):
        """
        put, checkPresent, get and remove through the transport program;
        the session is kept and reused.
        """
        node = self.makeNode()
        await self.roundTrip(node)
        status = node.status()
        self.assertEqual((status["up"], status["started"], status["idle"]),
                         (True, 1, 1))
        # The wire, as the testnet program saw it: AUTH with our uuid and
        # the token, then VERSION.
        with open(self.env["TESTNET_LOG"]) as f:
            wire = f.read()
        self.assertIn("AUTH %s %s" % (GATEWAY_UUID.decode(), self.token),
                      wire)
        self.assertIn("VERSION 4", wire)

    async def test_lockContent(self):
        """
        Content locked through the node stays there while locked: a
        remove on another session is refused; after release it works.
        """
        node = self.makeNode(maxSessions=2)
        data = os.urandom(1000)
        key, outcome = await self.put(node, data)
        self.assertTrue(outcome.ok)
        lock = await node.lockContent(key)
        self.assertIsNotNone(lock)
        # remotedaemon refuses by ending the session, and says nothing
        # about why on the connection (git-annex-shell says "content is
        # locked" on stderr, which SessionPool.remove turns into "not
        # removed"): the request fails, the node stays up.
        try:
            removed = (await node.remove(key)).ok
        except RepositoryUnavailable as e:
            self.assertIn("closed", str(e))
            removed = False
        self.assertFalse(removed)
        self.assertTrue(node.status()["up"])
        self.assertEqual(self.sha256(key), hashlib.sha256(data).hexdigest())
        await lock.release()
        self.assertTrue((await node.remove(key)).ok)
        self.assertIsNone(self.sha256(key))
        # Nothing to lock now.
        self.assertIsNone(await node.lockContent(key))

    async def test_bypass(self):
        """
        BYPASS goes after VERSION (protocol 2 and later), and the session
        works as usual.
        """
        node = self.makeNode(bypass=(b"aaaa-bbbb",))
        self.assertFalse(await node.checkPresent(keyOf(b"y")))
        with open(self.env["TESTNET_LOG"]) as f:
            wire = f.read()
        self.assertLess(wire.index("VERSION 4"), wire.index("BYPASS aaaa-bbbb"))

    async def test_wrongToken(self):
        """
        A token the node does not accept: AUTH-FAILURE, and the node is
        down.
        """
        node = self.makeNode(token="0" * 128)
        await self.assertUnavailable(node,
                                     "node1: the node refused the auth token")

    async def test_wrongUUID(self):
        """
        AUTH-SUCCESS naming another repository than the node's.
        """
        other = "99999999-0000-0000-0000-000000000000"
        node = self.makeNode(uuid=other)
        await self.assertUnavailable(
            node, "is repository %s, expected %s" % (self.repo.uuid, other))

    async def test_programMissing(self):
        """
        No git-annex-p2p-NETNAME on PATH: the error names the program.
        """
        node = self.makeNode(address="p2p-annex::nosuchnet:x")
        await self.assertUnavailable(
            node, "git-annex-p2p-nosuchnet is not installed")
        self.assertEqual(node.processes, [])

    async def test_remoteDaemonStopped(self):
        """
        With the server gone, the program exits non-zero at once: the
        request fails with what it said, without hanging.
        """
        self.daemon.stop()
        node = self.makeNode()
        error = await self.assertUnavailable(
            node, "git-annex-p2p-testnet ended the connection",
            "testnet: cannot reach %s" % (ADDR,), "exited with status 1")
        self.assertIn("Connection refused", error)

    async def test_remoteDaemonStoppedIdleSession(self):
        """
        The server goes away while the node holds an idle session: the
        next request fails (on the dead session, or on trying a new one),
        it does not hang, and the transport program is gone.
        """
        node = self.makeNode()
        self.assertFalse(await node.checkPresent(keyOf(b"a")))
        [bridge] = node.processes
        self.daemon.stop()
        try:
            await node.checkPresent(keyOf(b"b"))
        except RepositoryUnavailable as e:
            self.assertIn("node1", str(e))
        else:
            self.fail("the request did not fail")
        await bridge.ended
        # The next one needs a new session: the node is down now.
        await self.assertUnavailable(node, "testnet: cannot reach",
                                     started=1)

    async def test_openTimeout(self):
        """
        A peer that accepts and never answers AUTH: the session is given
        up after openTimeout, and the transport program is killed.
        """
        path = os.path.join(os.path.realpath(shortTempDir(self)), "mute")
        port = await endpoints.UNIXServerEndpoint(reactor, path).listen(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(port.stopListening)
        os.symlink(path, os.path.join(self.env["TESTNET_DIR"], "mute"))
        node = self.makeNode(address="p2p-annex::testnet:mute")
        node.openTimeout = 0.5
        await self.assertUnavailable(node, "no answer from "
                                     "p2p-annex::testnet:mute within 0.5 s")
        await node.close()
        self.assertEqual(node.processes, [])

    async def test_readTokenFromLink(self):
        """
        readToken finds the token that a real C{git annex p2p --link}
        stored in the client repository, and a node using it works.
        """
        client = self.cluster.client.path
        self.cluster.env.run(
            ["git-annex", "p2p", "--link", "--name", "peer"], cwd=client,
            env=self.env, input="%s:%s\n" % (self.address, self.token))
        gitDir = os.path.join(client, ".git")
        self.assertEqual(os.listdir(os.path.join(gitDir, "annex", "creds")),
                         ["testnet%3An1%3Aa%2Eb%2Dc"])
        token = readToken(gitDir, self.address, {})
        self.assertEqual(token, self.token)
        self.assertIsNone(readToken(gitDir, self.address + "x", {}))
        node = self.makeNode(token=token)
        self.assertFalse(await node.checkPresent(keyOf(b"z")))
        self.assertTrue(node.status()["up"])


class TorTests(_NodeTests, unittest.TestCase):
    """
    A node at a tor-annex address: through a SOCKS5 server that stands in
    for tor's SOCKS port and leads the onion to the remotedaemon's socket.
    """

    timeout = 120

    async def setUp(self):
        self.cluster = cluster_for(self, nodes=1)
        self.repo = self.cluster.nodes[0]
        self.env = testnetEnvironment(self, self.cluster.env.env)
        self.daemon = startRemoteDaemon(self, self.env, self.repo.path, ADDR)
        self.token = self.daemon.token
        self.address = "tor-annex::%s:4242" % (ONION,)
        self.socks = SocksFactory({
            (ONION, 4242): endpoints.UNIXClientEndpoint(
                reactor, self.daemon.socket)})
        port = await endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(self.socks)
        self.addCleanup(port.stopListening)
        self.socksAddress = ("127.0.0.1", port.getHost().port)

    def makeNode(self, *args, **kw):
        kw.setdefault("torSocks", self.socksAddress)
        return _NodeTests.makeNode(self, *args, **kw)

    async def test_roundTrip(self):
        """
        put, checkPresent, get and remove through SOCKS, which was asked
        for the onion by name; one connection serves them all.
        """
        node = self.makeNode()
        await self.roundTrip(node)
        self.assertEqual(self.socks.requests, [(ONION, 4242)])
        self.assertEqual(node.processes, [])

    async def test_twoSessions(self):
        """
        Each session is a connection of its own.
        """
        node = self.makeNode(maxSessions=2)
        first = await node.session()
        second = await node.session()
        self.assertIsNot(first, second)
        self.assertEqual(len(self.socks.requests), 2)
        node.release(first)
        node.release(second)

    async def test_wrongToken(self):
        node = self.makeNode(token="0" * 128)
        await self.assertUnavailable(node,
                                     "node1: the node refused the auth token")

    async def test_unknownOnion(self):
        """
        A SOCKS server that cannot reach the onion: a clear error, the
        node is down.
        """
        node = self.makeNode(address="tor-annex::%s:4243" % (ONION,))
        await self.assertUnavailable(
            node, "node1: cannot reach %s:4243 through tor at 127.0.0.1:%d: "
            "Host unreachable" % (ONION, self.socksAddress[1]))

    async def test_targetRefuses(self):
        """
        The onion's service refuses the connection.
        """
        missing = os.path.join(os.path.realpath(shortTempDir(self)), "none")
        self.socks.routes[(ONION, 4244)] = endpoints.UNIXClientEndpoint(
            reactor, missing)
        node = self.makeNode(address="tor-annex::%s:4244" % (ONION,))
        await self.assertUnavailable(node, "Connection refused")

    async def test_noTor(self):
        """
        Nothing listens on the SOCKS port.
        """
        taken = await endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(protocol.Factory())
        free = taken.getHost().port
        await taken.stopListening()
        node = self.makeNode(torSocks=("127.0.0.1", free))
        await self.assertUnavailable(
            node, "through tor at 127.0.0.1:%d: " % (free,), "refused")

    async def test_socksSilent(self):
        """
        A SOCKS port that accepts and says nothing: given up after
        openTimeout.
        """
        mute = await endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(
                protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(mute.stopListening)
        node = self.makeNode(torSocks=("127.0.0.1", mute.getHost().port))
        node.openTimeout = 0.5
        await self.assertUnavailable(node, "no answer from %s within 0.5 s"
                                     % (self.address,))


class FrontendTests(_NodeTests, unittest.TestCase):
    """
    A node served by annexd's own P2P front-end (in this process) on a
    unix socket, reached through contrib/git-annex-p2p-annexd.
    """

    timeout = 120

    async def setUp(self):
        from annexd.p2p.frontend import P2PFrontends, P2PListener
        from annexd.p2p.tokens import TokenStore
        from annexd.router.host import GatewayHost
        self.cluster = cluster_for(self, nodes=2)
        env = self.cluster.env.env
        self.env = dict(env, PATH=CONTRIB + os.pathsep + env["PATH"])
        self.host = GatewayHost(reactor, self.cluster.gateway.path,
                                environment=env)
        self.addCleanup(self.host.close)
        self.frontends = P2PFrontends(reactor, gitEnv=env)
        self.addCleanup(self.frontends.close)
        path = os.path.join(os.path.realpath(shortTempDir(self)), "p.sock")
        self.listeners = []
        for spec in ("unix:%s" % (path,), "unix:%s.c mycluster" % (path,)):
            listener = P2PListener(reactor, [self.host], spec,
                                   self.frontends)
            listener.startService()
            self.addCleanup(listener.stopService)
            await listener.whenListening()
            self.listeners.append(listener)
        self.tokens = TokenStore(self.host.state.gitDir)
        self.repo = self.cluster.gateway
        self.address = self.listeners[0].factory.address
        self.token = self.tokens.generate(self.address)

    async def test_gateway(self):
        """
        The gateway repository as a node of another gateway.
        """
        self.assertEqual(parseAddress(self.address)[1], "annexd")
        await self.roundTrip(self.makeNode())

    async def test_cluster(self):
        """
        A cluster served by an annexd as one node: a put lands on every
        node of that cluster.
        """
        address = self.listeners[1].factory.address
        node = self.makeNode(address=address,
                             token=self.tokens.generate(address),
                             uuid=self.cluster.cluster_uuid)
        data = os.urandom(100000)
        key, outcome = await self.put(node, data)
        self.assertTrue(outcome.ok)
        for repo in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(repo, key.raw.decode()),
                             hashlib.sha256(data).hexdigest(), repo.name)
        self.assertTrue(await node.checkPresent(key))

    async def test_tokenOfAnotherAddress(self):
        """
        A token is valid on its own address only.
        """
        other = self.listeners[1].factory.address
        node = self.makeNode(token=self.tokens.generate(other))
        await self.assertUnavailable(node, "refused the auth token")
