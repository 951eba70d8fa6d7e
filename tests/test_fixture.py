"""
Tests for L{tests.support.annex}: the fixture builds a real, working
git-annex cluster, and copies of its template are independent.
"""

import hashlib
import os
import subprocess

from twisted.trial import unittest

from tests.support import annex


class EnvironmentTests(unittest.TestCase):
    """
    Tests for L{annex.AnnexEnvironment}.
    """

    def setUp(self):
        self.env = annex.AnnexEnvironment(self.mktemp())

    def test_isolated(self):
        """
        Commands run with their own C{HOME} (whose global git config makes
        C{main} the default branch), no system config, a fixed identity, the
        fake ssh, and the git-annex roles first on C{PATH}.
        """
        env = self.env.env
        self.assertEqual(env["HOME"], os.path.join(self.env.base_dir, "home"))
        self.assertEqual(env["GIT_CONFIG_NOSYSTEM"], "1")
        self.assertEqual(env["GIT_SSH_COMMAND"], self.env.fakessh)
        self.assertEqual(env["GIT_ANNEX_USE_GIT_SSH"], "1")
        for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL",
                     "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
            self.assertTrue(env[name])
        self.assertEqual(env["PATH"].split(os.pathsep)[0], self.env.bindir)
        for name, value in self.env.gitannex.env.items():
            self.assertEqual(env[name], value)
        self.assertEqual(
            self.env.git(self.env.base_dir, "config", "--global",
                         "init.defaultBranch").strip(), "main")
        found = self.env.run(["sh", "-c", "command -v git-annex-shell"],
                             cwd=self.env.base_dir).stdout.decode().strip()
        self.assertEqual(found,
                         os.path.join(self.env.bindir, "git-annex-shell"))

    def test_runFailure(self):
        """
        A failing command raises L{annex.AnnexCommandError} whose message
        has the command, its exit code, stdout and stderr.
        """
        exc = self.assertRaises(
            annex.AnnexCommandError, self.env.run,
            ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3",
             "argzero"],
            cwd=self.env.base_dir)
        self.assertIsInstance(exc, subprocess.CalledProcessError)
        self.assertEqual(exc.returncode, 3)
        message = str(exc)
        self.assertIn("echo to-stdout", message)
        self.assertIn("code 3", message)
        self.assertIn("to-stdout", message)
        self.assertIn("to-stderr", message)

    def test_runNoCheck(self):
        """
        With C{check=False} a failure is returned, not raised; C{input} is
        given to the command's stdin.
        """
        result = self.env.run(["sh", "-c", "cat; exit 4"],
                              cwd=self.env.base_dir, input="in", check=False)
        self.assertEqual((result.returncode, result.stdout), (4, b"in"))

    def test_timeout(self):
        """
        A command running longer than C{timeout} is killed, with its
        children, and raises L{annex.AnnexCommandError}.
        """
        exc = self.assertRaises(
            annex.AnnexCommandError, self.env.run,
            ["sh", "-c", "sleep 30 & sleep 30; wait"],
            cwd=self.env.base_dir, timeout=0.5)
        self.assertIn("timed out", str(exc))

    def fakessh(self, *args, **kw):
        return self.env.run([self.env.fakessh, *args], cwd=self.env.base_dir,
                            check=False, **kw)

    def test_fakesshRunsRemoteCommand(self):
        """
        The fake ssh skips options, ignores the host and runs the remote
        command with C{sh -c} and C{SSH_ORIGINAL_COMMAND} set; C{-n} gives
        it no stdin.
        """
        result = self.fakessh(
            "-o", "BatchMode=yes", "-T", "-p22", "-n", "somehost", "-p", "22",
            'echo "[$SSH_ORIGINAL_COMMAND]"; cat', input=b"stdin data")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(
            result.stdout, b'[echo "[$SSH_ORIGINAL_COMMAND]"; cat]\n')
        result = self.fakessh("host", "cat", input=b"stdin data")
        self.assertEqual(result.stdout, b"stdin data")

    def test_fakesshForcedCommand(self):
        """
        With C{FAKESSH_FORCED_COMMAND} set, the fake ssh runs it instead of
        the remote command, like sshd runs a forced command.
        """
        result = self.fakessh(
            "host", "git-annex-shell", "p2pstdio", "/x",
            env={"FAKESSH_FORCED_COMMAND":
                 'echo "forced: $SSH_ORIGINAL_COMMAND"'})
        self.assertEqual(result.stdout,
                         b"forced: git-annex-shell p2pstdio /x\n")

    def test_fakesshProbes(self):
        """
        The fake ssh exits 255 on C{-G}/C{-V} (git's OpenSSH probe) and
        when given no host.
        """
        self.assertEqual(self.fakessh("-G", "host").returncode, 255)
        self.assertEqual(self.fakessh("-V").returncode, 255)
        self.assertEqual(self.fakessh("-o", "X=y").returncode, 255)


