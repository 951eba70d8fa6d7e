"""
annexd-shell at the protocol level, with real git-annex nodes: faults and
bad input.

The tests run C{annexd-shell} as a child process, exactly as sshd would
(C{-c "git-annex-shell 'p2pstdio' ..."}), and talk to it with annexd's own
P2P client, so that they can do what a stock client cannot be made to do on
cue: kill a node mid-upload, send a malformed key, hang up mid-download.
"""

import hashlib
import os
import signal
import subprocess
import sys

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from annexd.interfaces import RepositoryError
from annexd.nodes.process import spawnP2P
from annexd.protocol import messages as m
from annexd.protocol.client import P2PClient
from annexd.protocol.keys import Key
from annexd.streams import HashingConsumer
from tests.support.annex import cluster_for

CLIENT_UUID = "c0ffee00-0000-4000-8000-000000000001"
MiB = 1024 * 1024


def keyOf(data):
    return Key.parse(b"SHA256E-s%d--%s.bin" % (
        len(data), hashlib.sha256(data).hexdigest().encode()))


def processesMentioning(text):
    """
    The pids of running processes whose command line contains C{text}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read()
            with open("/proc/%s/stat" % entry) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and text.encode() in cmdline:
            found.append(int(entry))
    return found


async def pollUntil(predicate, seconds=20.0, step=0.05):
    """
    Poll C{predicate} until it is true; fail after C{seconds}.
    """
    for _ in range(int(seconds / step)):
        if predicate():
            return
        await task.deferLater(reactor, step, lambda: None)
    raise AssertionError("condition not reached in %s s" % (seconds,))


class ShellSessionTests(unittest.TestCase):
    """
    annexd-shell's P2P sessions with a 3-node cluster.
    """

    timeout = 300

    def setUp(self):
        self.cluster = cluster_for(self, nodes=3)
        self.nodeUUIDs = [n.uuid.encode() for n in self.cluster.nodes]

    async def session(self, target, *options):
        """
        Start annexd-shell for C{target} and open a P2P session with it.
        """
        command = "git-annex-shell 'p2pstdio' '%s' '%s' --uuid %s" % (
            self.cluster.gateway.path, CLIENT_UUID, target)
        args = [sys.executable, "-m", "annexd.shell", *options, "-c", command]
        bridge = spawnP2P(reactor, sys.executable, args,
                          dict(self.cluster.env.env), peer="annexd-shell")
        self.addCleanup(self._end, bridge)
        client = P2PClient(bridge.connection, target.encode())
        await client.handshake()
        return bridge, client

    async def _end(self, bridge):
        bridge.connection.close()
        await bridge.ended

    async def put(self, client, data, key=None):
        key = key or keyOf(data)
        upload = await client.put(key, b"f.bin")
        sink = upload.receive(len(data) - upload.offset)
        sink.write(data[upload.offset:])
        return await upload.finish(True)

    def holders(self, key):
        digest = key.name.split(b".")[0].decode()
        return {n.uuid.encode() for n in self.cluster.nodes
                if self.cluster.node_sha256(n, key.raw.decode()) == digest}

    async def test_putCluster(self):
        """
        A PUT to the cluster stores verified content on every node, names
        them all, and records them in the gateway's git-annex branch.
        """
        bridge, client = await self.session(self.cluster.cluster_uuid)
        data = os.urandom(3 * MiB)
        key = keyOf(data)
        outcome = await self.put(client, data)
        self.assertTrue(outcome.ok)
        self.assertEqual(set(outcome.uuids), set(self.nodeUUIDs))
        self.assertEqual(self.holders(key), set(self.nodeUUIDs))
        self.assertTrue(await client.checkPresent(key))
        await self._end(bridge)
        whereis = self.cluster.env.annex(
            self.cluster.gateway.path, "whereis", "--key", key.raw.decode())
        for node in self.cluster.nodes:
            self.assertIn(node.uuid, whereis)

    async def test_unreachableNode(self):
        """
        A node that cannot be reached does not end the session: the other
        nodes store the content, the answer names exactly them, and the next
        request works.
        """
        node3 = self.cluster.nodes[2]
        os.rename(node3.path, node3.path + ".gone")
        self.addCleanup(os.rename, node3.path + ".gone", node3.path)
        bridge, client = await self.session(self.cluster.cluster_uuid)
        data = os.urandom(MiB)
        key = keyOf(data)
        outcome = await self.put(client, data)
        self.assertTrue(outcome.ok)
        self.assertEqual(set(outcome.uuids), set(self.nodeUUIDs[:2]))
        self.assertEqual(self.holders(key), set(self.nodeUUIDs[:2]))
        self.assertTrue(await client.checkPresent(key))
        other = os.urandom(1000)
        self.assertTrue((await self.put(client, other)).ok)

    async def test_nodeKilledMidPut(self):
        """
        A node killed in the middle of an upload is dropped; the others
        complete, the answer names exactly the nodes holding verified
        content, and the session goes on.
        """
        bridge, client = await self.session(self.cluster.cluster_uuid)
        data = os.urandom(24 * MiB)
        key = keyOf(data)
        upload = await client.put(key, b"big.bin")
        sink = upload.receive(len(data))
        sink.write(data[:4 * MiB])
        node2 = self.cluster.nodes[1].path
        await pollUntil(lambda: processesMentioning(node2))
        for pid in processesMentioning(node2):
            os.kill(pid, signal.SIGKILL)
        sink.write(data[4 * MiB:])
        outcome = await upload.finish(True)
        self.assertTrue(outcome.ok)
        expected = {self.nodeUUIDs[0], self.nodeUUIDs[2]}
        self.assertEqual(set(outcome.uuids), expected)
        self.assertEqual(self.holders(key), expected)
        self.assertTrue(await client.checkPresent(key))

    async def test_getSkipsNodeWithout(self):
        """
        A GET from the cluster is served by a node that has the content,
        whichever that is; content no node has gets DATA 0 + INVALID.
        """
        data = os.urandom(MiB + 5)
        key = self.cluster.add_file("only3.bin", data)
        self.cluster.client_annex("copy", "--to", "node1path", "only3.bin")
        self.cluster.client_annex("move", "--from", "node1path", "--to", "here",
                                  "only3.bin", check=False)
        # Put it on node3 only, through git-annex's own proxy.
        self.cluster.client_annex("copy", "--to", "gw-node3", "only3.bin")
        bridge, client = await self.session(self.cluster.cluster_uuid)
        download = await client.get(Key.parse(key.encode()), None, 0)
        consumer = HashingConsumer()
        self.assertTrue(await download.deliver(consumer))
        await download.finish(True)
        self.assertEqual(consumer.hexdigest(), hashlib.sha256(data).hexdigest())
        missing = await client.get(keyOf(b"nobody has this"), None, 0)
        self.assertEqual(missing.length, 0)
        self.assertFalse(await missing.deliver(None))
        await missing.finish(False)

    async def test_malformedKey(self):
        """
        A malformed key gets ERROR unknown command; nothing is written and
        the session goes on.
        """
        bridge, client = await self.session(self.cluster.cluster_uuid)
        client.connection.transport.write(b"PUT x.bin notakey\n")
        reply = await client.connection.readMessage()
        self.assertEqual(reply, m.Error(b"unknown command"))
        client.connection.transport.write(b"CHECKPRESENT SHA256E-s1--a/../b\n")
        reply = await client.connection.readMessage()
        self.assertEqual(reply, m.Error(b"unknown command"))
        self.assertFalse(await client.checkPresent(keyOf(b"x")))

    async def test_readOnly(self):
        """
        Read-only refuses PUT and REMOVE with git-annex-shell's message and
        writes nothing; CHECKPRESENT still works.
        """
        bridge, client = await self.session(self.cluster.cluster_uuid,
                                            "--readonly")
        data = b"read only"
        key = keyOf(data)
        error = await self.assertFailure(client.put(key, None), RepositoryError)
        self.assertEqual(error.text,
                         b"this repository is read-only; write access denied")
        error = await self.assertFailure(client.remove(key), RepositoryError)
        self.assertEqual(error.text,
                         b"this repository is read-only; write access denied")
        self.assertFalse(await client.checkPresent(key))
        self.assertEqual(self.holders(key), set())

    async def test_appendOnly(self):
        """
        Append-only accepts PUT and refuses REMOVE.
        """
        bridge, client = await self.session(self.cluster.cluster_uuid,
                                            "--appendonly")
        data = os.urandom(1000)
        key = keyOf(data)
        self.assertTrue((await self.put(client, data)).ok)
        error = await self.assertFailure(client.remove(key), RepositoryError)
        self.assertEqual(error.text,
                         b"this repository is append-only; removal denied")
        self.assertEqual(self.holders(key), set(self.nodeUUIDs))

    async def test_disconnectMidGet(self):
        """
        A client that hangs up in the middle of a GET leaves no process
        behind: annexd-shell and every git-annex-shell it started exit.
        """
        data = os.urandom(32 * MiB)
        bridge, client = await self.session(self.cluster.cluster_uuid)
        key = keyOf(data)
        self.assertTrue((await self.put(client, data)).ok)
        download = await client.get(key, None, 0)

        class HangUp(HashingConsumer):
            def write(self, chunk):
                HashingConsumer.write(self, chunk)
                if self.length >= MiB:
                    client.connection.abort("test hangs up")

        d = download.deliver(HangUp())
        await self.assertFailure(d, Exception)
        await bridge.ended
        gateway = self.cluster.base_dir
        await pollUntil(lambda: not processesMentioning(gateway))

    async def test_largePutMemory(self):
        """
        200 MiB to the 3-node cluster: annexd-shell's peak RSS stays under
        100 MiB, and no spool file is made when the nodes keep pace.
        """
        bridge, client = await self.session(self.cluster.cluster_uuid)
        size = 200 * MiB
        digest = hashlib.sha256()
        block = os.urandom(MiB)
        for i in range(200):
            digest.update(i.to_bytes(8, "big") + block[8:])
        key = Key.parse(b"SHA256E-s%d--%s.bin" % (size, digest.hexdigest().encode()))
        upload = await client.put(key, b"big.bin")
        sink = upload.receive(size)
        producer = _BlockProducer(sink, block, 200)
        sink.registerProducer(producer, True)
        await producer.done
        sink.unregisterProducer()
        outcome = await upload.finish(True)
        self.assertEqual(set(outcome.uuids), set(self.nodeUUIDs))
        with open("/proc/%d/status" % bridge.transport.pid) as f:
            status = dict(line.split(":", 1) for line in f)
        peak = int(status["VmHWM"].split()[0]) * 1024
        self.assertLess(peak, 100 * MiB)
        self.assertEqual(self.holders(key), set(self.nodeUUIDs))
        self.assertNotIn(b"spool", bridge.stderr)


class _BlockProducer:
    """
    A push producer writing C{count} numbered 1 MiB blocks into a consumer.
    """

    def __init__(self, consumer, block, count):
        self.consumer = consumer
        self.block = block
        self.count = count
        self.sent = 0
        self.paused = False
        self.done = defer.Deferred()
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.count:
            self.consumer.write(self.sent.to_bytes(8, "big") + self.block[8:])
            self.sent += 1
        if self.sent == self.count and not self.done.called:
            self.done.callback(None)

    def stopProducing(self):
        if not self.done.called:
            self.done.errback(Exception("stopped"))


class ShellRefusalTests(unittest.TestCase):
    """
    Commands annexd-shell refuses before any protocol output.
    """

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)

    def shell(self, command, *options):
        return subprocess.run(
            [sys.executable, "-m", "annexd.shell", *options, "-c", command],
            capture_output=True, env=self.cluster.env.env, timeout=60,
            stdin=subprocess.DEVNULL)

    def assertRefused(self, result, text):
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, b"")
        self.assertIn(text.encode(), result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)
        self.assertEqual(result.stderr.count(b"\n"), 1)

    def test_unknownUUID(self):
        """
        A uuid that is neither the gateway, a node nor a cluster gets
        git-annex-shell's answer.
        """
        result = self.shell("git-annex-shell 'p2pstdio' '%s' 'c' --uuid %s" % (
            self.cluster.gateway.path, "00000000-1111-2222-3333-444444444444"))
        self.assertRefused(result, "expected repository UUID 00000000-1111-")

    def test_knownButNotProxied(self):
        """
        A repository the gateway knows of but does not proxy is refused as
        git-annex-shell refuses it.
        """
        env, gateway = self.cluster.env, self.cluster.gateway.path
        other = os.path.join(self.cluster.base_dir, "other.git")
        env.run(["git", "init", "-q", "--bare", other], cwd=self.cluster.base_dir)
        env.annex(other, "init", "other")
        env.git(gateway, "remote", "add", "other", other)
        env.git(gateway, "fetch", "-q", "other")
        env.annex(gateway, "merge")
        uuid = env.git(other, "config", "annex.uuid").strip()
        result = self.shell("git-annex-shell 'p2pstdio' '%s' 'c' --uuid %s" % (
            gateway, uuid))
        self.assertRefused(result,
                           "not configured to proxy for repository other")

    def test_outsideRepo(self):
        """
        A path outside --repo is refused.
        """
        result = self.shell("git-annex-shell 'p2pstdio' '%s' 'c' --uuid %s" % (
            self.cluster.gateway.path, self.cluster.gateway.uuid),
            "--repo", self.cluster.nodes[0].path)
        self.assertRefused(result, "is not a repository served here")

    def test_configlistProxied(self):
        """
        configlist cannot be proxied, as with git-annex-shell.
        """
        result = self.shell("git-annex-shell 'configlist' '%s' --uuid %s" % (
            self.cluster.gateway.path, self.cluster.cluster_uuid))
        self.assertRefused(result, "Cannot proxy configlist command.")

    def test_limited(self):
        """
        GIT_ANNEX_SHELL_LIMITED refuses git commands.
        """
        result = subprocess.run(
            [sys.executable, "-m", "annexd.shell", "-c",
             "git-upload-pack '%s'" % (self.cluster.gateway.path,)],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
            env=dict(self.cluster.env.env, GIT_ANNEX_SHELL_LIMITED="1"))
        self.assertRefused(result, "GIT_ANNEX_SHELL_LIMITED")

    def test_unknownSubcommand(self):
        """
        An unknown subcommand is refused.
        """
        self.assertRefused(self.shell("git-annex-shell 'frob' '/tmp'"),
                           "frob is not a command annexd-shell serves")
