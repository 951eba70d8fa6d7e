"""
Opt-in (ANNEXD_TEST_TORNET=1): a real git-annex client reaches a cluster
behind annexd through a tor onion address, over a private tor network on
127.0.0.1 (tests/support/tornet.py; shared/spec/transports.md section C).

Takes 30 s to 2 minutes, most of it the network's bootstrap; needs
127.0.0.1:9050 free (git-annex's tor client always uses that SOCKS port).
"""

import hashlib
import io
import os
import re
import time

from twisted.trial import unittest

from annexd.p2p.command import p2p
from tests.support.annex import AnnexCommandError, cluster_for
from tests.support.daemon import startDaemon
from tests.support.daemon import shortTempDir

ENABLED = os.environ.get("ANNEXD_TEST_TORNET") == "1"


class TorNetworkClusterTests(unittest.TestCase):

    if not ENABLED:
        skip = "opt-in: set ANNEXD_TEST_TORNET=1 (a private tor network)"

    timeout = 600

    def test_clusterThroughOnion(self):
        from tests.support.tornet import TorNetwork
        started = time.monotonic()
        network = TorNetwork(shortTempDir(self))
        self.addCleanup(network.stop)
        network.start(timeout=300)
        bootstrapped = time.monotonic() - started
        cluster = cluster_for(self)
        daemon = startDaemon(self, cluster.env.env, [
            "--repo", cluster.gateway.path, "--onion", "5556 mycluster",
            "--tor-control", "unix:" + network.hsControl])
        deadline = time.monotonic() + 60
        while not re.search(r"tor address tor-annex::\S+ serves mycluster",
                            daemon.output()):
            if time.monotonic() > deadline:
                raise AssertionError(daemon.output()[-3000:])
            time.sleep(0.2)
        out = io.StringIO()
        self.assertEqual(p2p([cluster.gateway.path, "--gen-addresses"],
                             stdout=out, stderr=io.StringIO()), 0)
        [line] = out.getvalue().split()
        self.assertTrue(line.startswith("tor-annex::"), line)
        # The descriptor reaches the network's directories a moment after
        # the onion is made: retry the link, bounded.
        deadline = time.monotonic() + 180
        while True:
            try:
                cluster.client_annex("p2p", "--link", "--name", "tor",
                                     input=line + "\n", timeout=60)
                break
            except AnnexCommandError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        linked = time.monotonic() - started
        self.assertEqual(cluster.client_git("config",
                                            "remote.tor.annex-uuid").strip(),
                         cluster.cluster_uuid)
        # git through the onion too (CONNECT git-upload-pack).
        cluster.client_git("fetch", "tor", timeout=120)
        self.assertEqual(
            cluster.client_git("rev-parse", "tor/main").strip(),
            cluster.env.git(cluster.gateway.path, "rev-parse",
                            "main").strip())
        data = os.urandom(500000)
        key = cluster.add_file("tor.bin", data)
        cluster.client_annex("copy", "--to", "tor", "tor.bin")
        digest = hashlib.sha256(data).hexdigest()
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, key), digest,
                             node.name)
        cluster.client_annex("drop", "--force", "tor.bin")
        cluster.client_annex("get", "--from", "tor", "tor.bin")
        with open(os.path.join(cluster.client.path, "tor.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        cluster.client_annex("drop", "--from", "tor", "tor.bin")
        for node in cluster.nodes:
            self.assertFalse(cluster.node_has(node, key), node.name)
        self.report = ("bootstrap %.1f s, linked after %.1f s, whole test "
                       "%.1f s" % (bootstrapped, linked,
                                   time.monotonic() - started))
        print("\n" + self.report)
