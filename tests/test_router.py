"""
The router in its shared mode (long-running front-ends).
"""

from twisted.internet import reactor
from twisted.trial import unittest

from annexd.annex.state import GatewayState
from annexd.router.router import Router

from tests.support.annex import cluster_for


class SharedRouterTests(unittest.TestCase):
    """
    A shared router hands out the same connectors to every caller.
    """

    def setUp(self):
        self.cluster = cluster_for(self)
        state = GatewayState.load(self.cluster.gateway.path)
        self.router = Router(reactor, state, share=True,
                             environment=self.cluster.env.env)
        self.addCleanup(self.router.close)

    def test_sameConnectors(self):
        """
        A node resolved twice is one connector (one session pool); the
        cluster uses that same connector for the node; the gateway itself is
        one pool whatever the client.
        """
        node = self.cluster.node(1).uuid.encode()
        clusterUUID = self.cluster.cluster_uuid.encode()
        first = self.router.resolve(node, b"client-a")
        self.assertIs(self.router.resolve(node, b"client-b"), first)
        cluster = self.router.resolve(clusterUUID, b"client-a")
        self.assertIs(self.router.resolve(clusterUUID, b"client-b"), cluster)
        self.assertIn(first, [n.repository for n in cluster.nodes])
        self.assertIs(self.router.resolve(None, b"client-a"),
                      self.router.resolve(None, b"client-b"))

    def test_bypassGetsItsOwnCluster(self):
        """
        A BYPASS list gets a cluster of its own; the plain one is not
        changed by it.
        """
        clusterUUID = self.cluster.cluster_uuid.encode()
        plain = self.router.resolve(clusterUUID, b"c")
        bypassing = self.router.resolve(clusterUUID, b"c", (b"other-gw",))
        self.assertIsNot(plain, bypassing)
        self.assertIs(self.router.resolve(clusterUUID, b"c", (b"other-gw",)),
                      bypassing)

    def test_reloadRebuildsClusters(self):
        """
        After reloadState, a cluster is rebuilt from the new state; node
        connectors are kept.
        """
        node = self.cluster.node(1).uuid.encode()
        clusterUUID = self.cluster.cluster_uuid.encode()
        before = self.router.resolve(clusterUUID, b"c")
        connector = self.router.resolve(node, b"c")
        self.router.reloadState()
        after = self.router.resolve(clusterUUID, b"c")
        self.assertIsNot(before, after)
        self.assertIs(self.router.resolve(node, b"c"), connector)
        self.assertIn(connector, [n.repository for n in after.nodes])
