# -*- test-case-name: tests.test_monitor -*-
"""
What the daemon measures: requests, bytes and durations per front-end and
per node, sessions, node pools, spool usage, and the transfers in progress.

A L{Monitor} keeps its metrics in a registry of its own (never
C{prometheus_client}'s global one: several daemons may live in one test
process), and L{Monitor.render} exposes them in the Prometheus text format.

Measuring works by wrapping: L{Monitor.instrument} puts an L{IRepository}
in front of another that counts each call when its answer comes, and puts
a counting proxy between a download and its consumer, and between an upload
and whoever writes into it.  The proxies hand the real producer through to
the real consumer, so backpressure is untouched and nothing is buffered.

Direction is always seen from the repository: C{"upload"} is content going
into it (from a client to the gateway, or from the gateway to a node),
C{"download"} content coming out of it.
"""

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.interfaces import IDownload, IRepository, IUpload, Outcome
from annexd.router import spool

#: The front-ends, as the C{frontend} label names them.
FRONTENDS = ("http", "ssh", "p2p")

#: The operations, as the C{operation} label names them.
OPERATIONS = ("checkpresent", "lockcontent", "remove", "gettimestamp",
              "get", "put")

#: The results, as the C{result} label names them: answered positively,
#: answered negatively (absent, not removed, not stored, rejected), failed.
RESULTS = ("ok", "no", "error")

#: The directions, as the C{direction} label names them.
DIRECTIONS = ("upload", "download")

#: Transfer duration buckets, in seconds: 10 ms to an hour.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                    60, 120, 300, 600, 1200, 1800, 3600, float("inf"))

#: The keys of a node pool's status, as L{Monitor.addPools} sources give
#: them.
POOL_KEYS = frozenset(["name", "uuid", "up", "idle", "busy", "started",
                       "error", "retryIn", "maxSessions"])


