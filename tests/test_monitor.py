"""
Tests for L{annexd.monitor} and L{annexd.http.status}: what an instrumented
repository counts, the transfers in progress, the pool collector, and the
admin pages.

Calls go through L{Monitor.instrument} around a L{MemoryRepository}, and
the counts are read back by parsing L{Monitor.render} with
C{prometheus_client}'s own parser, as Prometheus would read them.  Time is
a L{Clock}; the admin site is driven over a L{StringTransport}.

Everything runs synchronously; no real reactor is involved.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.http.status import (
    METRICS_CONTENT_TYPE, MetricsResource, StatusPage, makeAdminSite)
from annexd.interfaces import (
    IDownload, IRepository, IUpload, Outcome, RepositoryError,
    RepositoryUnavailable)
from annexd.monitor import Monitor
from annexd.router import spool as spoolModule
from tests.support.memory import MemoryRepository, keyFor
from tests.support.metrics import parseSamples
from tests.support.wire import Session

UUID = b"aaaaaaaa-0000-4000-8000-aaaaaaaaaaaa"

#: Content for transfers (several chunks of the repository's 1000).
CONTENT = bytes(range(256)) * 40
KEY = keyFor(CONTENT)


def samples(monitor):
    """
    Every sample of C{monitor}'s exposition, parsed as Prometheus would.

    @return: C{{(sample name, frozenset of label items): value}}.
    """
    return parseSamples(monitor.render().decode("utf-8"))


def value(monitor, name, **labels):
    """
    The value of the sample C{name} with exactly C{labels}, or L{None}.
    """
    return samples(monitor).get((name, frozenset(labels.items())))


def requestCounts(monitor, family="annexd_requests_total"):
    """
    The non-zero request counts: C{{(label, operation, result): n}}, the
    label being the front-end or the node.
    """
    counts = {}
    for (name, labels), count in samples(monitor).items():
        if name == family and count:
            labels = dict(labels)
            who = labels.get("frontend", labels.get("node"))
            counts[(who, labels["operation"], labels["result"])] = count
    return counts


@implementer(IConsumer)
class RecordingConsumer:
    """
    A client's consumer: keeps what it is given and records every producer
    registration.

    @ivar registrations: C{(producer, streaming)} for every
        C{registerProducer}.
    @ivar unregistered: how many times L{unregisterProducer} was called.
    @ivar pauseAfter: when set, the producer is paused once this many
        bytes have arrived.
    """

    def __init__(self, pauseAfter=None):
        self.data = b""
        self.registrations = []
        self.producer = None
        self.unregistered = 0
        self.pauseAfter = pauseAfter

    def registerProducer(self, producer, streaming):
        self.registrations.append((producer, streaming))
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None
        self.unregistered += 1

    def write(self, data):
        self.data += data
        if self.pauseAfter is not None and len(self.data) >= self.pauseAfter:
            self.pauseAfter = None
            self.producer.pauseProducing()


@implementer(IPushProducer)
class FakeProducer:
    """
    A client's streaming producer, as an upload's sink sees it.
    """

    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class SlowRepository(MemoryRepository):
    """
    A L{MemoryRepository} whose C{put} answers when the test says
    (L{answer}).
    """

    def __init__(self, uuid, **kw):
        MemoryRepository.__init__(self, uuid, **kw)
        self.waiting = []

    def put(self, key, associatedFile):
        d = defer.Deferred()
        self.waiting.append(
            (d, lambda: MemoryRepository.put(self, key, associatedFile)))
        return d

    def answer(self):
        d, call = self.waiting.pop(0)
        call().chainDeferred(d)


class Broken:
    """
    A repository whose methods raise at once (not through a Deferred).
    """

    uuid = UUID

    def checkPresent(self, key):
        raise RuntimeError("broken")

    def put(self, key, associatedFile):
        raise RuntimeError("broken")


class MonitorTestCase(unittest.SynchronousTestCase):
    """
    A monitor on a fake clock, and a memory repository.
    """

    def setUp(self):
        self.clock = Clock()
        self.monitor = Monitor(clock=self.clock.seconds)
        self.repository = MemoryRepository(UUID, chunkSize=1000)

    def instrument(self, repository=None, frontend="ssh", **kw):
        return self.monitor.instrument(
            self.repository if repository is None else repository,
            frontend=frontend, **kw)

    def download(self, wrapped, key, consumer=None):
        """
        A whole GET through C{wrapped}, as a front-end does it.

        @return: the consumer.
        """
        consumer = RecordingConsumer() if consumer is None else consumer
        download = self.successResultOf(wrapped.get(key, None, 0))
        valid = self.successResultOf(download.deliver(consumer))
        self.successResultOf(download.finish(valid is not False))
        return consumer

    def upload(self, wrapped, content, key=None, chunk=700):
        """
        A whole PUT through C{wrapped}, as a front-end does it.

        @return: the L{Outcome}.
        """
        key = keyFor(content) if key is None else key
        upload = self.successResultOf(wrapped.put(key, None))
        sink = upload.receive(len(content) - upload.offset)
        for i in range(upload.offset, len(content), chunk):
            sink.write(content[i:i + chunk])
        self.successResultOf(sink.done)
        return self.successResultOf(upload.finish(True))


class RequestTests(MonitorTestCase):
    """
    Requests that move no content count once their answer comes, by
    front-end, operation and result.
    """

    def test_checkPresent(self):
        """
        CHECKPRESENT counts C{ok} when present, C{no} when absent,
        C{error} when it fails.
        """
        wrapped = self.instrument()
        present = self.repository.add(b"here")
        self.assertIs(True, self.successResultOf(
            wrapped.checkPresent(present)))
        self.assertIs(False, self.successResultOf(
            wrapped.checkPresent(keyFor(b"gone"))))
        self.repository.failNext("checkPresent", RepositoryError(b"nope"))
        self.failureResultOf(wrapped.checkPresent(present), RepositoryError)
        self.assertEqual({("ssh", "checkpresent", "ok"): 1,
                          ("ssh", "checkpresent", "no"): 1,
                          ("ssh", "checkpresent", "error"): 1},
                         requestCounts(self.monitor))

    def test_lockRemoveTimestamp(self):
        """
        LOCKCONTENT counts C{no} when there is nothing to lock; REMOVE
        counts C{no} when not removed (locked) and C{error} when the
        repository is unavailable; GETTIMESTAMP counts C{ok}.
        """
        wrapped = self.instrument(frontend="http")
        key = self.repository.add(b"content")
        lock = self.successResultOf(wrapped.lockContent(key))
        self.assertIsNone(self.successResultOf(
            wrapped.lockContent(keyFor(b"other"))))
        self.assertFalse(self.successResultOf(wrapped.remove(key)).ok)
        self.successResultOf(lock.release())
        self.assertTrue(self.successResultOf(wrapped.remove(key)).ok)
        self.repository.failNext("remove", RepositoryUnavailable("gone"))
        self.failureResultOf(wrapped.remove(key), RepositoryUnavailable)
        self.assertEqual(0, self.successResultOf(wrapped.getTimestamp()))
        self.assertEqual({("http", "lockcontent", "ok"): 1,
                          ("http", "lockcontent", "no"): 1,
                          ("http", "remove", "no"): 1,
                          ("http", "remove", "ok"): 1,
                          ("http", "remove", "error"): 1,
                          ("http", "gettimestamp", "ok"): 1},
                         requestCounts(self.monitor))

    def test_nodeFamily(self):
        """
        A repository instrumented for a node counts in the
        C{annexd_node_*} families only.
        """
        wrapped = self.instrument(frontend=None, node="node1")
        key = self.repository.add(b"content")
        self.successResultOf(wrapped.checkPresent(key))
        self.assertEqual({}, requestCounts(self.monitor))
        self.assertEqual(
            {("node1", "checkpresent", "ok"): 1},
            requestCounts(self.monitor, "annexd_node_requests_total"))

    def test_synchronousFailure(self):
        """
        A repository method raising at once counts as an error, and the
        exception reaches the caller unchanged.
        """
        wrapped = self.instrument(Broken())
        self.assertRaises(RuntimeError, wrapped.checkPresent, KEY)
        self.assertRaises(RuntimeError, wrapped.put, KEY, None)
        self.assertEqual({("ssh", "checkpresent", "error"): 1,
                          ("ssh", "put", "error"): 1},
                         requestCounts(self.monitor))
        self.assertEqual([], self.monitor.transfers)
        self.assertEqual(0.0, value(self.monitor,
                                    "annexd_transfers_in_progress",
                                    frontend="ssh"))

    def test_wrapper(self):
        """
        The wrapper is an L{IRepository} with the same uuid; other
        attributes are the wrapped repository's.
        """
        wrapped = self.instrument(target="gw")
        verifyObject(IRepository, wrapped)
        self.assertEqual(UUID, wrapped.uuid)
        self.assertIs(self.repository.contents, wrapped.contents)
        self.assertRaises(AttributeError, getattr, wrapped, "noSuchThing")

    def test_badArguments(self):
        """
        An unknown front-end, or neither front-end nor node, is refused.
        """
        self.assertRaises(ValueError, self.monitor.instrument,
                          self.repository, frontend="smtp")
        self.assertRaises(ValueError, self.monitor.instrument,
                          self.repository)
        self.assertRaises(ValueError, self.monitor.sessionOpened, "smtp")

    def test_sessions(self):
        """
        Sessions opened count in C{annexd_sessions_total}; those not yet
        closed in C{annexd_sessions_open}.
        """
        self.monitor.sessionOpened("ssh")
        self.monitor.sessionOpened("ssh")
        self.monitor.sessionOpened("p2p")
        self.monitor.sessionClosed("ssh")
        self.assertEqual(2.0, value(self.monitor, "annexd_sessions_total",
                                    frontend="ssh"))
        self.assertEqual(1.0, value(self.monitor, "annexd_sessions_open",
                                    frontend="ssh"))
        self.assertEqual(1.0, value(self.monitor, "annexd_sessions_open",
                                    frontend="p2p"))

    def test_ownRegistry(self):
        """
        Two monitors count separately (neither uses the global registry).
        """
        other = Monitor(clock=self.clock.seconds)
        self.monitor.sessionOpened("http")
        self.assertEqual(1.0, value(self.monitor, "annexd_sessions_total",
                                    frontend="http"))
        self.assertIsNone(value(other, "annexd_sessions_total",
                                frontend="http"))


class DownloadTests(MonitorTestCase):
    """
    GET: bytes counted as they are written, duration from C{get} to
    C{finish}, result once the exchange is over.
    """

    def test_download(self):
        """
        A whole download counts its bytes, one C{get ok}, and its duration.
        """
        wrapped = self.instrument(frontend="p2p")
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        verifyObject(IDownload, download)
        self.assertEqual(len(CONTENT), download.length)
        self.clock.advance(2.5)
        consumer = RecordingConsumer()
        self.assertIs(True, self.successResultOf(download.deliver(consumer)))
        self.assertEqual(CONTENT, consumer.data)
        self.assertEqual({}, requestCounts(self.monitor))
        self.successResultOf(download.finish(True))
        m = self.monitor
        self.assertEqual({("p2p", "get", "ok"): 1}, requestCounts(m))
        self.assertEqual(len(CONTENT), value(
            m, "annexd_transfer_bytes_total", frontend="p2p",
            direction="download"))
        self.assertEqual(0.0, value(
            m, "annexd_transfer_bytes_total", frontend="p2p",
            direction="upload"))
        self.assertEqual(1.0, value(
            m, "annexd_transfer_seconds_count", frontend="p2p",
            direction="download"))
        self.assertEqual(2.5, value(
            m, "annexd_transfer_seconds_sum", frontend="p2p",
            direction="download"))
        self.assertEqual(0.0, value(
            m, "annexd_transfer_seconds_bucket", frontend="p2p",
            direction="download", le="1.0"))
        self.assertEqual(1.0, value(
            m, "annexd_transfer_seconds_bucket", frontend="p2p",
            direction="download", le="5.0"))

    def test_offset(self):
        """
        A resumed download counts the bytes it actually moves.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 1000))
        self.successResultOf(download.deliver(RecordingConsumer()))
        self.successResultOf(download.finish(True))
        self.assertEqual(len(CONTENT) - 1000, value(
            self.monitor, "annexd_transfer_bytes_total", frontend="ssh",
            direction="download"))

    def test_absent(self):
        """
        A GET of absent content (delivered to no consumer, verdict
        INVALID) counts C{get no} and no bytes.
        """
        wrapped = self.instrument()
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        self.assertEqual(0, download.length)
        self.assertIs(False, self.successResultOf(download.deliver(None)))
        self.successResultOf(download.finish(False))
        self.assertEqual({("ssh", "get", "no"): 1},
                         requestCounts(self.monitor))
        self.assertEqual(0.0, value(
            self.monitor, "annexd_transfer_bytes_total", frontend="ssh",
            direction="download"))

    def test_refused(self):
        """
        Content the receiver refuses (C{finish(False)}) counts C{get no}.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        self.successResultOf(download.deliver(RecordingConsumer()))
        self.successResultOf(download.finish(False))
        self.assertEqual({("ssh", "get", "no"): 1},
                         requestCounts(self.monitor))

    def test_getFails(self):
        """
        A failing C{get} counts C{get error}, no duration, and leaves no
        transfer behind.
        """
        wrapped = self.instrument()
        self.repository.failNext("get", RepositoryUnavailable("down"))
        self.failureResultOf(wrapped.get(KEY, None, 0),
                             RepositoryUnavailable)
        self.assertEqual({("ssh", "get", "error"): 1},
                         requestCounts(self.monitor))
        self.assertEqual([], self.monitor.transfers)
        self.assertIsNone(value(
            self.monitor, "annexd_transfer_seconds_count", frontend="ssh",
            direction="download"))

    def test_deliverFails(self):
        """
        A failing delivery counts one C{get error}, even when the
        front-end then finishes the download.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        self.repository.failNext("download.deliver", RepositoryError(b"x"))
        self.failureResultOf(download.deliver(RecordingConsumer()),
                             RepositoryError)
        self.assertEqual([], self.monitor.transfers)
        self.successResultOf(download.finish(False))
        self.assertEqual({("ssh", "get", "error"): 1},
                         requestCounts(self.monitor))

    def test_backpressure(self):
        """
        The consumer given to C{deliver} gets the download's own producer,
        as a push producer; pausing it stops the download, resuming it
        goes on; only bytes written are counted.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        consumer = RecordingConsumer(pauseAfter=3000)
        d = download.deliver(consumer)
        real = self.repository.downloads[0]
        self.assertEqual([(real, True)], consumer.registrations)
        self.assertNoResult(d)
        self.assertEqual(3000, len(consumer.data))
        self.assertEqual(["pause"], real.history)
        self.assertEqual(3000, self.monitor.transfers[0].bytes)
        self.assertEqual(3000, value(
            self.monitor, "annexd_transfer_bytes_total", frontend="ssh",
            direction="download"))
        consumer.producer.resumeProducing()
        self.assertIs(True, self.successResultOf(d))
        self.assertEqual(CONTENT, consumer.data)
        self.assertEqual(1, consumer.unregistered)


class UploadTests(MonitorTestCase):
    """
    PUT: bytes counted as they are written into the sink, duration from
    C{put} to C{finish}/C{dataPresent}/C{abort}.
    """

    def test_upload(self):
        """
        A whole upload stores the content, counts its bytes, one
        C{put ok}, and its duration.
        """
        wrapped = self.instrument(frontend="http")
        upload = self.successResultOf(wrapped.put(KEY, None))
        verifyObject(IUpload, upload)
        self.assertEqual(0, upload.offset)
        sink = upload.receive(len(CONTENT))
        for i in range(0, len(CONTENT), 4096):
            sink.write(CONTENT[i:i + 4096])
            self.assertEqual(min(i + 4096, len(CONTENT)),
                             self.repository.uploads[0].sink.written)
        self.assertEqual(len(CONTENT), self.successResultOf(sink.done))
        self.clock.advance(70)
        outcome = self.successResultOf(upload.finish(True))
        self.assertTrue(outcome.ok)
        self.assertEqual(CONTENT, self.repository.contents[KEY.raw])
        m = self.monitor
        self.assertEqual({("http", "put", "ok"): 1}, requestCounts(m))
        self.assertEqual(len(CONTENT), value(
            m, "annexd_transfer_bytes_total", frontend="http",
            direction="upload"))
        self.assertEqual(70.0, value(
            m, "annexd_transfer_seconds_sum", frontend="http",
            direction="upload"))
        self.assertEqual(0.0, value(
            m, "annexd_transfer_seconds_bucket", frontend="http",
            direction="upload", le="60.0"))

    def test_nodeUpload(self):
        """
        Uploads to a repository instrumented for a node count in the node
        families.
        """
        wrapped = self.instrument(frontend=None, node="n2")
        self.assertTrue(self.upload(wrapped, CONTENT).ok)
        m = self.monitor
        self.assertEqual({("n2", "put", "ok"): 1},
                         requestCounts(m, "annexd_node_requests_total"))
        self.assertEqual(len(CONTENT), value(
            m, "annexd_node_bytes_total", node="n2", direction="upload"))
        self.assertEqual(1.0, value(
            m, "annexd_node_transfer_seconds_count", node="n2",
            direction="upload"))
        self.assertIsNone(value(
            m, "annexd_transfer_bytes_total", frontend="ssh",
            direction="upload"))
        self.assertEqual({"upload": 0, "download": 0}, m.totals())
        self.assertEqual({"upload": len(CONTENT), "download": 0},
                         m.nodeTotals())

    def test_alreadyHad(self):
        """
        A PUT of content the repository has counts C{put ok}, with no
        transfer, no bytes and no duration.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        outcome = self.successResultOf(wrapped.put(KEY, None))
        self.assertEqual(Outcome(True, (), alreadyHad=True), outcome)
        self.assertEqual({("ssh", "put", "ok"): 1},
                         requestCounts(self.monitor))
        self.assertEqual([], self.monitor.transfers)
        self.assertIsNone(value(
            self.monitor, "annexd_transfer_seconds_count", frontend="ssh",
            direction="upload"))

    def test_notStored(self):
        """
        Content the repository rejects (wrong checksum) counts C{put no};
        its bytes were moved all the same.
        """
        wrapped = self.instrument()
        wrong = b"x" * len(CONTENT)
        self.assertFalse(self.upload(wrapped, wrong, key=KEY).ok)
        self.assertEqual({("ssh", "put", "no"): 1},
                         requestCounts(self.monitor))
        self.assertEqual(len(wrong), self.monitor.totals()["upload"])

    def test_dataPresent(self):
        """
        DATA-PRESENT ends the transfer with what the repository says.
        """
        wrapped = self.instrument()
        upload = self.successResultOf(wrapped.put(KEY, None))
        self.assertFalse(self.successResultOf(upload.dataPresent()).ok)
        self.assertEqual({("ssh", "put", "no"): 1},
                         requestCounts(self.monitor))
        self.assertEqual([], self.monitor.transfers)

    def test_finishFails(self):
        """
        A failing C{finish} counts C{put error}.
        """
        wrapped = self.instrument()
        upload = self.successResultOf(wrapped.put(KEY, None))
        self.repository.failNext("upload.finish", RepositoryError(b"full"))
        self.failureResultOf(upload.finish(None), RepositoryError)
        self.assertEqual({("ssh", "put", "error"): 1},
                         requestCounts(self.monitor))

    def test_abortedByFrontend(self):
        """
        An upload the front-end aborts reaches the repository, and counts
        one C{put error} with its duration.
        """
        wrapped = self.instrument()
        upload = self.successResultOf(wrapped.put(KEY, None))
        upload.receive(len(CONTENT)).write(CONTENT[:100])
        upload.abort("client went away")
        upload.abort("client went away")
        self.assertEqual(("upload.abort", KEY.raw, "client went away"),
                         self.repository.calls[-1])
        self.assertEqual(CONTENT[:100], self.repository.partial[KEY.raw])
        self.assertEqual({("ssh", "put", "error"): 1},
                         requestCounts(self.monitor))
        self.assertEqual(1.0, value(
            self.monitor, "annexd_transfer_seconds_count", frontend="ssh",
            direction="upload"))
        self.assertEqual([], self.monitor.transfers)

    def test_sink(self):
        """
        The sink C{receive} returns keeps the real sink's C{done} and
        other attributes, and registers the writer's producer on the real
        sink as it is.
        """
        wrapped = self.instrument()
        upload = self.successResultOf(wrapped.put(KEY, None))
        sink = upload.receive(len(CONTENT))
        real = self.repository.uploads[0].sink
        self.assertIs(real.done, sink.done)
        self.assertEqual(len(CONTENT), sink.length)
        producer = FakeProducer()
        sink.registerProducer(producer, True)
        self.assertIs(producer, real.producer)
        self.assertIs(True, real.streaming)
        sink.unregisterProducer()
        self.assertIsNone(real.producer)

    def test_receiveFails(self):
        """
        A C{receive} that raises ends the transfer as an error.
        """
        wrapped = self.instrument()
        upload = self.successResultOf(wrapped.put(KEY, None))
        self.repository.failNext("upload.receive", RepositoryError(b"no"))
        self.assertRaises(RepositoryError, upload.receive, 10)
        upload.abort("the repository cannot take the content")
        self.assertEqual({("ssh", "put", "error"): 1},
                         requestCounts(self.monitor))
        self.assertEqual([], self.monitor.transfers)


