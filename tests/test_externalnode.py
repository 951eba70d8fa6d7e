"""
Tests for L{annexd.nodes.external}: external special remotes as nodes,
driven with real programs, in the gateway of a real git-annex cluster where
git-annex itself set the remotes up (C{git annex initremote}).

Two programs: C{tests/support/git-annex-remote-testdir}, written for these
tests with PyPI's C{annexremote} (it can be told to pause, crash or
misbehave), and the real C{git-annex-remote-rclone} over rclone's local
backend.  What annexd stores, git-annex checks (C{git annex fsck --from});
what git-annex stores, annexd retrieves.
"""

import hashlib
import json
import os
import shutil
import sys

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.annex.state import GatewayState
from annexd.interfaces import (
    IRepository, IStoresFiles, Outcome, ProtocolNotSupported,
    RepositoryError, RepositoryUnavailable)
from annexd.nodes import external
from annexd.nodes.external import ExternalNode, hashDirLower, hashDirMixed
from annexd.protocol.keys import Key
from annexd.router.cluster import Cluster, ClusterNode
from tests.support import rclone
from tests.support.annex import cluster_for

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
TESTDIR = os.path.join(SUPPORT, "git-annex-remote-testdir")

try:
    import annexremote  # noqa: F401
except ImportError:
    annexremote = None


def keyOf(data, extension=b".bin"):
    return Key.parse(b"SHA256E-s%d--%s%s" % (
        len(data), hashlib.sha256(data).hexdigest().encode(), extension))


def content(size, seed):
    """
    C{size} bytes, different for every C{seed}, not compressible.
    """
    block = hashlib.sha512(seed.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


@implementer(IConsumer)
class Collector:
    """
    A consumer that keeps what it is given.

    @ivar firstByte: fires when the first bytes arrive.
    """

    def __init__(self):
        self.data = bytearray()
        self.producer = None
        self.firstByte = defer.Deferred()

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not streaming:
            while self.producer is producer:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.data += data
        if data and not self.firstByte.called:
            self.firstByte.callback(len(self.data))


async def waitFor(condition, timeout=10.0):
    """
    Wait (polling) until C{condition()} is true, for at most C{timeout}
    seconds; then return its last value.
    """
    waited = 0.0
    while not condition() and waited < timeout:
        await task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05
    return condition()


class ExternalNodeMixin:
    """
    A cluster whose gateway has an external special remote, and helpers.
    """

    timeout = 180
    remoteName = "t"

    def setUpCluster(self):
        self.cluster = cluster_for(self, nodes=1)
        self.gateway = self.cluster.gateway.path
        self.bindir = os.path.abspath(self.mktemp())
        os.makedirs(self.bindir)
        self.env = dict(self.cluster.env.env)
        self.spool = os.path.abspath(self.mktemp())

    def addToPath(self, directory):
        self.env["PATH"] = directory + os.pathsep + self.env["PATH"]

    def annex(self, *args, check=True, env=None):
        full = dict(self.env)
        full.update(env or {})
        result = self.cluster.env.run(["git-annex", *args], cwd=self.gateway,
                                      env=full, check=check)
        return result

    def loadRemote(self, name=None):
        """
        The remote's uuid, remote.log configuration and git settings, as
        the router reads them.
        """
        state = GatewayState.load(self.gateway, env=self.env)
        remote = state.remote(name or self.remoteName)
        config = state.specialConfig(remote)
        self.assertIsNotNone(config)
        return remote.uuid, config, remote.gitConfig

    def makeNode(self, extraEnv=None, config=None, maxProcesses=1,
                 diskReserve=0, name=None, gitConfig=None):
        uuid, logged, git = self.loadRemote(name)
        if config is not None:
            logged = dict(logged, **config)
        git = dict(git, **(gitConfig or {}))
        env = dict(self.env)
        env.update(extraEnv or {})
        node = ExternalNode(reactor, uuid, name or self.remoteName, logged,
                            git, self.gateway, environment=env,
                            maxProcesses=maxProcesses,
                            spoolDirectory=self.spool,
                            diskReserve=diskReserve)
        self.addCleanup(node.close)
        return node

    def assertSpoolEmpty(self):
        left = os.listdir(self.spool) if os.path.isdir(self.spool) else []
        self.assertEqual(left, [], "the spool directory is not empty")

    async def putBytes(self, node, data, key=None, valid=True, chunk=65536):
        key = key or keyOf(data)
        upload = await node.put(key, b"some file.bin")
        self.assertEqual(upload.offset, 0)
        sink = upload.receive(len(data))
        for i in range(0, len(data), chunk):
            sink.write(data[i:i + chunk])
        await sink.done
        return await upload.finish(valid)

    async def getAll(self, node, key, offset=0):
        download = await node.get(key, b"some file.bin", offset)
        collector = Collector()
        valid = await download.deliver(collector)
        await download.finish(True)
        return download.length, valid, bytes(collector.data)

    def storeWithGitAnnex(self, data, remote=None):
        """
        git-annex in the gateway stores C{data} on the remote (setkey, then
        copy --to).
        """
        key = keyOf(data)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        self.annex("setkey", key.raw.decode(), path)
        self.annex("copy", "--to", remote or self.remoteName, "--key",
                   key.raw.decode())
        self.annex("drop", "--force", "--key", key.raw.decode())
        return key

    def gitAnnexFsck(self, key, remote=None):
        """
        git-annex's fsck of C{key} on the remote, after recording it there.

        @return: whether fsck passed, and what it said.
        """
        remote = remote or self.remoteName
        uuid = self.loadRemote(remote)[0].decode()
        self.annex("setpresentkey", key.raw.decode(), uuid, "1")
        result = self.annex("fsck", "--from", remote, "--key",
                            key.raw.decode(), check=False)
        said = (result.stdout + result.stderr).decode("utf-8", "replace")
        return result.returncode == 0 and " ok" in said, said

    async def clusterPut(self, nodes, data):
        """
        PUT C{data} through a L{Cluster} of C{nodes} (L{ExternalNode}s):
        the cluster spools it once and hands the file to each.
        """
        cluster = Cluster(
            b"00000000-0000-0000-0001-000000000001",
            [ClusterNode(node.uuid, node.name, 200, node) for node in nodes],
            reactor=reactor, spoolDirectory=self.spool, diskReserve=0)
        key = keyOf(data)
        upload = await cluster.put(key, b"f.bin")
        sink = upload.receive(len(data))
        sink.write(data)
        outcome = await upload.finish(True)
        # One spool, shared by the nodes that store from files.
        self.assertEqual(cluster.spoolsMade, 1)
        return outcome

    def gitAnnexHas(self, key, remote=None):
        result = self.annex("checkpresentkey", key.raw.decode(),
                            remote or self.remoteName, check=False)
        self.assertIn(result.returncode, (0, 1), result)
        return result.returncode == 0


class TestDirMixin(ExternalNodeMixin):

    def setUp(self):
        if annexremote is None:
            raise unittest.SkipTest(
                "annexremote is not installed (pip install annexremote)")
        self.setUpCluster()
        wrapper = os.path.join(self.bindir, "git-annex-remote-testdir")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec %s %s \"$@\"\n" % (sys.executable,
                                                        TESTDIR))
        os.chmod(wrapper, 0o755)
        self.addToPath(self.bindir)
        self.store = os.path.abspath(self.mktemp())
        self.log = os.path.abspath(self.mktemp())
        self.annex("initremote", self.remoteName, "type=external",
                   "externaltype=testdir", "encryption=none",
                   "directory=" + self.store, *self.remoteOptions())

    def remoteOptions(self):
        return ()

    def stored(self, key):
        """
        What the test remote holds for C{key}, or L{None}.
        """
        path = os.path.join(self.store, hashDirLower(key.raw), key.raw.decode())
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def received(self):
        """
        The lines the test remote received (TESTDIR_LOG).
        """
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return f.read().splitlines()

    def logging(self, **more):
        env = {"TESTDIR_LOG": self.log}
        env.update(more)
        return env


