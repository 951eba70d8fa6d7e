# -*- test-case-name: tests.test_cluster -*-
"""
A cluster as one repository: fan-out over its nodes.

L{Cluster} implements L{IRepository} on top of the nodes' L{IRepository}s
(shared/spec/p2p-protocol.md section 5.3, with the failure handling of 5.5
made forgiving):

  - PUT goes to every node that wants the key (a L{WantsPolicy}; when none
    does, to every node).  The content streams to all of them at once
    through one L{TeeConsumer}: the client is paused while any node is, so
    the slowest node paces the upload.  A node that fails (unreachable,
    ERROR, killed mid-transfer) is dropped from the fan-out and the others
    complete; the answer names exactly the nodes that hold verified content,
    and is a failure only when none does.
  - GET is served by one node: of the nodes the gateway's location log
    shows with the key, the one whose measured path would deliver it
    soonest (L{annexd.router.paths}: latency, throughput, transfers in
    flight, times the configured cost's weight), nodes that are down last;
    then, should none of them have it, the other nodes the same way.  A
    node that fails or lacks the content before any byte was sent is
    skipped.
  - CHECKPRESENT asks only the nodes the gateway's location log shows with
    the key (none: no, asking nobody, as git-annex's gateway does), one at
    a time, quickest first, and is true as soon as one has the content.
  - REMOVE and REMOVE-BEFORE go to every node (deadlines translated to
    each node's clock); LOCKCONTENT is refused, as git-annex refuses it for
    clusters; GETTIMESTAMP answers with the gateway's own clock.
"""

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from annexd.clock import monotonicSeconds
from annexd.router.paths import PathMeter
from annexd.annex.verify import Verifier
from annexd.router.spool import Spool, SpoolReader, SpoolRefused, checkRoom
from annexd.interfaces import (
    IDownload, IRepository, IUpload, Outcome, ProtocolNotSupported,
    RepositoryError, RepositoryUnavailable)


class IWantsPolicy(Interface):
    """
    Decides which nodes want a key (their preferred content).
    """

    def wants(node, key, associatedFile, present=None):
        """
        @param present: the uuids the gateway's location log shows with
            C{key}, when the caller has read them already.
        @return: whether C{node} (a L{ClusterNode}) wants C{key}.
        """


@implementer(IWantsPolicy)
class WantsEverything:
    """
    Every node wants every key.
    """

    def wants(self, node, key, associatedFile, present=None):
        return True


@dataclass(eq=False)
class ClusterNode:
    """
    One node of a cluster.

    @ivar uuid: the node's uuid (for a node that is another gateway of the
        same cluster, the cluster's uuid).
    @ivar name: its remote name, for logs and errors.
    @ivar cost: git-annex's cost (configured, or git-annex's default for
        the remote's kind of url).
    @ivar repository: the node's L{IRepository}.
    @ivar via: for a node that is another gateway of the cluster, that
        gateway's uuid (it is skipped when the client's BYPASS names it).
    @ivar weight: what the node's estimated download times are multiplied
        by when choosing a node: the configured cost / 100 (the router sets
        1 when no cost is configured, leaving the choice to the
        measurements); L{None}: C{cost / 100}.
    @ivar meter: the L{PathMeter} of the path to the node (the router
        shares one per node between the clusters it builds).
    """

    uuid: bytes
    name: str
    cost: float
    repository: object
    via: bytes | None = None
    weight: float | None = None
    meter: PathMeter = field(default_factory=PathMeter)

    @property
    def busy(self):
        """
        Transfers in flight to or from the node.
        """
        return self.meter.busy

    def score(self, size=0):
        """
        The seconds a download of C{size} bytes from this node is estimated
        to take, weighted by its cost; a node that is down comes last.
        """
        weight = self.weight if self.weight is not None else self.cost / 100.0
        return (_isDown(self.repository),
                self.meter.estimate(size) * max(weight, 0.01))


def _isDown(repository):
    """
    Whether a node's connector says it is down (its C{up}, see
    L{annexd.nodes.pool.SessionPool.up}; a connector without one is never
    down); below a metrics wrapper too.  Asked on every request: an
    attribute, not a status report.
    """
    repository = getattr(repository, "repository", repository)
    return getattr(repository, "up", True) is False