class ClusterTests(unittest.TestCase):
    """
    Tests for L{annex.cluster_for}: a real cluster whose client reaches the
    gateway (real C{git-annex-shell}, through the fake ssh) and the nodes
    behind it.
    """

    def setUp(self):
        self.cluster = annex.cluster_for(self)

    def test_layout(self):
        """
        The cluster has a bare gateway, three bare nodes and a client, each
        with its own uuid; the cluster has a uuid too.
        """
        c = self.cluster
        self.assertEqual([n.name for n in c.nodes],
                         ["node1", "node2", "node3"])
        self.assertEqual(c.gateway.path,
                         os.path.join(c.base_dir, "gateway.git"))
        self.assertEqual(c.nodes[1].path,
                         os.path.join(c.base_dir, "nodes", "node2.git"))
        self.assertEqual(c.client.path, os.path.join(c.base_dir, "client"))
        self.assertEqual(c.fakessh, os.path.join(c.base_dir, "bin", "fakessh"))
        uuids = [c.gateway.uuid, c.client.uuid, c.cluster_uuid] + [
            n.uuid for n in c.nodes]
        self.assertEqual(len(set(uuids)), 6)
        self.assertNotIn(None, uuids)
        self.assertIs(c.node(2), c.nodes[1])
        self.assertIs(c.node("node3"), c.nodes[2])
        self.assertEqual(c.remote_name(c.nodes[0]), "gw-node1")

    def test_proxiedRemotesVisible(self):
        """
        C{git annex info gw} in the client shows the gateway to
        C{mycluster} proxying node1..3.
        """
        info = self.cluster.client_annex("info", "gw")
        self.assertIn(self.cluster.gateway.uuid, info)
        self.assertIn("gateway to cluster: gw-mycluster", info)
        for i in (1, 2, 3):
            self.assertIn("gw-node%d" % i, info)

    def test_copyToNode(self):
        """
        C{git annex copy --to gw-node2} stores the content in node2 only.
        """
        c = self.cluster
        data = b"content for node2\n" * 100
        key = c.add_file("file", data)
        self.assertTrue(key.startswith("SHA256E-s%d--" % len(data)), key)
        c.client_annex("copy", "--to", "gw-node2", "file")
        self.assertEqual(c.node_sha256(c.node(2), key),
                         hashlib.sha256(data).hexdigest())
        self.assertFalse(c.node_has(c.node(1), key))
        self.assertIsNone(c.node_sha256("node3", key))
        where = c.whereis(key)
        self.assertIn(c.node(2).uuid, where)
        self.assertIn(c.client.uuid, where)
        self.assertNotIn(c.node(1).uuid, where)

    def test_copyToCluster(self):
        """
        C{git annex copy --to gw-mycluster} stores the content on every
        node: the gateway's git-annex-shell proxies to all of them.
        """
        c = self.cluster
        data = b"content for the cluster\n"
        key = c.add_file("sub/dir/file2", data)
        c.client_annex("copy", "--to", "gw-mycluster", "sub/dir/file2")
        digest = hashlib.sha256(data).hexdigest()
        for node in c.nodes:
            self.assertEqual(c.node_sha256(node, key), digest, node)
        self.assertIn(c.cluster_uuid, c.whereis(key))

    def test_escapedKey(self):
        """
        L{annex.Cluster.node_has} finds keys whose object file names
        git-annex escapes (C{&}, C{%}, C{:}).
        """
        c = self.cluster
        name = "we:ird%name"
        with open(os.path.join(c.client.path, name), "wb") as f:
            f.write(b"worm")
        c.client_annex("add", "--backend=WORM", name)
        key = c.client_annex("lookupkey", name).strip()
        self.assertIn(":", key)
        c.client_annex("copy", "--to", "gw-node1", name)
        self.assertTrue(c.node_has(1, key))
        self.assertTrue(os.path.isfile(c.object_path(1, key)))
        self.assertFalse(c.node_has(2, key))
        self.assertEqual(c.node_sha256(1, key),
                         hashlib.sha256(b"worm").hexdigest())

    def test_whereisUnknownKey(self):
        """
        L{annex.Cluster.whereis} of a key nobody has is empty.
        """
        self.assertEqual(
            self.cluster.whereis("SHA256E-s1--" + "0" * 64), set())


