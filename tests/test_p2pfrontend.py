"""
The P2P-address front-end in process (annexd.p2p.frontend): listener
specifications, AUTH (timeouts, throttling), and git over CONNECT.
"""

import os
import subprocess

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.trial import unittest

from annexd.p2p.frontend import (
    BadListener, P2PFrontends, P2PListener, defaultAddress, fullAddress,
    parseListener, parseOnionPort, resolveTarget)
from annexd.p2p.throttle import AuthThrottle
from annexd.p2p.tokens import TokenStore
from annexd.protocol import messages as m
from annexd.protocol.framing import ConnectionClosed, P2PConnection
from annexd.protocol.server import ServerMode
from annexd.router.host import GatewayHost
from tests.support.annex import cluster_for
from tests.support.daemon import shortTempDir


class SpecTests(unittest.TestCase):

    def test_parseListener(self):
        self.assertEqual(parseListener("unix:/run/a.sock"),
                         ("unix:/run/a.sock", None, None,
                          ServerMode.READ_WRITE))
        self.assertEqual(
            parseListener("tcp:5555:interface=0.0.0.0 gw/mycluster "
                          "address=gw.example.org:5555 mode=readonly"),
            ("tcp:5555:interface=0.0.0.0", "gw/mycluster",
             "gw.example.org:5555", ServerMode.READ_ONLY))
        self.assertEqual(parseListener("unix:/x node1 mode=appendonly")[3],
                         ServerMode.APPEND_ONLY)
        for bad in ("", "http:80", "unix:/x a b", "unix:/x mode=rw",
                    "unix:/x address=a address=b", "unix:/x 'open",
                    "unix:/x address=tor-annex::x"):
            self.assertRaises(BadListener, parseListener, bad)

    def test_parseOnionPort(self):
        self.assertEqual(parseOnionPort("5555 mycluster"),
                         (5555, "mycluster", ServerMode.READ_WRITE))
        for bad in ("0", "65536", "x", "5555 address=a:1"):
            self.assertRaises(BadListener, parseOnionPort, bad)

    def test_fullAddress(self):
        self.assertEqual(fullAddress("h:1"), "p2p-annex::annexd:h:1")
        self.assertEqual(fullAddress("/s"), "p2p-annex::annexd:/s")
        self.assertEqual(fullAddress("p2p-annex::other:x"),
                         "p2p-annex::other:x")

    def test_defaultAddress(self):
        self.assertEqual(defaultAddress("unix:/a", UNIXAddress(b"/a/b")),
                         "/a/b")
        self.assertEqual(defaultAddress(
            "tcp:1", IPv4Address("TCP", "127.0.0.1", 1234)),
            "127.0.0.1:1234")
        import socket
        self.assertEqual(defaultAddress(
            "tcp:1", IPv4Address("TCP", "0.0.0.0", 1234)),
            "%s:1234" % (socket.getfqdn(),))


class _Client(P2PConnection):
    """
    A test client: the framing's pull API over a real connection.
    """


async def connect(path):
    endpoint = endpoints.UNIXClientEndpoint(reactor, path)
    client = await endpoint.connect(protocol.Factory.forProtocol(_Client))
    return client


async def readAll(client):
    """
    Messages until the connection closes.
    """
    messages = []
    while True:
        try:
            messages.append(await client.readMessage())
        except ConnectionClosed:
            return messages


