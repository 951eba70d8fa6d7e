"""
Tests for L{annexd.router.spool} and for the way a cluster upload uses it:
a node that alone holds the upload back for C{lagSeconds} is decoupled and
fed from the upload's one spool file, at its own pace, while the client is
paced by the other nodes.

L{Spool} and L{SpoolReader} are tested on their own with a recording sink.
The cluster tests drive L{Cluster.put} -> C{upload.receive(length)} -> the
L{TeeConsumer} directly with a recording producer, pause and resume each
node's sink by hand through the producer the tee registered on it, and move
time with a L{Clock}; one test goes end to end through a L{P2PServer}.

Everything runs synchronously; no real reactor is involved.
"""

import hashlib
import os
import shutil

from hypothesis import given, settings, strategies as st
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from annexd.interfaces import Outcome, RepositoryUnavailable
from annexd.router import spool as spoolModule
from annexd.router.cluster import Cluster, ClusterNode
from annexd.router.spool import Spool, SpoolReader, SpoolRefused
from tests.support.wire import Session
from tests.support.memory import MemoryRepository, keyFor

CLUSTER_UUID = b"c1c1c1c1-0000-4000-8000-cccccccccccc"
N1 = b"11111111-1111-4111-8111-111111111111"
N2 = b"22222222-2222-4222-8222-222222222222"
N3 = b"33333333-3333-4333-8333-333333333333"

#: The content uploaded in the cluster tests, and its key.
CONTENT = bytes(range(256)) * 4 + b"the end\n"
KEY = keyFor(CONTENT)

#: The lag bound of the clusters under test.
LAG = 2.0


def line(*parts):
    """
    One protocol line from C{parts} (bytes, or keys as their raw bytes).
    """
    return b" ".join(getattr(p, "raw", p) for p in parts) + b"\n"


def isClosed(spool):
    """
    Whether C{spool}'s file has been closed.
    """
    return spool._file is None


# -- doubles ------------------------------------------------------------------


@implementer(IConsumer)
class RecordingSink:
    """
    A node's sink as a L{SpoolReader} sees it.

    @ivar data: everything written.
    @ivar writes: the size of every write, in order.
    @ivar unregistered: how many times L{unregisterProducer} was called.
    @ivar onWrite: called with each write's data after it was kept (a test
        may pause the reader from there, or raise).
    """

    def __init__(self):
        self.data = b""
        self.writes = []
        self.producer = None
        self.unregistered = 0
        self.onWrite = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None
        self.unregistered += 1

    def write(self, data):
        self.data += data
        self.writes.append(len(data))
        if self.onWrite is not None:
            self.onWrite(data)


@implementer(IPushProducer)
class FakeProducer:
    """
    The client's streaming producer: records what the tee asks of it.

    @ivar calls: C{"pause"}, C{"resume"}, C{"stop"}, in order.
    @ivar paused: whether the last pause was not followed by a resume.
    """

    def __init__(self):
        self.calls = []
        self.paused = False

    def pauseProducing(self):
        self.calls.append("pause")
        self.paused = True

    def resumeProducing(self):
        self.calls.append("resume")
        self.paused = False

    def stopProducing(self):
        self.calls.append("stop")


class StubReader:
    """
    What L{Spool} sees of a reader: it is told when there is more.

    @ivar told: how many times.
    """

    def __init__(self):
        self.told = 0

    def more(self):
        self.told += 1


