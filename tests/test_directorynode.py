"""
L{annexd.nodes.directory.DirectoryNode} against real git-annex directory
special remotes, initialised in a test cluster's gateway.

Every layout fact annexd relies on is checked against git-annex itself:
what annexd stores, git-annex's C{fsck --from} accepts and C{get --from}
reads back byte for byte; what git-annex stores (C{copy --to}), annexd
finds and streams.  The node is built from the gateway's own state
(C{remote.log} and git config), as the router builds it.
"""

import hashlib
import os

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.annex.branch import journalFileName
from annexd.annex.state import GatewayState
from annexd.interfaces import (
    IRepository, IStoresFiles, Outcome, ProtocolNotSupported,
    RepositoryError, RepositoryUnavailable)
from annexd.nodes.directory import (
    DirectoryNode, chunkLogPath, hashDirLower, hashDirMixed, keyFile,
    serializeKey)
from annexd.protocol.client import P2PClient
from annexd.protocol.framing import P2PConnection
from annexd.protocol.keys import Key
from annexd.protocol.server import P2PServer
from annexd.streams import HashingConsumer, sendFile
from tests.support.annex import AnnexCommandError, cluster_for

MiB = 1024 * 1024


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def keyOf(data, extension=b".bin"):
    return Key.parse(b"SHA256E-s%d--%s%s" % (
        len(data), sha256(data).encode(), extension))


def content(size, seed):
    """
    C{size} pseudo-random bytes (deterministic per seed, cheap to make).
    """
    block = hashlib.sha512(seed.encode()).digest() * 1024   # 64 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += counter.to_bytes(8, "big") + block[8:]
        counter += 1
    return bytes(out[:size])


@implementer(IConsumer)
class Collector:
    """
    A consumer keeping what it is given (small test contents only), that
    pauses its push producer after every write and resumes it on the next
    reactor turn, like a slow socket.
    """

    def __init__(self):
        self.data = bytearray()
        self.producer = None
        self.pauses = 0
        self.paused = False
        self.writesWhilePaused = 0

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not streaming:
            while self.producer is producer:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        if self.paused:
            self.writesWhilePaused += 1
        self.data += data
        if self.producer is not None:
            self.pauses += 1
            self.paused = True
            producer = self.producer
            producer.pauseProducing()
            reactor.callLater(0, self._resume, producer)

    def _resume(self, producer):
        self.paused = False
        producer.resumeProducing()