def _byScore(nodes, size=0):
    """
    C{nodes} in the order they should be asked (stable: equal scores keep
    the cost order).
    """
    return sorted(nodes, key=lambda n: n.score(size))


def gatewayBypass(bypass, direct, via):
    """
    The BYPASS list for the other gateway C{via} of a cluster: the client's
    list with this gateway added (C{bypass}), and every other gateway this
    one sends the same request to itself (C{direct}).  Each gateway of a
    cluster is then reached exactly once per request, never once directly
    and again through a third gateway, and no request can come back (a
    gateway always skips those named in BYPASS; shared/spec/p2p-protocol.md
    section 5.4).

    @return: the sorted tuple of uuids.
    """
    return tuple(sorted(set(bypass) | (set(direct) - {via})))


def _describe(error):
    text = getattr(error, "text", None)
    return text.decode("utf-8", "replace") if text else str(error)


def _passing(f):
    """
    A callback that calls C{f()} and passes the result on unchanged.
    """
    def callback(result):
        f()
        return result
    return callback


async def _settle(deferreds):
    """
    Wait for every Deferred; return C{[(ok, result-or-exception)]}.
    """
    out = []
    for d in deferreds:
        try:
            out.append((True, await d))
        except Exception as e:
            out.append((False, e))
    return out