class SpoolTests(unittest.SynchronousTestCase):
    """
    L{Spool}: an anonymous file holding the stream from a position on.
    """

    def setUp(self):
        self.directory = self.mktemp()

    def makeSpool(self, start=0, remaining=100, diskReserve=0):
        spool = Spool(self.directory, start, remaining, diskReserve)
        self.addCleanup(spool.close)
        return spool

    def test_appendAndRead(self):
        """
        Appended bytes are read back at their stream positions, counted
        from the spool's C{start}; a read stops at what was appended.
        """
        spool = self.makeSpool(start=1000)
        self.assertEqual((spool.start, spool.end), (1000, 1000))
        spool.append(b"abcdef")
        spool.append(b"ghij")
        self.assertEqual(spool.end, 1010)
        self.assertFalse(spool.finished)
        self.assertEqual(spool.read(1000, 3), b"abc")
        self.assertEqual(spool.read(1004, 4), b"efgh")
        self.assertEqual(spool.read(1007, 100), b"hij")
        self.assertEqual(spool.read(1010, 100), b"")

    def test_anonymousFileCreatesDirectory(self):
        """
        The spool directory is made when missing, and the spool file has
        no name in it: nothing is left behind to clean up.
        """
        directory = os.path.join(self.directory, "deeper", "spool")
        spool = Spool(directory, 0, 10, 0)
        self.addCleanup(spool.close)
        spool.append(b"0123456789")
        self.assertTrue(os.path.isdir(directory))
        self.assertEqual(os.listdir(directory), [])

    def test_readersFedAsDataArrives(self):
        """
        Every attached reader is given each append as it arrives, from its
        own position.
        """
        spool = self.makeSpool(start=10)
        early, late = RecordingSink(), RecordingSink()
        SpoolReader(spool, early, 10, 0, 30)
        spool.append(b"0123")
        SpoolReader(spool, late, 14, 0, 30)
        self.assertEqual((early.data, late.data), (b"0123", b""))
        spool.append(b"4567")
        self.assertEqual((early.data, late.data), (b"01234567", b"4567"))

    def test_finishAndDetachCloses(self):
        """
        The file is closed once the stream is finished and the last reader
        has detached, not before either.
        """
        spool = self.makeSpool()
        a, b = StubReader(), StubReader()
        spool.attach(a)
        spool.attach(b)
        spool.append(b"data")
        spool.detach(a)
        self.assertFalse(isClosed(spool))
        spool.finish()
        self.assertTrue(spool.finished)
        self.assertFalse(isClosed(spool))
        spool.detach(b)
        self.assertTrue(isClosed(spool))
        spool.detach(b)
        spool.close()
        self.assertTrue(isClosed(spool))

    def test_detachBeforeFinishKeepsFile(self):
        """
        A reader detaching while the stream goes on leaves the file open:
        a later laggard of the same upload may still need it.
        """
        spool = self.makeSpool()
        reader = StubReader()
        spool.attach(reader)
        spool.append(b"abc")
        spool.detach(reader)
        self.assertFalse(isClosed(spool))
        spool.append(b"def")
        self.assertEqual(spool.read(0, 6), b"abcdef")

    def test_finishWithoutReadersCloses(self):
        """
        A stream finished after every reader has gone (the only laggard
        failed) closes the file: nobody can attach any more, so nothing
        else ever would.
        """
        spool = self.makeSpool()
        reader = StubReader()
        spool.attach(reader)
        spool.append(b"abc")
        spool.detach(reader)
        spool.finish()
        self.assertTrue(isClosed(spool))

    def test_diskReserveRefused(self):
        """
        A spool that would leave less than C{diskReserve} bytes free is
        refused with L{SpoolRefused}, and no file is made.
        """
        os.makedirs(self.directory)
        # More than the disk holds: other tests freeing space meanwhile
        # cannot make it fit.
        reserve = shutil.disk_usage(self.directory).total + 1
        e = self.assertRaises(SpoolRefused, Spool, self.directory, 0, 1,
                              reserve)
        self.assertIn("annex.diskreserve", str(e))
        self.assertEqual(os.listdir(self.directory), [])

    def test_remainingCounted(self):
        """
        The bytes still to come count against the free space: a stream
        bigger than the disk is refused even with no reserve.
        """
        os.makedirs(self.directory)
        free = shutil.disk_usage(self.directory).free
        self.assertRaises(SpoolRefused, Spool, self.directory, 0,
                          free + 10 ** 12, 0)

    def test_unusableDirectory(self):
        """
        A spool directory that cannot be made (a file is in the way) is a
        L{SpoolRefused}.
        """
        with open(self.directory, "wb"):
            pass
        self.assertRaises(SpoolRefused, Spool,
                          os.path.join(self.directory, "spool"), 0, 1, 0)

    def test_fileCreationFailureRefused(self):
        """
        A spool file that cannot be created (no permission, no file
        descriptors left) is a L{SpoolRefused}, not a bare L{OSError}: the
        tee only expects the former, and goes on without a spool.
        """
        def failing(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        self.patch(spoolModule.tempfile, "TemporaryFile", failing)
        self.assertRaises(SpoolRefused, Spool, self.directory, 0, 1, 0)


# -- SpoolReader ----------------------------------------------------------------


class SpoolReaderTests(unittest.SynchronousTestCase):
    """
    L{SpoolReader}: one node fed from the spool at its own pace.
    """

    def setUp(self):
        self.spool = Spool(self.mktemp(), 0, 100, 0)
        self.addCleanup(self.spool.close)
        self.sink = RecordingSink()

    def test_pauseAndResume(self):
        """
        A paused reader writes nothing; resuming it writes everything the
        spool has so far, and then each append as it comes.
        """
        reader = SpoolReader(self.spool, self.sink, 0, 0, 9)
        reader.pauseProducing()
        self.spool.append(b"abc")
        self.spool.append(b"def")
        self.assertEqual(self.sink.data, b"")
        reader.resumeProducing()
        self.assertEqual(self.sink.data, b"abcdef")
        self.assertEqual(reader.position, 6)
        self.spool.append(b"ghi")
        self.assertEqual(self.sink.data, b"abcdefghi")

    def test_pauseFromInsideWrite(self):
        """
        A sink that pauses the reader from inside C{write} gets no further
        write until it resumes it; the spool is read in C{READ_SIZE}
        pieces.
        """
        self.patch(spoolModule, "READ_SIZE", 4)
        reader = SpoolReader(self.spool, self.sink, 0, 0, 10)
        reader.pauseProducing()
        self.spool.append(b"0123456789")
        self.sink.onWrite = lambda data: reader.pauseProducing()
        reader.resumeProducing()
        self.assertEqual(self.sink.data, b"0123")
        reader.resumeProducing()
        self.assertEqual(self.sink.data, b"01234567")
        reader.resumeProducing()
        self.assertEqual(self.sink.data, b"0123456789")
        self.assertEqual(self.sink.writes, [4, 4, 2])

    def test_skip(self):
        """
        A node that already had the first C{skip} bytes of the stream gets
        only the rest, even where the spool holds more.
        """
        reader = SpoolReader(self.spool, self.sink, 0, 5, 12)
        self.assertEqual(reader.position, 5)
        self.spool.append(b"012")
        self.assertEqual(self.sink.data, b"")
        self.spool.append(b"3456789")
        self.assertEqual(self.sink.data, b"56789")
        self.spool.append(b"ab")
        self.spool.finish()
        self.assertEqual(self.sink.data, b"56789ab")
        self.assertIsNone(self.successResultOf(reader.drained))

    def test_drainedAfterFinish(self):
        """
        C{drained} does not fire while the stream may go on, even with
        every byte written; it fires once the spool is finished, the sink's
        producer is unregistered, and the last reader's departure closes
        the spool.
        """
        reader = SpoolReader(self.spool, self.sink, 0, 0, 6)
        self.spool.append(b"abcdef")
        self.assertEqual(self.sink.data, b"abcdef")
        self.assertNoResult(reader.drained)
        self.assertEqual(self.sink.unregistered, 0)
        self.spool.finish()
        self.assertIsNone(self.successResultOf(reader.drained))
        self.assertEqual(self.sink.unregistered, 1)
        self.assertTrue(isClosed(self.spool))

    def test_drainedWaitsForPausedNode(self):
        """
        A finished spool does not drain a paused reader: C{drained} fires
        when the node resumes and has been given everything.
        """
        reader = SpoolReader(self.spool, self.sink, 0, 0, 6)
        reader.pauseProducing()
        self.spool.append(b"abcdef")
        self.spool.finish()
        self.assertNoResult(reader.drained)
        self.assertFalse(isClosed(self.spool))
        reader.resumeProducing()
        self.assertEqual(self.sink.data, b"abcdef")
        self.assertIsNone(self.successResultOf(reader.drained))
        self.assertTrue(isClosed(self.spool))
        reader.resumeProducing()
        self.assertEqual(self.sink.writes, [6])

    def test_stopFailsDrained(self):
        """
        C{stopProducing} fails C{drained} with L{SpoolRefused} giving the
        reason; the reader is detached and fed nothing more.
        """
        reader = SpoolReader(self.spool, self.sink, 0, 0, 9)
        self.spool.append(b"abc")
        reader.stopProducing("node2 died")
        failure = self.failureResultOf(reader.drained, SpoolRefused)
        self.assertEqual(failure.getErrorMessage(), "node2 died")
        self.spool.append(b"def")
        reader.resumeProducing()
        reader.stopProducing()
        self.assertEqual(self.sink.data, b"abc")

    def test_failingSinkStopsReader(self):
        """
        A sink that raises while fed from the spool fails C{drained}; the
        exception does not escape into C{Spool.append}, which the tee
        calls while writing the client's stream to the other nodes.
        """
        reader = SpoolReader(self.spool, self.sink, 0, 0, 9)

        def broken(data):
            raise IOError("node connection gone")
        self.sink.onWrite = broken
        self.spool.append(b"abc")
        self.failureResultOf(reader.drained, SpoolRefused)
        self.spool.append(b"def")
        self.assertEqual(self.sink.writes, [3])


# -- the cluster's upload -----------------------------------------------------


class ClusterSpoolTestsMixin:
    """
    A cluster of three L{MemoryRepository} nodes, C{node1} to C{node3},
    that spools in a temporary directory after L{LAG} seconds of a
    L{Clock}.
    """

    def setUp(self):
        self.clock = Clock()
        self.spoolDirectory = os.path.abspath(self.mktemp())
        os.makedirs(self.spoolDirectory)
        self.repos, self.cluster = self.makeCluster()

    def makeCluster(self, reactor=True, spoolDirectory=True, diskReserve=0):
        repos = [MemoryRepository(uuid) for uuid in (N1, N2, N3)]
        nodes = [ClusterNode(repo.uuid, "node%d" % (i + 1), 100 * (i + 1),
                             repo) for i, repo in enumerate(repos)]
        cluster = Cluster(
            CLUSTER_UUID, nodes, name="cluster",
            reactor=self.clock if reactor is True else reactor,
            spoolDirectory=(self.spoolDirectory if spoolDirectory is True
                            else spoolDirectory),
            diskReserve=diskReserve, lagSeconds=LAG)
        return repos, cluster

    def startUpload(self, cluster=None, repos=None):
        """
        Start a cluster upload of L{CONTENT} with a L{FakeProducer}
        registered on the tee.

        @return: C{(upload, tee, producer, membranes, sinks)}, the
            membranes being the producers the tee registered on each
            node's sink.
        """
        cluster = self.cluster if cluster is None else cluster
        repos = self.repos if repos is None else repos
        upload = self.successResultOf(cluster.put(KEY, b"file.bin"))
        tee = upload.receive(len(CONTENT))
        producer = FakeProducer()
        tee.registerProducer(producer, True)
        sinks = [repo.uploads[0].sink for repo in repos]
        membranes = [sink.producer for sink in sinks]
        for membrane in membranes:
            self.assertIsNotNone(membrane)
        return upload, tee, producer, membranes, sinks

    def assertStored(self, repos):
        """
        Every repository in C{repos} holds exactly L{CONTENT}, which
        matches its key's hash.
        """
        digest = hashlib.sha256(CONTENT).hexdigest().encode("ascii")
        for repo in repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})
            self.assertEqual(
                hashlib.sha256(repo.contents[KEY.raw]).hexdigest().encode(
                    "ascii"), digest)
            self.assertTrue(KEY.name.startswith(digest))

    def spooledNode2(self):
        """
        Write 100 bytes, pause node2 alone, write another 100 (in flight,
        still coupled), and let the lag bound pass: node2 is decoupled.

        @return: as L{startUpload}.
        """
        started = upload, tee, producer, (m1, m2, m3), sinks = (
            self.startUpload())
        tee.write(CONTENT[:100])
        m2.pauseProducing()
        self.assertEqual(producer.calls, ["pause"])
        tee.write(CONTENT[100:200])
        self.clock.advance(LAG / 2)
        self.assertEqual(self.cluster.spoolsMade, 0)
        self.assertIsNone(tee.spool)
        self.clock.advance(LAG / 2)
        self.assertEqual(self.cluster.spoolsMade, 1)
        self.assertIsNotNone(tee.spool)
        self.assertEqual(producer.calls, ["pause", "resume"])
        return started


