"""
annexd's gateway over a real OpenSSH server: C{annexd-shell} is the
authorized_keys forced command of a private sshd (L{tests.support.sshd}),
and a stock git-annex client reaches the gateway, its cluster and its
proxied nodes through it (the client's remote is C{ax}, so the proxied
remotes are C{ax-mycluster}, C{ax-node1}, ...).
"""

import hashlib
import json
import os
import shlex
import sys
import time

from twisted.trial import unittest

from tests.support.annex import cluster_for
from tests.support.sshd import add_ssh_remote, sshd_for

REMOTE = "ax"
CLUSTER = "%s-mycluster" % (REMOTE,)

#: The files every copy/get/drop round trip moves: empty, one byte, 4 KiB
#: and a bit over 5 MiB (more than one chunk of anything).
SIZES = [("empty", 0), ("one byte", 1), ("four-k.txt", 4096),
         ("big.bin", 5 * 1024 * 1024 + 3)]


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def shell_command(*options):
    """
    The forced command: annexd-shell, run by this interpreter (the console
    script may be a pyenv shim that needs the caller's environment).
    """
    return " ".join([shlex.quote(sys.executable), "-m", "annexd.shell"]
                    + [shlex.quote(o) for o in options])


def forced_env(cluster):
    """
    The environment of the forced command: the cluster's C{HOME} and
    isolation settings, and what the git-annex binary needs (as in
    L{tests.test_sshd}).
    """
    env = {"HOME": cluster.env.home, "GIT_CONFIG_NOSYSTEM": "1"}
    env.update(cluster.env.gitannex.env)
    return env


def forced_path(cluster):
    """
    The forced command's C{PATH}: the cluster's git-annex roles first.
    """
    return os.pathsep.join([cluster.env.bindir, "/usr/bin", "/bin"])


def _text(b):
    return b.decode("utf-8", "replace")


