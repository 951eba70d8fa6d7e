"""
The cluster's wants policy, from the gateway's preferred content logs, with
real git-annex writing the logs.
"""

import os
import sys

from twisted.trial import unittest

from annexd.annex.state import GatewayState
from annexd.protocol.keys import Key
from annexd.router.cluster import ClusterNode
from annexd.router.policy import PreferredContentPolicy
from tests.support.annex import cluster_for

KEY = Key.parse(b"SHA256E-s5--" + b"a" * 64 + b".txt")

FORCED = {"FAKESSH_FORCED_COMMAND": "%s -m annexd.shell" % (sys.executable,)}


class PolicyTests(unittest.TestCase):
    """
    L{PreferredContentPolicy} and its effect on cluster uploads.
    """

    timeout = 120

    def setUp(self):
        self.cluster = cluster_for(self, nodes=3)
        self.env = self.cluster.env
        self.gw = self.cluster.gateway.path

    def policy(self):
        return PreferredContentPolicy(GatewayState.load(self.gw))

    def node(self, i):
        repo = self.cluster.nodes[i]
        return ClusterNode(repo.uuid.encode(), repo.name, 100, None)

    def test_noExpressionWants(self):
        """
        Nodes without preferred content want everything.
        """
        policy = self.policy()
        self.assertTrue(all(policy.wants(self.node(i), KEY, b"a.txt")
                            for i in range(3)))

    def test_anythingAndNothing(self):
        """
        'anything' wants, 'nothing' does not, and groupwanted follows the
        group's expression.
        """
        self.env.annex(self.gw, "wanted", "node1", "anything")
        self.env.annex(self.gw, "wanted", "node2", "nothing")
        self.env.annex(self.gw, "group", "node3", "archive")
        self.env.annex(self.gw, "groupwanted", "archive", "nothing")
        self.env.annex(self.gw, "wanted", "node3", "groupwanted")
        policy = self.policy()
        self.assertEqual([policy.wants(self.node(i), KEY, b"a") for i in range(3)],
                         [True, False, False])

    def test_expressionOnFile(self):
        """
        A real expression is evaluated with the client's associated file.
        """
        self.env.annex(self.gw, "wanted", "node1", "include=*.iso")
        policy = self.policy()
        self.assertTrue(policy.wants(self.node(0), KEY, b"disk.iso"))
        self.assertFalse(policy.wants(self.node(0), KEY, b"notes.txt"))
        self.assertTrue(policy.wants(self.node(1), KEY, b"notes.txt"))

    def test_uploadSkipsNodeWantingNothing(self):
        """
        A copy to the cluster through annexd-shell leaves out the node that
        wants nothing, as git-annex's gateway does.
        """
        self.env.annex(self.gw, "wanted", "node2", "nothing")
        key = self.cluster.add_file("x.bin", os.urandom(5000))
        self.cluster.client_annex("copy", "--to", "gw-mycluster", "x.bin",
                                  env=FORCED)
        holders = [self.cluster.node_has(n, key) for n in self.cluster.nodes]
        self.assertEqual(holders, [True, False, True])