@implementer(IRepository)
class Cluster:
    """
    @ivar uuid: the cluster's uuid.
    @ivar nodes: the L{ClusterNode}s, cheapest first.
    """

    _log = Logger()

    def __init__(self, uuid, nodes, policy=None, clock=monotonicSeconds,
                 name=None, gatewayUUID=None, reactor=None,
                 spoolDirectory=None, diskReserve=100000000, lagSeconds=2.0,
                 locations=None):
        """
        @param gatewayUUID: this gateway's uuid: other gateways are always
            told to bypass it, and a node reached through it is skipped.
        @param reactor: an L{IReactorTime}; with C{spoolDirectory}, a node
            that alone holds an upload back for C{lagSeconds} is fed from
            one spool file there (kept only while C{diskReserve} bytes stay
            free).  Without them uploads never spool.
        @param locations: C{locations(key) -> set of uuids} the gateway's
            location log shows with the content, or L{None}.
        """
        self.uuid = uuid
        self.name = name or uuid.decode("ascii", "replace")
        self.policy = policy or WantsEverything()
        self.clock = clock
        self.gatewayUUID = gatewayUUID
        self.reactor = reactor
        self.spoolDirectory = spoolDirectory
        self.diskReserve = diskReserve
        self.lagSeconds = lagSeconds
        self.locations = locations
        #: how many spool files uploads through this cluster have made
        self.spoolsMade = 0
        self._allNodes = sorted(nodes, key=lambda n: n.cost)
        self.setBypass(())

    def setBypass(self, uuids):
        """
        Take the client's BYPASS list: leave out the other gateways it names
        (and this one), and hand the list on to the gateways that remain
        (see L{gatewayBypass}).
        """
        bypass = set(uuids)
        if self.gatewayUUID is not None:
            bypass.add(self.gatewayUUID)
        self.nodes = [n for n in self._allNodes
                      if n.via is None or n.via not in bypass]
        direct = {n.via for n in self.nodes if n.via is not None}
        for node in self.nodes:
            if node.via is not None:
                node.repository.bypass = gatewayBypass(bypass, direct, node.via)

    def close(self):
        """
        Close every node's sessions.
        """
        return defer.DeferredList([
            defer.maybeDeferred(n.repository.close) for n in self._allNodes
            if hasattr(n.repository, "close")])

    def _run(self, coroutine):
        return defer.Deferred.fromCoroutine(coroutine)

    def _failed(self, node, what, error):
        self._log.warn("cluster {cluster}: node {node} failed {what}: {error}",
                       cluster=self.name, node=node.name, what=what,
                       error=_describe(error))

    # -- CHECKPRESENT ------------------------------------------------------

    def checkPresent(self, key):
        return self._run(self._checkPresent(key))

    async def _checkPresent(self, key):
        """
        As git-annex's gateway decides: when the gateway's location log
        shows no node with the key, the answer is no without asking any
        node; otherwise the logged nodes are asked one at a time, cheapest
        first, until one says yes (git-annex asks one and relays its
        answer; asking the next after a no or a failure only corrects a
        stale log).  A stale log can only make the answer a false no, which
        costs a client an upload the node answers with ALREADY-HAVE, never
        a false yes.  Without a location log every node is asked, the same
        way, and so when the log cannot be read.

        @raise RepositoryUnavailable: when no node could be asked.
        """
        nodes = self.nodes
        if self.locations is not None:
            try:
                logged = self.locations(key)
            except Exception as e:
                # The log cannot be read (git failed): the nodes decide.
                self._log.warn("CHECKPRESENT {key} on {cluster}: the location"
                               " log cannot be read ({why}); asking every"
                               " node", key=str(key), cluster=self.name,
                               why=_describe(e))
            else:
                nodes = [n for n in nodes if n.uuid in logged]
        if not nodes:
            return False
        errors = []
        for node in _byScore(nodes):
            try:
                started = node.meter.clock()
                present = await node.repository.checkPresent(key)
                node.meter.observeLatency(node.meter.clock() - started)
                if present:
                    return True
            except Exception as e:
                errors.append(e)
                self._failed(node, "CHECKPRESENT", e)
        if len(errors) == len(nodes):
            raise RepositoryUnavailable("no node of %s could be asked: %s" % (
                self.name, _describe(errors[0])))
        return False

    # -- LOCKCONTENT, GETTIMESTAMP -----------------------------------------

    def lockContent(self, key):
        # A cluster cannot be locked as a whole; clients lock single nodes.
        return defer.succeed(None)

    def getTimestamp(self):
        return defer.succeed(self.clock())

    # -- REMOVE ------------------------------------------------------------

    def remove(self, key, before=None):
        return self._run(self._remove(key, before))

    async def _removeFrom(self, node, key, before):
        if before is None:
            return await node.repository.remove(key)
        try:
            theirs = await node.repository.getTimestamp()
        except ProtocolNotSupported:
            # A node too old for REMOVE-BEFORE gets REMOVE, as git-annex
            # does; the deadline is still checked here.
            if self.clock() >= before:
                return Outcome(False)
            return await node.repository.remove(key)
        # A deadline already past is 0 on the node's clock (the P2P
        # protocol has no negative numbers): it removes nothing present.
        return await node.repository.remove(
            key, max(0, theirs + (before - self.clock())))

    async def _remove(self, key, before):
        if not self.nodes:
            return Outcome(False)
        results = await _settle(
            [defer.Deferred.fromCoroutine(self._removeFrom(n, key, before))
             for n in self.nodes])
        removed = []
        allOk = True
        firstError = None
        for node, (ok, result) in zip(self.nodes, results):
            if not ok:
                allOk = False
                firstError = firstError or result
                self._failed(node, "REMOVE", result)
                continue
            if result.ok:
                removed.append(node.uuid)
            else:
                allOk = False
            removed.extend(u for u in result.uuids if u not in removed)
        if not removed and firstError is not None and not allOk:
            raise RepositoryError(_describe(firstError))
        return Outcome(allOk, tuple(removed))

    # -- GET ---------------------------------------------------------------

    def get(self, key, associatedFile, offset):
        return self._run(self._get(key, associatedFile, offset))

    def _getOrder(self, key, offset):
        """
        The nodes to ask for C{key}, in order: those the location log shows
        with it, then the others (the log may be stale), each group by
        L{ClusterNode.score}.
        """
        size = max(0, (key.size or 0) - offset)
        logged = None
        if self.locations is not None:
            try:
                logged = self.locations(key)
            except Exception as e:
                self._log.warn("GET {key} from {cluster}: the location log"
                               " cannot be read ({why})", key=str(key),
                               cluster=self.name, why=_describe(e))
        if not logged:
            return _byScore(self.nodes, size)
        return (_byScore([n for n in self.nodes if n.uuid in logged], size)
                + _byScore([n for n in self.nodes if n.uuid not in logged],
                           size))

    async def _get(self, key, associatedFile, offset):
        for node in self._getOrder(key, offset):
            try:
                started = node.meter.clock()
                download = await node.repository.get(key, associatedFile, offset)
                node.meter.observeLatency(node.meter.clock() - started)
            except (RepositoryError, RepositoryUnavailable) as e:
                self._failed(node, "GET", e)
                continue
            if download.length == 0:
                try:
                    valid = await download.deliver(None)
                except (RepositoryError, RepositoryUnavailable) as e:
                    self._failed(node, "GET", e)
                    continue
                if valid is False:
                    # The node lacks the content: try the next one.
                    try:
                        await download.finish(False)
                    except (RepositoryError, RepositoryUnavailable) as e:
                        self._failed(node, "GET", e)
                    continue
                return _NodeDownload(node, download, delivered=valid)
            return _NodeDownload(node, download)
        return _Absent()

    # -- PUT ---------------------------------------------------------------

    def put(self, key, associatedFile):
        return self._run(self._put(key, associatedFile))

    def targets(self, key, associatedFile):
        """
        The nodes a PUT of C{key} goes to, chosen as git-annex's gateway
        chooses them: the nodes the gateway's location log does not show
        with the key that want it; failing that, every node without it;
        failing that, every node.
        """
        logged = self.locations(key) if self.locations is not None else set()
        lacking = [n for n in self.nodes if n.uuid not in logged]
        known = logged if self.locations is not None else None
        wanting = [n for n in lacking
                   if self.policy.wants(n, key, associatedFile, known)]
        return wanting or lacking or list(self.nodes)

    def _fileTargets(self, key, targets):
        """
        Split C{targets} into nodes that take a stream and nodes that can
        only store from a file (L{annexd.interfaces.IStoresFiles} with
        C{needsFile}: external special remotes).  The latter need the upload spooled to one file
        (whatever their number); when that file cannot be made without
        crossing C{annex.diskreserve}, they are left out, with the reason.

        @return: C{(stream nodes, file nodes, reason or None)}
        """
        stream, files = [], []
        for node in targets:
            (files if getattr(node.repository, "needsFile", False)
             else stream).append(node)
        if not files:
            return stream, files, None
        if self.spoolDirectory is None:
            return stream, [], "%s cannot spool uploads" % (self.name,)
        try:
            checkRoom(self.spoolDirectory, key.size or 0, self.diskReserve)
        except SpoolRefused as e:
            return stream, [], str(e)
        return stream, files, None

    async def _put(self, key, associatedFile):
        targets = self.targets(key, associatedFile)
        if not targets:
            raise RepositoryError("%s has no nodes" % (self.name,))
        targets, fileNodes, refused = self._fileTargets(key, targets)
        if refused is not None:
            self._log.warn("PUT {key} to {cluster}: not to the nodes that"
                           " store from files: {why}", key=str(key),
                           cluster=self.name, why=refused)
            if not targets:
                raise RepositoryError("%s refuses %s: %s" % (
                    self.name, key.raw.decode("utf-8", "replace"), refused))
        results = await _settle(
            [defer.maybeDeferred(n.repository.put, key, associatedFile)
             for n in targets]
            + [defer.maybeDeferred(n.repository.checkPresent, key)
               for n in fileNodes])
        uploads = []
        had = []
        errors = []
        storing = []
        for node, (ok, result) in zip(targets + fileNodes, results):
            if not ok:
                errors.append(result)
                self._failed(node, "PUT", result)
            elif result is True or isinstance(result, Outcome):
                had.append(node.uuid)
                if isinstance(result, Outcome):
                    had.extend(u for u in result.uuids if u not in had)
            elif result is False:
                storing.append(node)
            else:
                uploads.append((node, result))
        if not uploads and not storing:
            if had:
                return Outcome(True, tuple(had), alreadyHad=True)
            raise RepositoryError("no node of %s accepted the content: %s" % (
                self.name, _describe(errors[0])))
        return _ClusterUpload(self, uploads, tuple(had), key, storing)