class Monitor:
    """
    Everything the daemon measures.

    @ivar registry: the L{CollectorRegistry} holding the metrics.
    @ivar reactor: the reactor given, or L{None}.
    @ivar clock: a callable returning seconds (durations, transfer start).
    @ivar requests: C{annexd_requests_total{frontend,operation,result}}.
    @ivar transferBytes: C{annexd_transfer_bytes_total{frontend,direction}}.
    @ivar transferSeconds: C{annexd_transfer_seconds{frontend,direction}}.
    @ivar nodeRequests: C{annexd_node_requests_total{node,operation,result}}.
    @ivar nodeBytes: C{annexd_node_bytes_total{node,direction}}.
    @ivar nodeTransferSeconds:
        C{annexd_node_transfer_seconds{node,direction}}.
    @ivar inProgress: C{annexd_transfers_in_progress{frontend}}.
    @ivar sessionsTotal: C{annexd_sessions_total{frontend}}.
    @ivar sessionsOpen: C{annexd_sessions_open{frontend}}.
    @ivar spoolBytes: C{annexd_spool_bytes}.

    The pool collector adds C{annexd_node_up{node}},
    C{annexd_pool_sessions{node,state}} and
    C{annexd_node_sessions_started_total{node}}.
    """

    _log = Logger()

    def __init__(self, reactor=None, clock=None):
        """
        @param reactor: an L{IReactorTime}; its C{seconds} is the default
            C{clock}.  Without either, the global reactor's.
        @param clock: a callable returning the current time in seconds.
        """
        if clock is None:
            if reactor is None:
                from twisted.internet import reactor as globalReactor
                clock = globalReactor.seconds
            else:
                clock = reactor.seconds
        self.reactor = reactor
        self.clock = clock
        self.registry = CollectorRegistry()
        registry = self.registry

        self.requests = Counter(
            "annexd_requests", "Requests answered per front-end.",
            ["frontend", "operation", "result"], registry=registry)
        self.transferBytes = Counter(
            "annexd_transfer_bytes", "Content bytes moved per front-end.",
            ["frontend", "direction"], registry=registry)
        self.transferSeconds = Histogram(
            "annexd_transfer_seconds",
            "Durations of front-end transfers, from GET/PUT to their end.",
            ["frontend", "direction"], buckets=DURATION_BUCKETS,
            registry=registry)
        self.nodeRequests = Counter(
            "annexd_node_requests", "Requests made of each node.",
            ["node", "operation", "result"], registry=registry)
        self.nodeBytes = Counter(
            "annexd_node_bytes", "Content bytes moved per node.",
            ["node", "direction"], registry=registry)
        self.nodeTransferSeconds = Histogram(
            "annexd_node_transfer_seconds",
            "Durations of node transfers, from GET/PUT to their end.",
            ["node", "direction"], buckets=DURATION_BUCKETS,
            registry=registry)
        self.inProgress = Gauge(
            "annexd_transfers_in_progress",
            "Front-end transfers in progress.", ["frontend"],
            registry=registry)
        self.sessionsTotal = Counter(
            "annexd_sessions", "Client sessions opened per front-end.",
            ["frontend"], registry=registry)
        self.sessionsOpen = Gauge(
            "annexd_sessions_open", "Client sessions open per front-end.",
            ["frontend"], registry=registry)
        self.spoolBytes = Gauge(
            "annexd_spool_bytes",
            "Bytes held in the spool files of cluster uploads.",
            registry=registry)
        # Read through the module, at scrape time.
        self.spoolBytes.set_function(lambda: spool.spooledBytes())
        self._pools = _PoolCollector(self)
        registry.register(self._pools)

        #: transfer -> None, in the order they started
        self._transfers = {}
        self._frontendTransfers = 0
        self._drained = []

    # -- sessions ---------------------------------------------------------

    def sessionOpened(self, frontend):
        """
        A client session of C{frontend} began.
        """
        _checkFrontend(frontend)
        self.sessionsTotal.labels(frontend).inc()
        self.sessionsOpen.labels(frontend).inc()

    def sessionClosed(self, frontend):
        """
        A client session of C{frontend} ended.
        """
        _checkFrontend(frontend)
        self.sessionsOpen.labels(frontend).dec()

    # -- node pools -------------------------------------------------------

    def addPools(self, source):
        """
        Export the status of node pools.

        @param source: a callable returning an iterable of pool status
            dicts, with the keys in L{POOL_KEYS}; called at every scrape
            and every rendering of the status page.
        """
        self._pools.sources.append(source)

    def pools(self):
        """
        The status dicts of every source given to L{addPools}, in order.
        A source that fails is logged and left out.
        """
        found = []
        for source in list(self._pools.sources):
            try:
                found.extend(dict(status) for status in source())
            except Exception:
                self._log.failure("a node pool status source failed")
        return found

    # -- repositories -----------------------------------------------------

    def instrument(self, repository, frontend=None, node=None, target=None):
        """
        Wrap C{repository} so that every call made through the wrapper is
        measured.

        @param frontend: the front-end the calls come from (one of
            L{FRONTENDS}): they count in the C{annexd_requests_total},
            C{annexd_transfer_*} families, and its transfers are listed in
            L{transfers} and awaited by L{drained}.
        @param node: the name of the node C{repository} is: the calls
            count in the C{annexd_node_*} families, and its transfers are
            listed in L{transfers} too.
        @param target: what C{repository} is, for the status page (e.g.
            the gateway or cluster a client reaches); not a label.
        @return: an L{IRepository} with C{repository}'s C{uuid}; other
            attributes are C{repository}'s.
        """
        if frontend is None and node is None:
            raise ValueError("instrument for a frontend, a node, or both")
        if frontend is not None:
            _checkFrontend(frontend)
            self.inProgress.labels(frontend)
            for direction in DIRECTIONS:
                self.transferBytes.labels(frontend, direction)
        if node is not None:
            for direction in DIRECTIONS:
                self.nodeBytes.labels(node, direction)
        return InstrumentedRepository(self, repository, frontend, node,
                                      target)

    def _count(self, frontend, node, operation, result):
        if frontend is not None:
            self.requests.labels(frontend, operation, result).inc()
        if node is not None:
            self.nodeRequests.labels(node, operation, result).inc()

    # -- transfers --------------------------------------------------------

    @property
    def transfers(self):
        """
        The L{Transfer}s in progress, front-end and node ones, oldest first
        (a new list: aborting them while iterating is fine).
        """
        return list(self._transfers)

    def drained(self):
        """
        @return: a Deferred firing (with L{None}) once no front-end
            transfer is in progress: at once if none is.
        """
        if not self._frontendTransfers:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)
        return d

    def totals(self):
        """
        The front-end byte counters, summed over front-ends.

        @return: C{{"upload": bytes, "download": bytes}}.
        """
        return self._sum(self.transferBytes)

    def nodeTotals(self):
        """
        The node byte counters, summed over nodes.

        @return: C{{"upload": bytes, "download": bytes}}.
        """
        return self._sum(self.nodeBytes)

    def _sum(self, counter):
        totals = dict.fromkeys(DIRECTIONS, 0)
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    direction = sample.labels["direction"]
                    totals[direction] = totals.get(direction, 0) \
                        + int(sample.value)
        return totals

    def _started(self, transfer):
        self._transfers[transfer] = None
        if transfer.frontend is not None:
            self._frontendTransfers += 1
            self.inProgress.labels(transfer.frontend).inc()

    def _ended(self, transfer, result, measured):
        """
        C{transfer} is over with C{result}; with C{measured}, it moved (or
        tried to move) content and its duration counts.
        """
        del self._transfers[transfer]
        frontend, node = transfer.frontend, transfer.node
        direction = transfer.direction
        operation = "get" if direction == "download" else "put"
        self._count(frontend, node, operation, result)
        elapsed = max(0.0, self.clock() - transfer.started)
        if frontend is not None:
            if measured:
                self.transferSeconds.labels(
                    frontend, direction).observe(elapsed)
            self.inProgress.labels(frontend).dec()
            self._frontendTransfers -= 1
            if not self._frontendTransfers:
                waiting, self._drained = self._drained, []
                for d in waiting:
                    d.callback(None)
        if node is not None and measured:
            self.nodeTransferSeconds.labels(node, direction).observe(elapsed)

    def _byteCounters(self, transfer):
        """
        The byte counters C{transfer} adds to.
        """
        counters = []
        if transfer.frontend is not None:
            counters.append(self.transferBytes.labels(
                transfer.frontend, transfer.direction))
        if transfer.node is not None:
            counters.append(self.nodeBytes.labels(
                transfer.node, transfer.direction))
        return counters

    # -- exposition -------------------------------------------------------

    def render(self):
        """
        @return: every metric, in the Prometheus text exposition format
            (version 0.0.4), as L{bytes}.
        """
        return generate_latest(self.registry)