class GatewayOverSSHDMixin:
    """
    A 3-node cluster whose gateway is reached by the client over a real
    sshd whose forced command is C{annexd-shell OPTIONS}.

    The client's other ways to the nodes (the fake-ssh remote C{gw}, which
    runs the real git-annex-shell, and the path remote C{node1path}) are
    ignored by git-annex unless a test asks for them, so that every
    transfer, drop proof and presence check goes through annexd.
    """

    timeout = 300

    #: annexd-shell's options.
    shellOptions = ()

    def setUpGateway(self, options=None, discover=True):
        """
        Build the cluster, start the sshd and, if C{discover}, add the
        remote C{ax}.

        @param options: annexd-shell's options (default L{shellOptions}),
            or a callable that returns them given the cluster.
        """
        self.cluster = cluster_for(self, nodes=3)
        self.ignoreOtherRemotes()
        if options is None:
            options = self.shellOptions
        elif callable(options):
            options = options(self.cluster)
        self.server = sshd_for(self, shell_command(*options),
                               forced_path(self.cluster),
                               env=forced_env(self.cluster))
        if discover:
            self.info = add_ssh_remote(self.cluster, self.server, REMOTE,
                                       self.cluster.gateway.path)

    def ignoreOtherRemotes(self, ignore=True):
        """
        Set (or clear) C{annex-ignore} on the client's remotes C{gw} and
        C{node1path}.
        """
        for name in ("gw", "node1path"):
            self.cluster.client_git(
                "config", "remote.%s.annex-ignore" % (name,),
                "true" if ignore else "false")

    def client(self, *args, check=True, env=None):
        """
        Run C{git annex ARGS} in the client with the sshd's client
        environment.

        @rtype: L{subprocess.CompletedProcess}
        """
        full = self.server.client_env()
        full.update(env or {})
        return self.cluster.env.run(["git-annex", *args],
                                    cwd=self.cluster.client.path, env=full,
                                    check=check)

    def clientFile(self, name):
        """
        The content of the client's file C{name}, or L{None} when it is
        not present (a dangling symlink after a drop).
        """
        path = os.path.join(self.cluster.client.path, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def gatewayRef(self, ref):
        """
        The commit C{ref} names in the gateway, or L{None}.
        """
        result = self.cluster.env.run(
            ["git", "rev-parse", "--verify", "-q", ref],
            cwd=self.cluster.gateway.path, check=False)
        return _text(result.stdout).strip() or None

    def p2pstdio(self, since=0):
        """
        The p2pstdio requests the forced command received (split into
        words), from the C{since}th logged command on.
        """
        return [words for words in map(shlex.split,
                                       self.server.commands()[since:])
                if words[1:2] == ["p2pstdio"]]

    def assertSessions(self, since, target):
        """
        The forced command received, from its C{since}th command on, at
        least one p2pstdio request, and every one of them asks for the
        gateway's path, on behalf of the client, for C{target}.
        """
        sessions = self.p2pstdio(since)
        self.assertTrue(sessions, self.server.commands()[since:])
        for words in sessions:
            self.assertEqual(
                words, ["git-annex-shell", "p2pstdio",
                        self.cluster.gateway.path, self.cluster.client.uuid,
                        "--uuid", target])


class CopyGetDropTests(GatewayOverSSHDMixin, unittest.TestCase):
    """
    copy, get and drop through C{annexd-shell} over real ssh, with the
    cluster and with one proxied node.
    """

    def setUp(self):
        self.setUpGateway()

    def test_discovery(self):
        """
        L{add_ssh_remote} through annexd-shell: the client records the
        gateway's uuid and sees the cluster and the nodes as proxied
        remotes of C{ax}.
        """
        cluster = self.cluster
        self.assertIn("gateway to cluster: %s" % (CLUSTER,), self.info)
        for node in cluster.nodes:
            self.assertIn("%s-%s" % (REMOTE, node.name), self.info)
        self.assertEqual(
            cluster.env.config(cluster.client.path,
                               "remote.%s.annex-uuid" % (REMOTE,)),
            cluster.gateway.uuid)
        path = "'%s'" % (cluster.gateway.path,)
        self.assertEqual(self.server.commands(), [
            "git-upload-pack %s" % (path,),
            "git-annex-shell 'configlist' %s" % (path,),
        ])

    def test_cluster(self):
        """
        For files of 0 B, 1 B, 4 KiB and ~5 MiB: C{copy --to ax-mycluster}
        puts the content on every node (and not on the gateway), checked by
        sha256, and the client's whereis lists every node; after a local
        drop, C{get --from ax-mycluster} brings it back intact; C{drop
        --from ax-mycluster} removes it from every node and from whereis.
        """
        cluster = self.cluster
        nodeUUIDs = {node.uuid for node in cluster.nodes}
        for name, size in SIZES:
            data = os.urandom(size)
            digest = _sha256(data)
            key = cluster.add_file(name, data)
            since = len(self.server.commands())

            self.client("copy", "--to", CLUSTER, name)
            self.assertSessions(since, cluster.cluster_uuid)
            for node in cluster.nodes:
                self.assertEqual(cluster.node_sha256(node, key), digest,
                                 (name, node.name))
            self.assertFalse(cluster.node_has(cluster.gateway, key))
            where = cluster.whereis(key)
            self.assertTrue(nodeUUIDs <= where, (name, where))
            self.assertIn(cluster.client.uuid, where)

            self.client("drop", name)
            self.assertIsNone(self.clientFile(name))
            self.assertNotIn(cluster.client.uuid, cluster.whereis(key))
            since = len(self.server.commands())
            self.client("get", "--from", CLUSTER, name)
            self.assertSessions(since, cluster.cluster_uuid)
            self.assertEqual(_sha256(self.clientFile(name)), digest, name)
            self.assertIn(cluster.client.uuid, cluster.whereis(key))

            since = len(self.server.commands())
            self.client("drop", "--from", CLUSTER, name)
            self.assertSessions(since, cluster.cluster_uuid)
            for node in cluster.nodes:
                self.assertFalse(cluster.node_has(node, key),
                                 (name, node.name))
            where = cluster.whereis(key)
            self.assertEqual(where & nodeUUIDs, set(), (name, where))
            self.assertNotIn(cluster.cluster_uuid, where)
            self.assertEqual(where, {cluster.client.uuid})

    def test_node(self):
        """
        For files of 0 B, 1 B, 4 KiB and ~5 MiB: C{copy --to ax-node2}
        puts the content on node2 only, checked by sha256, and whereis
        lists node2; after a local drop C{get --from ax-node2} brings it
        back; C{drop --from ax-node2} removes it from node2 and whereis.
        """
        cluster = self.cluster
        node2 = cluster.node(2)
        remote = "%s-node2" % (REMOTE,)
        for name, size in SIZES:
            data = os.urandom(size)
            digest = _sha256(data)
            key = cluster.add_file(name, data)
            since = len(self.server.commands())

            self.client("copy", "--to", remote, name)
            self.assertSessions(since, node2.uuid)
            self.assertEqual(cluster.node_sha256(node2, key), digest, name)
            for other in (cluster.gateway, cluster.node(1), cluster.node(3)):
                self.assertFalse(cluster.node_has(other, key),
                                 (name, other.name))
            where = cluster.whereis(key)
            self.assertIn(node2.uuid, where)
            self.assertNotIn(cluster.node(1).uuid, where)
            self.assertNotIn(cluster.node(3).uuid, where)

            self.client("drop", name)
            self.assertIsNone(self.clientFile(name))
            since = len(self.server.commands())
            self.client("get", "--from", remote, name)
            self.assertSessions(since, node2.uuid)
            self.assertEqual(_sha256(self.clientFile(name)), digest, name)

            since = len(self.server.commands())
            self.client("drop", "--from", remote, name)
            self.assertSessions(since, node2.uuid)
            self.assertFalse(cluster.node_has(node2, key), name)
            self.assertEqual(cluster.whereis(key), {cluster.client.uuid})


class TestRemoteTests(GatewayOverSSHDMixin, unittest.TestCase):
    """
    git-annex's own remote test suite against the cluster and a proxied
    node, through annexd-shell over real ssh.
    """

    def setUp(self):
        self.setUpGateway()

    def runTestremote(self, remote, *options):
        """
        Run C{git annex testremote OPTIONS REMOTE} and fail, with its
        whole output and how long it took, unless it exits 0 with no
        C{FAIL} in its output.
        """
        started = time.monotonic()
        result = self.client("testremote", *options, remote, check=False)
        elapsed = time.monotonic() - started
        output = _text(result.stdout) + _text(result.stderr)
        report = "testremote %s %s: exit %d after %.1f s\n%s" % (
            " ".join(options), remote, result.returncode, elapsed, output)
        if result.returncode != 0 or "FAIL" in output:
            self.fail(report)
        self.assertRegex(_text(result.stdout), r"All \d+ tests passed")
        self.assertIn("unavailable remote", output)
        return output

    def test_clusterFast(self):
        """
        C{git annex testremote --fast ax-mycluster}: every test is OK,
        including the "unavailable remote" group (ssh to an unresolvable
        host exits 255), and the sessions went through annexd-shell.
        """
        self.runTestremote(CLUSTER, "--fast")
        self.assertSessions(0, self.cluster.cluster_uuid)

    def test_nodeFast(self):
        """
        C{git annex testremote --fast ax-node1}: every test is OK.
        """
        self.runTestremote("%s-node1" % (REMOTE,), "--fast")
        self.assertSessions(0, self.cluster.node(1).uuid)

    def test_clusterFull(self):
        """
        C{git annex testremote ax-mycluster} without C{--fast} (573 tests,
        about 10 s): every test is OK.
        """
        self.runTestremote(CLUSTER)
        self.assertSessions(0, self.cluster.cluster_uuid)


class ReadOnlyTests(GatewayOverSSHDMixin, unittest.TestCase):
    """
    C{annexd-shell --readonly}: content can be read but not stored.
    """

    shellOptions = ("--readonly",)

    def setUp(self):
        self.setUpGateway()

    def test_copyRefused(self):
        """
        A copy to ax-mycluster (and to ax-node1) fails, and no node (nor
        the gateway) gets the content.
        """
        cluster = self.cluster
        key = cluster.add_file("ro.txt", b"read only\n")
        for remote, target in ((CLUSTER, cluster.cluster_uuid),
                               ("%s-node1" % (REMOTE,), cluster.node(1).uuid)):
            since = len(self.server.commands())
            result = self.client("copy", "--to", remote, "ro.txt",
                                 check=False)
            self.assertNotEqual(result.returncode, 0, remote)
            self.assertIn("Transfer failed", _text(result.stderr))
            self.assertSessions(since, target)
        for repo in [cluster.gateway] + cluster.nodes:
            self.assertFalse(cluster.node_has(repo, key), repo.name)
        self.assertEqual(cluster.whereis(key), {cluster.client.uuid})

    def test_getWorks(self):
        """
        Content stored on the cluster beforehand through a read-write path
        (the fake-ssh remote C{gw} with a read-write annexd-shell) can be
        got from ax-mycluster and from ax-node3; a drop from ax-mycluster
        is refused and leaves every copy in place.
        """
        cluster = self.cluster
        data = os.urandom(100 * 1024)
        key = cluster.add_file("rw.bin", data)
        self.ignoreOtherRemotes(False)
        cluster.client_annex(
            "copy", "--quiet", "--to", cluster.remote_name(cluster.name),
            "rw.bin", env={"FAKESSH_FORCED_COMMAND": shell_command()})
        self.ignoreOtherRemotes(True)
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, key), _sha256(data))

        self.client("drop", "rw.bin")
        self.assertIsNone(self.clientFile("rw.bin"))
        self.client("get", "--from", CLUSTER, "rw.bin")
        self.assertEqual(self.clientFile("rw.bin"), data)

        self.client("drop", "rw.bin")
        self.client("get", "--from", "%s-node3" % (REMOTE,), "rw.bin")
        self.assertEqual(self.clientFile("rw.bin"), data)

        result = self.client("drop", "--from", CLUSTER, "rw.bin",
                             check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("this repository is read-only; write access denied",
                      _text(result.stderr))
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, key), _sha256(data))

    def test_pushRefused(self):
        """
        annexd's C{--readonly} also refuses git pushes: the gateway's
        branches do not move; fetching still works.
        """
        cluster = self.cluster
        cluster.add_file("pushed.txt", b"pushed\n")
        before = self.gatewayRef("refs/heads/main")
        result = self.cluster.env.run(
            ["git", "push", REMOTE, "main:main"], cwd=cluster.client.path,
            env=self.server.client_env(), check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("read-only", _text(result.stderr))
        self.assertEqual(self.gatewayRef("refs/heads/main"), before)
        cluster.env.run(["git", "fetch", REMOTE], cwd=cluster.client.path,
                        env=self.server.client_env())


class AppendOnlyTests(GatewayOverSSHDMixin, unittest.TestCase):
    """
    C{annexd-shell --appendonly}: content can be stored but not removed.
    """

    shellOptions = ("--appendonly",)

    def setUp(self):
        self.setUpGateway()

    def test_copyButNoDrop(self):
        """
        A copy to ax-mycluster stores the content on every node; a drop
        from ax-mycluster (and from ax-node2) fails and every copy stays.
        """
        cluster = self.cluster
        data = b"append only\n" * 100
        key = cluster.add_file("ao.txt", data)
        self.client("copy", "--to", CLUSTER, "ao.txt")
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, key), _sha256(data))
        for remote in (CLUSTER, "%s-node2" % (REMOTE,)):
            result = self.client("drop", "--from", remote, "ao.txt",
                                 check=False)
            self.assertNotEqual(result.returncode, 0, remote)
            self.assertIn("this repository is append-only; removal denied",
                          _text(result.stderr))
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, key), _sha256(data))
        where = cluster.whereis(key)
        for node in cluster.nodes:
            self.assertIn(node.uuid, where)