class _Absent:
    """
    No node has the content: C{DATA 0} and C{INVALID}, as git-annex says it.
    """

    length = 0

    def deliver(self, consumer):
        return defer.succeed(False)

    def finish(self, ok):
        return defer.succeed(None)


@implementer(IDownload)
class _NodeDownload:
    """
    A node's download, counted as work on that node.
    """

    def __init__(self, node, download, delivered=None):
        self.node = node
        self.length = download.length
        self._download = download
        self._delivered = delivered
        node.meter.begin()

    def deliver(self, consumer):
        if self.length == 0:
            return defer.succeed(self._delivered)
        meter = self.node.meter
        started = meter.clock()

        def measured(valid):
            if valid is not False:
                meter.observeTransfer(self.length, meter.clock() - started)
            return valid
        return self._download.deliver(consumer).addCallback(measured)

    def finish(self, ok):
        if self._download is not None:
            self.node.meter.end()
            download, self._download = self._download, None
            return download.finish(ok)
        return defer.succeed(None)


@implementer(IPushProducer)
class _Membrane:
    """
    What one node's sink sees as the producer: its pause and resume are
    counted by the tee, and its stop drops only that node.
    """

    def __init__(self, tee, branch):
        self._tee = tee
        self._branch = branch

    def pauseProducing(self):
        self._tee._pause(self._branch)

    def resumeProducing(self):
        self._tee._resume(self._branch)

    def stopProducing(self):
        self._tee._lost(self._branch, "the node stopped taking data")