class LaggardTests(ClusterSpoolTestsMixin, unittest.SynchronousTestCase):
    """
    A node that alone holds the upload back is fed from the spool.
    """

    def test_laggardSpooled(self):
        """
        node2 alone paused for the lag bound: the client is resumed, one
        spool is made, the rest of the stream reaches node1 and node3 while
        node2 gets nothing more; the PUT's finish waits for node2, which
        gets everything when it resumes, and every node ends up with the
        content.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        self.assertEqual(os.listdir(self.spoolDirectory), [])
        tee.write(CONTENT[200:700])
        tee.write(CONTENT[700:])
        self.assertEqual(self.successResultOf(tee.done), len(CONTENT))
        self.assertEqual([s.written for s in sinks],
                         [len(CONTENT), 200, len(CONTENT)])
        self.assertEqual(producer.calls, ["pause", "resume"])
        tee.unregisterProducer()
        finished = upload.finish(True)
        self.assertNoResult(finished)
        self.assertEqual(self.repos[1].calls[-1][0], "upload.receive")
        m2.resumeProducing()
        self.assertEqual(self.successResultOf(finished),
                         Outcome(True, (N1, N2, N3)))
        self.assertStored(self.repos)
        self.assertEqual(self.cluster.spoolsMade, 1)
        self.assertTrue(isClosed(tee.spool))
        for sink in sinks:
            self.assertIsNone(sink.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_laggardCatchesUpMidStream(self):
        """
        A spooled node that resumes while the client still sends gets the
        backlog at once, then each new piece as it arrives; its later
        pauses pause only its reader, never the client.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        tee.write(CONTENT[200:300])
        m2.resumeProducing()
        self.assertEqual(sinks[1].written, 300)
        tee.write(CONTENT[300:400])
        self.assertEqual(sinks[1].written, 400)
        m2.pauseProducing()
        tee.write(CONTENT[400:])
        self.assertEqual(sinks[1].written, 400)
        self.assertEqual(producer.calls, ["pause", "resume"])
        tee.unregisterProducer()
        finished = upload.finish(True)
        self.assertNoResult(finished)
        m2.resumeProducing()
        self.assertEqual(self.successResultOf(finished),
                         Outcome(True, (N1, N2, N3)))
        self.assertStored(self.repos)

    def test_pauseEndsBeforeBound(self):
        """
        A node that resumes before the lag bound is never spooled: the
        client is paused and resumed with it, and no timer is left.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        tee.write(CONTENT[:100])
        m2.pauseProducing()
        self.clock.advance(LAG * 0.9)
        m2.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(LAG * 10)
        tee.write(CONTENT[100:])
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N2, N3)))
        self.assertEqual(self.cluster.spoolsMade, 0)
        self.assertIsNone(tee.spool)
        self.assertStored(self.repos)

    def test_everyoneSlow(self):
        """
        When every node is paused, nobody could go on: no spool, and the
        client stays paused however long it takes, until the last node
        resumes.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        tee.write(CONTENT[:100])
        m1.pauseProducing()
        m2.pauseProducing()
        m3.pauseProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(LAG * 10)
        self.assertEqual(self.cluster.spoolsMade, 0)
        self.assertEqual(producer.calls, ["pause"])
        m1.resumeProducing()
        m3.resumeProducing()
        m2.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        tee.write(CONTENT[100:])
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N2, N3)))
        self.assertIsNone(tee.spool)
        self.assertStored(self.repos)

    def test_twoSlowNoSpool(self):
        """
        Two nodes paused at once are not a single laggard: no spool.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        m2.pauseProducing()
        m3.pauseProducing()
        self.clock.advance(LAG * 10)
        self.assertEqual(self.cluster.spoolsMade, 0)
        self.assertEqual(producer.calls, ["pause"])

    def test_boundRestartsWhenAloneAgain(self):
        """
        The bound counts time as the only paused node: node2 paused, then
        node3 too for a while, then node3 resumes; node2 is spooled
        C{lagSeconds} after it became the only one again.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        m2.pauseProducing()
        self.clock.advance(LAG / 2)
        m3.pauseProducing()
        self.clock.advance(LAG)
        m3.resumeProducing()
        self.clock.advance(LAG * 0.9)
        self.assertEqual(self.cluster.spoolsMade, 0)
        self.assertEqual(producer.calls, ["pause"])
        self.clock.advance(LAG * 0.1)
        self.assertEqual(self.cluster.spoolsMade, 1)
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_secondLaggardSharesSpool(self):
        """
        A second node lagging later in the same upload is fed from the
        same spool (C{spoolsMade} stays 1); the last coupled node then
        paces the client alone, without any lag timer; everything arrives
        everywhere.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        spool = tee.spool
        tee.write(CONTENT[200:300])
        m3.pauseProducing()
        self.assertEqual(producer.calls, ["pause", "resume", "pause"])
        self.clock.advance(LAG)
        self.assertEqual(producer.calls,
                         ["pause", "resume", "pause", "resume"])
        self.assertIs(tee.spool, spool)
        self.assertEqual(self.cluster.spoolsMade, 1)
        tee.write(CONTENT[300:400])
        self.assertEqual([s.written for s in sinks], [400, 200, 300])

        m1.pauseProducing()
        self.assertEqual(producer.calls[-1], "pause")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        m1.resumeProducing()
        self.assertEqual(producer.calls[-1], "resume")

        tee.write(CONTENT[400:])
        tee.unregisterProducer()
        finished = upload.finish(True)
        m3.resumeProducing()
        self.assertEqual(sinks[2].written, len(CONTENT))
        self.assertNoResult(finished)
        self.assertFalse(isClosed(spool))
        m2.resumeProducing()
        self.assertEqual(self.successResultOf(finished),
                         Outcome(True, (N1, N2, N3)))
        self.assertStored(self.repos)
        self.assertEqual(self.cluster.spoolsMade, 1)
        self.assertTrue(isClosed(spool))

    def test_laggardWithKeptPrefix(self):
        """
        A laggard that kept the first bytes from an interrupted upload
        (it answered C{PUT-FROM} later than the others) is fed from the
        spool only what it still lacks.
        """
        self.repos[1].partial[KEY.raw] = CONTENT[:300]
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        self.assertEqual(upload.offset, 0)
        self.assertEqual(sinks[1].length, len(CONTENT) - 300)
        tee.write(CONTENT[:100])
        m2.pauseProducing()
        self.clock.advance(LAG)
        self.assertEqual(self.cluster.spoolsMade, 1)
        tee.write(CONTENT[100:])
        tee.unregisterProducer()
        finished = upload.finish(True)
        m2.resumeProducing()
        self.assertEqual(self.successResultOf(finished),
                         Outcome(True, (N1, N2, N3)))
        self.assertEqual(sinks[1].written, len(CONTENT) - 300)
        self.assertStored(self.repos)

    def test_noDecoupleAfterLastByte(self):
        """
        A node that pauses once the whole stream was written (the producer
        not yet unregistered) is not spooled: there is nothing left to
        hold back, and a spool made then would never be finished, so the
        PUT could never finish.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        tee.write(CONTENT)
        m2.pauseProducing()
        self.clock.advance(LAG)
        self.assertEqual(self.cluster.spoolsMade, 0)
        tee.unregisterProducer()
        finished = upload.finish(True)
        self.assertEqual(self.successResultOf(finished),
                         Outcome(True, (N1, N2, N3)))
        self.assertStored(self.repos)

    def test_noDecoupleAfterInFlightLastByte(self):
        """
        A lag bound that runs out after the in-flight rest of the stream
        was written (the producer not yet unregistered) makes no spool
        either, and the PUT finishes.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        tee.write(CONTENT[:900])
        m2.pauseProducing()
        tee.write(CONTENT[900:])
        self.clock.advance(LAG)
        self.assertEqual(self.cluster.spoolsMade, 0)
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N2, N3)))
        self.assertStored(self.repos)

    def test_throughServer(self):
        """
        End to end through a L{P2PServer}: node2's sink pauses mid-payload,
        pausing the client's transport; after the lag bound the transport
        produces again and the payload and its verdict are read; the answer
        waits for node2, and names all three nodes once node2 has resumed
        and been given the rest from the spool.
        """
        session = Session(self.cluster)
        self.assertEqual(session.received(),
                         line(b"AUTH-SUCCESS", CLUSTER_UUID))
        self.assertEqual(session.send(b"VERSION 4\n"), b"VERSION 4\n")
        self.assertEqual(session.send(line(b"PUT", b"file.bin", KEY)),
                         b"PUT-FROM 0\n")
        session.send(b"DATA %d\n" % len(CONTENT) + CONTENT[:100])
        membrane = self.repos[1].uploads[0].sink.producer
        membrane.pauseProducing()
        self.assertEqual(session.transport.producerState, "paused")
        self.clock.advance(LAG)
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(self.cluster.spoolsMade, 1)
        self.assertEqual(session.send(CONTENT[100:] + b"VALID\n"), b"")
        self.assertEqual([r.uploads[0].sink.written for r in self.repos],
                         [len(CONTENT), 100, len(CONTENT)])
        self.assertEqual([r.contents for r in self.repos], [{}, {}, {}])
        membrane.resumeProducing()
        self.assertEqual(session.received(),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        self.assertStored(self.repos)
        session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))


class RefusedSpoolTests(ClusterSpoolTestsMixin, unittest.SynchronousTestCase):
    """
    Without a usable spool, the slowest node paces the client, as before.
    """

    def assertNoSpoolPacedByNode2(self, cluster, repos):
        """
        node2 alone paused for ten times the lag bound: no spool, the
        client stays paused until node2 resumes, and the upload completes
        on all three nodes.
        """
        before = os.listdir(self.spoolDirectory)
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload(
            cluster, repos)
        tee.write(CONTENT[:100])
        m2.pauseProducing()
        self.clock.advance(LAG * 10)
        self.assertEqual(cluster.spoolsMade, 0)
        self.assertIsNone(tee.spool)
        self.assertEqual(producer.calls, ["pause"])
        m2.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        tee.write(CONTENT[100:])
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N2, N3)))
        self.assertStored(repos)
        self.assertEqual(os.listdir(self.spoolDirectory), before)
        return tee

    def test_diskReserve(self):
        """
        A spool that would eat into C{diskReserve} is not made: the client
        stays paused until the node resumes, and the upload completes.
        Later laggards of the upload are not tried again.
        """
        reserve = shutil.disk_usage(self.spoolDirectory).total + 1
        repos, cluster = self.makeCluster(diskReserve=reserve)
        self.assertNoSpoolPacedByNode2(cluster, repos)

    def test_unusableDirectory(self):
        """
        A spool directory that cannot be made is a refusal too.
        """
        path = os.path.join(self.spoolDirectory, "a-file")
        with open(path, "wb"):
            pass
        repos, cluster = self.makeCluster(spoolDirectory=path)
        self.assertNoSpoolPacedByNode2(cluster, repos)

    def test_noReactor(self):
        """
        Without a reactor the cluster never spools (nor sets any timer).
        """
        repos, cluster = self.makeCluster(reactor=None)
        self.assertNoSpoolPacedByNode2(cluster, repos)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noSpoolDirectory(self):
        """
        Without a spool directory the cluster never spools, and arms no
        lag timer.
        """
        repos, cluster = self.makeCluster(spoolDirectory=None)
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload(
            cluster, repos)
        m2.pauseProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        m2.resumeProducing()
        repos, cluster = self.makeCluster(spoolDirectory=None)
        self.assertNoSpoolPacedByNode2(cluster, repos)


class SpooledFailureTests(ClusterSpoolTestsMixin,
                          unittest.SynchronousTestCase):
    """
    Failures of a spooled node, and of the upload as a whole.
    """

    def test_laggardFails(self):
        """
        A spooled node whose transport stops its producer is dropped: its
        upload is aborted keeping what it got, the PUT finishes without
        waiting for it, and names the other two.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        m2.stopProducing()
        self.assertIsNotNone(self.repos[1].uploads[0].aborted)
        self.assertEqual(self.repos[1].partial, {KEY.raw: CONTENT[:200]})
        tee.write(CONTENT[200:])
        m2.resumeProducing()
        self.assertEqual(sinks[1].written, 200)
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N3)))
        self.assertStored([self.repos[0], self.repos[2]])
        self.assertEqual(self.repos[1].contents, {})
        self.assertEqual(
            [c for c in self.repos[1].calls if c[0] == "upload.finish"], [])

    def test_failedLaggardSpoolClosed(self):
        """
        When the only spooled node failed, the spool file is closed once
        the stream ends, not left open for the garbage collector.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        m2.stopProducing()
        tee.write(CONTENT[200:])
        tee.unregisterProducer()
        self.successResultOf(upload.finish(True))
        self.assertTrue(isClosed(tee.spool))

    def test_laggardSinkRaises(self):
        """
        A spooled node whose sink raises while it is fed from the spool is
        dropped; the client's write is not disturbed and the other nodes
        get every byte.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        m2.resumeProducing()

        def broken(data):
            raise IOError("node2's connection is gone")
        sinks[1].write = broken
        tee.write(CONTENT[200:300])
        tee.write(CONTENT[300:])
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N3)))
        self.assertStored([self.repos[0], self.repos[2]])
        self.assertIsNotNone(self.repos[1].uploads[0].aborted)

    def test_laggardFinishFails(self):
        """
        A spooled node that drains but then fails to finish is left out of
        the answer.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        self.repos[1].failNext("upload.finish", RepositoryUnavailable("lost"))
        tee.write(CONTENT[200:])
        tee.unregisterProducer()
        finished = upload.finish(True)
        m2.resumeProducing()
        self.assertEqual(self.successResultOf(finished),
                         Outcome(True, (N1, N3)))

    def test_abortStopsReadersClosesSpool(self):
        """
        Aborting the upload mid-way (the client went away) stops the
        spool readers, failing their C{drained}, closes the spool, and
        aborts every node's upload, each keeping what it got.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.spooledNode2()
        tee.write(CONTENT[200:300])
        reader = tee._branches[1].reader
        self.assertIsNotNone(reader)
        tee.unregisterProducer()
        upload.abort("client went away mid-upload")
        self.assertTrue(reader.drained.called)
        self.assertTrue(isClosed(tee.spool))
        m2.resumeProducing()
        self.assertEqual(sinks[1].written, 200)
        for repo in self.repos:
            self.assertIsNotNone(repo.uploads[0].aborted)
            self.assertEqual(repo.contents, {})
        self.assertEqual([r.partial for r in self.repos], [
            {KEY.raw: CONTENT[:300]}, {KEY.raw: CONTENT[:200]},
            {KEY.raw: CONTENT[:300]}])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abortCancelsLagTimer(self):
        """
        An upload aborted while a node's lag bound runs makes no spool
        later, and does not resume the client's producer.
        """
        upload, tee, producer, (m1, m2, m3), sinks = self.startUpload()
        tee.write(CONTENT[:100])
        m2.pauseProducing()
        upload.abort("given up")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(LAG * 10)
        self.assertEqual(self.cluster.spoolsMade, 0)
        self.assertIsNone(tee.spool)
        self.assertEqual(producer.calls, ["pause"])


