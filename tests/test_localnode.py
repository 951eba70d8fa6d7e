"""
The local node connector against real git-annex: annexd's P2P client driving
C{git-annex-shell p2pstdio} on a real node repository.

Every outcome is checked on the node itself (the object file's sha256, as
git-annex stores it), not only by what the connector reports.
"""

import hashlib
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from annexd.interfaces import IRepository, RepositoryUnavailable
from annexd.nodes.local import LocalNode
from annexd.protocol.keys import Key
from annexd.streams import HashingConsumer, sendFile
from tests.support.annex import cluster_for

GATEWAY_UUID = b"11111111-2222-3333-4444-555555555555"


def makeContent(path, size, seed=b""):
    """
    Write C{size} pseudo-random bytes to C{path}, chunk by chunk, and return
    the git-annex SHA256E key of the content.
    """
    digest = hashlib.sha256()
    block = hashlib.sha512(seed + b"annexd").digest() * 16384   # 1 MiB
    with open(path, "wb") as f:
        left = size
        counter = 0
        while left:
            chunk = block[:min(left, len(block))]
            chunk = counter.to_bytes(8, "big") + chunk[8:] if len(chunk) > 8 else chunk
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            counter += 1
    return Key.parse(b"SHA256E-s%d--%s.bin" % (size, digest.hexdigest().encode()))


def keyOf(data):
    return Key.parse(b"SHA256E-s%d--%s.bin" % (
        len(data), hashlib.sha256(data).hexdigest().encode()))


