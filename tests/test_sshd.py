"""
Tests for L{tests.support.sshd}: a real private sshd whose forced command
is C{git-annex-shell -c "$SSH_ORIGINAL_COMMAND"} lets a stock git-annex
client reach a real git-annex gateway, and its proxied nodes, over real ssh.
"""

import hashlib
import os
import shlex
import socket
import subprocess

from twisted.trial import unittest

from tests.support import sshd as sshd_support
from tests.support.annex import cluster_for
from tests.support.sshd import (
    PrivateSSHD, add_ssh_remote, listening, pid_alive, port_accepts,
    sshd_for)

FORCED = 'git-annex-shell -c "$SSH_ORIGINAL_COMMAND"'
REMOTE = "ssh"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def forced_env(cluster):
    """
    The environment of the forced command: the cluster's C{HOME} and
    isolation settings, and what the git-annex binary needs.
    """
    env = {"HOME": cluster.env.home, "GIT_CONFIG_NOSYSTEM": "1"}
    env.update(cluster.env.gitannex.env)
    return env


def forced_path(cluster):
    return os.pathsep.join([cluster.env.bindir, "/usr/bin", "/bin"])


class PrivateSSHDTests(unittest.TestCase):
    """
    The harness itself, with a trivial forced command.
    """

    def setUp(self):
        self.server = sshd_for(
            self, 'printf "%s|%s|%s\\n" "$SSH_ORIGINAL_COMMAND" "$HOME" '
            '"$PATH"; cat', "/usr/bin:/bin:/opt/nowhere")

    def ssh(self, *command, input=b""):
        return subprocess.run(
            shlex.split(self.server.ssh_command) + [
                "-p", str(self.server.port),
                "%s@127.0.0.1" % (self.server.user,)] + list(command),
            input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=30)

    def test_forcedCommand(self):
        """
        Whatever the client asks for, the forced command runs, through
        C{sh -c}, with C{$SSH_ORIGINAL_COMMAND} set, the given C{PATH}, a
        private C{HOME}, and the client's stdin; each request is logged.
        """
        result = self.ssh("rm", "-rf", "/nonexistent", input=b"stdin data")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout,
            b"rm -rf /nonexistent|%s|/usr/bin:/bin:/opt/nowhere\nstdin data"
            % (os.path.join(self.server.base_dir, "home").encode(),))
        self.ssh("second")
        self.assertEqual(self.server.commands(),
                         ["rm -rf /nonexistent", "second"])

    def test_otherKeyRefused(self):
        """
        A key that is not in C{authorized_keys} cannot log in, and nothing
        is run.
        """
        other = PrivateSSHD(self.mktemp(), "true", "/usr/bin:/bin")
        command = self.server.ssh_command.replace(
            shlex.quote(self.server.client_key),
            shlex.quote(other.client_key))
        result = subprocess.run(
            shlex.split(command) + [
                "-p", str(self.server.port),
                "%s@127.0.0.1" % (self.server.user,), "x"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(result.returncode, 255)
        self.assertEqual(self.server.commands(), [])

    def test_clientEnvAndURL(self):
        """
        C{client_env} makes git-annex use the harness's ssh command (with
        C{GIT_ANNEX_USE_GIT_SSH}, so no connection caching) and lets git
        pass the port; C{url} names the current user and the port.
        """
        env = self.server.client_env()
        self.assertEqual(env["GIT_SSH_COMMAND"], self.server.ssh_command)
        self.assertEqual(env["GIT_ANNEX_USE_GIT_SSH"], "1")
        self.assertEqual(env["GIT_SSH_VARIANT"], "ssh")
        self.assertIn("-o ControlMaster=no", env["GIT_SSH_COMMAND"])
        self.assertEqual(
            self.server.url("/srv/repo.git"),
            "ssh://%s@127.0.0.1:%d/srv/repo.git"
            % (self.server.user, self.server.port))
        self.assertRaises(ValueError, self.server.url, "relative")

    def test_stop(self):
        """
        C{stop} ends the listener: its pid is gone and the port refuses
        connections; stopping again is harmless.
        """
        pid, port = self.server.pid, self.server.port
        self.assertTrue(pid_alive(pid))
        self.assertTrue(listening(port))
        # A connection just before stop() may leave a child holding the
        # listening socket for a moment: stop() waits for that too.
        self.assertTrue(port_accepts(port))
        self.server.stop()
        self.assertIsNone(self.server.pid)
        self.assertFalse(pid_alive(pid))
        self.assertFalse(listening(port))
        self.assertFalse(port_accepts(port))
        self.server.stop()

    def test_portTaken(self):
        """
        When the port found free is taken before sshd binds it, C{start}
        tries another one.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        ports = [taken.getsockname()[1]]
        real = sshd_support.free_port
        self.patch(sshd_support, "free_port",
                   lambda: ports.pop() if ports else real())
        server = PrivateSSHD(self.mktemp(), "echo hi", "/usr/bin:/bin")
        server.start()
        self.addCleanup(server.stop)
        self.assertNotEqual(server.port, taken.getsockname()[1])
        self.assertTrue(port_accepts(server.port))
        with open(server.log) as f:
            self.assertIn("Address already in use", f.read())

    def test_badConfig(self):
        """
        C{start} reports C{sshd -t}'s complaint when the config is refused.
        """
        server = PrivateSSHD(self.mktemp(), "true", "/usr/bin:/bin")
        os.remove(server.host_key)
        error = self.assertRaises(sshd_support.SSHDError, server.start)
        self.assertIn("refused the config", str(error))
        self.assertIn("hostkey", str(error))
        self.assertIsNone(server.pid)


class GitAnnexOverSSHTests(unittest.TestCase):
    """
    A stock git-annex client and C{git-annex-shell} (a real git-annex
    gateway to a 2-node cluster) over the real private sshd.
    """

    def setUp(self):
        self.cluster = cluster_for(self, nodes=2)
        self.server = sshd_for(self, FORCED, forced_path(self.cluster),
                               env=forced_env(self.cluster))
        self.info = add_ssh_remote(self.cluster, self.server, REMOTE,
                                   self.cluster.gateway.path)

    def client(self, *args, **kw):
        kw.setdefault("env", self.server.client_env())
        return self.cluster.client_annex(*args, **kw)

    def p2pstdio_commands(self):
        """
        The logged p2pstdio requests, split into words.
        """
        return [words for words in map(shlex.split, self.server.commands())
                if words[:2] == ["git-annex-shell", "p2pstdio"]]

    def test_discovery(self):
        """
        L{add_ssh_remote} fetches the gateway's git-annex branch
        (C{git-upload-pack}) and contacts it (C{configlist}): the client
        records the gateway's uuid and sees the cluster and its nodes as
        proxied remotes of the new remote.
        """
        cluster = self.cluster
        self.assertIn("gateway to cluster: %s-mycluster" % (REMOTE,),
                      self.info)
        self.assertIn("%s-node1" % (REMOTE,), self.info)
        self.assertIn("%s-node2" % (REMOTE,), self.info)
        self.assertEqual(
            cluster.env.config(cluster.client.path,
                               "remote.%s.annex-uuid" % (REMOTE,)),
            cluster.gateway.uuid)
        # git and git-annex single-quote every argument.
        path = "'%s'" % (cluster.gateway.path,)
        self.assertEqual(self.server.commands(), [
            "git-upload-pack %s" % (path,),
            "git-annex-shell 'configlist' %s" % (path,),
        ])
        node1 = self.client("info", "%s-node1" % (REMOTE,))
        self.assertIn("uuid: %s" % (cluster.nodes[0].uuid,), node1)
        self.assertIn("proxied: true", node1)

    def test_copyToGateway(self):
        """
        C{copy --to} the remote stores the content in the gateway's own
        repository (and on no node), through one C{p2pstdio} session that
        names the gateway's path, the client's uuid and the gateway's uuid.
        """
        cluster = self.cluster
        data = b"to the gateway itself\n" * 100
        key = cluster.add_file("gw.txt", data)
        self.client("copy", "--quiet", "--to", REMOTE, "gw.txt")
        self.assertEqual(cluster.node_sha256(cluster.gateway, key),
                         _sha256(data))
        for node in cluster.nodes:
            self.assertFalse(cluster.node_has(node, key))
        self.assertEqual(self.p2pstdio_commands(), [[
            "git-annex-shell", "p2pstdio", cluster.gateway.path,
            cluster.client.uuid, "--uuid", cluster.gateway.uuid]])

    def test_copyToProxiedNode(self):
        """
        C{copy --to REMOTE-node1} goes through the gateway's own proxy
        (git-annex-shell p2pstdio on the gateway, over real ssh) and lands
        on node1 only: not on the gateway, not on node2.
        """
        cluster = self.cluster
        data = os.urandom(256 * 1024)
        key = cluster.add_file("n1.bin", data)
        self.client("copy", "--quiet", "--to", "%s-node1" % (REMOTE,),
                    "n1.bin")
        self.assertEqual(cluster.node_sha256(cluster.nodes[0], key),
                         _sha256(data))
        self.assertFalse(cluster.node_has(cluster.gateway, key))
        self.assertFalse(cluster.node_has(cluster.nodes[1], key))
        commands = self.p2pstdio_commands()
        self.assertTrue(commands, self.server.commands())
        for words in commands:
            self.assertEqual(words[:4], [
                "git-annex-shell", "p2pstdio", cluster.gateway.path,
                cluster.client.uuid])
        self.assertIn(["--uuid", cluster.nodes[0].uuid],
                      [words[4:] for words in commands])

    def test_getAfterDrop(self):
        """
        After a copy to node1 through the proxy and a local drop, C{get
        --from REMOTE-node1} brings the content back over real ssh.
        """
        cluster = self.cluster
        data = b"round trip\n" * 1000
        key = cluster.add_file("back.txt", data)
        remote = "%s-node1" % (REMOTE,)
        self.client("copy", "--quiet", "--to", remote, "back.txt")
        self.client("drop", "--quiet", "back.txt")
        path = os.path.join(cluster.client.path, "back.txt")
        self.assertFalse(os.path.exists(path))  # a dangling symlink now
        before = len(self.server.commands())
        self.client("get", "--quiet", "--from", remote, "back.txt")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(cluster.node_sha256(cluster.nodes[0], key),
                         _sha256(data))
        after = [shlex.split(c) for c in self.server.commands()[before:]]
        self.assertIn(["git-annex-shell", "p2pstdio", cluster.gateway.path,
                       cluster.client.uuid, "--uuid", cluster.nodes[0].uuid],
                      after)