class ListenerTests(unittest.TestCase):
    """
    A listener on a unix socket in this process, over a real gateway.
    """

    def setUp(self):
        self.cluster = cluster_for(self)
        self.host = GatewayHost(reactor, self.cluster.gateway.path,
                                environment=self.cluster.env.env)
        self.addCleanup(self.host.close)
        self.clock = task.Clock()
        self.frontends = P2PFrontends(
            reactor, throttle=AuthThrottle(self.clock),
            gitEnv=self.cluster.env.env)
        self.path = os.path.join(os.path.realpath(shortTempDir(self)),
                                 "p2p.sock")
        self.tokens = TokenStore(self.host.state.gitDir)

    async def listen(self, spec):
        listener = P2PListener(reactor, [self.host], spec, self.frontends)
        listener.startService()
        self.addCleanup(listener.stopService)
        self.addCleanup(self.frontends.close)
        await listener.whenListening()
        return listener

    def test_resolveTarget(self):
        hosts = [self.host]
        self.assertEqual(resolveTarget(hosts, None)[1], self.host.uuid)
        self.assertEqual(resolveTarget(hosts, "gateway")[1], self.host.uuid)
        name = self.host.name
        self.assertEqual(resolveTarget(hosts, name + "/mycluster")[1],
                         self.cluster.cluster_uuid.encode())
        node = self.cluster.nodes[1]
        self.assertEqual(resolveTarget(hosts, "node2")[1], node.uuid.encode())
        self.assertEqual(resolveTarget(hosts, node.uuid)[1],
                         node.uuid.encode())
        for bad in ("nothing", "other/gateway", "client"):
            self.assertRaises(BadListener, resolveTarget, hosts, bad)

    @defer.inlineCallbacks
    def test_authTimeout(self):
        """
        A connection that does not authenticate in time is dropped.
        """
        listener = yield defer.ensureDeferred(
            self.listen("unix:%s" % (self.path,)))
        listener.factory.authTimeout = 0.2
        client = yield defer.ensureDeferred(connect(self.path))
        yield client.whenClosed()
        self.assertTrue(client.disconnected)

    @defer.inlineCallbacks
    def test_guessingSlowedDown(self):
        """
        Rapid wrong tokens: the first few are answered at once, then
        each further guess waits for the throttle (here a clock we move),
        and a good token does not get around it.
        """
        listener = yield defer.ensureDeferred(
            self.listen("unix:%s" % (self.path,)))
        throttle = self.frontends.throttle
        answered = 0
        pending = None
        for attempt in range(100):
            client = yield defer.ensureDeferred(connect(self.path))
            client.sendMessage(m.Auth(b"c1", b"%0128x" % (attempt,)))
            reply = client.readMessage()
            if attempt > throttle.free:
                # Nothing is checked until the throttle admits it.
                yield task.deferLater(reactor, 0.05, lambda: None)
                self.assertFalse(reply.called, attempt)
                pending = reply
                break
            msg = yield reply
            self.assertEqual(msg, m.AuthFailure())
            answered += 1
            yield client.whenClosed()
        self.assertEqual(answered, throttle.free + 1)
        self.clock.advance(throttle.maxDelay)
        msg = yield pending
        self.assertEqual(msg, m.AuthFailure())
        # A good token from the same source also waits its turn.
        token = self.tokens.generate(listener.factory.address)
        client = yield defer.ensureDeferred(connect(self.path))
        client.sendMessage(m.Auth(b"c1", token.encode()))
        reply = client.readMessage()
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(reply.called)
        self.clock.advance(throttle.maxDelay)
        msg = yield reply
        self.assertEqual(msg, m.AuthSuccess(self.host.uuid))
        client.close()

    @defer.inlineCallbacks
    def test_connectSendsAllOutputFirst(self):
        """
        CONNECT git-upload-pack: every byte git writes (here a ref
        advertisement of several hundred KiB) arrives before CONNECTDONE,
        which carries git's exit code; then the connection closes.
        """
        gitDir = self.host.state.gitDir
        env = self.cluster.env.env
        head = subprocess.check_output(["git", "rev-parse", "HEAD"],
                                       cwd=gitDir, env=env).strip()
        refs = b"".join(b"create refs/tags/t%05d %s\n" % (i, head)
                        for i in range(4000))
        subprocess.run(["git", "update-ref", "--stdin"], input=refs,
                       cwd=gitDir, env=env, check=True)
        expected = subprocess.run(["git", "upload-pack", gitDir],
                                  input=b"0000", cwd=gitDir, env=env,
                                  stdout=subprocess.PIPE, check=True).stdout
        self.assertGreater(len(expected), 200000)
        listener = yield defer.ensureDeferred(
            self.listen("unix:%s" % (self.path,)))
        token = self.tokens.generate(listener.factory.address)
        client = yield defer.ensureDeferred(connect(self.path))
        client.sendMessage(m.Auth(b"c1", token.encode()))
        self.assertEqual((yield client.readMessage()),
                         m.AuthSuccess(self.host.uuid))
        client.sendMessage(m.Connect(b"git-upload-pack"))
        client.sendData(4).write(b"0000")
        received = bytearray()

        class Collect:
            def registerProducer(self, producer, streaming):
                pass

            def unregisterProducer(self):
                pass

            def write(self, data):
                received.extend(data)
        while True:
            msg = yield client.readMessage()
            if isinstance(msg, m.Data):
                yield client.readData(msg.length, Collect())
                continue
            break
        self.assertEqual(msg, m.ConnectDone(0))
        self.assertEqual(bytes(received), expected)
        yield client.whenClosed()

    @defer.inlineCallbacks
    def test_receivePackReadOnly(self):
        """
        A read-only listener refuses CONNECT git-receive-pack with
        git-annex's read-only error.
        """
        listener = yield defer.ensureDeferred(
            self.listen("unix:%s mode=readonly" % (self.path,)))
        token = self.tokens.generate(listener.factory.address)
        client = yield defer.ensureDeferred(connect(self.path))
        client.sendMessage(m.Auth(b"c1", token.encode()))
        yield client.readMessage()
        client.sendMessage(m.Connect(b"git-receive-pack"))
        messages = yield defer.ensureDeferred(readAll(client))
        self.assertEqual(len(messages), 1)
        self.assertIsInstance(messages[0], m.Error)
        self.assertIn(b"read-only", messages[0].text)

    def test_cannotListen(self):
        """
        A listener that cannot listen at start-up says why (and so stops
        the daemon, like the HTTP listeners).
        """
        import socket

        from twisted.internet.error import CannotListenError
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        listener = P2PListener(
            reactor, [self.host],
            "tcp:%d:interface=127.0.0.1" % (taken.getsockname()[1],),
            self.frontends)
        self.assertRaises(CannotListenError, listener.startService)

    @defer.inlineCallbacks
    def test_staleSocket(self):
        """
        A unix socket left behind by a killed daemon (with its lock naming
        a process that is gone) is taken over.
        """
        import socket
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        gone = subprocess.Popen(["true"])
        gone.wait()
        os.symlink(str(gone.pid), self.path + ".lock")
        listener = yield defer.ensureDeferred(
            self.listen("unix:%s" % (self.path,)))
        token = self.tokens.generate(listener.factory.address)
        client = yield defer.ensureDeferred(connect(self.path))
        client.sendMessage(m.Auth(b"c1", token.encode()))
        self.assertEqual((yield client.readMessage()),
                         m.AuthSuccess(self.host.uuid))
        client.close()