class _Branch:
    def __init__(self, node, upload, sink, skip):
        self.node = node
        self.upload = upload
        self.sink = sink
        self.skip = skip
        self.failed = None
        self.reader = None


@implementer(IConsumer)
class TeeConsumer:
    """
    Writes one stream into several node sinks, each from its own offset.

    The producer registered here is paused while any coupled node is
    paused, and resumed when none is: the slowest node paces the stream.
    When one node alone has held the stream back for C{lagSeconds}, it is
    decoupled: the stream goes on for the others, and that node is fed from
    the upload's one L{Spool} file at its own pace (see
    L{annexd.router.spool}).  A node whose sink fails is dropped; the
    stream goes on for the others.

    @ivar done: fires with the length once every byte has been written.
    @ivar spool: the upload's L{Spool}, once one was needed.
    """

    _log = Logger()

    def __init__(self, branches, length, spooler=None, reactor=None,
                 lagSeconds=2.0):
        """
        @param spooler: C{spooler(start, remaining) -> Spool}, or L{None}
            never to spool.
        @param reactor: an L{IReactorTime} for the lag bound.
        """
        self._branches = branches
        self.length = length
        self.written = 0
        self.done = defer.Deferred()
        self.spool = None
        self._producer = None
        self._paused = set()
        self._spooler = spooler if reactor is not None else None
        self._reactor = reactor
        self._lagSeconds = lagSeconds
        self._lagTimer = None
        self._laggard = None
        #: a Verifier fed with the stream, or None
        self.verifier = None
        if length == 0:
            self.done.callback(0)

    def live(self):
        return [b for b in self._branches if b.failed is None]

    def _coupled(self):
        return [b for b in self._branches if b.failed is None and b.reader is None]

    def registerProducer(self, producer, streaming):
        if not streaming:
            raise ValueError("a cluster upload needs a streaming producer")
        self._producer = producer
        for branch in self._branches:
            branch.sink.registerProducer(_Membrane(self, branch), True)

    def unregisterProducer(self):
        self._producer = None
        self._cancelLag()
        for branch in self._coupled():
            branch.sink.unregisterProducer()

    def write(self, data):
        start = self.written
        self.written += len(data)
        if self.spool is not None:
            self.spool.append(data)
        if self.verifier is not None:
            self.verifier.update(data)
        for branch in self._coupled():
            part = data
            if branch.skip > start:
                part = data[branch.skip - start:]
            if not part:
                continue
            try:
                branch.sink.write(part)
            except Exception as e:
                self._lost(branch, str(e))
        if self.written >= self.length and not self.done.called:
            if self.spool is not None:
                self.spool.finish()
            self.done.callback(self.length)

    def _pause(self, branch):
        if branch.failed is not None:
            return
        if branch.reader is not None:
            branch.reader.pauseProducing()
            return
        first = not self._paused
        self._paused.add(branch)
        if first and self._producer is not None:
            self._producer.pauseProducing()
        self._checkLag()

    def _resume(self, branch):
        if branch.reader is not None and branch.failed is None:
            branch.reader.resumeProducing()
            return
        if branch not in self._paused:
            return
        self._paused.discard(branch)
        if not self._paused and self._producer is not None:
            self._producer.resumeProducing()
        self._checkLag()

    def _lost(self, branch, why):
        if branch.failed is None:
            self._log.warn("upload to node {node} stopped: {why}",
                           node=branch.node.name, why=why)
            branch.failed = why
            if branch.reader is not None:
                branch.reader.stopProducing(why)
            branch.upload.abort(why)
        self._paused.discard(branch)
        if not self._paused and self._producer is not None:
            self._producer.resumeProducing()
        self._checkLag()

    # -- decoupling a laggard ---------------------------------------------

    def _cancelLag(self):
        if self._lagTimer is not None and self._lagTimer.active():
            self._lagTimer.cancel()
        self._lagTimer = None
        self._laggard = None

    def _checkLag(self):
        """
        (Re)arm the lag timer when exactly one node holds the stream back
        while others could go on.
        """
        laggard = None
        if (self._spooler is not None and self._producer is not None
                and len(self._paused) == 1 and len(self._coupled()) > 1):
            laggard = next(iter(self._paused))
        if laggard is self._laggard:
            return
        self._cancelLag()
        if laggard is not None:
            self._laggard = laggard
            self._lagTimer = self._reactor.callLater(
                self._lagSeconds, self._decouple, laggard)

    def _decouple(self, branch):
        self._lagTimer = None
        self._laggard = None
        if (self._paused != {branch} or branch.failed is not None
                or self.written >= self.length):
            return
        if self.spool is None:
            try:
                self.spool = self._spooler(self.written, self.length - self.written)
            except SpoolRefused as e:
                self._log.warn("node {node} lags, but: {why}",
                               node=branch.node.name, why=str(e))
                self._spooler = None
                return
        self._log.warn("node {node} lags: feeding it from the spool",
                       node=branch.node.name)
        reader = SpoolReader(self.spool, branch.sink, self.written,
                             branch.skip, self.length)
        reader.pauseProducing()
        branch.reader = reader
        reader.drained.addErrback(
            lambda f: self._lost(branch, f.getErrorMessage()))
        self._paused.discard(branch)
        if not self._paused and self._producer is not None:
            self._producer.resumeProducing()


