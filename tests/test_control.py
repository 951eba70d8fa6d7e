"""
The daemon's control socket: annexd-shell hands ssh sessions to the running
daemon (annexd.control), which serves them through its shared router.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import reactor
from twisted.trial import unittest

from annexd.annex.state import GatewayState
from annexd.control import BadRequest, parseRequest
from annexd.nodes.ssh import SshNode
from annexd.protocol.keys import Key
from annexd.protocol.server import ServerMode
from tests.support.annex import cluster_for
from tests.support.daemon import freePort, startDaemon
from tests.support.metrics import sample, scrape


def metrics(port):
    """
    The daemon's metrics (see L{tests.support.metrics.parseSamples}).
    """
    return scrape("http://127.0.0.1:%d/metrics" % (port,))


def metric(values, name, **labels):
    return sample(values, name, 0, **labels)


async def eventually(predicate, failure, timeout=30):
    """
    Poll C{predicate} every 0.1 s (without blocking the reactor) until it
    holds; fail with C{failure} after C{timeout} seconds.
    """
    from twisted.internet import task
    for attempt in range(int(timeout * 10)):
        if predicate():
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(failure)


class RequestTests(unittest.TestCase):
    """
    The shell's one-line request is checked before anything is served.
    """

    good = {"version": 1, "command": "p2pstdio", "repo": "/srv/gw.git",
            "client": "c1", "target": None, "mode": "read-write",
            "user": "alice"}

    def parse(self, **changes):
        request = dict(self.good, **changes)
        return parseRequest(json.dumps(request).encode())

    def test_good(self):
        parsed = self.parse(target="t1")
        self.assertEqual(parsed, {"repo": "/srv/gw.git", "client": b"c1",
                                  "target": b"t1",
                                  "mode": ServerMode.READ_WRITE,
                                  "user": "alice"})

    def test_bad(self):
        for changes, reason in [
                ({"version": 2}, "version"), ({"command": "git"}, "command"),
                ({"repo": ""}, "repo"), ({"client": None}, "client"),
                ({"mode": "anything"}, "mode"), ({"target": 5}, "target"),
                ({"user": ["x"]}, "user")]:
            error = self.assertRaises(BadRequest, self.parse, **changes)
            self.assertIn(reason, str(error))
        self.assertRaises(BadRequest, parseRequest, b"{nope")
        self.assertRaises(BadRequest, parseRequest, b"[1]")


class RelayTests(unittest.TestCase):
    """
    A real git-annex client over (fake) ssh whose forced command is
    annexd-shell --control: the sessions are served by the daemon.
    """

    timeout = 600

    def setUp(self):
        self.cluster = cluster_for(self, nodes=2)
        # unix socket paths are short (108 bytes): not under _trial_temp.
        self.socketDir = tempfile.mkdtemp(prefix="annexd-ctl-")
        self.addCleanup(shutil.rmtree, self.socketDir, True)
        self.control = os.path.join(self.socketDir, "control.sock")
        self.adminPort = freePort()
        self.daemon = startDaemon(self, self.cluster.env.env, [
            "--repo", self.cluster.gateway.path, "--control", self.control,
            "--admin", "tcp:%d:interface=127.0.0.1" % (self.adminPort,)])
        self.forced = {"FAKESSH_FORCED_COMMAND": "%s -m annexd.shell "
                       "--control %s --user alice" % (sys.executable,
                                                      self.control)}

    def client(self, *args, check=True):
        return self.cluster.env.run(["git", "annex", *args],
                                    cwd=self.cluster.client.path,
                                    env=self.forced, check=check)

    def test_copyGetDrop(self):
        """
        copy --to the cluster, drop, get, drop --from: the content is on
        every node (by sha256) and gone after; the daemon counted the ssh
        sessions and their uploads, so they went through it.
        """
        data = os.urandom(3 << 20)
        key = self.cluster.add_file("big.bin", data)
        digest = hashlib.sha256(data).hexdigest()
        cluster = self.cluster.remote_name(self.cluster.name)
        self.client("copy", "--to", cluster, "big.bin")
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, key), digest)
        self.client("drop", "big.bin")
        self.client("get", "--from", cluster, "big.bin")
        with open(os.path.join(self.cluster.client.path, "big.bin"),
                  "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        self.client("drop", "--from", cluster, "big.bin")
        for node in self.cluster.nodes:
            self.assertIsNone(self.cluster.node_sha256(node, key))
        values = metrics(self.adminPort)
        self.assertGreaterEqual(
            metric(values, "annexd_sessions_total", frontend="ssh"), 3)
        self.assertEqual(
            metric(values, "annexd_requests_total", frontend="ssh",
                   operation="put", result="ok"), 1)
        self.assertGreaterEqual(
            metric(values, "annexd_transfer_bytes_total", frontend="ssh",
                   direction="upload"), len(data))
        self.assertIn("ssh session for alice", self.daemon.output())

    async def test_shellKilled(self):
        """
        When the shell of a session goes away (its ssh connection dropped,
        or it was killed), the daemon ends the session.
        """
        node = self.cluster.nodes[0]
        remote = SshNode(reactor, "ssh://gw" + self.cluster.gateway.path,
                         node.uuid.encode(),
                         self.cluster.client.uuid.encode(),
                         environment=dict(self.cluster.env.env,
                                          **self.forced))
        self.addCleanup(remote.close)
        session = await remote.session()
        self.assertEqual(metric(metrics(self.adminPort),
                                "annexd_sessions_open", frontend="ssh"), 1)
        [pid] = shellProcesses(self.control)
        os.kill(pid, 9)
        await eventually(lambda: metric(metrics(self.adminPort),
                                        "annexd_sessions_open",
                                        frontend="ssh") == 0,
                         "the daemon kept the session of a killed shell")
        # Our side sees its ssh session end too (the broken session is
        # then not reused).
        await eventually(lambda: session.broken is not None,
                         "the ssh session of a killed shell did not end")
        remote.release(session)
        # The daemon is fine: the next session works.
        self.assertFalse(await remote.checkPresent(
            Key.parse(b"SHA256E-s1--" + b"0" * 64)))

    def shell(self, command):
        return subprocess.run(
            [sys.executable, "-m", "annexd.shell", "--control", self.control,
             "-c", command], env=self.cluster.env.env,
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)

    def test_refused(self):
        """
        A target the daemon does not serve is refused with its reason, as
        git-annex-shell refuses it, exit status 1.
        """
        result = self.shell("git-annex-shell p2pstdio %s %s --uuid %s" % (
            self.cluster.gateway.path, self.cluster.client.uuid,
            "00000000-1111-2222-3333-444444444444"))
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"expected repository UUID", result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)

    def test_notServedFallsBack(self):
        """
        A repository the daemon does not serve is served by the shell
        itself (here: a node's own repository).
        """
        node = self.cluster.nodes[0]
        session = SshNode(reactor, "ssh://gw" + node.path,
                          node.uuid.encode(), self.cluster.client.uuid.encode(),
                          environment=dict(self.cluster.env.env,
                                           **self.forced))
        self.addCleanup(session.close)
        d = session.checkPresent(Key.parse(b"SHA256E-s1--" + b"0" * 64))
        d.addCallback(self.assertFalse)
        return d

    async def test_hundredSessions(self):
        """
        100 sequential ssh sessions (fake ssh, annexd-shell, the daemon),
        each a CHECKPRESENT on a node: the daemon keeps its node sessions,
        so the node sees at most annex.jobs git-annex-shell processes.
        """
        node = self.cluster.nodes[0]
        jobs = GatewayState.load(self.cluster.gateway.path).jobs
        key = self.cluster.add_file("present.txt", b"here\n")
        self.client("copy", "--to", self.cluster.remote_name(node), "present.txt")
        environment = dict(self.cluster.env.env, **self.forced)
        # One ssh session per request: nothing idle is kept on this side.
        remote = SshNode(reactor, "ssh://gw" + self.cluster.gateway.path,
                         node.uuid.encode(), self.cluster.client.uuid.encode(),
                         environment=environment, maxIdle=0)
        self.addCleanup(remote.close)
        seen = set()
        parsed = Key.parse(key.encode())
        for i in range(100):
            self.assertTrue(await remote.checkPresent(parsed))
            seen |= nodeProcesses(node.path)
            self.assertLessEqual(len(seen), jobs, seen)
        self.assertGreaterEqual(len(seen), 1)
        values = metrics(self.adminPort)
        self.assertGreaterEqual(
            metric(values, "annexd_sessions_total", frontend="ssh"), 100)
        self.assertLessEqual(
            metric(values, "annexd_node_sessions_started_total",
                   node=node.name), jobs)
        self.assertEqual(
            metric(values, "annexd_requests_total", frontend="ssh",
                   operation="checkpresent", result="ok"), 100)


class NoDaemonTests(unittest.TestCase):
    """
    Without a daemon on the control socket the shell serves the session
    itself.
    """

    def test_noSocket(self):
        from annexd.shell import relay
        self.assertIsNone(relay(os.path.join(self.mktemp(), "none.sock"),
                                {"version": 1}))

    def test_staleSocket(self):
        """
        A socket file left by a daemon that is gone.
        """
        import socket

        from annexd.shell import relay
        directory = tempfile.mkdtemp(prefix="annexd-ctl-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "control.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.close()
        self.assertIsNone(relay(path, {"version": 1}))


class SilentDaemonTests(unittest.TestCase):
    """
    A daemon that takes the request and never answers.
    """

    def test_noAnswer(self):
        """
        The shell gives up after ANSWER_TIMEOUT with a clear refusal (and
        does not serve the session itself: the daemon may hold its
        descriptors).
        """
        import socket

        from annexd import shell
        directory = tempfile.mkdtemp(prefix="annexd-ctl-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "control.sock")
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(path)
        listener.listen(1)
        self.patch(shell, "ANSWER_TIMEOUT", 0.2)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        error = self.assertRaises(shell.Refused, shell.relay, path,
                                  {"version": 1}, r, w)
        self.assertIn("did not answer", str(error))


def processesWith(*words):
    """
    The pids of the processes whose command lines contain every one of
    C{words} (as whole arguments).
    """
    wanted = [w.encode() for w in words]
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % (entry,), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if all(w in argv for w in wanted):
            pids.add(int(entry))
    return pids


def shellProcesses(control):
    """
    The pids of the annexd-shell processes relaying to C{control}.
    """
    return processesWith("annexd.shell", control)


def nodeProcesses(path):
    """
    The pids of the git-annex-shell p2pstdio processes serving C{path}.
    """
    return processesWith("p2pstdio", path)
