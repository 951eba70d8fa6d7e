"""
C{annexd demo}: README's first command, run as a user runs it, and the
commands it prints, run verbatim by a real git-annex client.
"""

import hashlib
import json
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time

from twisted.trial import unittest

from tests.support.annex import (
    AnnexCommandError, AnnexEnvironment, _make_writable, _text)
from tests.support.daemon import freePort
from tests.support.metrics import sample, scrape

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(_ROOT, "README.md")

#: The demo directory README's first command names.
README_DEMO_DIR = "/tmp/annexd-demo"

#: What stands before the demo in README's first command.
INSTALL = "pip install -e . && "

#: How long a demo may take to build its cluster and listen.
START_TIMEOUT = 120


def readmeCommands():
    """
    The lines of README.md's first fenced shell block.
    """
    with open(README, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"^```(?:sh|bash|shell)\n(.*?)^```", text,
                      re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError("README.md has no fenced shell block")
    return [line for line in match.group(1).splitlines() if line.strip()]


def fetch(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def sha256File(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def annexObject(repo, key):
    """
    The path of C{key}'s content in the bare repository C{repo}, or
    L{None}.
    """
    top = os.path.join(repo, "annex", "objects")
    for dirpath, dirnames, filenames in os.walk(top):
        if key in filenames and os.path.basename(dirpath) == key:
            return os.path.join(dirpath, key)
    return None


class RunningDemo:
    """
    C{annexd demo ...} run by bash in a process group of its own, its
    stdout read line by line.

    @ivar lines: the stdout lines read so far.
    """

    def __init__(self, testcase, command, env, cwd):
        self.command = command
        self.errors = testcase.mktemp() + ".stderr"
        with open(self.errors, "wb") as err:
            self.process = subprocess.Popen(
                ["bash", "-c", command], cwd=cwd, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        testcase.addCleanup(self.close)
        testcase.addCleanup(self.stop)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self._eof = False
        self.lines = []

    def stderr(self):
        with open(self.errors, "rb") as f:
            return _text(f.read())

    def describe(self):
        return "%s\n--- stdout:\n%s\n--- stderr:\n%s" % (
            self.command, "\n".join(self.lines), self.stderr())

    def readLine(self, deadline):
        """
        The next stdout line, or L{None} at the end of stdout.

        @raise AssertionError: when none comes before C{deadline} (a
            L{time.monotonic} value).
        """
        while b"\n" not in self._buffer and not self._eof:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise AssertionError("annexd demo printed no more within its"
                                     " time:\n" + self.describe())
            data = os.read(self.process.stdout.fileno(), 65536)
            if data:
                self._buffer += data
            else:
                self._eof = True
        if not self._buffer:
            return None
        line, sep, self._buffer = self._buffer.partition(b"\n")
        line = _text(line)
        self.lines.append(line)
        return line

    def instructions(self, timeout=START_TIMEOUT):
        """
        Read stdout until the block of C{"  $ "} lines has ended.

        @return: the commands (without the C{"  $ "}).
        """
        deadline = time.monotonic() + timeout
        commands = []
        while True:
            line = self.readLine(deadline)
            if line is not None and line.startswith("  $ "):
                commands.append(line[4:])
            elif commands or line is None:
                break
        if not commands:
            raise AssertionError("annexd demo ended without instructions:"
                                 "\n" + self.describe())
        return commands

    def rest(self, timeout=30):
        """
        Everything else it prints, until it exits.
        """
        deadline = time.monotonic() + timeout
        while self.readLine(deadline) is not None:
            pass
        return self.lines

    def stop(self, timeout=30):
        """
        SIGTERM to its process group, and wait for the group to end
        (SIGKILL after C{timeout} seconds).

        @return: whether it ended on SIGTERM.
        """
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        ended = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None and not _groupAlive(group):
                ended = True
                break
            time.sleep(0.05)
        if not ended:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        return ended

    def close(self):
        self._selector.close()
        self.process.stdout.close()


def _groupAlive(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DemoTests(unittest.TestCase):
    """
    The demo as README.md tells a user to start it, with a real git-annex
    client.
    """

    def setUp(self):
        self.annex = AnnexEnvironment(self.mktemp())
        # `annexd` on PATH is this checkout's command run by this Python
        # (whether or not, or wherever, the package is installed).
        bindir = os.path.abspath(self.mktemp())
        os.makedirs(bindir)
        script = os.path.join(bindir, "annexd")
        with open(script, "w") as f:
            f.write("#!/bin/sh\nexec %s -c 'import sys; from annexd.cli "
                    "import main; sys.exit(main())' \"$@\"\n"
                    % (shlex.quote(sys.executable),))
        os.chmod(script, 0o755)
        self.env = dict(self.annex.env)
        self.env["PATH"] = os.pathsep.join([bindir, self.env["PATH"]])
        self.env["PYTHONPATH"] = os.pathsep.join(
            [_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])

    def demoCommand(self, directory, port, adminPort=True):
        """
        README.md's first command for C{directory} and C{port}, without
        its C{pip install -e . && }.
        """
        first = readmeCommands()[0]
        self.assertTrue(first.startswith(INSTALL + "annexd demo "
                                         + README_DEMO_DIR), first)
        command = first[len(INSTALL):]
        command = "%s --port %d" % (
            command.replace(README_DEMO_DIR, shlex.quote(directory)), port)
        if adminPort:
            command += " --admin-port %d" % (freePort(),)
        return command

    def startDemo(self, directory, port=None):
        port = port or freePort()
        # git-annex makes its object directories read-only.
        self.addCleanup(_make_writable, directory)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        demo = RunningDemo(self, self.demoCommand(directory, port), self.env,
                           cwd)
        return demo, port

    def stopDemo(self, demo):
        """
        SIGTERM to the demo's process group: every process in it ends, and
        the demo says it stopped.
        """
        self.assertTrue(demo.stop(), demo.describe())
        self.assertIn(demo.process.returncode, (0, -signal.SIGTERM),
                      demo.describe())
        self.assertIn("annexd demo stopped", demo.rest(), demo.describe())

    def runInstructions(self, commands):
        """
        Run each command with bash, in order, in a fresh directory; a
        C{cd} carries over to the next command.

        @return: the directory the last command ran in.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        self.addCleanup(_make_writable, cwd)
        where = self.mktemp() + ".cwd"
        for command in commands:
            script = '%s\nstatus=$?\npwd -P > %s\nexit "$status"\n' % (
                command, shlex.quote(os.path.abspath(where)))
            try:
                self.annex.run(["bash", "-c", script], cwd=cwd)
            except AnnexCommandError as e:
                self.fail("%r failed:\n%s" % (command, e))
            with open(where) as f:
                cwd = f.read().strip()
        return cwd

    def test_readmeDemo(self):
        """
        README.md's first command (its C{annexd demo /tmp/annexd-demo}
        part, on a fresh directory and a free port: C{pip install -e .}
        would reinstall the package that the other tests, run in parallel,
        import) builds a 3-node cluster, serves it and prints a block of
        commands.  Run verbatim by a real git-annex client, they all
        succeed: the file they add is on every node (checksums of the
        nodes' object files), C{git annex whereis} in the client lists the
        nodes, and SIGTERM stops the demo and everything it started.
        """
        directory = os.path.abspath(self.mktemp())
        demo, port = self.startDemo(directory)
        commands = demo.instructions()
        self.assertEqual(commands[0].split()[:3], [
            "git", "clone", "http://127.0.0.1:%d/gateway" % (port,)])
        client = self.runInstructions(commands)

        added = [c.split()[-1] for c in commands
                 if c.startswith("git annex add ")]
        self.assertEqual(len(added), 1, commands)
        name = added[0]
        digest = sha256File(os.path.join(client, name))
        key = self.annex.annex(client, "lookupkey", name).strip()
        nodes = sorted(os.listdir(os.path.join(directory, "nodes")))
        self.assertEqual(nodes, ["node1", "node2", "node3"])
        uuids = {}
        for node in nodes:
            repo = os.path.join(directory, "nodes", node)
            path = annexObject(repo, key)
            self.assertIsNotNone(path, "%s not on %s" % (key, node))
            self.assertEqual(sha256File(path), digest, node)
            uuids[node] = self.annex.config(repo, "annex.uuid")

        result = json.loads(self.annex.annex(
            client, "whereis", "--json", name).splitlines()[0])
        where = {entry["uuid"]: entry for entry in result["whereis"]}
        for node, uuid in uuids.items():
            self.assertIn(uuid, where, result)
            self.assertEqual(where[uuid]["description"],
                             "%s [origin-%s]" % (node, node))
        text = self.annex.annex(client, "whereis", name)
        for node, uuid in uuids.items():
            self.assertIn("%s -- %s [origin-%s]" % (uuid, node, node), text)

        # The status page it announced lists the nodes; its /metrics
        # counted the upload.
        [status] = [line.split(": ", 1)[1] for line in demo.lines
                    if line.strip().startswith("status page: ")]
        page = fetch(status).decode()
        for node in nodes:
            self.assertIn(node, page)
        self.assertIn("mycluster", page)
        samples = scrape(status + "metrics")
        self.assertEqual(sample(samples, "annexd_requests_total",
                                frontend="http", operation="put",
                                result="ok"), 1)
        self.assertEqual(sample(samples, "annexd_transfer_bytes_total",
                                direction="upload", frontend="http"),
                         os.path.getsize(os.path.join(client, name)))
        for node in nodes:
            self.assertEqual(sample(samples, "annexd_node_up", node=node), 1)

        self.stopDemo(demo)

    def test_rerunReuses(self):
        """
        Running the demo again on its directory reuses the cluster (same
        repositories) and serves it again.
        """
        directory = os.path.abspath(self.mktemp())
        demo, port = self.startDemo(directory)
        demo.instructions()
        self.stopDemo(demo)
        gateway = os.path.join(directory, "gateway")
        uuid = self.annex.config(gateway, "annex.uuid")

        demo, port = self.startDemo(directory)
        commands = demo.instructions()
        self.assertIn("reusing the annexd demo in %s" % (directory,),
                      demo.lines)
        self.assertEqual(self.annex.config(gateway, "annex.uuid"), uuid)
        url = "http://127.0.0.1:%d/gateway" % (port,)
        self.assertIn(url, commands[0])
        refs = self.annex.git(directory, "ls-remote", url)
        self.assertIn("refs/heads/git-annex", refs)
        self.stopDemo(demo)

    def test_interruptedSetupRedone(self):
        """
        A directory whose setup was interrupted (its marker says
        "building") is built again from scratch.
        """
        from annexd.demo import BUILDING, MARKER
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "gateway"))
        with open(os.path.join(directory, MARKER), "w") as f:
            f.write(BUILDING)
        demo, port = self.startDemo(directory)
        demo.instructions()
        self.assertIsNotNone(self.annex.config(
            os.path.join(directory, "gateway"), "annex.cluster.mycluster"))
        self.stopDemo(demo)

    def runDemo(self, directory, port):
        """
        Run README's demo command to its end (it is expected to refuse).

        @return: the L{subprocess.CompletedProcess} (text output).
        """
        return subprocess.run(
            ["bash", "-c", self.demoCommand(directory, port)], env=self.env,
            cwd=os.path.dirname(directory), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
            start_new_session=True)

    def test_notADemoRefused(self):
        """
        An existing directory that is neither empty nor a demo is refused
        with one line on stderr and exit status 2, and left alone.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "precious"), "w") as f:
            f.write("mine\n")
        result = self.runDemo(directory, freePort())
        self.assertEqual(result.returncode, 2, result)
        self.assertEqual(result.stdout, "")
        self.assertEqual(
            result.stderr,
            "annexd demo: error: %s exists and is not an annexd demo "
            "directory (give a new or empty directory)\n" % (directory,))
        self.assertEqual(os.listdir(directory), ["precious"])

    def test_adminPortTaken(self):
        """
        When the port after the HTTP port is taken (and no --admin-port was
        given), the demo runs without its status page and says so.
        """
        for attempt in range(20):
            taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(taken.close)
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1] - 1
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
            finally:
                probe.close()
        else:
            self.fail("no free port below a taken one")
        directory = os.path.abspath(self.mktemp())
        self.addCleanup(_make_writable, directory)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        demo = RunningDemo(self, self.demoCommand(directory, port,
                                                  adminPort=False),
                           self.env, cwd)
        commands = demo.instructions()
        self.assertIn("http://127.0.0.1:%d/gateway" % (port,), commands[0])
        self.assertIn("port %d is taken: no status page (--admin-port N)"
                      % (port + 1,), demo.lines)
        self.assertFalse([line for line in demo.lines
                          if "status page: " in line])
        self.stopDemo(demo)

    def test_portBusy(self):
        """
        A port in use is refused with one line on stderr (no traceback)
        and a non-zero exit status, before anything is built.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        directory = os.path.abspath(self.mktemp())
        result = self.runDemo(directory, port)
        self.assertNotEqual(result.returncode, 0, result)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("port %d" % (port,), lines[0])
        self.assertIn("in use", lines[0])
        self.assertFalse(os.path.exists(directory))
