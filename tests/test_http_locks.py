"""
Content locks held for HTTP clients, on real nodes: a lock whose client
vanished is released after its lease (on a fake clock), and a removal that
needed it gone then succeeds.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from annexd.http.site import makeSite
from annexd.router.host import GatewayHost
from annexd.router.locks import LEASE, LockTable

from tests.support.annex import cluster_for


class _Raw(Protocol):
    """
    A client that writes what it is told and keeps what comes back.
    """

    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class VanishedClientTests(unittest.TestCase):
    """
    A client locks content on a node, starts keeplocked, and vanishes.
    """

    timeout = 120

    def setUp(self):
        self.cluster = cluster_for(self)
        self.key = self.cluster.add_file("locked.bin", b"keep me\n" * 100)
        self.cluster.client_annex("copy", "--quiet", "--to", "gw-node1",
                                  "locked.bin")
        self.assertTrue(self.cluster.node_has(1, self.key))
        self.clock = Clock()
        self.host = GatewayHost(reactor, self.cluster.gateway.path,
                                environment=self.cluster.env.env)
        self.host.locks = LockTable(self.clock)
        self.port = reactor.listenTCP(0, makeSite(reactor, [self.host]),
                                      interface="127.0.0.1")
        self.addCleanup(self.host.close)
        self.addCleanup(self.port.stopListening)
        self.agent = Agent(reactor)
        self.node = self.cluster.node(1).uuid.encode()

    def url(self, endpoint, **query):
        from urllib.parse import urlencode
        query.setdefault("clientuuid", self.cluster.client.uuid)
        return b"http://127.0.0.1:%d/git-annex/%s/v4/%s?%s" % (
            self.port.getHost().port, self.node, endpoint,
            urlencode(query).encode())

    async def post(self, endpoint, **query):
        response = await self.agent.request(b"POST",
                                            self.url(endpoint, **query))
        body = await readBody(response)
        self.assertEqual(response.code, 200, body)
        return json.loads(body)

    async def test_leaseEnds(self):
        """
        The lock outlives its vanished client until the lease ends; a
        removal is refused meanwhile and succeeds after.
        """
        locked = await self.post(b"lockcontent", key=self.key)
        self.assertTrue(locked["locked"])
        # keeplocked on a connection of its own, then the client vanishes
        # without unlocking.
        raw = _Raw()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1",
                                      self.port.getHost().port)
        await connectProtocol(endpoint, raw)
        line = json.dumps({"unlock": False}).encode()
        raw.transport.write(
            b"POST " + self.url(b"keeplocked", lockid=locked["lockid"])
            .split(b"127.0.0.1:%d" % self.port.getHost().port, 1)[1]
            + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked"
            b"\r\nContent-Type: application/json\r\n\r\n"
            + b"%x\r\n%s\r\n1\r\n\n\r\n" % (len(line), line))
        # The server has read the keepalive once a request on another
        # connection is answered after it was sent... the lock must hold.
        self.assertEqual(await self.post(b"remove", key=self.key),
                         {"removed": False, "plusuuids": []})
        raw.transport.abortConnection()
        await raw.lost
        self.assertEqual(await self.post(b"remove", key=self.key),
                         {"removed": False, "plusuuids": []})
        self.assertTrue(self.cluster.node_has(1, self.key))
        # The lock is real on the node: a drop elsewhere (the client over
        # ssh, through git-annex's own gateway) cannot remove the content.
        refused = await self.dropOverSSH()
        self.assertNotEqual(refused.returncode, 0)
        self.assertTrue(self.cluster.node_has(1, self.key))
        self.clock.advance(LEASE + 1)
        # The release reaches the node's session; the drop elsewhere now
        # succeeds (polled, with a bound: the node handles the release
        # asynchronously).
        for attempt in range(50):
            dropped = await self.dropOverSSH()
            if dropped.returncode == 0:
                break
            await deferLater(reactor, 0.1)
        self.assertEqual(dropped.returncode, 0, dropped)
        self.assertFalse(self.cluster.node_has(1, self.key))

    async def dropOverSSH(self):
        """
        C{git annex drop --from gw-node1} in the client, over its ssh
        remote, run without blocking the reactor.
        """
        env = self.cluster.env
        out, err, code = await getProcessOutputAndValue(
            "git-annex", ["drop", "--force", "--from", "gw-node1",
                          "locked.bin"],
            env=env.env, path=self.cluster.client.path)

        class Result:
            returncode = code
            def __repr__(self):
                return repr((code, out, err))
        return Result()

    async def test_unlock(self):
        """
        A lock released by its client no longer holds a removal back.
        """
        locked = await self.post(b"lockcontent", key=self.key)
        self.assertTrue(locked["locked"])
        self.assertEqual(await self.post(b"remove", key=self.key),
                         {"removed": False, "plusuuids": []})
        from twisted.web.client import FileBodyProducer
        from io import BytesIO
        response = await self.agent.request(
            b"POST", self.url(b"keeplocked", lockid=locked["lockid"]),
            None, FileBodyProducer(BytesIO(b'{"unlock":true}\n')))
        self.assertEqual(json.loads(await readBody(response)),
                         {"locked": False})
        self.assertEqual(await self.post(b"remove", key=self.key),
                         {"removed": True, "plusuuids": []})
        self.assertFalse(self.cluster.node_has(1, self.key))
