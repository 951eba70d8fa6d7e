"""
The router in its shared mode (long-running front-ends).
"""

import os

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


class NodeKindTests(unittest.TestCase):
    """
    The connector of a node follows its remote: an annexUrl (over the
    url), a local path, a P2P address (with the gateway's auth token), ssh.
    """

    def setUp(self):
        self.cluster = cluster_for(self, nodes=3)
        self.gw = self.cluster.gateway.path
        self.git = lambda *a: self.cluster.env.git(self.gw, *a)

    def connectors(self):
        state = GatewayState.load(self.gw)
        router = Router(reactor, state, share=True,
                        environment=self.cluster.env.env)
        self.addCleanup(router.close)
        return {n.name: n.repository for n in router.resolve(
            self.cluster.cluster_uuid.encode(), state.uuid).nodes}

    def test_kinds(self):
        """
        node1 stays local; node2 with an annexUrl (credentials in it) is an
        L{HttpNode} without them in its url; node3 at a P2P address with a
        creds file is a L{P2PAddressNode} with that token.
        """
        from annexd.nodes.http import HttpNode
        from annexd.nodes.local import LocalNode
        from annexd.nodes.p2paddr import P2PAddressNode
        self.git("config", "remote.node2.annexurl",
                 "annex+http://alice:s%40cret@127.0.0.1:9/x")
        self.git("config", "remote.node3.url", "p2p-annex::testnet:n3")
        self.git("config", "annexd.torsocks", "127.0.0.1:9999")
        creds = os.path.join(self.gw, "annex", "creds")
        os.makedirs(creds, exist_ok=True)
        with open(os.path.join(creds, "testnet%3An3"), "w") as f:
            f.write("abc123")
        nodes = self.connectors()
        self.assertIsInstance(nodes["node1"], LocalNode)
        self.assertIsInstance(nodes["node2"], HttpNode)
        self.assertEqual(nodes["node2"].url, "annex+http://127.0.0.1:9/x")
        self.assertEqual(nodes["node2"]._credentials, ("alice", "s@cret"))
        self.assertIsInstance(nodes["node3"], P2PAddressNode)
        self.assertEqual(nodes["node3"]._token, b"abc123")
        self.assertEqual(nodes["node3"].torSocks, ("127.0.0.1", 9999))

    def test_noToken(self):
        """
        A node at a P2P address the gateway has no token for is
        unreachable, and says how to fix that.
        """
        self.git("config", "remote.node3.url", "p2p-annex::testnet:n3")
        node = self.connectors()["node3"]
        failure = self.failureResultOf(node.checkPresent(None))
        self.assertIn("git annex p2p --link", str(failure.value))

    def test_specialRemotes(self):
        """
        Special remotes (a remote.log entry, no url) become nodes by their
        type; an encrypted one or a type annexd does not speak is
        unreachable and says why.
        """
        from annexd.nodes.directory import DirectoryNode
        base = self.cluster.base_dir
        made = {}
        for name, extra in (("plain", ["encryption=none"]),
                            ("secret", ["encryption=shared"])):
            where = os.path.join(base, name + "-store")
            os.makedirs(where)
            self.cluster.env.annex(self.gw, "initremote", name,
                                   "type=directory", "directory=" + where,
                                   *extra)
            self.git("config", "remote.%s.annex-cluster-node" % name,
                     self.cluster.name)
            made[name] = where
        self.cluster.env.annex(self.gw, "updatecluster")
        state = GatewayState.load(self.gw)
        config = state.specialConfig(state.remote("plain"))
        self.assertEqual(config["type"], "directory")
        self.assertIsNone(state.specialConfig(state.remote("node1")))
        nodes = self.connectors()
        self.assertIsInstance(nodes["plain"], DirectoryNode)
        failure = self.failureResultOf(nodes["secret"].checkPresent(None))
        self.assertIn("encrypted special remotes", str(failure.value))