class TransferTests(MonitorTestCase):
    """
    L{Monitor.transfers}, L{Monitor.drained} and L{Transfer.abort}.
    """

    def test_listed(self):
        """
        A transfer is listed from C{get} until C{finish}, with what the
        status page shows; the in-progress gauge follows.
        """
        wrapped = self.instrument(frontend="http", target="gw1")
        self.repository.add(CONTENT)
        self.clock.advance(100)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        [transfer] = self.monitor.transfers
        self.assertEqual(
            ("http", None, "gw1", "download", KEY.raw.decode("ascii"), 0,
             100, len(CONTENT)),
            (transfer.frontend, transfer.node, transfer.target,
             transfer.direction, transfer.key, transfer.bytes,
             transfer.started, transfer.length))
        self.assertEqual(1.0, value(self.monitor,
                                    "annexd_transfers_in_progress",
                                    frontend="http"))
        self.successResultOf(download.deliver(RecordingConsumer()))
        self.assertEqual(len(CONTENT), transfer.bytes)
        self.assertEqual([transfer], self.monitor.transfers)
        self.successResultOf(download.finish(True))
        self.assertEqual([], self.monitor.transfers)
        self.assertTrue(transfer.ended)
        self.assertEqual(0.0, value(self.monitor,
                                    "annexd_transfers_in_progress",
                                    frontend="http"))

    def test_listedBeforeAnswer(self):
        """
        A transfer is listed as soon as C{put} is called, before the
        repository answers.
        """
        slow = SlowRepository(UUID)
        wrapped = self.instrument(slow)
        d = wrapped.put(KEY, None)
        self.assertEqual(["upload"],
                         [t.direction for t in self.monitor.transfers])
        slow.answer()
        self.successResultOf(d)
        self.assertEqual(1, len(self.monitor.transfers))

    def test_drained(self):
        """
        L{Monitor.drained} fires once the last front-end transfer is over,
        not before; at once when there is none.
        """
        self.successResultOf(self.monitor.drained())
        wrapped = self.instrument()
        first = self.successResultOf(wrapped.put(KEY, None))
        other = keyFor(b"other")
        second = self.successResultOf(wrapped.put(other, None))
        d = self.monitor.drained()
        self.assertNoResult(d)
        self.successResultOf(first.dataPresent())
        self.assertNoResult(d)
        second.abort("gone")
        self.assertIsNone(self.successResultOf(d))
        self.successResultOf(self.monitor.drained())

    def test_drainedIgnoresNodes(self):
        """
        Node transfers are listed, but L{Monitor.drained} does not wait
        for them.
        """
        wrapped = self.instrument(frontend=None, node="n1")
        self.successResultOf(wrapped.put(KEY, None))
        self.assertEqual(["n1"], [t.node for t in self.monitor.transfers])
        self.successResultOf(self.monitor.drained())

    def test_abortUpload(self):
        """
        L{Transfer.abort} aborts the upload in the repository, ends the
        transfer as an error, and tells the C{onAbort} callbacks.
        """
        wrapped = self.instrument()
        upload = self.successResultOf(wrapped.put(KEY, None))
        sink = upload.receive(len(CONTENT))
        producer = FakeProducer()
        sink.registerProducer(producer, True)
        sink.write(CONTENT[:10])
        d = self.monitor.drained()
        [transfer] = self.monitor.transfers
        told = []
        transfer.onAbort(told.append)
        transfer.abort("shutting down")
        self.assertEqual("shutting down", self.repository.uploads[0].aborted)
        self.assertEqual(["shutting down"], told)
        # The client's producer is the front-end's business.
        self.assertEqual([], producer.calls)
        self.successResultOf(d)
        self.assertEqual([], self.monitor.transfers)
        transfer.abort("again")
        late = []
        transfer.onAbort(late.append)
        self.assertEqual(["shutting down"], late)
        self.assertEqual({("ssh", "put", "error"): 1},
                         requestCounts(self.monitor))

    def test_abortPendingUpload(self):
        """
        A transfer aborted before the repository answered C{put} aborts
        the upload as soon as it arrives.
        """
        slow = SlowRepository(UUID)
        wrapped = self.instrument(slow)
        d = wrapped.put(KEY, None)
        self.monitor.transfers[0].abort("shutting down")
        self.assertEqual([], self.monitor.transfers)
        slow.answer()
        self.successResultOf(d)
        self.assertEqual("shutting down", slow.uploads[0].aborted)
        self.assertEqual({("ssh", "put", "error"): 1},
                         requestCounts(self.monitor))

    def test_abortDownload(self):
        """
        L{Transfer.abort} stops a download being delivered (its producer
        is stopped, the delivery fails), and counts one error.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        d = download.deliver(RecordingConsumer(pauseAfter=2000))
        [transfer] = self.monitor.transfers
        transfer.abort("shutting down")
        self.assertEqual(["pause", "stop"],
                         self.repository.downloads[0].history)
        self.failureResultOf(d, ConnectionLost)
        self.successResultOf(download.finish(False))
        self.assertEqual({("ssh", "get", "error"): 1},
                         requestCounts(self.monitor))
        self.assertEqual([], self.monitor.transfers)

    def test_abortBeforeDelivery(self):
        """
        A download aborted before delivery is stopped as soon as its
        producer registers.
        """
        wrapped = self.instrument()
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        self.monitor.transfers[0].abort("shutting down")
        consumer = RecordingConsumer()
        self.failureResultOf(download.deliver(consumer), ConnectionLost)
        self.assertEqual(["stop"], self.repository.downloads[0].history)
        self.assertEqual(b"", consumer.data)


class ThroughServerTests(MonitorTestCase):
    """
    An instrumented repository behind a real L{P2PServer} session.
    """

    def test_putGetCheckPresent(self):
        """
        A PUT, a GET and a CHECKPRESENT over the P2P protocol are counted
        with their bytes; a pause of the repository's sink still pauses the
        client's transport.
        """
        session = Session(self.instrument())
        self.assertEqual(session.received(), b"AUTH-SUCCESS " + UUID + b"\n")
        self.assertEqual(session.send(b"VERSION 4\n"), b"VERSION 4\n")
        self.assertEqual(session.send(b"PUT file.bin " + KEY.raw + b"\n"),
                         b"PUT-FROM 0\n")
        session.send(b"DATA %d\n" % len(CONTENT) + CONTENT[:100])
        self.assertEqual(1, len(self.monitor.transfers))
        self.repository.uploads[0].sink.producer.pauseProducing()
        self.assertEqual("paused", session.transport.producerState)
        self.repository.uploads[0].sink.producer.resumeProducing()
        self.assertEqual(session.send(CONTENT[100:] + b"VALID\n"),
                         b"SUCCESS\n")
        self.assertEqual(
            session.send(b"GET 0 file.bin " + KEY.raw + b"\n"),
            b"DATA %d\n" % len(CONTENT) + CONTENT + b"VALID\n")
        self.assertEqual(session.send(b"SUCCESS\n"), b"")
        self.assertEqual(session.send(b"CHECKPRESENT " + KEY.raw + b"\n"),
                         b"SUCCESS\n")
        self.assertEqual({("ssh", "put", "ok"): 1, ("ssh", "get", "ok"): 1,
                          ("ssh", "checkpresent", "ok"): 1},
                         requestCounts(self.monitor))
        self.assertEqual({"upload": len(CONTENT), "download": len(CONTENT)},
                         self.monitor.totals())
        self.assertEqual([], self.monitor.transfers)
        session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))


class SpoolAndPoolTests(MonitorTestCase):
    """
    Figures read at scrape time: spool bytes and node pools.
    """

    def test_spooledBytes(self):
        """
        L{spooledBytes} counts the bytes of open spools only.
        """
        directory = self.mktemp()
        before = spoolModule.spooledBytes()
        spool = spoolModule.Spool(directory, 100, 1000, 0)
        spool.append(b"x" * 300)
        self.assertEqual(before + 300, spoolModule.spooledBytes())
        self.assertEqual(before + 300, value(self.monitor,
                                             "annexd_spool_bytes"))
        spool.close()
        self.assertEqual(before, spoolModule.spooledBytes())

    def test_spoolGauge(self):
        """
        C{annexd_spool_bytes} is read from L{spooledBytes} at every scrape.
        """
        self.patch(spoolModule, "spooledBytes", lambda: 1234)
        self.assertEqual(1234.0, value(self.monitor, "annexd_spool_bytes"))
        self.patch(spoolModule, "spooledBytes", lambda: 5)
        self.assertEqual(5.0, value(self.monitor, "annexd_spool_bytes"))

    def test_pools(self):
        """
        The pool sources' dicts are exported per node: up, idle and busy
        sessions, sessions started (a counter); pools of one node name
        add up.
        """
        pools = [
            dict(name="n1", uuid=b"u1", up=True, idle=2, busy=1, started=7,
                 error=None, retryIn=None, maxSessions=4),
            dict(name="n2", uuid=b"u2", up=False, idle=0, busy=0, started=3,
                 error="connection refused", retryIn=30, maxSessions=1),
        ]
        self.monitor.addPools(lambda: pools)
        self.monitor.addPools(lambda: [dict(pools[0], idle=1, started=1)])
        m = self.monitor
        self.assertEqual(1.0, value(m, "annexd_node_up", node="n1"))
        self.assertEqual(0.0, value(m, "annexd_node_up", node="n2"))
        self.assertEqual(3.0, value(m, "annexd_pool_sessions", node="n1",
                                    state="idle"))
        self.assertEqual(2.0, value(m, "annexd_pool_sessions", node="n1",
                                    state="busy"))
        self.assertEqual(0.0, value(m, "annexd_pool_sessions", node="n2",
                                    state="busy"))
        self.assertEqual(8.0, value(m, "annexd_node_sessions_started_total",
                                    node="n1"))
        self.assertEqual(3.0, value(m, "annexd_node_sessions_started_total",
                                    node="n2"))
        types = {f.name: f.type for f in text_string_to_metric_families(
            m.render().decode("utf-8"))}
        self.assertEqual("counter", types["annexd_node_sessions_started"])
        self.assertEqual("gauge", types["annexd_node_up"])
        pools.pop()
        self.assertIsNone(value(m, "annexd_node_up", node="n2"))

    def test_failingSource(self):
        """
        A failing pool source is logged and left out; the others are
        still exported.
        """
        def broken():
            raise RuntimeError("oops")
        self.monitor.addPools(broken)
        self.monitor.addPools(lambda: [dict(
            name="n1", uuid=b"u1", up=True, idle=0, busy=0, started=0,
            error=None, retryIn=None, maxSessions=1)])
        self.assertEqual(1.0, value(self.monitor, "annexd_node_up",
                                    node="n1"))
        self.assertEqual(1, len(self.flushLoggedErrors(RuntimeError)))


class Host:
    """
    What the status page reads of a gateway host.
    """

    class state:
        clusters = {}
        remotes = ()

        def clusterNodes(self, uuid):
            return [r for r in self.remotes if uuid in r.clusters]

        def isProxied(self, uuid):
            return any(r.uuid == uuid for r in self.remotes)

    class remote:
        def __init__(self, name, uuid, clusters=()):
            self.name = name
            self.uuid = uuid
            self.clusters = clusters

    def __init__(self, name, uuid, path, clusters=(), remotes=(),
                 gitDir="/nonexistent"):
        self.name = name
        self.state = Host.state()
        self.state.uuid = uuid
        self.state.path = path
        self.state.gitDir = gitDir
        self.state.clusters = dict(clusters)
        self.state.remotes = list(remotes)


def render(resource, request):
    """
    Render C{request} on C{resource} to the end.

    @return: the body.
    """
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    if not request.finished:
        raise AssertionError("the rendering did not finish")
    return b"".join(request.written)


class PageTests(MonitorTestCase):
    """
    The admin pages: L{StatusPage}, L{MetricsResource}, L{makeAdminSite}.
    """

    def setUp(self):
        MonitorTestCase.setUp(self)
        from annexd.annex.state import ClusterInfo
        self.hosts = [Host(
            "gateway-one", UUID, "/srv/annex/one",
            clusters={b"c-uuid": ClusterInfo(b"c-uuid", "big<cluster>")},
            remotes=[Host.remote("alpha", b"u-alpha", (b"c-uuid",)),
                     Host.remote("beta", b"u-beta", (b"c-uuid",))])]
        self.monitor.addPools(lambda: [
            dict(name="alpha", uuid=b"u-alpha", up=True, idle=1, busy=2,
                 started=17, error=None, retryIn=None, maxSessions=3),
            dict(name="<script>alert(1)</script>", uuid=b"u-evil", up=False,
                 idle=0, busy=0, started=0, error="refused & <b>gone</b>",
                 retryIn=12, maxSessions=1)])

    def test_statusPage(self):
        """
        The status page names the hosts, the nodes with their state, the
        transfers in progress and the totals, everything escaped.
        """
        wrapped = self.instrument(target="gateway-one")
        self.upload(wrapped, b"done content")
        self.repository.add(CONTENT)
        download = self.successResultOf(wrapped.get(KEY, None, 0))
        self.clock.advance(2)
        download.deliver(RecordingConsumer(pauseAfter=2000))
        request = DummyRequest([b""])
        body = render(StatusPage(self.monitor, self.hosts), request)
        self.assertEqual([b"text/html; charset=utf-8"],
                         request.responseHeaders.getRawHeaders(
                             b"content-type"))
        text = body.decode("utf-8")
        self.assertTrue(text.startswith("<!DOCTYPE html>"))
        for expected in ["gateway-one", UUID.decode("ascii"),
                         "/srv/annex/one", "alpha", "u-alpha", "17",
                         "&lt;script&gt;alert(1)&lt;/script&gt;",
                         "refused &amp; &lt;b&gt;gone&lt;/b&gt;",
                         "down (retry in 12s)", KEY.raw.decode("ascii"),
                         "2.0 KiB of 10.0 KiB", "1000 B/s",
                         '<meta http-equiv="refresh" content="5"',
                         "<td class=\"n\">12 B</td>",
                         "big&lt;cluster&gt;", "alpha, beta",
                         "<td>beta</td><td><code>u-beta</code></td>"
                         "<td>not connected yet</td>"]:
            self.assertIn(expected, text)
        # alpha has a pool: listed once, with its figures.
        self.assertEqual(text.count("<td>alpha</td>"), 1)
        self.assertNotIn("<script>", text)
        self.assertNotIn("<b>", text)

    def test_statusPageAddresses(self):
        """
        The P2P addresses in service are listed with their targets.
        """
        from annexd.p2p.frontend import AddressBook
        gitDir = self.mktemp()
        AddressBook(gitDir).add("p2p-annex::annexd:/run/<x>.sock", b"c-uuid",
                                "big<cluster>")
        self.hosts[0].state.gitDir = gitDir
        text = render(StatusPage(self.monitor, self.hosts),
                      DummyRequest([b""])).decode("utf-8")
        self.assertIn("<td><code>p2p-annex::annexd:/run/&lt;x&gt;.sock</code>"
                      "</td><td>big&lt;cluster&gt;</td><td><code>c-uuid"
                      "</code></td>", text)

    def test_statusPageEmpty(self):
        """
        With nothing to show, the status page says so.
        """
        body = render(StatusPage(Monitor(clock=self.clock.seconds), []),
                      DummyRequest([b""])).decode("utf-8")
        self.assertIn("<h2>Transfers in progress</h2><p>None.</p>", body)

    def test_metricsResource(self):
        """
        L{MetricsResource} serves the exposition, which parses.
        """
        self.monitor.sessionOpened("ssh")
        request = DummyRequest([b""])
        body = render(MetricsResource(self.monitor), request)
        self.assertEqual([METRICS_CONTENT_TYPE],
                         request.responseHeaders.getRawHeaders(
                             b"content-type"))
        self.assertEqual(self.monitor.render(), body)
        names = {f.name for f in text_string_to_metric_families(
            body.decode("utf-8"))}
        self.assertIn("annexd_sessions", names)
        self.assertIn("annexd_node_up", names)

    def fetch(self, method, path):
        """
        One request to the admin site, over a L{StringTransport}.

        @return: C{(status code, headers text, body)}.
        """
        site = makeAdminSite(self.monitor, self.hosts,
                             reactor=MemoryReactorClock())
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"%s %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n" % (
                method, path))
        protocol.connectionLost(Failure(ConnectionDone()))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, head, body

    def test_siteRoutes(self):
        """
        The admin site serves the status page at C{/} and the metrics at
        C{/metrics}; anything else is not found.
        """
        status, head, body = self.fetch(b"GET", b"/")
        self.assertEqual(200, status)
        self.assertIn(b"gateway-one", body)
        status, head, body = self.fetch(b"GET", b"/metrics")
        self.assertEqual(200, status)
        self.assertIn(b"version=0.0.4", head)
        self.assertIn(b"annexd_node_up{node=\"alpha\"} 1.0", body)
        for path in [b"/nope", b"/metrics/x", b"/metrics/", b"//",
                     b"/index.html"]:
            self.assertEqual(404, self.fetch(b"GET", path)[0], path)

    def test_siteMethods(self):
        """
        Only GET and HEAD are answered; HEAD without a body.
        """
        for method, path in [(b"POST", b"/"), (b"PUT", b"/metrics"),
                             (b"DELETE", b"/metrics"), (b"OPTIONS", b"/")]:
            status, head, body = self.fetch(method, path)
            self.assertEqual(405, status, method)
            self.assertIn(b"Allow: GET, HEAD", head)
        for path in [b"/", b"/metrics"]:
            status, head, body = self.fetch(b"HEAD", path)
            self.assertEqual(200, status, path)
            self.assertEqual(b"", body, path)