@implementer(IUpload)
class _ClusterUpload:
    def __init__(self, cluster, uploads, had, key=None, fileNodes=()):
        """
        @param fileNodes: nodes that store from a file: the whole content
            is spooled once (from offset 0), checked against C{key}, and
            then handed to each of them.
        """
        self._cluster = cluster
        self._uploads = uploads
        self._had = had
        self._key = key
        self._fileNodes = list(fileNodes)
        offsets = [u.offset for _, u in uploads]
        if self._fileNodes:
            offsets.append(0)
        self.offset = min(offsets)
        self._tee = None
        self._verifier = None
        self._fileSpool = None
        # The nodes are busy with this upload until it is over.
        self._busy = [node for node, _ in uploads] + self._fileNodes
        for node in self._busy:
            node.meter.begin()

    def _over(self):
        busy, self._busy = self._busy, []
        for node in busy:
            node.meter.end()

    def receive(self, length):
        total = self.offset + length
        branches = []
        for node, upload in self._uploads:
            if upload.offset > total:
                upload.abort("offered offset beyond the content")
                continue
            try:
                sink = upload.receive(total - upload.offset)
            except Exception as e:
                # This node cannot take the content: drop it, not the PUT.
                self._cluster._failed(node, "PUT", e)
                upload.abort("cannot take the content: %s" % (_describe(e),))
                continue
            branches.append(_Branch(node, upload, sink,
                                    upload.offset - self.offset))
        self._tee = TeeConsumer(branches, length, self._spooler(),
                                self._cluster.reactor,
                                self._cluster.lagSeconds)
        if self._fileNodes:
            # One named spool of the whole content for the nodes that
            # store from a file; a lagging node is fed from it too.
            try:
                self._fileSpool = Spool(
                    self._cluster.spoolDirectory, 0, total,
                    self._cluster.diskReserve, named=True)
            except SpoolRefused as e:
                for node in self._fileNodes:
                    self._cluster._failed(node, "PUT", e)
                self._fileNodes = []
            else:
                self._cluster.spoolsMade += 1
                self._fileSpool.attach(self)
                self._tee.spool = self._fileSpool
                self._verifier = Verifier(self._key)
                self._tee.verifier = self._verifier
        for branch in branches:
            # A sink that fails drops its node from the tee (even if its
            # transport never stopped the producer); the failure itself is
            # reported by the upload's finish.
            branch.sink.done.addErrback(
                lambda f, b=branch: self._tee._lost(b, f.getErrorMessage()))
        return self._tee

    def _spooler(self):
        cluster = self._cluster
        if cluster.reactor is None or cluster.spoolDirectory is None:
            return None

        def spool(start, remaining):
            made = Spool(cluster.spoolDirectory, start, remaining,
                         cluster.diskReserve)
            cluster.spoolsMade += 1
            return made
        return spool

    def more(self):
        """
        (The file spool's holder while nodes store from it.)
        """

    def _releaseFileSpool(self):
        spool, self._fileSpool = self._fileSpool, None
        if spool is not None:
            spool.detach(self)
            if not spool.finished:
                spool.close()

    async def _storeFiles(self, valid):
        """
        Hand the spooled content to every node that stores from a file,
        if the content matches its key.

        @return: C{(nodes, results)} as L{_settle} gives them.
        """
        nodes = self._fileNodes
        spool = self._fileSpool
        if not nodes or spool is None:
            return [], []
        try:
            verdict = self._verifier.verdict() if self._verifier else None
            complete = spool.end - spool.start == self._tee.length
            if valid is False or verdict is False or not complete:
                why = ("the sender said the content is invalid"
                       if valid is False else
                       "the content does not match its key"
                       if verdict is False else "the content is incomplete")
                for node in nodes:
                    self._cluster._failed(node, "PUT", RepositoryError(why))
                return [], []
            results = await _settle([
                defer.maybeDeferred(n.repository.storeFile, self._key,
                                    spool.path) for n in nodes])
            return nodes, results
        finally:
            self._releaseFileSpool()

    def finish(self, valid):
        return defer.Deferred.fromCoroutine(self._finish(valid)).addBoth(
            _passing(self._over))

    async def _finish(self, valid):
        if self._tee is None:
            branches = [_Branch(n, u, None, 0) for n, u in self._uploads]
        else:
            # Nodes fed from the spool first get the rest of the content.
            for branch in self._tee.live():
                if branch.reader is not None:
                    try:
                        await branch.reader.drained
                    except Exception:
                        pass
            branches = self._tee.live()
        results = await _settle([defer.maybeDeferred(b.upload.finish, valid)
                                 for b in branches])
        fileNodes, fileResults = await self._storeFiles(valid)
        branches = branches + [_Branch(n, None, None, 0) for n in fileNodes]
        return self._collect(branches, results + fileResults, "PUT")

    def _collect(self, branches, results, what):
        stored = []
        for branch, (ok, result) in zip(branches, results):
            if not ok:
                self._cluster._failed(branch.node, what, result)
            elif result.ok:
                stored.append(branch.node.uuid)
                stored.extend(u for u in result.uuids if u not in stored)
        stored.extend(u for u in self._had if u not in stored)
        return Outcome(bool(stored), tuple(stored))

    def dataPresent(self):
        return defer.Deferred.fromCoroutine(self._dataPresent()).addBoth(
            _passing(self._over))

    async def _dataPresent(self):
        branches = [_Branch(n, u, None, 0) for n, u in self._uploads]
        results = await _settle([defer.maybeDeferred(b.upload.dataPresent)
                                 for b in branches])
        return self._collect(branches, results, "DATA-PRESENT")

    def abort(self, reason):
        self._over()
        self._releaseFileSpool()
        if self._tee is not None:
            self._tee._cancelLag()
            self._tee._spooler = None
            for branch in self._tee.live():
                if branch.reader is not None:
                    branch.reader.stopProducing(reason)
            if self._tee.spool is not None:
                self._tee.spool.close()
        for _, upload in self._uploads:
            upload.abort(reason)
