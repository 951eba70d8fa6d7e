"""
Special remotes as nodes of a cluster served by annexd, end to end: a
stock git-annex client copies to the cluster, gets from it and drops from
it through annexd (its ssh remote, forced command annexd-shell), and
git-annex itself, run in the gateway, checks with C{git annex fsck --from
NODE} every object annexd stored on each special remote.

Nodes: node1 (a git repository) and special remotes of the gateway,
configured as C{git annex initremote} leaves them and made cluster nodes
(C{annex-cluster-node}, C{updatecluster}).
"""

import hashlib
import os
import shlex
import sys

from twisted.trial import unittest

from tests.support.annex import cluster_for

MiB = 1024 * 1024


class SpecialClusterMixin:

    timeout = 300

    def setUp(self):
        self.cluster = cluster = cluster_for(self, nodes=1)
        self.env = dict(cluster.env.env)
        self.gw = cluster.gateway.path
        self.specials = []
        self.addSpecialRemotes()
        for name in self.specials:
            cluster.env.git(self.gw, "config",
                            "remote.%s.annex-cluster-node" % (name,),
                            cluster.name)
        self.gwAnnex("updatecluster")
        # The client learns the new nodes through the gateway's branch.
        self.clientEnv = dict(self.env, FAKESSH_FORCED_COMMAND="exec %s -m annexd.shell" % (
            shlex.quote(sys.executable),))
        self.annex("sync", "--quiet", "--no-content", "--no-push")
        self.target = cluster.remote_name(cluster.name)
        for name in self.specials:
            self.verify(cluster.remote_name(name))

    def verify(self, remote):
        """
        Confirm a proxied special remote once, as a user must before
        git-annex 10.2026 writes to it: C{git annex verifyremote REMOTE}
        shows its configuration and the C{--safe ID} to run.
        """
        out = self.annex("verifyremote", remote)
        safe = [line.split("--safe", 1)[1].split()[0]
                for line in out.splitlines() if "--safe" in line]
        self.assertEqual(len(safe), 1, out)
        self.annex("verifyremote", remote, "--safe", safe[0])

    def addSpecialRemotes(self):
        raise NotImplementedError()

    def gwAnnex(self, *args, env=None, **kw):
        return self.cluster.env.annex(self.gw, *args, env=env or self.env,
                                      **kw)

    def annex(self, *args):
        return self.cluster.client_annex(*args, env=self.clientEnv)

    def uuidOf(self, name):
        return self.cluster.env.git(self.gw, "config",
                                    "remote.%s.annex-uuid" % (name,)).strip()

    def fsckFrom(self, name, key):
        """
        git-annex, in the gateway, checks the object on special remote
        C{name}: it must be there, and intact.
        """
        out = self.gwAnnex("fsck", "--from", name, "--key", key, "--json")
        self.assertIn('"success":true', out.replace(" ", ""), out)

    def test_copyGetDrop(self):
        """
        copy --to the cluster stores the file on node1 and on every special
        remote; git-annex's fsck --from each special remote passes; the
        client's whereis names them all; get --from the cluster with
        node1's copy gone comes from a special remote; drop --from the
        cluster removes it everywhere.
        """
        data = os.urandom(3 * MiB + 5)
        digest = hashlib.sha256(data).hexdigest()
        key = self.cluster.add_file("big.bin", data)
        self.annex("copy", "--quiet", "--to", self.target, "big.bin")
        self.assertEqual(self.cluster.node_sha256("node1", key), digest)
        for name in self.specials:
            self.fsckFrom(name, key)
        whereis = self.cluster.whereis(key)
        for name in self.specials:
            self.assertIn(self.uuidOf(name), whereis)

        # node1 loses its copy behind the gateway's back.
        self.cluster.env.annex(self.cluster.node(1).path, "drop", "--force",
                               "--key", key)
        self.annex("drop", "--quiet", "--force", "big.bin")
        self.annex("get", "--quiet", "--from", self.target, "big.bin")
        with open(os.path.join(self.cluster.client.path, "big.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)

        self.annex("drop", "--quiet", "--from", self.target, "big.bin")
        for name in self.specials:
            out = self.gwAnnex("fsck", "--from", name, "--key", key, "--json",
                               check=False)
            self.assertNotIn('"success":true', out.replace(" ", ""), name)


class DirectoryClusterTests(SpecialClusterMixin, unittest.TestCase):
    """
    A cluster of a git node and two directory special remotes (one
    chunked).
    """

    def addSpecialRemotes(self):
        for name, extra in (("dir", []), ("dirchunked", ["chunk=1MiB"])):
            where = os.path.join(self.cluster.base_dir, name + "-store")
            os.makedirs(where)
            self.gwAnnex("initremote", name, "type=directory",
                         "directory=" + where, "encryption=none", *extra)
            self.specials.append(name)


TESTDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "support", "git-annex-remote-testdir")


class ExternalClusterTests(SpecialClusterMixin, unittest.TestCase):
    """
    A cluster of a git node, a directory special remote and two external
    special remotes (the annexremote test remote): an upload is spooled
    once for both external remotes.
    """

    def addSpecialRemotes(self):
        bindir = os.path.abspath(self.mktemp())
        os.makedirs(bindir)
        program = os.path.join(bindir, "git-annex-remote-testdir")
        with open(program, "w") as f:
            f.write("#!/bin/sh\nexec %s %s \"$@\"\n" % (
                shlex.quote(sys.executable), shlex.quote(TESTDIR)))
        os.chmod(program, 0o755)
        self.env["PATH"] = bindir + os.pathsep + self.env["PATH"]
        where = os.path.join(self.cluster.base_dir, "dir-store")
        os.makedirs(where)
        self.gwAnnex("initremote", "dir", "type=directory",
                     "directory=" + where, "encryption=none")
        self.specials.append("dir")
        for name in ("ext1", "ext2"):
            store = os.path.join(self.cluster.base_dir, name + "-store")
            os.makedirs(store)
            self.gwAnnex("initremote", name, "type=external",
                         "externaltype=testdir", "encryption=none",
                         "directory=" + store)
            self.specials.append(name)

    def test_oneSpool(self):
        """
        While a 24 MiB upload to the cluster runs, the gateway's spool
        directory never holds more than one file, of at most the
        content's size; none is left afterwards; both external remotes
        have the content (git-annex's fsck says so).
        """
        from twisted.internet import reactor, threads
        spoolDir = os.path.join(self.gw, "annex", "tmp")
        seen = []
        done = []

        def sample():
            if done:
                return
            try:
                names = [n for n in os.listdir(spoolDir)
                         if n.startswith("annexd-spool-")]
                sizes = [os.path.getsize(os.path.join(spoolDir, n))
                         for n in names]
            except OSError:
                names, sizes = [], []
            seen.append((len(names), max(sizes, default=0)))
            reactor.callLater(0.01, sample)

        size = 24 * MiB
        key = self.cluster.add_file("spooled.bin", os.urandom(size))
        sample()

        def copy():
            try:
                self.annex("copy", "--quiet", "--to", self.target,
                           "spooled.bin")
            finally:
                done.append(True)
        d = threads.deferToThread(copy)

        def check(_):
            self.assertTrue(any(count == 1 for count, _ in seen),
                            "the spool was never seen")
            self.assertLessEqual(max(count for count, _ in seen), 1)
            self.assertLessEqual(max(biggest for _, biggest in seen), size)
            self.assertEqual([n for n in os.listdir(spoolDir)
                              if n.startswith("annexd-spool-")], [])
            for name in ("ext1", "ext2"):
                self.fsckFrom(name, key)
        return d.addCallback(check)


class S3ClusterTests(SpecialClusterMixin, unittest.TestCase):
    """
    A cluster of a git node and an S3 special remote on a local
    S3-compatible server (moto, with request accounting).
    """

    def addSpecialRemotes(self):
        from tests.test_s3node import s3server
        self.server = s3server()
        self.cluster.env.git(self.gw, "config",
                             "annex.security.allowed-ip-addresses", "127.0.0.1")
        import uuid
        self.bucket = "annexd-cluster-" + uuid.uuid4().hex[:12]
        self.gwAnnex("initremote", "s3", "type=S3", "encryption=none",
                     "host=127.0.0.1", "port=%d" % (self.server.port,),
                     "protocol=http", "requeststyle=path",
                     "bucket=" + self.bucket,
                     "signature=v4", "region=us-east-1", env=dict(
                         self.env, AWS_ACCESS_KEY_ID=self.server.accessKey,
                         AWS_SECRET_ACCESS_KEY=self.server.secretKey))
        self.specials.append("s3")

    def test_resumedGet(self):
        """
        A client's GET from the cluster, served by the S3 node (the git
        node lost its copy) through annexd, killed once half
        the content has arrived, resumes from there: the second request to
        S3 asks for the rest only (a Range from the client's offset) and
        S3 sends exactly that.
        """
        import signal
        import subprocess
        import time
        size = 16 * MiB
        data = os.urandom(size)
        key = self.cluster.add_file("resume.bin", data)
        self.annex("copy", "--quiet", "--to", self.target, "resume.bin")
        # Only S3 has it now (the gateway's log still names node1 too).
        self.cluster.env.annex(self.cluster.node(1).path, "drop", "--force",
                               "--key", key)
        self.annex("drop", "--quiet", "--force", "resume.bin")
        self.server.clearLog()
        # annexd-shell's output to the client is slowed down to 4 MiB/s,
        # so that the client can be stopped half way.
        from tests.support import throttle
        slow = dict(self.clientEnv, FAKESSH_FORCED_COMMAND=(
            "exec %s %s %d -- %s -m annexd.shell" % (
                shlex.quote(sys.executable), shlex.quote(throttle.__file__),
                4 * MiB, shlex.quote(sys.executable))))
        partial = os.path.join(self.cluster.client.path, ".git", "annex",
                               "tmp", key)
        client = subprocess.Popen(
            ["git-annex", "get", "--from", self.target, "resume.bin"], cwd=self.cluster.client.path, env=slow,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        try:
            while not (os.path.exists(partial)
                       and os.path.getsize(partial) >= size // 2):
                self.assertIsNone(client.poll(), "the client ended early")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
        finally:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        kept = os.path.getsize(partial)
        self.assertLess(kept, size)
        self.annex("get", "--quiet", "--from", self.target, "resume.bin")
        with open(os.path.join(self.cluster.client.path, "resume.bin"),
                  "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(),
                             hashlib.sha256(data).digest())
        gets = [e for e in self.server.log()
                if e["method"] == "GET" and key in e["uri"] and e["done"]]
        self.assertEqual(len(gets), 2, gets)
        resumed = gets[-1]
        self.assertIsNotNone(resumed["range"])
        start = int(resumed["range"].split("=")[1].split("-")[0])
        self.assertGreaterEqual(start, size // 2)
        self.assertEqual(resumed["sent"], size - start)