class TestDirTests(TestDirMixin, unittest.TestCase):
    """
    L{ExternalNode} with the annexremote test program.
    """

    def test_interface(self):
        """
        An external node provides L{IRepository} and L{IStoresFiles}, has
        no bypass, and names itself.
        """
        node = self.makeNode()
        self.assertTrue(verifyObject(IRepository, node))
        self.assertTrue(verifyObject(IStoresFiles, node))
        self.assertEqual(node.bypass, ())
        self.assertIs(node.needsFile, True)
        self.assertEqual(node.uuid, self.loadRemote()[0])
        self.assertEqual(node.name, "t")

    async def test_putThenGitAnnexFsck(self):
        """
        Content annexd puts is stored by the program under its key, passes
        git-annex's own fsck of the remote, and is reported present; the
        spool is gone.  (A corrupted copy makes the same fsck fail.)
        """
        node = self.makeNode()
        data = content(300000, "put")
        key = keyOf(data)
        self.assertFalse(await node.checkPresent(key))
        outcome = await self.putBytes(node, data)
        self.assertEqual(outcome, Outcome(True))
        self.assertSpoolEmpty()
        self.assertEqual(self.stored(key), data)
        self.assertTrue(await node.checkPresent(key))
        passed, said = self.gitAnnexFsck(key)
        self.assertTrue(passed, said)
        # The control: git-annex's fsck does look at the content.
        path = os.path.join(self.store, hashDirLower(key.raw),
                            key.raw.decode())
        with open(path, "r+b") as f:
            f.write(b"X")
        passed, said = self.gitAnnexFsck(key)
        self.assertFalse(passed, said)

    async def test_gitAnnexStoresAnnexdRetrieves(self):
        """
        Content git-annex stored on the remote is retrieved whole by
        annexd, VALID, and the retrieval's file is removed.
        """
        data = content(200000, "retrieve")
        key = self.storeWithGitAnnex(data)
        node = self.makeNode()
        self.assertTrue(await node.checkPresent(key))
        length, valid, got = await self.getAll(node, key)
        self.assertEqual((length, valid), (len(data), True))
        self.assertEqual(got, data)
        self.assertSpoolEmpty()

    async def test_getFromOffset(self):
        """
        A get from an offset delivers exactly the rest of the content.
        """
        data = content(150000, "offset")
        key = self.storeWithGitAnnex(data)
        node = self.makeNode()
        length, valid, got = await self.getAll(node, key, 100001)
        self.assertEqual((length, valid, got),
                         (len(data) - 100001, True, data[100001:]))
        length, valid, got = await self.getAll(node, key, len(data))
        self.assertEqual((length, valid, got), (0, True, b""))
        self.assertSpoolEmpty()

    async def test_getAbsent(self):
        """
        A key the remote does not have (TRANSFER-FAILURE before any byte)
        is a download of length 0 whose verdict is INVALID, as from a P2P
        node that lacks it; the program is reused afterwards.
        """
        node = self.makeNode()
        key = keyOf(b"never stored")
        download = await node.get(key, None, 0)
        self.assertEqual(download.length, 0)
        self.assertIs(await download.deliver(None), False)
        await download.finish(False)
        self.assertSpoolEmpty()
        self.assertFalse(await node.checkPresent(key))
        self.assertEqual(node.status()["started"], 1)

    async def test_remove(self):
        """
        REMOVE takes the content away (git-annex agrees), and removing
        absent content succeeds too.
        """
        data = content(5000, "remove")
        key = self.storeWithGitAnnex(data)
        node = self.makeNode()
        self.assertTrue(self.gitAnnexHas(key))
        self.assertEqual(await node.remove(key), Outcome(True))
        self.assertFalse(await node.checkPresent(key))
        self.assertFalse(self.gitAnnexHas(key))
        self.assertEqual(await node.remove(key), Outcome(True))

    async def test_badContentRefused(self):
        """
        Content that does not match its key, or that the sender says is
        invalid, is not stored: no TRANSFER STORE reaches the program.
        """
        node = self.makeNode(self.logging())
        data = content(100000, "bad")
        key = keyOf(data)
        wrong = bytearray(data)
        wrong[5000] ^= 1
        self.assertEqual(await self.putBytes(node, bytes(wrong), key=key),
                         Outcome(False))
        self.assertSpoolEmpty()
        self.assertEqual(await self.putBytes(node, data, valid=False),
                         Outcome(False))
        self.assertSpoolEmpty()
        self.assertIsNone(self.stored(key))
        self.assertFalse(await node.checkPresent(key))
        self.assertEqual([line for line in self.received()
                          if line.startswith("TRANSFER")], [])
        # The control: good content is stored, and the log shows it.
        self.assertEqual(await self.putBytes(node, data), Outcome(True))
        self.assertEqual([line.split()[:3] for line in self.received()
                          if line.startswith("TRANSFER")],
                         [["TRANSFER", "STORE", key.raw.decode()]])

    async def test_storeFile(self):
        """
        storeFile stores the caller's file (left in place, unchanged) and
        git-annex's fsck agrees.
        """
        node = self.makeNode()
        data = content(70000, "storefile")
        key = keyOf(data)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(await node.storeFile(key, path), Outcome(True))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.stored(key), data)
        self.assertSpoolEmpty()
        passed, said = self.gitAnnexFsck(key)
        self.assertTrue(passed, said)

    async def test_clusterStoresFromOneSpool(self):
        """
        Through a cluster, two external nodes store the content from the
        cluster's one spool file; git-annex's fsck passes on both; the
        spool directory is empty afterwards.
        """
        other = os.path.abspath(self.mktemp())
        self.annex("initremote", "t2", "type=external",
                   "externaltype=testdir", "encryption=none",
                   "directory=" + other)
        nodes = [self.makeNode(), self.makeNode(name="t2")]
        data = content(120000, "cluster")
        key = keyOf(data)
        outcome = await self.clusterPut(nodes, data)
        self.assertTrue(outcome.ok)
        self.assertEqual(set(outcome.uuids), {n.uuid for n in nodes})
        self.assertSpoolEmpty()
        for remote in ("t", "t2"):
            passed, said = self.gitAnnexFsck(key, remote)
            self.assertTrue(passed, said)

    async def test_routerMakesExternalNodes(self):
        """
        The router makes an external node of a special remote that is a
        node of the gateway's cluster: a cluster PUT reaches it (from the
        cluster's spool) and the git node; git-annex's fsck passes; the
        gateway's annex/tmp keeps nothing.
        """
        from annexd.router.router import Router
        self.cluster.env.git(self.gateway, "config",
                             "remote.t.annex-cluster-node", "mycluster")
        self.annex("updatecluster")
        state = GatewayState.load(self.gateway, env=self.env)
        router = Router(reactor, state, environment=self.env, share=True)
        self.addCleanup(router.close)
        cluster = router.resolve(self.cluster.cluster_uuid.encode(),
                                 state.uuid)
        uuid = self.loadRemote()[0]
        nodes = {n.uuid: n.repository for n in cluster.nodes}
        self.assertIsInstance(nodes[uuid], ExternalNode)
        data = content(90000, "router")
        key = keyOf(data)
        upload = await cluster.put(key, b"f.bin")
        upload.receive(len(data)).write(data)
        outcome = await upload.finish(True)
        self.assertEqual(set(outcome.uuids), set(nodes))
        self.assertEqual(cluster.spoolsMade, 1)
        passed, said = self.gitAnnexFsck(key)
        self.assertTrue(passed, said)
        self.assertEqual(self.cluster.node_sha256(1, key.raw.decode()),
                         hashlib.sha256(data).hexdigest())
        tmp = os.path.join(state.gitDir, "annex", "tmp")
        self.assertEqual([f for f in os.listdir(tmp)
                          if f.startswith("annexd-")], [])

    async def test_diskReserve(self):
        """
        An upload that would leave less than annex.diskreserve free is
        refused when offered, with a clear reason, before any byte is
        spooled and without reaching the program.
        """
        os.makedirs(self.spool, exist_ok=True)
        free = shutil.disk_usage(self.spool).free
        data = content(10000, "reserve")
        key = keyOf(data)
        node = self.makeNode(self.logging(), diskReserve=free + 10 ** 9)
        e = await self.assertFailure(node.put(key, None), RepositoryError)
        self.assertIn("annex.diskreserve", str(e))
        self.assertIn("10000", str(e))
        self.assertSpoolEmpty()
        self.assertEqual(self.received(), [])
        # The same node below the reserve takes it.
        node.diskReserve = free - 10 ** 9
        self.assertEqual(await self.putBytes(node, data), Outcome(True))
        self.assertSpoolEmpty()

    async def test_programMissing(self):
        """
        A remote whose program is not installed is unavailable, says why,
        and is marked down (later requests fail at once).
        """
        node = self.makeNode(
            gitConfig={"annex-externaltype": "nosuchthing"})
        e = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                     RepositoryUnavailable)
        self.assertIn("git-annex-remote-nosuchthing", str(e))
        self.assertIn("not installed", str(e))
        status = node.status()
        self.assertFalse(status["up"])
        self.assertIn("nosuchthing", status["error"])
        for d in (node.get(keyOf(b"x"), None, 0), node.put(keyOf(b"x"), None),
                  node.remove(keyOf(b"x"))):
            e = await self.assertFailure(d, RepositoryUnavailable)
            self.assertIn("is down", str(e))
        self.assertSpoolEmpty()

    async def test_crashMidStore(self):
        """
        A program that dies while storing fails the upload with what it
        said on stderr; the spool is removed and the next request gets a
        new process.
        """
        node = self.makeNode({"TESTDIR_CRASH": "store:100000"})
        data = content(300000, "crashstore")
        d = defer.ensureDeferred(self.putBytes(node, data))
        d.addTimeout(60, reactor)
        e = await self.assertFailure(d, RepositoryUnavailable)
        self.assertIn("crashing as asked", str(e))
        self.assertIn("exited with status 3", str(e))
        self.assertSpoolEmpty()
        self.assertFalse(await node.checkPresent(keyOf(data)))
        self.assertEqual(node.status()["started"], 2)

    async def test_crashMidRetrieve(self):
        """
        A program that dies while retrieving (bytes already streamed)
        fails the delivery with its stderr, without hanging.
        """
        data = content(400000, "crashretrieve")
        key = self.storeWithGitAnnex(data)
        signal = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_CRASH": "retrieve:150000",
                              "TESTDIR_PAUSE": "100000:" + signal})
        download = await node.get(key, None, 0)
        self.assertEqual(download.length, len(data))
        collector = Collector()
        d = download.deliver(collector)
        await collector.firstByte
        with open(signal, "w"):
            pass
        d.addTimeout(60, reactor)
        e = await self.assertFailure(d, RepositoryUnavailable)
        self.assertIn("crashing as asked", str(e))
        self.assertLessEqual(len(collector.data), 150000)
        self.assertEqual(bytes(collector.data), data[:len(collector.data)])
        await download.finish(False)
        self.assertSpoolEmpty()

    async def test_failureAfterBytes(self):
        """
        A TRANSFER-FAILURE once bytes were streamed ends the stream short
        with the verdict INVALID.
        """
        data = content(300000, "failafter")
        key = self.storeWithGitAnnex(data)
        signal = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_FAIL": "retrieve:100000",
                              "TESTDIR_PAUSE": "50000:" + signal})
        download = await node.get(key, None, 0)
        self.assertEqual(download.length, len(data))
        collector = Collector()
        d = download.deliver(collector)
        await collector.firstByte
        with open(signal, "w"):
            pass
        d.addTimeout(30, reactor)
        self.assertIs(await d, False)
        self.assertGreater(len(collector.data), 0)
        self.assertLessEqual(len(collector.data), 100000)
        self.assertEqual(bytes(collector.data), data[:len(collector.data)])
        await download.finish(False)
        self.assertSpoolEmpty()
        # The program is fine: it is reused.
        self.assertTrue(await node.checkPresent(key))
        self.assertEqual(node.status()["started"], 1)

    async def test_streamingStartsBeforeTransferEnds(self):
        """
        From a program that says ORDERED, the download is handed out and
        its first bytes arrive while the program is still retrieving: it
        waits, half way, for a file the test only makes once bytes came.
        """
        data = content(600000, "stream")
        key = self.storeWithGitAnnex(data)
        signal = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_PAUSE": "300000:" + signal})
        d = node.get(key, None, 0)
        d.addTimeout(30, reactor)
        download = await d
        self.assertTrue(node.ordered)
        self.assertEqual(download.length, len(data))
        collector = Collector()
        delivered = download.deliver(collector)
        first = collector.firstByte
        first.addTimeout(30, reactor)
        await first
        # The program is still waiting for the signal: what arrived is at
        # most its first half.
        self.assertFalse(os.path.exists(signal))
        self.assertFalse(delivered.called)
        self.assertLessEqual(len(collector.data), 300000)
        with open(signal, "w"):
            pass
        delivered.addTimeout(30, reactor)
        self.assertIs(await delivered, True)
        self.assertEqual(bytes(collector.data), data)
        await download.finish(True)
        self.assertSpoolEmpty()

    async def test_unorderedWaitsForTheWholeFile(self):
        """
        From a program that does not say ORDERED, nothing is handed out
        before the file is complete.
        """
        data = content(200000, "unordered")
        key = self.storeWithGitAnnex(data)
        signal = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_PAUSE": "100000:" + signal,
                              "TESTDIR_ORDERED": "unsupported"})
        d = node.get(key, None, 0)
        await task.deferLater(reactor, 1.0, lambda: None)
        self.assertFalse(d.called)
        with open(signal, "w"):
            pass
        d.addTimeout(30, reactor)
        download = await d
        self.assertIs(node.ordered, False)
        collector = Collector()
        self.assertIs(await download.deliver(collector), True)
        self.assertEqual(bytes(collector.data), data)
        await download.finish(True)
        self.assertSpoolEmpty()

    async def test_abandonedDownload(self):
        """
        A download finished before it was delivered ends its program
        (it cannot be told to stop otherwise) and leaves nothing behind.
        """
        data = content(300000, "abandon")
        key = self.storeWithGitAnnex(data)
        signal = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_PAUSE": "100000:" + signal})
        download = await node.get(key, None, 0)
        d = download.finish(False)
        d.addTimeout(30, reactor)
        await d
        self.assertSpoolEmpty()
        # The node still works, with a new process.
        with open(signal, "w"):
            pass
        length, valid, got = await self.getAll(node, key)
        self.assertEqual((valid, got), (True, data))
        self.assertEqual(node.status()["started"], 2)

    async def test_processesReused(self):
        """
        Idle processes are reused; up to maxProcesses run at once; status()
        has the shape of a session pool's.
        """
        data = content(1000, "reuse")
        key = self.storeWithGitAnnex(data)
        node = self.makeNode(maxProcesses=2)
        for _ in range(3):
            self.assertTrue(await node.checkPresent(key))
        self.assertEqual(node.status()["started"], 1)
        results = await defer.gatherResults(
            [node.checkPresent(key) for _ in range(4)])
        self.assertEqual(results, [True] * 4)
        status = node.status()
        self.assertEqual(set(status), {"name", "uuid", "up", "idle", "busy",
                                       "started", "error", "retryIn",
                                       "maxSessions"})
        self.assertEqual(status["started"], 2)
        self.assertEqual((status["up"], status["idle"], status["busy"],
                          status["maxSessions"]), (True, 2, 0, 2))
        await node.close()
        self.assertEqual(node.status()["idle"], 0)

    async def test_noLocksNoClock(self):
        """
        A special remote cannot lock content and has no clock.
        """
        node = self.makeNode()
        self.assertIsNone(await node.lockContent(keyOf(b"x")))
        await self.assertFailure(node.getTimestamp(), ProtocolNotSupported)

    async def test_answersLikeGitAnnex(self):
        """
        What the program asks during a request (GETUUID, GETGITDIR,
        DIRHASH, DIRHASH-LOWER, GETCONFIG, SETCONFIG, GETCREDS, SETSTATE,
        GETSTATE, GETURLS, GETGITREMOTENAME, DEBUG) annexd answers as
        git-annex does.
        """
        uuid = self.loadRemote()[0].decode()
        creds = os.path.join(self.gateway, "annex", "creds")
        os.makedirs(creds, exist_ok=True)
        with open(os.path.join(creds, uuid + "-mycreds"), "w") as f:
            f.write("someone\nsecret pass\n")
        key = self.storeWithGitAnnex(b"probe")
        probed = ("SHA256E-s5--2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa74"
                  "25e73043362938b9824.txt")
        self.annex("registerurl", probed, "https://example.com/hello.txt")
        self.annex("wanted", "t", "include=*.bin")
        theirs = os.path.abspath(self.mktemp())
        self.annex("checkpresentkey", key.raw.decode(), "t",
                   env={"TESTDIR_PROBE": theirs})
        ours = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_PROBE": ours})
        self.assertTrue(await node.checkPresent(key))
        with open(theirs) as f:
            expected = json.load(f)
        with open(ours) as f:
            got = json.load(f)
        for answers in (expected, got):
            answers["gitdir"] = os.path.realpath(
                os.path.join(self.gateway, answers["gitdir"]))
        # git-annex ran first: annexd reads the state it stored (in the
        # branch); annexd's SETSTATE stays in memory.
        self.assertEqual(expected.pop("state-before"), "")
        self.assertEqual(got.pop("state-before"), "some state")
        self.assertEqual(got, expected)
        self.assertEqual(got["urls"], ["https://example.com/hello.txt"])
        self.assertEqual(got["urls-other"], [])
        self.assertEqual(got["wanted"], "include=*.bin")
        self.assertEqual(got["creds"], ["someone", "secret pass"])
        self.assertEqual(got["uuid"], uuid)
        self.assertEqual(got["remotename"], "t")

    async def test_credsFromEnvironment(self):
        """
        GETCREDS is answered from <uuid>-<setting>login/password in the
        environment first, as git-annex does.
        """
        uuid = self.loadRemote()[0].decode()
        probe = os.path.abspath(self.mktemp())
        node = self.makeNode({"TESTDIR_PROBE": probe,
                              uuid + "-mycredslogin": "envuser",
                              uuid + "-mycredspassword": "env pass"})
        self.assertFalse(await node.checkPresent(keyOf(b"nothing")))
        with open(probe) as f:
            got = json.load(f)
        self.assertEqual(got["creds"], ["envuser", "env pass"])
        self.assertEqual(got["creds-none"], ["", ""])

    async def test_unknownMessage(self):
        """
        A line that is not part of the protocol gets ERROR back, ends the
        program, and fails the request (git-annex gives up too).
        """
        node = self.makeNode(self.logging(TESTDIR_UNKNOWN="1"))
        e = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                     RepositoryUnavailable)
        self.assertIn("protocol error", str(e))
        self.assertIn("FROBNICATE", str(e))
        await waitFor(lambda: len(self.received()) > 2)
        self.assertIn("ERROR unknown request: FROBNICATE", self.received())

    async def test_programError(self):
        """
        An ERROR from the program fails the request with its message; the
        next request gets a new process.
        """
        node = self.makeNode({"TESTDIR_BREAK": "checkpresent"})
        e = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                     RepositoryError)
        self.assertIn("external special remote error", str(e))
        self.assertIn("broken on purpose", str(e))
        self.assertTrue(node.status()["up"])
        await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                 RepositoryError)
        self.assertEqual(node.status()["started"], 2)

    async def test_unsupportedVersion(self):
        """
        A program speaking a protocol version other than 1 and 2 gets
        ERROR and is not used.
        """
        node = self.makeNode(self.logging(TESTDIR_VERSION="3"))
        e = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                     RepositoryUnavailable)
        self.assertIn("version 3", str(e))
        self.assertFalse(node.status()["up"])
        await waitFor(lambda: self.received())
        self.assertEqual(self.received(), ["ERROR unsupported VERSION"])

    async def test_unofferedExtension(self):
        """
        A program that wants an extension annexd did not offer (ASYNC) is
        not used; one that wants one it offered is.
        """
        node = self.makeNode({"TESTDIR_EXTENSIONS": "INFO ASYNC"})
        e = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                     RepositoryUnavailable)
        self.assertIn("ASYNC", str(e))
        node = self.makeNode({"TESTDIR_EXTENSIONS": "INFO"})
        self.assertFalse(await node.checkPresent(keyOf(b"x")))

    async def test_startupTimeout(self):
        """
        A program that never gets ready is killed after STARTUP_TIMEOUT
        and the node is marked down: no request hangs.
        """
        self.patch(external, "STARTUP_TIMEOUT", 1.0)
        node = self.makeNode({"TESTDIR_HANG": "1"})
        d = node.checkPresent(keyOf(b"x"))
        d.addTimeout(30, reactor)
        e = await self.assertFailure(d, RepositoryUnavailable)
        self.assertIn("did not get ready", str(e))
        self.assertFalse(node.status()["up"])

    async def test_idleTimeout(self):
        """
        An idle process is ended after idleTimeout seconds.
        """
        node = self.makeNode()
        node.idleTimeout = 0.2
        self.assertFalse(await node.checkPresent(keyOf(b"x")))
        self.assertEqual(node.status()["idle"], 1)
        self.assertTrue(await waitFor(lambda: not node._programs))
        self.assertEqual(node.status()["idle"], 0)

    async def test_keyWithSpace(self):
        """
        A key whose name has a space cannot go through the protocol:
        refused, as git-annex refuses it.
        """
        node = self.makeNode()
        key = Key.parse(b"WORM-s1-m1--with space")
        e = await self.assertFailure(node.put(key, None), RepositoryError)
        self.assertIn("whitespace", str(e))

    async def test_prepareFailure(self):
        """
        PREPARE-FAILURE makes the node unavailable, with the program's
        reason, and marks it down.
        """
        node = self.makeNode(config={"directory": "/nonexistent/annexd"})
        e = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                     RepositoryUnavailable)
        self.assertIn("PREPARE failed", str(e))
        self.assertIn("/nonexistent/annexd", str(e))
        self.assertFalse(node.status()["up"])

    async def test_readOnly(self):
        """
        remote.NAME.annex-readonly refuses stores and removes.
        """
        uuid, config, gitConfig = self.loadRemote()
        node = ExternalNode(reactor, uuid, "t", config,
                            dict(gitConfig, **{"annex-readonly": "true"}),
                            self.gateway, environment=self.env,
                            spoolDirectory=self.spool)
        self.addCleanup(node.close)
        await self.assertFailure(node.put(keyOf(b"x"), None),
                                 RepositoryError)
        await self.assertFailure(node.remove(keyOf(b"x")), RepositoryError)

    def test_hashDirs(self):
        """
        The directory hashes are git-annex's (examinekey agrees), chunk
        fields left out.
        """
        key = b"SHA256E-s5--2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824.txt"
        for k in (key, b"WORM-s10-m1700000000--a&b:c%d", b"MD5-s3--abc"):
            said = self.annex("examinekey", "--format",
                              "${hashdirmixed} ${hashdirlower}\n",
                              k.decode()).stdout.decode().split()
            self.assertEqual([hashDirMixed(k), hashDirLower(k)], said)
        chunk = key.replace(b"-s5--", b"-s5-S2-C1--")
        self.assertEqual(hashDirMixed(chunk), hashDirMixed(key))


