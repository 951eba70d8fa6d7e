"""
The state watcher notices changes real git-annex makes to the gateway.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from annexd.annex.watch import StateWatcher
from tests.support.annex import cluster_for


class WatcherTests(unittest.TestCase):
    """
    L{StateWatcher} on a real gateway repository.
    """

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)
        self.clock = Clock()
        self.changes = []
        self.watcher = StateWatcher(self.clock, self.cluster.gateway.path,
                                    lambda: self.changes.append(1))
        self.watcher.start()
        self.addCleanup(self.watcher.stop)

    def test_quietWhenNothingChanges(self):
        """
        No change, no call.
        """
        self.clock.advance(5)
        self.assertEqual(self.changes, [])

    def test_branchChange(self):
        """
        A committed change to the git-annex branch (git annex wanted) is
        noticed at the next check, once.
        """
        self.cluster.env.annex(self.cluster.gateway.path, "wanted", "node1",
                               "anything")
        self.clock.advance(1)
        self.assertEqual(self.changes, [1])
        self.clock.advance(3)
        self.assertEqual(self.changes, [1])

    def test_journalChange(self):
        """
        A change that stays in the journal (setpresentkey does not commit)
        is noticed too.
        """
        key = "SHA256E-s1--" + "a" * 64
        self.cluster.env.annex(self.cluster.gateway.path, "setpresentkey", key,
                               self.cluster.nodes[0].uuid, "1")
        self.clock.advance(1)
        self.assertEqual(self.changes, [1])

    def test_configChange(self):
        """
        A git config change (a new remote, a cost) is noticed.
        """
        self.cluster.env.git(self.cluster.gateway.path, "config",
                             "remote.node1.annex-cost", "50")
        self.clock.advance(1)
        self.assertEqual(self.changes, [1])


class RouterReloadTests(unittest.TestCase):
    """
    A router reloads its state when the watcher says it changed.
    """

    def test_newExpressionSeen(self):
        """
        After 'git annex wanted node2 nothing' in the gateway, a router
        wired to a watcher stops sending node2 uploads, without a restart.
        """
        from twisted.internet import reactor

        from annexd.annex.state import GatewayState
        from annexd.protocol.keys import Key
        from annexd.router.router import Router

        cluster = cluster_for(self, nodes=2)
        router = Router(reactor, GatewayState.load(cluster.gateway.path))
        clock = Clock()
        watcher = StateWatcher(clock, router.state.gitDir, router.reloadState)
        watcher.start()
        self.addCleanup(watcher.stop)
        target = router.resolve(cluster.cluster_uuid.encode(), b"client")
        self.addCleanup(target.close)
        key = Key.parse(b"SHA256E-s1--" + b"b" * 64 + b".txt")
        self.assertEqual(len(target.targets(key, b"x.txt")), 2)
        cluster.env.annex(cluster.gateway.path, "wanted", "node2", "nothing")
        clock.advance(1)
        fresh = router.resolve(cluster.cluster_uuid.encode(), b"client")
        self.addCleanup(fresh.close)
        self.assertEqual([n.name for n in fresh.targets(key, b"x.txt")],
                         ["node1"])