def _checkFrontend(frontend):
    if frontend not in FRONTENDS:
        raise ValueError("unknown frontend %r (one of %s)" % (
            frontend, ", ".join(FRONTENDS)))


class _PoolCollector(Collector):
    """
    The node pool figures, read from the L{Monitor.addPools} sources at
    scrape time.  Pools of the same node name (one per gateway reaching
    it) are added up: sessions summed, up if any is up.
    """

    def __init__(self, monitor):
        self._monitor = monitor
        self.sources = []

    def describe(self):
        return self._families()

    def _families(self):
        return [
            GaugeMetricFamily(
                "annexd_node_up",
                "Whether the node is reachable (1) or not (0).",
                labels=["node"]),
            GaugeMetricFamily(
                "annexd_pool_sessions",
                "Sessions open to the node, idle or busy.",
                labels=["node", "state"]),
            CounterMetricFamily(
                "annexd_node_sessions_started",
                "Sessions started with the node.",
                labels=["node"]),
        ]

    def collect(self):
        nodes = {}
        for status in self._monitor.pools():
            name = str(status.get("name"))
            figures = nodes.setdefault(name, [0, 0, 0, 0])
            figures[0] = max(figures[0], 1 if status.get("up") else 0)
            figures[1] += status.get("idle") or 0
            figures[2] += status.get("busy") or 0
            figures[3] += status.get("started") or 0
        up, sessions, started = self._families()
        for name, (isUp, idle, busy, count) in nodes.items():
            up.add_metric([name], isUp)
            sessions.add_metric([name, "idle"], idle)
            sessions.add_metric([name, "busy"], busy)
            started.add_metric([name], count)
        return [up, sessions, started]


def _keyText(key):
    raw = getattr(key, "raw", key)
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)