class DirectoryRemoteMixin:
    """
    A test cluster whose gateway gets directory special remotes, and the
    helpers to reach them through a L{DirectoryNode} and through git-annex.
    """

    timeout = 300

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)
        self.env = self.cluster.env
        self.gw = self.cluster.gateway.path

    # -- helpers ------------------------------------------------------------

    def annex(self, *args, **kw):
        return self.env.annex(self.gw, *args, **kw)

    def initremote(self, name, *params):
        """
        C{git annex initremote NAME type=directory ...} in the gateway.

        @return: the remote's directory.
        """
        directory = os.path.join(self.cluster.base_dir, "special", name)
        os.makedirs(directory)
        self.annex("initremote", name, "type=directory",
                   "directory=" + directory, "encryption=none", *params)
        return directory

    def makeNode(self, name, repoPath=True, **overrides):
        """
        The node for remote C{name}, made from the gateway's state as the
        router makes it (with C{repoPath=None}: without a gateway
        repository).
        """
        state = GatewayState.load(self.gw, env=self.env.env)
        remote = state.remote(name)
        config = state.specialConfig(remote)
        self.assertIsNotNone(config)
        config.update(overrides)
        node = DirectoryNode(reactor, remote.uuid, remote.name, config,
                             remote.gitConfig,
                             self.gw if repoPath is True else repoPath,
                             environment=self.env.env)
        self.addCleanup(node.close)
        return node

    def gatewayHas(self, data, key=None):
        """
        Give the gateway the content (C{git annex setkey}).
        """
        key = key or keyOf(data)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        self.annex("setkey", key.raw.decode(), path)
        return key

    def gatewaySha256(self, key):
        """
        The sha256 of the gateway's copy of C{key}, or None.
        """
        result = self.env.run(["git-annex", "contentlocation",
                               key.raw.decode()], cwd=self.gw, check=False)
        if result.returncode != 0:
            return None
        with open(os.path.join(self.gw, result.stdout.decode().strip()),
                  "rb") as f:
            return sha256(f.read())

    def gitAnnexReads(self, remote, key, data):
        """
        git-annex in the gateway checks the remote's copy (fsck --from)
        and reads it back (get --from): the gateway's copy has the
        content's sha256.
        """
        self.annex("drop", "--force", "--key", key.raw.decode())
        self.assertIsNone(self.gatewaySha256(key))
        out = self.annex("fsck", "--from", remote, "--key", key.raw.decode())
        self.assertIn("ok", out)
        self.annex("get", "--from", remote, "--key", key.raw.decode())
        self.assertEqual(self.gatewaySha256(key), sha256(data))

    def gitAnnexSeesPresent(self, remote, key):
        """
        Whether git-annex's checkpresentkey finds C{key} on C{remote}.
        """
        result = self.env.run(
            ["git-annex", "checkpresentkey", key.raw.decode(), remote],
            cwd=self.gw, check=False)
        if result.returncode not in (0, 1):
            raise AnnexCommandError(result.args, self.gw, result.returncode,
                                    result.stdout, result.stderr)
        return result.returncode == 0

    async def put(self, node, data, key=None, valid=True, offset=None):
        key = key or keyOf(data)
        upload = await node.put(key, b"file.bin")
        if offset is not None:
            self.assertEqual(upload.offset, offset)
        sink = upload.receive(len(data) - upload.offset)
        rest = data[upload.offset:]
        for i in range(0, len(rest), 100000):
            sink.write(rest[i:i + 100000])
        self.assertTrue(sink.done.called)
        return await upload.finish(valid)

    async def get(self, node, key, offset=0):
        download = await node.get(key, b"file.bin", offset)
        collector = Collector()
        valid = await download.deliver(collector)
        await download.finish(True)
        self.assertEqual(len(collector.data), download.length)
        return download.length, valid, bytes(collector.data)

    def files(self, directory):
        """
        Every file under C{directory}, relative.
        """
        found = []
        for top, dirs, names in os.walk(directory):
            for name in names:
                found.append(os.path.relpath(os.path.join(top, name),
                                             directory))
        return sorted(found)

    def objectPath(self, directory, key, chunkSize=None, n=None):
        serialized = serializeKey(key, chunkSize, n)
        name = keyFile(serialized)
        return os.path.join(directory, *hashDirLower(serializeKey(key)),
                            name, name)