class TemplateTests(unittest.TestCase):
    """
    L{annex.cluster_for} copies one template per process; the copies do not
    refer to the template nor to each other.
    """

    def assertNoPath(self, top, path):
        """
        No file under C{top} (but object stores) contains C{path}.
        """
        needle = os.fsencode(path)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    continue
                with open(full, "rb") as f:
                    self.assertNotIn(needle, f.read(), full)

    def test_templateReused(self):
        """
        Clusters with the same parameters are copies of one template.
        """
        self.assertIs(annex.template_cluster(3), annex.template_cluster(3))
        one = annex.cluster_for(self)
        two = annex.cluster_for(self)
        self.assertNotEqual(one.base_dir, two.base_dir)
        self.assertEqual(one.gateway.uuid, two.gateway.uuid)

    def test_pathsRewritten(self):
        """
        Nothing in a copy refers to the template's directory, and the
        client's remote urls point into the copy.
        """
        template = annex.template_cluster(3)
        c = annex.cluster_for(self)
        self.assertNoPath(c.base_dir, template.base_dir)
        self.assertEqual(c.env.config(c.client.path, "remote.gw.url"),
                         "ssh://localhost" + c.gateway.path)
        self.assertEqual(c.env.config(c.client.path, "remote.node1path.url"),
                         c.nodes[0].path)
        self.assertEqual(c.env.config(c.gateway.path, "remote.node3.url"),
                         c.nodes[2].path)

    def test_copiesIndependent(self):
        """
        Content added and copied in one copy of the template is absent from
        another copy and from the template.
        """
        template = annex.template_cluster(3)
        one = annex.cluster_for(self)
        two = annex.cluster_for(self)
        key = one.add_file("only-in-one", b"one\n")
        one.client_annex("copy", "--to", "gw-node1", "only-in-one")
        self.assertTrue(one.node_has(1, key))
        self.assertFalse(two.node_has(1, key))
        self.assertFalse(template.node_has(1, key))
        self.assertEqual(two.whereis(key), set())
        self.assertFalse(
            os.path.exists(os.path.join(two.client.path, "only-in-one")))
        # and the other way round
        key2 = two.add_file("only-in-two", b"two\n")
        two.client_annex("copy", "--to", "gw-mycluster", "only-in-two")
        self.assertEqual([two.node_has(n, key2) for n in two.nodes],
                         [True, True, True])
        self.assertEqual([one.node_has(n, key2) for n in one.nodes],
                         [False, False, False])

    def test_wanted(self):
        """
        With C{wanted}, every node is in the group C{clusternodes} with that
        preferred content, and the client knows it.
        """
        c = annex.cluster_for(self, nodes=2, wanted="include=*.iso")
        self.assertEqual(len(c.nodes), 2)
        self.assertIsNot(c.env, annex.template_cluster(3).env)
        for node in ("gw-node1", "gw-node2"):
            self.assertEqual(c.client_annex("wanted", node).strip(),
                             "include=*.iso")
            self.assertEqual(c.client_annex("group", node).strip(),
                             "clusternodes")
        self.assertEqual(
            c.env.annex(c.gateway.path, "wanted", "here").strip(), "nothing")