class RepoRestrictionTests(GatewayOverSSHDMixin, unittest.TestCase):
    """
    C{annexd-shell --repo PATH} serves PATH only.
    """

    def test_otherRepoRefused(self):
        """
        With C{--repo} naming another directory, every command on the
        gateway's path is refused: fetch, push, configlist and the
        client's copy to ax-mycluster and ax-node1 all fail, and nothing
        is written to the gateway or the nodes.
        """
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        self.setUpGateway(options=("--repo", other), discover=False)
        cluster = self.cluster
        env = self.server.client_env()
        cluster.client_git("remote", "add", REMOTE,
                           self.server.url(cluster.gateway.path))
        key = cluster.add_file("secret.txt", b"not for you\n")
        refsBefore = cluster.env.git(cluster.gateway.path, "for-each-ref")

        fetch = cluster.env.run(["git", "fetch", REMOTE],
                                cwd=cluster.client.path, env=env, check=False)
        self.assertNotEqual(fetch.returncode, 0)
        self.assertIn("not a repository served here", _text(fetch.stderr))
        push = cluster.env.run(["git", "push", REMOTE, "main:main"],
                               cwd=cluster.client.path, env=env, check=False)
        self.assertNotEqual(push.returncode, 0)
        info = self.client("info", REMOTE, check=False)
        self.assertIsNone(cluster.env.config(
            cluster.client.path, "remote.%s.annex-uuid" % (REMOTE,)))

        # Even when the client knows the gateway's uuid (and so its
        # proxied remotes, from the git-annex branch it already has).
        cluster.client_git("config", "--unset",
                           "remote.%s.annex-ignore" % (REMOTE,), check=False)
        cluster.client_git("config", "remote.%s.annex-uuid" % (REMOTE,),
                           cluster.gateway.uuid)
        for remote in (CLUSTER, "%s-node1" % (REMOTE,)):
            result = self.client("copy", "--to", remote, "secret.txt",
                                 check=False)
            self.assertNotEqual(result.returncode, 0,
                                (remote, _text(result.stdout)))
            self.assertIn("not a repository served here",
                          _text(result.stderr))
        for repo in [cluster.gateway] + cluster.nodes:
            self.assertFalse(cluster.node_has(repo, key), repo.name)
        self.assertEqual(cluster.env.git(cluster.gateway.path, "for-each-ref"),
                         refsBefore)
        self.assertEqual(cluster.whereis(key), {cluster.client.uuid})
        # Each of them reached the forced command, which refused it.
        commands = [shlex.split(c) for c in self.server.commands()]
        self.assertIn(["git-upload-pack", cluster.gateway.path], commands)
        self.assertIn(["git-receive-pack", cluster.gateway.path], commands)
        self.assertTrue(self.p2pstdio(), (commands, info))

    def test_ownRepoServed(self):
        """
        With C{--repo} naming the gateway, the gateway is served: discovery
        and a copy to ax-node1 work.
        """
        self.setUpGateway(options=lambda cluster: (
            "--repo", "/nonexistent", "--repo", cluster.gateway.path))
        cluster = self.cluster
        self.assertIn("gateway to cluster: %s" % (CLUSTER,), self.info)
        key = cluster.add_file("mine.txt", b"served\n")
        self.client("copy", "--to", "%s-node1" % (REMOTE,), "mine.txt")
        self.assertEqual(cluster.node_sha256(cluster.node(1), key),
                         _sha256(b"served\n"))