class ChunkedTestDirTests(TestDirMixin, unittest.TestCase):
    """
    A chunked remote (chunk=64KiB), as git-annex chunks it.
    """

    def remoteOptions(self):
        return ("chunk=64KiB",)

    def chunkFiles(self, key):
        found = []
        for dirpath, dirnames, filenames in os.walk(self.store):
            found.extend(f for f in filenames if f.endswith(
                key.raw.decode().split("--", 1)[1]))
        return sorted(found)

    async def test_annexdStoresChunks(self):
        """
        annexd stores chunk keys (KEY-S65536-C1..C3), records them in the
        chunk log as git-annex does, and git-annex's fsck of the remote
        passes.
        """
        node = self.makeNode()
        data = content(150000, "chunks")
        key = keyOf(data)
        self.assertEqual(await self.putBytes(node, data), Outcome(True))
        self.assertSpoolEmpty()
        name = key.raw.decode().split("--", 1)[1]
        self.assertEqual(self.chunkFiles(key), [
            "SHA256E-s150000-S65536-C%d--%s" % (n, name) for n in (1, 2, 3)])
        uuid = self.loadRemote()[0]
        log = self.cluster.env.run(
            ["git-annex", "examinekey", "--format", "${hashdirlower}",
             key.raw.decode()], cwd=self.gateway).stdout.decode()
        journal = os.path.join(self.gateway, "annex", "journal",
                               (log + key.raw.decode() + ".log.cnk")
                               .replace("/", "_"))
        with open(journal, "rb") as f:
            line = f.read()
        self.assertRegex(line, rb"^[0-9]+s " + uuid + rb":65536 3\n$")
        # git-annex finds the chunks from annexd's chunk log alone: its own
        # chunk size is another one now.
        self.annex("enableremote", "t", "chunk=32KiB")
        passed, said = self.gitAnnexFsck(key)
        self.assertTrue(passed, said)
        self.assertTrue(await node.checkPresent(key))
        length, valid, got = await self.getAll(node, key, 70000)
        self.assertEqual((length, valid, got),
                         (len(data) - 70000, True, data[70000:]))
        self.assertSpoolEmpty()

    async def test_gitAnnexStoresChunks(self):
        """
        Chunks git-annex stored (and logged) are retrieved by annexd, in
        order, streamed; removing them removes every chunk.
        """
        data = content(200000, "theirchunks")
        key = self.storeWithGitAnnex(data)
        self.assertEqual(len(self.chunkFiles(key)), 4)
        node = self.makeNode()
        self.assertTrue(await node.checkPresent(key))
        length, valid, got = await self.getAll(node, key)
        self.assertEqual((length, valid, got), (len(data), True, data))
        self.assertSpoolEmpty()
        self.assertEqual(await node.remove(key), Outcome(True))
        self.assertEqual(self.chunkFiles(key), [])
        self.assertFalse(self.gitAnnexHas(key))

    async def test_recordedChunksOfAnotherSize(self):
        """
        Chunks are found from the chunk log even when the configured chunk
        size has changed since (or chunking was turned off).
        """
        data = content(150000, "resized")
        key = self.storeWithGitAnnex(data)
        for chunk in ("32KiB", "0"):
            node = self.makeNode(config={"chunk": chunk})
            self.assertTrue(await node.checkPresent(key))
            length, valid, got = await self.getAll(node, key)
            self.assertEqual((valid, got), (True, data))
        self.assertSpoolEmpty()

    async def test_unchunkedStillFound(self):
        """
        Content stored unchunked (before chunk= was set) is still found
        and retrieved.
        """
        data = content(100000, "unchunked")
        key = keyOf(data)
        node = self.makeNode(config={"chunk": "0"})
        self.assertEqual(await self.putBytes(node, data), Outcome(True))
        self.assertEqual(self.stored(key), data)
        chunked = self.makeNode()
        self.assertTrue(await chunked.checkPresent(key))
        length, valid, got = await self.getAll(chunked, key)
        self.assertEqual((valid, got), (True, data))