class Transfer:
    """
    A download or upload in progress through an instrumented repository.

    @ivar frontend: the front-end it comes from, or L{None} (a node
        transfer).
    @ivar node: the node it goes to, or L{None}.
    @ivar target: the C{target} given to L{Monitor.instrument}.
    @ivar direction: C{"upload"} or C{"download"}.
    @ivar key: the key, as L{str}.
    @ivar bytes: content bytes moved so far.
    @ivar length: the bytes announced (download length, upload
        C{receive} length), or L{None} before that.
    @ivar started: when C{get}/C{put} was called (clock seconds).
    @ivar aborted: L{None}, or the reason given to L{abort}.
    @ivar ended: whether it is over (and no longer in
        L{Monitor.transfers}).
    """

    def __init__(self, monitor, frontend, node, target, direction, key):
        self._monitor = monitor
        self.frontend = frontend
        self.node = node
        self.target = target
        self.direction = direction
        self.key = _keyText(key)
        self.bytes = 0
        self.length = None
        self.started = monitor.clock()
        self.aborted = None
        self.ended = False
        self._measured = False
        self._upload = None
        self._producer = None
        self._onAbort = []
        self._counters = monitor._byteCounters(self)

    def __repr__(self):
        return "<Transfer %s %s %s %d bytes>" % (
            self.direction, self.key, self.frontend or self.node, self.bytes)

    def onAbort(self, callback):
        """
        Have L{abort} call C{callback(reason)} (for a front-end to close
        its connection, say).  Called at once if already aborted.
        """
        if self.aborted is not None:
            callback(self.aborted)
        else:
            self._onAbort.append(callback)

    def abort(self, reason):
        """
        Give up on this transfer, and end it (as an error) at once.

          - An upload: C{IUpload.abort(reason)} is called (when the
            upload is not there yet, as soon as C{put} gives it).
          - A download: L{IDownload} has no abort; the producer the
            download registered on its consumer, if delivery is under way,
            is stopped (C{stopProducing}), which ends the delivery with a
            failure; a delivery that starts later is stopped as soon as its
            producer registers.

        Either way, the callbacks given to L{onAbort} are called with
        C{reason}.  Once ended, a transfer cannot be aborted.
        """
        if self.ended or self.aborted is not None:
            return
        self.aborted = reason
        if self._upload is not None:
            self._upload.abort(reason)
        if self.direction == "download":
            self._stopProducer()
        callbacks, self._onAbort = self._onAbort, []
        self._end("error")
        for callback in callbacks:
            callback(reason)

    def _stopProducer(self):
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()

    def _registering(self, producer):
        """
        C{producer} is being registered on this transfer's consumer.
        """
        self._producer = producer

    def _registered(self):
        """
        The registration is done (or failed: C{_producer} is then
        L{None}).
        """
        if self.aborted is not None and self.direction == "download":
            self._stopProducer()

    def _unregistered(self):
        self._producer = None

    def _moved(self, count):
        # Bytes still moving after the end (an abort) count all the same.
        self.bytes += count
        for counter in self._counters:
            counter.inc(count)

    def _end(self, result):
        """
        End the transfer with C{result} (the first end counts).
        """
        if self.ended:
            return
        self.ended = True
        self._monitor._ended(self, result, self._measured)


@implementer(IRepository)
class InstrumentedRepository:
    """
    An L{IRepository} measuring every call to another (see
    L{Monitor.instrument}).

    @ivar repository: the repository measured.
    """

    def __init__(self, monitor, repository, frontend, node, target):
        self._monitor = monitor
        self.repository = repository
        self.uuid = repository.uuid
        self._frontend = frontend
        self._node = node
        self._target = target

    def __getattr__(self, name):
        return getattr(self.__dict__["repository"], name)

    def __repr__(self):
        return "<InstrumentedRepository %r>" % (self.repository,)

    def _measure(self, operation, call, judge):
        """
        Make C{call}; count its answer as C{judge(answer)} (C{"ok"} or
        C{"no"}), a failure as C{"error"}.
        """
        def count(result):
            self._monitor._count(self._frontend, self._node, operation,
                                 result)

        try:
            d = call()
        except BaseException:
            count("error")
            raise

        def answered(answer):
            count(judge(answer))
            return answer

        def failed(reason):
            count("error")
            return reason

        return d.addCallbacks(answered, failed)

    def checkPresent(self, key):
        return self._measure(
            "checkpresent", lambda: self.repository.checkPresent(key),
            lambda present: "ok" if present else "no")

    def lockContent(self, key):
        return self._measure(
            "lockcontent", lambda: self.repository.lockContent(key),
            lambda lock: "no" if lock is None else "ok")

    def remove(self, key, before=None):
        return self._measure(
            "remove", lambda: self.repository.remove(key, before),
            lambda outcome: "ok" if outcome.ok else "no")

    def getTimestamp(self):
        return self._measure(
            "gettimestamp", lambda: self.repository.getTimestamp(),
            lambda stamp: "ok")

    def _transfer(self, direction, key, call, wrap):
        """
        Start a transfer: C{call()} gives a Deferred of the download or
        upload, which C{wrap(transfer, result)} wraps.
        """
        transfer = Transfer(self._monitor, self._frontend, self._node,
                            self._target, direction, key)
        self._monitor._started(transfer)
        try:
            d = call()
        except BaseException:
            transfer._end("error")
            raise

        def failed(reason):
            transfer._end("error")
            return reason

        return d.addCallbacks(lambda result: wrap(transfer, result), failed)

    def get(self, key, associatedFile, offset):
        return self._transfer(
            "download", key,
            lambda: self.repository.get(key, associatedFile, offset),
            InstrumentedDownload)

    def put(self, key, associatedFile):
        def wrap(transfer, result):
            if isinstance(result, Outcome):
                # ALREADY-HAVE: no content moves.
                transfer._end("ok" if result.ok else "no")
                return result
            return InstrumentedUpload(transfer, result)
        return self._transfer(
            "upload", key, lambda: self.repository.put(key, associatedFile),
            wrap)