class DirectoryNodeTests(DirectoryRemoteMixin, unittest.TestCase):
    """
    A L{DirectoryNode} on real directory special remotes of the gateway.
    """

    # -- layout -------------------------------------------------------------

    def test_interfaces(self):
        """
        The node provides L{IRepository} and L{IStoresFiles}, with the
        attributes the router uses.
        """
        self.initremote("d")
        node = self.makeNode("d")
        self.assertTrue(verifyObject(IRepository, node))
        self.assertTrue(verifyObject(IStoresFiles, node))
        self.assertEqual(node.bypass, ())
        self.assertEqual(node.name, "d")
        status = node.status()
        self.assertEqual(
            sorted(status), sorted(["name", "uuid", "up", "idle", "busy",
                                    "started", "error", "retryIn",
                                    "maxSessions"]))
        self.assertEqual(status["uuid"], node.uuid.decode())
        self.assertTrue(status["up"])
        self.assertIsNone(status["error"])

    def test_directoryFromGitConfig(self):
        """
        git-annex keeps the directory in git config (remote.NAME.
        annex-directory), not in remote.log; the node finds it there, and
        the git setting wins over a directory= field.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        self.assertNotIn("directory", node.config)
        self.assertEqual(node.directory, directory)
        other = self.makeNode("d", directory="/nonexistent")
        self.assertEqual(other.directory, directory)

    def test_hashDirectories(self):
        """
        hashDirLower is the layout of a bare repository's objects,
        hashDirMixed that of a non-bare one's (and of old directory
        remotes): both agree with git-annex.
        """
        data = b"hash me\n"
        key = Key.parse(self.cluster.add_file("h.txt", data).encode())
        target = os.readlink(os.path.join(self.cluster.client.path, "h.txt"))
        name = keyFile(key.raw)
        self.assertTrue(target.endswith(
            "/".join(("annex/objects",) + hashDirMixed(key.raw)
                     + (name, name))), target)
        self.cluster.client_annex("copy", "--quiet", "--to", "node1path",
                                  "h.txt")
        self.assertEqual(
            self.cluster.object_path(1, key.raw.decode()),
            os.path.join(self.cluster.nodes[0].path, "annex", "objects",
                         *hashDirLower(key.raw), name, name))

    # -- plain remotes ------------------------------------------------------

    async def test_annexdStoresGitAnnexReads(self):
        """
        Content put through the node is where git-annex looks for it:
        fsck --from passes, get --from reads it back; the object and its
        directory are read-only, and nothing is left in tmp/.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = content(MiB + 12345, "plain")
        key = keyOf(data)
        outcome = await self.put(node, data)
        self.assertTrue(outcome.ok)
        path = self.objectPath(directory, key)
        self.assertEqual(self.files(directory),
                         [os.path.relpath(path, directory)])
        self.assertEqual(os.stat(path).st_mode & 0o222, 0)
        self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o222, 0)
        self.assertTrue(await node.checkPresent(key))
        self.gitAnnexReads("d", key, data)
        # Stored again: already there.
        offer = await node.put(key, None)
        self.assertTrue(offer.alreadyHad)

    async def test_gitAnnexStoresAnnexdReads(self):
        """
        Content git-annex stores (copy --to) is present for the node, and a
        get streams it whole, with a VALID verdict, in pieces that honour
        the consumer's pauses.
        """
        self.initremote("d")
        data = content(MiB + 54321, "theirs")
        key = self.gatewayHas(data)
        self.annex("copy", "--to", "d", "--key", key.raw.decode())
        node = self.makeNode("d")
        self.assertTrue(await node.checkPresent(key))
        download = await node.get(key, None, 0)
        self.assertEqual(download.length, len(data))
        collector = Collector()
        self.assertTrue(await download.deliver(collector))
        await download.finish(True)
        self.assertEqual(bytes(collector.data), data)
        self.assertGreater(collector.pauses, 3)
        self.assertEqual(collector.writesWhilePaused, 0)
        self.assertEqual(node.status()["busy"], 0)

    async def test_escapedKeyNames(self):
        """
        Keys with characters git-annex escapes in file names (: & % /)
        are found where git-annex put them, and stored where it finds
        them.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        theirs = Key.parse(b"WORM-s5-m1--we:ird&%name/x")
        self.gatewayHas(b"hello", theirs)
        self.annex("copy", "--to", "d", "--key", theirs.raw.decode())
        self.assertTrue(await node.checkPresent(theirs))
        self.assertEqual((await self.get(node, theirs))[2], b"hello")
        self.assertIn(os.path.relpath(
            self.objectPath(directory, theirs), directory),
            self.files(directory))
        ours = Key.parse(b"WORM-s6-m2--our:s&%na/me")
        self.assertTrue((await self.put(node, b"hello!", ours)).ok)
        self.assertTrue(self.gitAnnexSeesPresent("d", ours))
        self.annex("get", "--from", "d", "--key", ours.raw.decode())
        self.assertEqual(self.gatewaySha256(ours), sha256(b"hello!"))

    async def test_missingContent(self):
        """
        A key the remote lacks is not present, and its download is empty
        and INVALID (like DATA 0 INVALID from a P2P node).
        """
        self.initremote("d")
        node = self.makeNode("d")
        key = keyOf(b"nobody has this")
        self.assertFalse(await node.checkPresent(key))
        length, valid, data = await self.get(node, key)
        self.assertEqual((length, valid, data), (0, False, b""))

    async def test_offsetGet(self):
        """
        A get from an offset streams exactly the rest; at the end, nothing,
        VALID.
        """
        self.initremote("d")
        node = self.makeNode("d")
        data = content(300000, "offset")
        key = keyOf(data)
        self.assertTrue((await self.put(node, data)).ok)
        length, valid, got = await self.get(node, key, 123457)
        self.assertEqual((length, valid), (len(data) - 123457, True))
        self.assertEqual(got, data[123457:])
        self.assertEqual(await self.get(node, key, len(data)),
                         (0, True, b""))

    async def test_mixedHashLocation(self):
        """
        Content under the mixed-case hash (old git-annex versions) is found
        by the node as by git-annex.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = b"old layout\n"
        key = keyOf(data)
        name = keyFile(key.raw)
        path = os.path.join(directory, *hashDirMixed(key.raw), name, name)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        self.assertTrue(self.gitAnnexSeesPresent("d", key))
        self.assertTrue(await node.checkPresent(key))
        self.assertEqual(await self.get(node, key), (len(data), True, data))
        self.assertTrue((await node.remove(key)).ok)
        self.assertFalse(os.path.exists(path))
        self.assertFalse(self.gitAnnexSeesPresent("d", key))

    async def test_badUploadRefused(self):
        """
        Bytes that do not match the key are refused (even when the sender
        calls them valid), and leave nothing behind; so is right content
        that the sender calls invalid.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = content(200000, "bad")
        key = keyOf(data)
        wrong = bytearray(data)
        wrong[1000] ^= 1
        outcome = await self.put(node, bytes(wrong), key)
        self.assertFalse(outcome.ok)
        self.assertEqual(self.files(directory), [])
        self.assertFalse(await node.checkPresent(key))
        self.assertFalse(self.gitAnnexSeesPresent("d", key))
        outcome = await self.put(node, data, valid=False)
        self.assertFalse(outcome.ok)
        self.assertEqual(self.files(directory), [])
        # The key is free again: a good upload stores it.
        self.assertTrue((await self.put(node, data)).ok)
        self.assertTrue(self.gitAnnexSeesPresent("d", key))

    async def test_uploadStreamsToDisk(self):
        """
        An upload is written to the remote's tmp/ as it arrives (git-annex's
        temporary name), and is not present until it is finished.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = content(MiB, "stream")
        key = keyOf(data)
        upload = await node.put(key, None)
        sink = upload.receive(len(data))
        sink.write(data[:400000])
        name = keyFile(key.raw)
        tmp = os.path.join(directory, "tmp", name, name)
        self.assertEqual(os.path.getsize(tmp), 400000)
        self.assertFalse(await node.checkPresent(key))
        self.assertFalse(self.gitAnnexSeesPresent("d", key))
        self.assertEqual(node.status()["busy"], 1)
        sink.write(data[400000:])
        self.assertTrue((await upload.finish(True)).ok)
        self.assertFalse(os.path.exists(tmp))
        self.assertTrue(self.gitAnnexSeesPresent("d", key))
        self.assertEqual(node.status()["busy"], 0)

    async def test_cutUpload(self):
        """
        An upload that ends short is not stored and leaves no object; one
        that is abandoned keeps its temporary file, from which the next PUT
        resumes (the kept prefix is checked too).
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = content(500000, "cut")
        key = keyOf(data)
        upload = await node.put(key, None)
        sink = upload.receive(len(data))
        sink.write(data[:200000])
        self.assertFalse((await upload.finish(True)).ok)
        self.assertEqual(self.files(directory), [])
        self.assertFalse(self.gitAnnexSeesPresent("d", key))

        upload = await node.put(key, None)
        self.assertEqual(upload.offset, 0)
        sink = upload.receive(len(data))
        sink.write(data[:300000])
        upload.abort("client went away")
        self.assertFalse(await node.checkPresent(key))
        self.assertFalse(self.gitAnnexSeesPresent("d", key))
        self.assertEqual(self.files(directory),
                         [os.path.join("tmp", keyFile(key.raw),
                                       keyFile(key.raw))])
        self.assertTrue((await self.put(node, data, offset=300000)).ok)
        self.assertTrue(self.gitAnnexSeesPresent("d", key))
        self.gitAnnexReads("d", key, data)

        # Nothing but the length tells a short upload of a key without a
        # size or a hash.
        sizeless = Key.parse(b"WORM--cut-short")
        upload = await node.put(sizeless, None)
        sink = upload.receive(10)
        sink.write(b"12345")
        self.assertFalse((await upload.finish(True)).ok)
        self.assertFalse(await node.checkPresent(sizeless))
        self.assertFalse(self.gitAnnexSeesPresent("d", sizeless))

    async def test_resumeChecksPrefix(self):
        """
        A kept prefix that is wrong makes the resumed upload fail its check
        (and go away), however right the rest is.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = content(400000, "prefix")
        key = keyOf(data)
        upload = await node.put(key, None)
        sink = upload.receive(len(data))
        sink.write(b"X" * 100000)
        upload.abort("gone")
        self.assertFalse((await self.put(node, data, offset=100000)).ok)
        self.assertEqual(self.files(directory), [])
        self.assertTrue((await self.put(node, data, offset=0)).ok)

    async def test_concurrentUploadRefused(self):
        """
        A second PUT of a key being uploaded is refused (they would share
        the temporary file).
        """
        self.initremote("d")
        node = self.makeNode("d")
        data = b"twice\n"
        key = keyOf(data)
        first = await node.put(key, None)
        with self.assertRaises(RepositoryError):
            await node.put(key, None)
        first.abort("never mind")
        self.assertTrue((await self.put(node, data)).ok)

    async def test_remove(self):
        """
        Removing takes away the object (annexd's or git-annex's) and the
        empty hash directories; removing absent content succeeds.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = b"remove me\n"
        key = keyOf(data)
        self.assertTrue((await self.put(node, data)).ok)
        self.assertTrue((await node.remove(key)).ok)
        self.assertFalse(await node.checkPresent(key))
        self.assertFalse(self.gitAnnexSeesPresent("d", key))
        self.assertEqual(os.listdir(directory), ["tmp"])
        theirs = b"theirs to remove\n"
        theirKey = self.gatewayHas(theirs)
        self.annex("copy", "--to", "d", "--key", theirKey.raw.decode())
        self.assertTrue((await node.remove(theirKey)).ok)
        self.assertFalse(self.gitAnnexSeesPresent("d", theirKey))
        self.assertTrue((await node.remove(keyOf(b"never there"))).ok)

    async def test_storeFile(self):
        """
        storeFile copies a file in (checked): git-annex reads it; a file
        that does not match its key is refused and leaves nothing.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        data = content(MiB + 1, "file")
        key = keyOf(data)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not it" + data[6:])
        self.assertFalse((await node.storeFile(key, path)).ok)
        self.assertEqual(self.files(directory), [])
        with open(path, "wb") as f:
            f.write(data)
        self.assertTrue((await node.storeFile(key, path)).ok)
        self.assertTrue(os.path.exists(path))
        self.gitAnnexReads("d", key, data)
        self.assertTrue((await node.storeFile(key, path)).alreadyHad)

    async def test_noLocksNoClock(self):
        """
        A special remote cannot lock content nor tell the time.
        """
        self.initremote("d")
        node = self.makeNode("d")
        data = b"locked?\n"
        self.assertTrue((await self.put(node, data)).ok)
        self.assertIsNone(await node.lockContent(keyOf(data)))
        with self.assertRaises(ProtocolNotSupported):
            await node.getTimestamp()

    async def test_missingDirectory(self):
        """
        A directory that is not there (an unmounted disk) makes every
        request fail with RepositoryUnavailable naming it, and the status
        down; the directory is never created.
        """
        directory = self.initremote("d")
        node = self.makeNode("d")
        os.rmdir(directory)
        key = keyOf(b"x")
        for call in (lambda: node.checkPresent(key),
                     lambda: node.get(key, None, 0),
                     lambda: node.put(key, None),
                     lambda: node.remove(key),
                     lambda: node.storeFile(key, "/dev/null")):
            with self.assertRaises(RepositoryUnavailable) as caught:
                await call()
            self.assertIn(directory, str(caught.exception))
            self.assertIn("not accessible", str(caught.exception))
        status = node.status()
        self.assertFalse(status["up"])
        self.assertIn(directory, status["error"])
        self.assertFalse(os.path.exists(directory))

    async def test_unsupportedConfigurations(self):
        """
        Encryption, and a bad chunk size, are refused at request time (the
        constructor does not raise).
        """
        self.initremote("d")
        node = self.makeNode("d", encryption="shared")
        with self.assertRaises(RepositoryUnavailable) as caught:
            await node.checkPresent(keyOf(b"x"))
        self.assertEqual(str(caught.exception),
                         "d: encrypted special remotes are not supported")
        self.assertFalse(node.status()["up"])
        node = self.makeNode("d", chunk="lots")
        with self.assertRaises(RepositoryUnavailable) as caught:
            await node.put(keyOf(b"x"), None)
        self.assertIn("chunk=lots", str(caught.exception))

    # -- chunked remotes ------------------------------------------------------

    async def test_annexdStoresChunks(self):
        """
        On a chunk=1MiB remote the node stores C{-S1048576-Cn} chunk keys
        under the key's hash directory and records the chunk log in the
        gateway's journal; git-annex reads the content, even after the
        remote's chunk size changed (so only through the log).
        """
        directory = self.initremote("c", "chunk=1MiB")
        node = self.makeNode("c")
        data = content(2 * MiB + 4321, "chunks")
        key = keyOf(data)
        self.assertTrue((await self.put(node, data)).ok)
        expected = [os.path.relpath(self.objectPath(directory, key, MiB, n),
                                    directory) for n in (1, 2, 3)]
        self.assertEqual(self.files(directory), sorted(expected))
        self.assertEqual(
            [os.path.getsize(os.path.join(directory, p)) for p in expected],
            [MiB, MiB, 4321])
        journal = os.path.join(self.gw, "annex", "journal",
                               journalFileName(chunkLogPath(key)))
        with open(journal, "rb") as f:
            line = f.read()
        self.assertRegex(line, rb"^[0-9]+s " + node.uuid + rb":1048576 3\n$")
        self.assertTrue(await node.checkPresent(key))
        length, valid, got = await self.get(node, key, MiB - 10)
        self.assertEqual((length, valid, got),
                         (len(data) - MiB + 10, True, data[MiB - 10:]))
        self.annex("enableremote", "c", "chunk=512KiB",
                   "directory=" + directory)
        self.gitAnnexReads("c", key, data)
        # And the node reads it through the log too.
        node = self.makeNode("c")
        self.assertEqual(node.chunkSize, 512 * 1024)
        self.assertEqual(await self.get(node, key), (len(data), True, data))
        # Removing it records that no chunks are left.
        self.assertTrue((await node.remove(key)).ok)
        self.assertEqual(self.files(directory), [])
        with open(journal, "rb") as f:
            self.assertRegex(f.read(),
                             rb"^[0-9]+s " + node.uuid + rb":1048576 0\n$")
        self.assertFalse(self.gitAnnexSeesPresent("c", key))

    async def test_chunksWithoutLog(self):
        """
        Chunks stored with no chunk log to record them in (no gateway
        repository) are still found, by git-annex and by the node, as the
        remote's configured chunking (git-annex's speculative chunk keys);
        content of a key without a size, which could not be found that
        way, is then not stored at all.
        """
        directory = self.initremote("c", "chunk=1MiB")
        writer = self.makeNode("c", repoPath=None)
        data = content(MiB + MiB // 2, "no log")
        key = keyOf(data)
        self.assertTrue((await self.put(writer, data)).ok)
        self.assertEqual(len(self.files(directory)), 2)
        self.assertFalse(os.path.exists(os.path.join(
            self.gw, "annex", "journal", journalFileName(chunkLogPath(key)))))
        self.assertEqual(self.env.git(self.gw, "show", "git-annex:"
                                      + chunkLogPath(key), check=False), "")
        reader = self.makeNode("c")
        self.assertTrue(await reader.checkPresent(key))
        self.assertEqual(await self.get(reader, key), (len(data), True, data))
        self.gitAnnexReads("c", key, data)
        sizeless = Key.parse(b"WORM--no-size")
        self.assertFalse((await self.put(writer, b"abc", sizeless)).ok)
        self.assertEqual(len(self.files(directory)), 2)

    async def test_gitAnnexStoresChunks(self):
        """
        Chunks git-annex stores are found and streamed in order, also from
        an offset in a later chunk, and also after the remote's chunk size
        changed (through the chunk log).
        """
        directory = self.initremote("c", "chunk=512KiB")
        data = content(MiB + 300000, "their chunks")
        key = self.gatewayHas(data)
        self.annex("copy", "--to", "c", "--key", key.raw.decode())
        self.assertEqual(len(self.files(directory)), 3)
        self.annex("enableremote", "c", "chunk=1MiB", "directory=" + directory)
        node = self.makeNode("c")
        self.assertEqual(node.chunkSize, MiB)
        self.assertTrue(await node.checkPresent(key))
        self.assertEqual(await self.get(node, key), (len(data), True, data))
        length, valid, got = await self.get(node, key, 600000)
        self.assertEqual(got, data[600000:])
        self.assertTrue((await node.remove(key)).ok)
        self.assertEqual(self.files(directory), [])
        self.assertFalse(self.gitAnnexSeesPresent("c", key))

    async def test_chunkedBadUpload(self):
        """
        A chunked upload whose content does not match leaves no chunk, in
        place or in tmp/; a cut one keeps its chunks in tmp/ only, and the
        next PUT resumes across them.
        """
        directory = self.initremote("c", "chunk=1MiB")
        node = self.makeNode("c")
        data = content(2 * MiB + 100, "bad chunks")
        key = keyOf(data)
        wrong = data[:-1] + b"!"
        self.assertFalse((await self.put(node, wrong, key)).ok)
        self.assertEqual(self.files(directory), [])
        upload = await node.put(key, None)
        sink = upload.receive(len(data))
        sink.write(data[:MiB + 5000])
        upload.abort("gone")
        self.assertFalse(self.gitAnnexSeesPresent("c", key))
        self.assertTrue(all(p.startswith("tmp" + os.sep)
                            for p in self.files(directory)))
        self.assertTrue((await self.put(node, data, offset=MiB + 5000)).ok)
        self.gitAnnexReads("c", key, data)

    async def test_emptyChunked(self):
        """
        Empty content on a chunked remote is one empty chunk, as git-annex
        stores it.
        """
        directory = self.initremote("c", "chunk=1MiB")
        node = self.makeNode("c")
        key = keyOf(b"")
        self.assertTrue((await self.put(node, b"")).ok)
        self.assertEqual(self.files(directory), [os.path.relpath(
            self.objectPath(directory, key, MiB, 1), directory)])
        self.gitAnnexReads("c", key, b"")

    async def test_unstableKeysUnchunked(self):
        """
        Keys of unstable backends (URL) are stored whole even on a chunked
        remote, as git-annex does; git-annex finds them.
        """
        directory = self.initremote("c", "chunk=1MiB")
        node = self.makeNode("c")
        key = Key.parse(b"URL-s5--http&c%%example.com%x")
        self.assertTrue((await self.put(node, b"hello", key)).ok)
        self.assertEqual(self.files(directory), [os.path.relpath(
            self.objectPath(directory, key), directory)])
        self.assertTrue(self.gitAnnexSeesPresent("c", key))

    async def test_legacyChunks(self):
        """
        Legacy chunksize= remotes: the node writes KEY.chunkN and
        KEY.chunkcount in the key's directory, which git-annex reads, and
        reads what git-annex wrote.
        """
        directory = self.initremote("l", "chunksize=256KiB")
        node = self.makeNode("l")
        data = content(600000, "legacy")
        key = keyOf(data)
        self.assertTrue((await self.put(node, data)).ok)
        base = self.objectPath(directory, key)
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(base))),
            [os.path.basename(base) + suffix
             for suffix in (".chunk1", ".chunk2", ".chunk3", ".chunkcount")])
        with open(base + ".chunkcount") as f:
            self.assertEqual(f.read(), "3")
        self.gitAnnexReads("l", key, data)
        theirs = content(300000, "their legacy")
        theirKey = self.gatewayHas(theirs)
        self.annex("copy", "--to", "l", "--key", theirKey.raw.decode())
        self.assertTrue(os.path.exists(
            self.objectPath(directory, theirKey) + ".chunk2"))
        self.assertEqual(await self.get(node, theirKey, 1000),
                         (len(theirs) - 1000, True, theirs[1000:]))
        self.assertTrue((await node.remove(theirKey)).ok)
        self.assertFalse(self.gitAnnexSeesPresent("l", theirKey))

    # -- exports ------------------------------------------------------------

    async def test_annexObjects(self):
        """
        exporttree=yes annexobjects=yes: objects live in
        .git/annex/objects/ inside the export, both ways.
        """
        directory = self.initremote("e", "exporttree=yes", "annexobjects=yes")
        node = self.makeNode("e")
        data = content(MiB + 3, "export")
        key = keyOf(data)
        self.assertTrue((await self.put(node, data)).ok)
        name = keyFile(key.raw)
        self.assertEqual(self.files(directory), [os.path.join(
            ".git", "annex", "objects", *hashDirLower(key.raw), name, name)])
        self.assertTrue(self.gitAnnexSeesPresent("e", key))
        # (The router records the location; git-annex gets only from
        # remotes the location log names.  It checks what it gets.)
        self.annex("setpresentkey", key.raw.decode(), node.uuid.decode(), "1")
        self.annex("get", "--from", "e", "--key", key.raw.decode())
        self.assertEqual(self.gatewaySha256(key), sha256(data))
        theirs = b"exported object\n"
        theirKey = self.gatewayHas(theirs)
        self.annex("copy", "--to", "e", "--key", theirKey.raw.decode())
        self.assertTrue(await node.checkPresent(theirKey))
        self.assertEqual(await self.get(node, theirKey),
                         (len(theirs), True, theirs))
        self.assertTrue((await node.remove(theirKey)).ok)
        self.assertTrue((await node.remove(key)).ok)
        self.assertEqual(self.files(directory), [])
        self.assertFalse(self.gitAnnexSeesPresent("e", key))

    async def test_exportWithoutAnnexObjects(self):
        """
        A plain export takes no content by key: PUT and REMOVE are refused
        with git-annex's reasons, and content reads as absent.
        """
        self.initremote("e", "exporttree=yes")
        node = self.makeNode("e")
        key = keyOf(b"x")
        with self.assertRaises(RepositoryError) as caught:
            await node.put(key, None)
        self.assertIn("git-annex export", str(caught.exception))
        with self.assertRaises(RepositoryError):
            await node.remove(key)
        self.assertFalse(await node.checkPresent(key))
        # importtree=yes alone: the same.
        node = self.makeNode("e", exporttree="no", importtree="yes")
        with self.assertRaises(RepositoryError) as caught:
            await node.put(key, None)
        self.assertIn("importtree=yes", str(caught.exception))
        with self.assertRaises(RepositoryError):
            await node.remove(key)