class SyncTests(GatewayOverSSHDMixin, unittest.TestCase):
    """
    C{git annex sync ax}: git-upload-pack and git-receive-pack through
    annexd-shell.
    """

    def setUp(self):
        self.setUpGateway()

    def test_sync(self):
        """
        After a copy to ax-mycluster, C{git annex sync ax} succeeds: it
        fetches (C{git-upload-pack}) and pushes (C{git-receive-pack})
        through annexd-shell, the gateway gets the client's branches, and
        the client's whereis lists every node's uuid.
        """
        cluster = self.cluster
        data = os.urandom(64 * 1024)
        key = cluster.add_file("synced.bin", data)
        self.client("copy", "--to", CLUSTER, "synced.bin")
        since = len(self.server.commands())

        self.client("sync", REMOTE)
        commands = [shlex.split(c) for c in self.server.commands()[since:]]
        self.assertIn(["git-upload-pack", cluster.gateway.path], commands)
        self.assertIn(["git-receive-pack", cluster.gateway.path], commands)

        head = cluster.client_git("rev-parse", "HEAD").strip()
        self.assertIn(head, (self.gatewayRef("refs/heads/main"),
                             self.gatewayRef("refs/heads/synced/main")))
        clientBranch = cluster.client_git("rev-parse", "git-annex").strip()
        cluster.env.run(["git", "merge-base", "--is-ancestor", clientBranch,
                         "refs/heads/git-annex"], cwd=cluster.gateway.path)

        where = cluster.whereis(key)
        for node in cluster.nodes:
            self.assertIn(node.uuid, where)
        listed = _text(self.client("whereis", "synced.bin").stdout)
        for node in cluster.nodes:
            self.assertIn(node.uuid, listed)

    def test_gatewayRecords(self):
        """
        annexd-shell records on the gateway's git-annex branch where the
        content it stored went: a clone made over ssh (through
        annexd-shell's C{git-upload-pack}) after a copy to ax-mycluster,
        without the client ever pushing, lists every node in whereis;
        after a C{drop --from ax-mycluster}, a fetch and merge show no
        node any more.
        """
        cluster = self.cluster
        env = self.server.client_env()
        key = cluster.add_file("recorded.bin", os.urandom(10000))
        self.client("copy", "--to", CLUSTER, "recorded.bin")

        clone = os.path.join(os.path.abspath(self.mktemp()), "clone")
        cluster.env.run(["git", "clone", "-q", "-o", REMOTE,
                         self.server.url(cluster.gateway.path), clone],
                        cwd=cluster.base_dir, env=env)
        cluster.env.run(["git-annex", "init", "--quiet", "clone"], cwd=clone,
                        env=env)

        def where():
            # Exit status 1 when no copy is known: read the JSON instead.
            result = cluster.env.run(
                ["git-annex", "whereis", "--json", "--key", key], cwd=clone,
                env=env, check=False)
            info = json.loads(result.stdout.splitlines()[0])
            return {entry["uuid"] for entry in
                    info.get("whereis", []) + info.get("untrusted", [])}

        listed = where()
        for node in cluster.nodes:
            self.assertIn(node.uuid, listed)

        self.client("drop", "--from", CLUSTER, "recorded.bin")
        cluster.env.run(["git", "fetch", "-q", REMOTE], cwd=clone, env=env)
        cluster.env.run(["git-annex", "merge", "--quiet"], cwd=clone, env=env)
        listed = where()
        for node in cluster.nodes:
            self.assertNotIn(node.uuid, listed)