# -- any schedule ---------------------------------------------------------------


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 300)),
        st.tuples(st.sampled_from(["pause", "resume", "stop"]),
                  st.integers(0, 2)),
        st.tuples(st.just("wait"), st.sampled_from([0.5, LAG, LAG * 3]))),
    max_size=25)


class ScheduleTests(ClusterSpoolTestsMixin, unittest.SynchronousTestCase):
    """
    Any schedule of writes, pauses, resumes, failures and waiting.
    """

    @settings(max_examples=60, deadline=None)
    @given(operations)
    def test_anySchedule(self, ops):
        """
        Whatever the nodes do, at most one spool is made; once every node
        that did not fail has resumed, the client is not held back; the
        upload completes on exactly the nodes that did not fail, with the
        right content; the spool, if any, is closed and no timer is left.
        """
        self.clock = Clock()
        repos, cluster = self.makeCluster()
        upload, tee, producer, membranes, sinks = self.startUpload(
            cluster, repos)
        position = 0
        stopped = set()
        for op, arg in ops:
            if op == "write":
                if not producer.paused and position < len(CONTENT):
                    tee.write(CONTENT[position:position + arg])
                    position = min(position + arg, len(CONTENT))
            elif op == "pause":
                membranes[arg].pauseProducing()
            elif op == "resume":
                membranes[arg].resumeProducing()
            elif op == "stop":
                if len(stopped) < 2:
                    stopped.add(arg)
                    membranes[arg].stopProducing()
            else:
                self.clock.advance(arg)
        for membrane in membranes:
            membrane.resumeProducing()
        self.assertFalse(producer.paused)
        if position < len(CONTENT):
            tee.write(CONTENT[position:])
        tee.unregisterProducer()
        outcome = self.successResultOf(upload.finish(True))
        kept = [i for i in range(3) if i not in stopped]
        self.assertEqual(outcome,
                         Outcome(True, tuple((N1, N2, N3)[i] for i in kept)))
        self.assertStored([repos[i] for i in kept])
        self.assertLessEqual(cluster.spoolsMade, 1)
        self.assertEqual(cluster.spoolsMade, int(tee.spool is not None))
        if tee.spool is not None:
            self.assertTrue(isClosed(tee.spool))
        self.assertEqual(self.clock.getDelayedCalls(), [])