class RcloneTests(ExternalNodeMixin, unittest.TestCase):
    """
    L{ExternalNode} with the real git-annex-remote-rclone over rclone's
    local backend (chunk=100KiB).
    """

    remoteName = "r"

    def setUp(self):
        real, program = rclone.findRclone()
        if real is None or program is None:
            raise unittest.SkipTest(
                "rclone and git-annex-remote-rclone are not installed"
                " (apt-get install rclone git-annex-remote-rclone)")
        self.setUpCluster()
        self.rcloneDir = os.path.abspath(self.mktemp())
        extra, bindir = rclone.setUp(self.rcloneDir)
        self.env.update(extra)
        self.addToPath(bindir)
        # git-annex-remote-rclone retrieves through a directory of its own
        # in TMPDIR (left behind when the key is not there): keep them here.
        self.env["TMPDIR"] = os.path.join(self.rcloneDir, "tmp")
        os.makedirs(self.env["TMPDIR"])
        self.target = os.path.join(self.rcloneDir, "store")
        self.annex("initremote", "r", "type=external",
                   "externaltype=rclone", "target=" + rclone.REMOTE,
                   "prefix=" + self.target, "chunk=100KiB",
                   "encryption=none")

    async def test_annexdStoresGitAnnexFscks(self):
        """
        annexd stores (in chunks, as configured); git-annex's fsck of the
        remote passes; annexd finds it, retrieves it, removes it.
        """
        node = self.makeNode()
        data = content(250000, "rclone")
        key = keyOf(data)
        self.assertFalse(await node.checkPresent(key))
        self.assertEqual(await self.putBytes(node, data), Outcome(True))
        self.assertSpoolEmpty()
        passed, said = self.gitAnnexFsck(key)
        self.assertTrue(passed, said)
        self.assertTrue(await node.checkPresent(key))
        length, valid, got = await self.getAll(node, key)
        self.assertEqual((length, valid, got), (len(data), True, data))
        self.assertSpoolEmpty()
        self.assertEqual(await node.remove(key), Outcome(True))
        self.assertFalse(await node.checkPresent(key))
        self.assertFalse(self.gitAnnexHas(key))
        files = [f for _, _, fs in os.walk(self.target) for f in fs]
        self.assertEqual(files, [])

    async def test_gitAnnexStoresAnnexdRetrieves(self):
        """
        What git-annex stored through rclone annexd retrieves (rclone
        writes the file at once at the end: it does not say ORDERED).
        """
        data = content(180000, "rclone2")
        key = self.storeWithGitAnnex(data)
        node = self.makeNode()
        self.assertTrue(await node.checkPresent(key))
        length, valid, got = await self.getAll(node, key)
        self.assertEqual((length, valid, got), (len(data), True, data))
        self.assertIs(node.ordered, False)
        self.assertSpoolEmpty()
        download = await node.get(keyOf(b"not there"), None, 0)
        self.assertEqual(download.length, 0)
        self.assertIs(await download.deliver(None), False)
        await download.finish(False)
        self.assertSpoolEmpty()

    async def test_storeFileUnderItsKeyName(self):
        """
        storeFile from a file with another name: rclone stores a file
        under its own name, so the program gets it under the key's.
        """
        node = self.makeNode(config={"chunk": "0"})
        data = content(20000, "rclone3")
        key = keyOf(data)
        path = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(path)
        path = os.path.join(path, "annexd-spool-something")
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(await node.storeFile(key, path), Outcome(True))
        files = [f for _, _, fs in os.walk(self.target) for f in fs]
        self.assertEqual(files, [key.raw.decode()])
        self.assertSpoolEmpty()

    async def test_clusterPut(self):
        """
        Through a cluster (which spools to a file of its own name), rclone
        stores the content under the key's names; git-annex's fsck passes.
        """
        node = self.makeNode()
        data = content(150000, "rclonecluster")
        key = keyOf(data)
        outcome = await self.clusterPut([node], data)
        self.assertEqual(outcome.uuids, (node.uuid,))
        self.assertSpoolEmpty()
        passed, said = self.gitAnnexFsck(key)
        self.assertTrue(passed, said)

    async def test_badContentRefused(self):
        """
        Content that does not match its key never reaches rclone.
        """
        node = self.makeNode()
        data = content(30000, "rclonebad")
        key = keyOf(data)
        self.assertEqual(await self.putBytes(node, data[::-1], key=key),
                         Outcome(False))
        self.assertEqual([f for _, _, fs in os.walk(self.target)
                          for f in fs], [])
        self.assertSpoolEmpty()

    async def test_diskReserve(self):
        """
        An upload that would cross annex.diskreserve is refused before any
        byte is spooled; nothing reaches rclone.
        """
        os.makedirs(self.spool, exist_ok=True)
        free = shutil.disk_usage(self.spool).free
        node = self.makeNode(diskReserve=free + 10 ** 9)
        e = await self.assertFailure(node.put(keyOf(b"abc"), None),
                                     RepositoryError)
        self.assertIn("annex.diskreserve", str(e))
        self.assertSpoolEmpty()
        self.assertFalse(os.path.exists(self.target) and any(
            fs for _, _, fs in os.walk(self.target)))

    async def test_checkPresentUnknownIsAnError(self):
        """
        Without the wrapper, git-annex-remote-rclone 0.6 cannot parse
        rclone's output and answers CHECKPRESENT-UNKNOWN for content it
        has: an error, with its reason (git-annex fails the same way).
        """
        real = os.path.dirname(rclone.findRclone()[0])
        data = content(1000, "unknown")
        key = self.storeWithGitAnnex(data)
        env = {"PATH": os.pathsep.join(
            [p for p in self.env["PATH"].split(os.pathsep)
             if p != os.path.join(self.rcloneDir, "bin")] + [real])}
        node = self.makeNode(env)
        e = await self.assertFailure(node.checkPresent(key), RepositoryError)
        self.assertIn("failed to parse rclone output", str(e))
