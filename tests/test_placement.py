"""
Placement: a cluster whose nodes are balanced=clusternodes:2 fills the same
way through annexd as through git-annex's own gateway.
"""

import os
import sys

from twisted.trial import unittest

from tests.support.annex import cluster_for

FORCED = {"FAKESSH_FORCED_COMMAND": "%s -m annexd.shell" % (sys.executable,)}
FILES = 300


class BalancedPlacementTests(unittest.TestCase):
    """
    Twin 4-node clusters, balanced=clusternodes:2, 300 files each.
    """

    timeout = 900

    def fill(self, env):
        """
        Copy the same 300 files to the cluster through one gateway; return
        the cluster and {key: set of node names holding it}.
        """
        cluster = cluster_for(self, nodes=4, wanted="balanced=clusternodes:2")
        client = cluster.client.path
        os.makedirs(os.path.join(client, "d"))
        for i in range(FILES):
            size = 1 + (i * 7919) % 5000
            with open(os.path.join(client, "d", "f%03d.bin" % i), "wb") as f:
                f.write((b"%d-" % i) * (size // 4 + 1))
        cluster.client_annex("add", "d")
        cluster.client_git("commit", "-q", "-m", "files")
        cluster.client_annex("copy", "--to", "gw-mycluster", "d", env=env)
        keys = cluster.client_annex(
            "find", "--include=*", "--format=${key}\\n", "d").split()
        self.assertEqual(len(keys), FILES)
        placement = {key: {n.name for n in cluster.nodes
                           if cluster.node_has(n, key)} for key in keys}
        return cluster, placement

    def test_sameNodesAsGitAnnex(self):
        """
        Every file lands on exactly the nodes git-annex's gateway puts it
        on; each on two nodes; then the client's whereis after sync matches
        the nodes' real content, and fsck of every node through the gateway
        finds nothing wrong.
        """
        _, theirs = self.fill({})
        cluster, ours = self.fill(FORCED)
        differences = {k: (theirs[k], ours[k]) for k in theirs
                       if theirs[k] != ours[k]}
        self.assertEqual(differences, {})
        self.assertTrue(all(len(nodes) == 2 for nodes in ours.values()))
        # Both nodes of each pair are used: the picker spreads the files.
        used = {node for nodes in ours.values() for node in nodes}
        self.assertEqual(used, {n.name for n in cluster.nodes})

        cluster.client_annex("sync", "--no-content", "gw", env=FORCED)
        byUUID = {n.uuid: n for n in cluster.nodes}
        for key, holders in ours.items():
            where = cluster.whereis(key) & set(byUUID)
            self.assertEqual({byUUID[u].name for u in where}, holders, key)
        for node in cluster.nodes:
            result = cluster.env.run(
                ["git", "annex", "fsck", "--fast", "--from", "gw-" + node.name,
                 "d"], cwd=cluster.client.path, env=FORCED, check=False)
            self.assertEqual(result.returncode, 0,
                             (result.stdout + result.stderr).decode()[-2000:])