class DirectoryNodeServedTests(DirectoryRemoteMixin, unittest.TestCase):
    """
    A L{DirectoryNode} behind annexd's P2P server, reached by annexd's P2P
    client over TCP: the node's producers and consumers work with the real
    framing and transports.
    """

    async def serve(self, repository):
        served = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                connection = P2PConnection("test client")
                server = P2PServer(connection, repository)
                connection.whenClosed().addErrback(lambda _: None)
                served.append(connection)
                reactor.callLater(0, server.serve)
                return connection

        port = await endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(Factory())
        self.addCleanup(port.stopListening)
        connection = P2PConnection("test server")
        await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port), connection)
        client = P2PClient(connection, uuid=repository.uuid)
        await client.handshake()

        async def close():
            await client.close()
            for c in served:
                c.transport.loseConnection()
        self.addCleanup(lambda: defer.ensureDeferred(close()))
        return client

    async def test_session(self):
        """
        PUT (streamed from a file), CHECKPRESENT, GET whole and from an
        offset, REMOVE, on a chunked remote, over the wire; git-annex
        reads what was put.
        """
        self.initremote("c", "chunk=1MiB")
        node = self.makeNode("c")
        client = await self.serve(node)
        data = content(2 * MiB + 777, "served")
        key = keyOf(data)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        self.assertFalse(await client.checkPresent(key))
        upload = await client.put(key, b"served.bin")
        self.assertEqual(upload.offset, 0)
        with open(path, "rb") as f:
            await sendFile(f, upload.receive(len(data)))
        self.assertEqual(await upload.finish(True), Outcome(True))
        self.assertTrue(await client.checkPresent(key))
        for offset in (0, MiB + 1):
            download = await client.get(key, None, offset)
            self.assertEqual(download.length, len(data) - offset)
            consumer = HashingConsumer()
            self.assertIs(await download.deliver(consumer), True)
            await download.finish(True)
            self.assertEqual(consumer.hexdigest(), sha256(data[offset:]))
        self.gitAnnexReads("c", key, data)
        self.assertEqual(await client.remove(key), Outcome(True))
        self.assertFalse(await client.checkPresent(key))
        self.assertEqual(node.status()["busy"], 0)