def _ends(transfer, d, judge):
    """
    End C{transfer} when C{d} fires: as C{judge(result)}, or as an error.
    """
    def ended(result):
        transfer._end(judge(result))
        return result

    def failed(reason):
        transfer._end("error")
        return reason

    return d.addCallbacks(ended, failed)


@implementer(IDownload)
class InstrumentedDownload:
    """
    An L{annexd.interfaces.IDownload} whose delivery is counted.

    The transfer ends when C{finish} has answered (as C{"no"} if the
    sender's verdict was INVALID or the receiver refused the content), or
    when delivering or finishing fails.
    """

    def __init__(self, transfer, download):
        self._transfer = transfer
        self.download = download
        self.length = download.length
        transfer.length = download.length
        transfer._measured = True
        self._verdict = None

    def __getattr__(self, name):
        return getattr(self.__dict__["download"], name)

    def deliver(self, consumer):
        transfer = self._transfer
        if consumer is not None:
            # (None: nothing to deliver, length 0.)
            consumer = CountingConsumer(transfer, consumer)
        try:
            d = self.download.deliver(consumer)
        except BaseException:
            transfer._end("error")
            raise

        def verdict(valid):
            self._verdict = valid
            return valid

        def failed(reason):
            transfer._end("error")
            return reason

        return d.addCallbacks(verdict, failed)

    def finish(self, ok):
        transfer = self._transfer
        try:
            d = self.download.finish(ok)
        except BaseException:
            transfer._end("error")
            raise
        return _ends(transfer, d, lambda _: (
            "ok" if ok and self._verdict is not False else "no"))


@implementer(IUpload)
class InstrumentedUpload:
    """
    An L{annexd.interfaces.IUpload} whose content is counted.

    The transfer ends when C{finish} or C{dataPresent} has answered (as
    the L{Outcome} says), when they fail, or on C{abort}.
    """

    def __init__(self, transfer, upload):
        self._transfer = transfer
        self.upload = upload
        self.offset = upload.offset
        transfer._upload = self
        transfer._measured = True
        if transfer.aborted is not None:
            # Aborted while the upload was on its way.
            upload.abort(transfer.aborted)

    def __getattr__(self, name):
        return getattr(self.__dict__["upload"], name)

    def receive(self, length):
        transfer = self._transfer
        transfer.length = length
        try:
            sink = self.upload.receive(length)
        except BaseException:
            transfer._end("error")
            raise
        return CountingConsumer(transfer, sink)

    def finish(self, valid):
        return self._outcome(lambda: self.upload.finish(valid))

    def dataPresent(self):
        return self._outcome(self.upload.dataPresent)

    def _outcome(self, call):
        transfer = self._transfer
        try:
            d = call()
        except BaseException:
            transfer._end("error")
            raise
        return _ends(transfer, d,
                     lambda outcome: "ok" if outcome.ok else "no")

    def abort(self, reason):
        transfer = self._transfer
        if transfer.aborted is None:
            # Aborted by its user: the transfer ends here.
            transfer._end("error")
        self.upload.abort(reason)


@implementer(IConsumer)
class CountingConsumer:
    """
    A consumer counting the bytes written through it into another.

    Producers are registered on the real consumer as they are (so
    backpressure goes straight between them); every other attribute (an
    upload sink's C{done}, say) is the real consumer's.

    @ivar consumer: the real consumer.
    """

    def __init__(self, transfer, consumer):
        self._transfer = transfer
        self.consumer = consumer

    def __getattr__(self, name):
        return getattr(self.__dict__["consumer"], name)

    def registerProducer(self, producer, streaming):
        # Known before registering: a pull producer may be driven to the
        # end inside registerProducer.
        self._transfer._registering(producer)
        try:
            self.consumer.registerProducer(producer, streaming)
        except BaseException:
            self._transfer._unregistered()
            raise
        self._transfer._registered()

    def unregisterProducer(self):
        self._transfer._unregistered()
        self.consumer.unregisterProducer()

    def write(self, data):
        self._transfer._moved(len(data))
        self.consumer.write(data)