class LocalNodeTests(unittest.TestCase):
    """
    L{LocalNode} with a real git-annex node.
    """

    timeout = 300

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)
        self.repo = self.cluster.nodes[0]
        self.node = self.makeNode()

    def makeNode(self, maxSessions=1):
        node = LocalNode(reactor, self.repo.path, self.repo.uuid.encode(),
                         GATEWAY_UUID, maxSessions=maxSessions,
                         name=self.repo.name, environment=self.cluster.env.env)
        self.addCleanup(node.close)
        return node

    def nodeSha256(self, key):
        return self.cluster.node_sha256(self.repo, key.raw.decode())

    async def putFile(self, key, path, node=None):
        node = node or self.node
        upload = await node.put(key, b"some file.bin")
        sink = upload.receive(key.size - upload.offset)
        with open(path, "rb") as f:
            f.seek(upload.offset)
            await sendFile(f, sink)
        return await upload.finish(True)

    async def putBytes(self, data, valid=True, key=None):
        key = key or keyOf(data)
        upload = await self.node.put(key, None)
        sink = upload.receive(len(data) - upload.offset)
        sink.write(data[upload.offset:])
        return await upload.finish(valid)

    async def getAll(self, key, offset=0, node=None):
        download = await (node or self.node).get(key, None, offset)
        consumer = HashingConsumer()
        valid = await download.deliver(consumer)
        await download.finish(True)
        return download.length, valid, consumer.hexdigest()

    def test_interface(self):
        """
        A local node provides L{IRepository}.
        """
        self.assertTrue(verifyObject(IRepository, self.node))

    async def test_largeRoundTrip(self):
        """
        A 300 MiB file put through the connector is stored on the node with
        the same sha256, and a get streams it back identical.
        """
        path = self.mktemp()
        key = makeContent(path, 300 * 1024 * 1024)
        digest = key.name.split(b".")[0].decode()
        self.assertFalse(await self.node.checkPresent(key))
        outcome = await self.putFile(key, path)
        self.assertTrue(outcome.ok)
        self.assertEqual(self.nodeSha256(key), digest)
        self.assertTrue(await self.node.checkPresent(key))
        length, valid, got = await self.getAll(key)
        self.assertEqual((length, valid, got), (key.size, True, digest))

    async def test_resumeGet(self):
        """
        A get from an offset streams exactly the rest of the content.
        """
        data = os.urandom(3 * 1024 * 1024 + 17)
        key = keyOf(data)
        self.assertTrue((await self.putBytes(data)).ok)
        offset = len(data) // 3
        length, valid, got = await self.getAll(key, offset)
        self.assertEqual(length, len(data) - offset)
        self.assertTrue(valid)
        self.assertEqual(got, hashlib.sha256(data[offset:]).hexdigest())
        # At the end: nothing more to send, and that is valid.
        self.assertEqual(
            await self.getAll(key, len(data)),
            (0, True, hashlib.sha256(b"").hexdigest()))

    async def test_resumePut(self):
        """
        An upload cut off mid-payload leaves the node with a partial file;
        the next put of the key is offered from that offset, and sending the
        rest stores the whole content.
        """
        data = os.urandom(4 * 1024 * 1024)
        key = keyOf(data)
        upload = await self.node.put(key, None)
        self.assertEqual(upload.offset, 0)
        sink = upload.receive(len(data))
        half = len(data) // 2
        sink.write(data[:half])
        process = self.node.processes[0]
        upload.abort("test cuts the upload")
        await process.ended
        self.assertIsNone(self.nodeSha256(key))

        upload = await self.node.put(key, None)
        self.assertGreater(upload.offset, 0)
        self.assertLessEqual(upload.offset, half)
        sink = upload.receive(len(data) - upload.offset)
        sink.write(data[upload.offset:])
        outcome = await upload.finish(True)
        self.assertTrue(outcome.ok)
        self.assertEqual(self.nodeSha256(key), hashlib.sha256(data).hexdigest())

    async def test_checkPresent(self):
        """
        checkPresent is false before a put and true after it; putting
        content the node has answers ALREADY-HAVE.
        """
        data = b"hello world\n"
        key = keyOf(data)
        self.assertFalse(await self.node.checkPresent(key))
        self.assertTrue((await self.putBytes(data)).ok)
        self.assertTrue(await self.node.checkPresent(key))
        again = await self.node.put(key, None)
        self.assertTrue(again.alreadyHad)

    async def test_lockBlocksRemove(self):
        """
        Content locked by one session cannot be removed by another session
        until the lock is released.
        """
        node = self.makeNode(maxSessions=2)
        data = os.urandom(1000)
        key = keyOf(data)
        upload = await node.put(key, None)
        upload.receive(len(data)).write(data)
        self.assertTrue((await upload.finish(True)).ok)
        lock = await node.lockContent(key)
        self.assertIsNotNone(lock)
        # git-annex-shell refuses by ending the session ("content is
        # locked"); the node answers a plain "not removed".
        outcome = await node.remove(key)
        self.assertFalse(outcome.ok)
        self.assertEqual(self.nodeSha256(key), hashlib.sha256(data).hexdigest())
        await lock.release()
        self.assertTrue((await node.remove(key)).ok)
        self.assertIsNone(self.nodeSha256(key))
        self.assertFalse(await node.checkPresent(key))

    async def test_locksDoNotTakeTransferSlots(self):
        """
        Held locks have sessions of their own: with one transfer slot and
        three locks held, a checkpresent still goes through; once the locks
        are released at most one lock session stays open.
        """
        data = os.urandom(100)
        key = keyOf(data)
        self.assertTrue((await self.putBytes(data)).ok)
        locks = [await self.node.lockContent(key) for i in range(3)]
        self.assertTrue(all(locks))
        self.assertTrue(await self.node.checkPresent(key))
        self.assertGreaterEqual(len(self.node.processes), 4)
        for lock in locks:
            await lock.release()
        lockPool = self.node._lockPool
        self.assertEqual(len(lockPool._idle), 1)
        self.assertEqual(len(lockPool._open), 1)

    async def test_abortedUploadThenRetry(self):
        """
        Right after an upload is abandoned, a new upload of the same key
        waits for the abandoned session's process to go (it holds the
        node's transfer lock) and then succeeds, resuming from what the
        node kept.
        """
        data = os.urandom(3 << 20)
        key = keyOf(data)
        for attempt in range(3):
            upload = await self.node.put(key, None)
            sink = upload.receive(len(data) - upload.offset)
            sink.write(data[upload.offset:upload.offset + (512 << 10)])
            upload.abort("client went away")
        self.assertTrue((await self.putBytes(data)).ok)
        self.assertEqual(self.nodeSha256(key), hashlib.sha256(data).hexdigest())

    async def test_abortedUploadThenRetryWithFreeSlots(self):
        """
        With sessions to spare, a new upload of a key still waits for the
        process of an abandoned upload of the same key to go (until it
        exits it may still write the node's partial file of that key);
        uploads of other keys do not wait.
        """
        self.node = self.makeNode(maxSessions=4)
        data = os.urandom(3 << 20)
        key = keyOf(data)
        upload = await self.node.put(key, None)
        sink = upload.receive(len(data) - upload.offset)
        sink.write(data[upload.offset:upload.offset + (512 << 10)])
        [old] = self.node.processes
        pid = old.transport.pid
        # Hold the abandoned session's process where it is.
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: old.ended.called or os.kill(pid, signal.SIGCONT))
        upload.abort("client went away")
        retry = defer.ensureDeferred(self.putBytes(data))
        self.assertTrue((await self.putBytes(os.urandom(1000))).ok)
        self.assertFalse(retry.called)
        # The retry has not even started a session of its own: only the
        # held process and the one the other key's upload used exist.
        self.assertEqual(len(self.node.processes), 2)
        os.kill(pid, signal.SIGCONT)
        self.assertTrue((await retry).ok)
        self.assertEqual(self.nodeSha256(key), hashlib.sha256(data).hexdigest())
        self.assertEqual(self.node._ending, {})

    async def test_lockAbsent(self):
        """
        Locking content the node lacks gives no lock.
        """
        self.assertIsNone(await self.node.lockContent(keyOf(b"absent")))

    async def test_removeBeforePast(self):
        """
        REMOVE-BEFORE with a deadline the node's clock has passed fails and
        keeps the content; one in the future removes it.
        """
        data = os.urandom(1000)
        key = keyOf(data)
        self.assertTrue((await self.putBytes(data)).ok)
        now = await self.node.getTimestamp()
        self.assertIsInstance(now, int)
        self.assertFalse((await self.node.remove(key, before=now - 1)).ok)
        self.assertTrue(self.nodeSha256(key))
        self.assertTrue((await self.node.remove(key, before=now + 600)).ok)
        self.assertIsNone(self.nodeSha256(key))

    async def test_invalidLeavesNothing(self):
        """
        Content that changed while it was sent (the sender ends it with
        INVALID) is refused and leaves nothing on the node; so does a
        DATA 0 + INVALID ("I do not have it").
        """
        data = os.urandom(100000)
        key = keyOf(data)
        # One byte flipped (a constant could equal the random byte).
        changed = data[:50000] + bytes([data[50000] ^ 0xFF]) + data[50001:]
        outcome = await self.putBytes(changed, valid=False, key=key)
        self.assertFalse(outcome.ok)
        self.assertIsNone(self.nodeSha256(key))
        self.assertFalse(await self.node.checkPresent(key))
        upload = await self.node.put(key, None)
        self.assertEqual(upload.offset, 0)
        upload.receive(0)
        self.assertFalse((await upload.finish(False)).ok)
        self.assertFalse(await self.node.checkPresent(key))

    async def test_invalidButCorrectIsVerified(self):
        """
        INVALID makes the node verify the content itself (git-annex's
        rule): content that is in fact right is stored.
        """
        data = os.urandom(1000)
        key = keyOf(data)
        self.assertTrue((await self.putBytes(data, valid=False)).ok)
        self.assertEqual(self.nodeSha256(key), hashlib.sha256(data).hexdigest())

    async def test_wrongContentRefused(self):
        """
        Content that does not match its key is refused even when the
        sender says VALID.
        """
        data = os.urandom(1000)
        key = keyOf(data)
        outcome = await self.putBytes(b"Y" + data[1:], valid=True, key=key)
        self.assertFalse(outcome.ok)
        self.assertIsNone(self.nodeSha256(key))

    async def test_getAbsent(self):
        """
        Getting content the node lacks delivers nothing and INVALID.
        """
        self.assertEqual(await self.getAll(keyOf(b"absent")),
                         (0, False, hashlib.sha256(b"").hexdigest()))

    async def test_nodeKilledMidPut(self):
        """
        Killing the node's process mid-upload fails the upload's Deferreds
        (no hang), and the next request gets a fresh session.
        """
        data = os.urandom(8 * 1024 * 1024)
        key = keyOf(data)
        upload = await self.node.put(key, None)
        sink = upload.receive(len(data))
        sink.write(data[:1024 * 1024])
        process = self.node.processes[0]
        process.kill()
        await self.assertFailure(sink.done, Exception)
        await self.assertFailure(upload.finish(True), RepositoryUnavailable)
        self.assertIsNone(self.nodeSha256(key))
        # The pool drops the broken session and opens a new one.
        self.assertFalse(await self.node.checkPresent(key))
        self.assertTrue((await self.putBytes(data)).ok)
        self.assertEqual(self.nodeSha256(key), hashlib.sha256(data).hexdigest())

    async def test_nodeKilledMidGet(self):
        """
        Killing the node's process mid-download fails the delivery.
        """
        data = os.urandom(64 * 1024 * 1024)
        key = keyOf(data)
        self.assertTrue((await self.putBytes(data)).ok)
        download = await self.node.get(key, None, 0)
        consumer = HashingConsumer()
        process = self.node.processes[0]

        class KillingConsumer(HashingConsumer):
            def write(self, chunk):
                HashingConsumer.write(self, chunk)
                if self.length >= 1024 * 1024:
                    process.kill()

        consumer = KillingConsumer()
        await self.assertFailure(download.deliver(consumer),
                                 RepositoryUnavailable)
        self.assertLess(consumer.length, len(data))
        await download.finish(False)
        self.assertTrue(await self.node.checkPresent(key))

    async def test_wrongUUID(self):
        """
        A node whose uuid is not the expected one is refused with a clear
        reason.
        """
        node = LocalNode(reactor, self.repo.path,
                         b"00000000-0000-0000-0000-000000000000", GATEWAY_UUID,
                         environment=self.cluster.env.env)
        self.addCleanup(node.close)
        error = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                         RepositoryUnavailable)
        self.assertIn("expected repository UUID", str(error))

    async def test_notARepository(self):
        """
        A node path that is no repository fails with git-annex's reason.
        """
        node = LocalNode(reactor, self.mktemp(), self.repo.uuid.encode(),
                         GATEWAY_UUID, environment=self.cluster.env.env)
        self.addCleanup(node.close)
        error = await self.assertFailure(node.checkPresent(keyOf(b"x")),
                                         RepositoryUnavailable)
        self.assertTrue(str(error))
