"""
A cluster whose nodes live behind four different transports, served by
annexd to a stock git-annex client:

  - node1: a local repository (git-annex-shell run by the gateway);
  - node2: an ssh node, behind a real sshd on 127.0.0.1 whose forced
    command is git-annex-shell;
  - node3: an annex+http node, served by a real C{git-annex p2phttp};
  - node4: a P2P-address node (C{p2p-annex::testnet:...}), served by a real
    C{git annex remotedaemon}, with the token in the gateway's creds.

git-annex's own gateway can proxy only the first two.  The client reaches
annexd as its ssh remote (the fixture's fake ssh, forced command
annexd-shell); annexd reaches node2 with the real ssh.
"""

import hashlib
import os
import shlex
import sys

from twisted.trial import unittest

from annexd.nodes.p2paddr import credsFileName
from tests.support.annex import cluster_for
from tests.support.daemon import spawnServer
from tests.support.p2phttp import startP2PHttp
from tests.support.remotedaemon import startRemoteDaemon, testnetEnvironment
from tests.support.sshd import sshd_for

MiB = 1024 * 1024

NODES = ("node1", "node2", "node3", "node4")


class MixedClusterTests(unittest.TestCase):

    timeout = 300

    def setUp(self):
        self.cluster = cluster = cluster_for(self, nodes=4)
        env = cluster.env
        self.gw = cluster.gateway.path
        self.paths = {n.name: n.path for n in cluster.nodes}

        # node2: ssh through a real sshd running git-annex-shell.
        sshEnv = {"HOME": env.home, "GIT_CONFIG_NOSYSTEM": "1"}
        sshEnv.update(env.gitannex.env)
        self.sshd = sshd_for(
            self, 'git-annex-shell -c "$SSH_ORIGINAL_COMMAND"',
            os.pathsep.join([env.bindir, "/usr/bin", "/bin"]), env=sshEnv)
        env.git(self.gw, "config", "remote.node2.url",
                self.sshd.url(self.paths["node2"]))

        # node3: a real git-annex p2phttp.
        self.http = startP2PHttp(self, cluster, cluster.node(3))
        # (Its url no longer names its directory: only HTTP reaches it.)
        for name in ("url", "annexurl"):
            env.git(self.gw, "config", "remote.node3." + name,
                    self.http.annexUrl())

        # node4: a real remotedaemon at a P2P address; the gateway holds
        # the token, as `git annex p2p --link` leaves it.
        self.netEnv = testnetEnvironment(self, env.env)
        self.remoted = startRemoteDaemon(self, self.netEnv, self.paths["node4"],
                                         addr="n4")
        env.git(self.gw, "config", "remote.node4.url", self.remoted.address)
        creds = os.path.join(self.gw, "annex", "creds")
        os.makedirs(creds, exist_ok=True)
        with open(os.path.join(creds, credsFileName(self.remoted.address)),
                  "w") as f:
            f.write(self.remoted.token)

        # The client reaches annexd-shell through the fake ssh; annexd-shell
        # reaches node2 through the real ssh, node4 through the testnet
        # program.
        forced = "GIT_SSH_COMMAND=%s GIT_SSH_VARIANT=ssh exec %s -m annexd.shell" % (
            shlex.quote(self.sshd.ssh_command), shlex.quote(sys.executable))
        self.clientEnv = dict(self.netEnv, FAKESSH_FORCED_COMMAND=forced)
        self.target = cluster.remote_name(cluster.name)

    def annex(self, *args):
        return self.cluster.client_annex(*args, env=self.clientEnv)

    def holders(self, key, digest):
        """
        The nodes whose object of C{key} has the sha256 C{digest}.
        """
        return {name for name in NODES
                if self.cluster.node_sha256(name, key) == digest}

    # -- stopping and starting nodes ----------------------------------------

    def stop(self, name):
        if name == "node1":
            os.rename(self.paths["node1"], self.paths["node1"] + ".off")
        elif name == "node2":
            self.sshd.stop()
        elif name == "node3":
            self.http.stop()
        else:
            self.remoted.stop()

    def start(self, name):
        env = self.cluster.env
        if name == "node1":
            os.rename(self.paths["node1"] + ".off", self.paths["node1"])
        elif name == "node2":
            self.sshd.start()
            env.git(self.gw, "config", "remote.node2.url",
                    self.sshd.url(self.paths["node2"]))
        elif name == "node3":
            port = self.http.port
            executable, argv = env.gitannex.argv(
                "git-annex", "p2phttp", "-J2", "--bind", "127.0.0.1",
                "--port", str(port), "--wideopen")
            self.http = spawnServer(
                argv, port, self.mktemp() + ".p2phttp.log",
                cwd=self.paths["node3"], env=env.env, executable=executable,
                name="git-annex p2phttp").waitListening()
            self.addCleanup(self.http.stop)
        else:
            self.remoted.start()

    # -- the test -----------------------------------------------------------

    def test_fourKinds(self):
        """
        copy --to the cluster stores verified content on all four nodes
        (and the client's whereis names them); get --from the cluster
        works with any three of them stopped; drop --from the cluster
        removes it from all four.
        """
        data = os.urandom(3 * MiB + 17)
        key = self.cluster.add_file("mixed.bin", data)
        digest = hashlib.sha256(data).hexdigest()
        self.annex("copy", "--quiet", "--to", self.target, "mixed.bin")
        self.assertEqual(self.holders(key, digest), set(NODES))
        # Each through its own transport.
        self.assertTrue(any("p2pstdio" in c and self.paths["node2"] in c
                            for c in self.sshd.commands()))
        with open(self.netEnv["TESTNET_LOG"]) as f:
            self.assertTrue("CONNECT b'n4'" in f.read(),
                            "node4 not reached through its address")
        whereis = self.cluster.whereis(key)
        for node in self.cluster.nodes:
            self.assertIn(node.uuid, whereis)

        for alive in NODES:
            stopped = [n for n in NODES if n != alive]
            for name in stopped:
                self.stop(name)
            try:
                self.annex("drop", "--quiet", "--force", "mixed.bin")
                self.annex("get", "--quiet", "--from", self.target,
                           "mixed.bin")
                with open(os.path.join(self.cluster.client.path,
                                       "mixed.bin"), "rb") as f:
                    self.assertEqual(hashlib.sha256(f.read()).hexdigest(),
                                     digest, "served by %s alone" % (alive,))
            finally:
                for name in stopped:
                    self.start(name)

        self.annex("drop", "--quiet", "--from", self.target, "mixed.bin")
        for name in NODES:
            self.assertFalse(self.cluster.node_has(name, key), name)
