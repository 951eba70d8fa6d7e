"""
annexd's P2P server session against a real git-annex client: C{annexd-shell}
as the forced command of the client's (fake) ssh, serving the gateway's own
repository.
"""

import hashlib
import os
import subprocess
import sys

from twisted.trial import unittest

from annexd import shell
from tests.support.annex import cluster_for

FORCED = {"FAKESSH_FORCED_COMMAND": "%s -m annexd.shell" % (sys.executable,)}


class RealClientTests(unittest.TestCase):
    """
    A stock git-annex client copies, gets and drops through annexd-shell.
    """

    timeout = 300

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)

    def client(self, *args, env=FORCED, check=True):
        return self.cluster.env.run(["git", "annex", *args],
                                    cwd=self.cluster.client.path, env=env,
                                    check=check)

    def test_copyGetDrop(self):
        """
        copy --to, a drop proven by a lock on the gateway, get --from and
        drop --from all work, for empty, tiny and multi-MiB files; the
        gateway's object is checked by sha256.
        """
        gateway = self.cluster.gateway
        for name, data in [("empty", b""), ("one", b"x"),
                           ("four k.txt", os.urandom(4096)),
                           ("big.bin", os.urandom(5 * 1024 * 1024 + 3))]:
            key = self.cluster.add_file(name, data)
            digest = hashlib.sha256(data).hexdigest()
            self.client("copy", "--to", "gw", name)
            self.assertEqual(self.cluster.node_sha256(gateway, key), digest)
            self.assertIn(gateway.uuid, self.cluster.whereis(key))
            self.client("drop", name)
            self.client("get", "--from", "gw", name)
            with open(os.path.join(self.cluster.client.path, name), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
            self.client("drop", "--from", "gw", name)
            self.assertIsNone(self.cluster.node_sha256(gateway, key))

    def test_readOnly(self):
        """
        With GIT_ANNEX_SHELL_READONLY, a copy to the gateway fails and
        stores nothing; gets still work.
        """
        key = self.cluster.add_file("ro.txt", b"read only\n")
        env = dict(FORCED, GIT_ANNEX_SHELL_READONLY="1")
        result = self.client("copy", "--to", "gw", "ro.txt", env=env,
                             check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertFalse(self.cluster.node_has(self.cluster.gateway, key))

    def test_sameAsGitAnnexShell(self):
        """
        The same copy through git-annex-shell and through annexd-shell
        leaves the same object on the gateway.
        """
        data = os.urandom(100000)
        key = self.cluster.add_file("twin.bin", data)
        self.client("copy", "--to", "gw", "twin.bin", env={})
        theirs = self.cluster.node_sha256(self.cluster.gateway, key)
        self.client("drop", "--from", "gw", "twin.bin", env={})
        self.assertIsNone(self.cluster.node_sha256(self.cluster.gateway, key))
        self.client("copy", "--to", "gw", "twin.bin")
        self.assertEqual(self.cluster.node_sha256(self.cluster.gateway, key),
                         theirs)


class CommandLineTests(unittest.TestCase):
    """
    annexd-shell's command parsing and refusals.
    """

    def runShell(self, command, env=None):
        environ = dict(os.environ, **(env or {}))
        environ.pop("SSH_ORIGINAL_COMMAND", None)
        return subprocess.run(
            [sys.executable, "-m", "annexd.shell", "-c", command],
            capture_output=True, text=True, env=environ, timeout=60)

    def test_configlist(self):
        """
        configlist prints exactly git-annex-shell's two lines.
        """
        cluster = cluster_for(self, nodes=1)
        result = self.runShell(
            "git-annex-shell 'configlist' '%s'" % (cluster.gateway.path,))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "annex.uuid=%s\ncore.gcrypt-id=\n" % (
            cluster.gateway.uuid,))

    def test_wrongUUID(self):
        """
        A --uuid that is not the repository's is refused with git-annex's
        wording and exit status 1.
        """
        cluster = cluster_for(self, nodes=1)
        result = self.runShell(
            "git-annex-shell 'p2pstdio' '%s' 'c' --uuid 0000" % (
                cluster.gateway.path,))
        self.assertEqual(result.returncode, 1)
        self.assertIn("expected repository UUID 0000", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_unknownCommand(self):
        """
        An unknown subcommand is refused with a one-line reason.
        """
        result = self.runShell("git-annex-shell 'frobnicate' '/tmp'")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1)
        self.assertIn("frobnicate", result.stderr)

    def test_unbalancedQuotes(self):
        """
        A command that cannot be split is refused, not a traceback.
        """
        result = self.runShell("git-annex-shell 'p2pstdio")
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)

    def test_parseCommand(self):
        """
        Options may come anywhere; fields between -- pairs are collected.
        """
        self.assertEqual(
            shell.parseCommand(["p2pstdio", "/srv/gw", "--debug", "cu",
                                "--uuid", "U"]),
            ("p2pstdio", "/srv/gw", ["cu"],
             {"uuid": "U", "debug": True, "fields": {}}))
        self.assertEqual(
            shell.parseCommand(["configlist", "/r", "--", "autoinit=1", "--"]),
            ("configlist", "/r", [], {"uuid": None, "debug": False,
                                      "fields": {"autoinit": "1"}}))

    def test_expandDirectory(self):
        """
        /~/x is home-relative, as are relative paths.
        """
        self.assertEqual(shell.expandDirectory("/~/x", "/home/u"), "/home/u/x")
        self.assertEqual(shell.expandDirectory("x/y", "/home/u"), "/home/u/x/y")
        self.assertEqual(shell.expandDirectory("/abs", "/home/u"), "/abs")


class ConfigFileTests(unittest.TestCase):
    """
    The shipped configuration example is what annexd-shell reads.
    """

    def test_example(self):
        """
        etc/annexd.conf.example parses into its repository list and flags.
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(here, "etc", "annexd.conf.example")
        self.assertEqual(shell.loadConfig(path), (
            ["/srv/annex/gateway.git"], False, False,
            "/run/annexd/control.sock"))
