# -*- test-case-name: tests.test_server -*-
"""
An in-memory L{IRepository} for tests of everything that sits in front of a
repository (the server session, routers, front-ends).

L{MemoryRepository} behaves like a small git-annex repository as the P2P
protocol sees it:

  - content is a C{dict} from C{key.raw} to L{bytes} (L{contents});
  - an interrupted upload keeps what it received (L{partial}), and the next
    PUT of that key offers to resume from there (C{PUT-FROM <n>}), as
    git-annex does with its temporary files;
  - received content is checked when the upload finishes, whatever the
    sender's verdict: the total size against the key's C{-s} field, and for
    the hash varieties L{hashlib} knows (C{SHA256}, C{SHA256E}, C{SHA1},
    C{MD5}, ...) the digest against the key's name.  Wrong content is
    dropped (partial included) and reported as C{Outcome(False)};
  - locked content cannot be removed, and C{remove(key, before=T)} refuses
    once L{clock} has reached C{T};
  - downloads stream the content in L{chunkSize} pieces as an
    L{IPushProducer} registered on the consumer, honouring pause, resume and
    stop, without any reactor: writing happens synchronously, in a loop that
    stops when paused and goes on from C{resumeProducing}.

For error paths, L{MemoryRepository.failNext} makes the next call of a
method fail, and L{MemoryRepository.calls} records every call.
"""

import hashlib

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from annexd.interfaces import (
    IContentLock, IDownload, IRepository, IUpload, Outcome)
from annexd.protocol.keys import Key

#: Hash varieties verified with L{hashlib}, by name.
HASHES = {
    b"SHA256": "sha256",
    b"SHA512": "sha512",
    b"SHA384": "sha384",
    b"SHA224": "sha224",
    b"SHA1": "sha1",
    b"MD5": "md5",
}

#: The names L{MemoryRepository.failNext} accepts.
FAILABLE = frozenset([
    "checkPresent", "lockContent", "remove", "getTimestamp", "get", "put",
    "lock.release", "download.deliver", "download.finish",
    "upload.receive", "upload.finish", "upload.dataPresent",
])


def contentMatches(key, content):
    """
    Whether C{content} is the content of C{key}: its size is the key's C{-s}
    field (when there is one) and, for the varieties in L{HASHES} (and
    their C{E} forms), its digest is the key's name up to the first C{.}.
    Other varieties are accepted on size alone.

    @type key: L{annexd.protocol.keys.Key}
    @type content: L{bytes}
    """
    if key.size is not None and key.size != len(content):
        return False
    variety = key.variety
    name = key.name
    if variety not in HASHES and variety.endswith(b"E") \
            and variety[:-1] in HASHES:
        variety = variety[:-1]
        name = name.split(b".", 1)[0]
    algorithm = HASHES.get(variety)
    if algorithm is None:
        return True
    return hashlib.new(algorithm, content).hexdigest().encode("ascii") == name


@implementer(IRepository)
class MemoryRepository:
    """
    An in-memory repository; see the module docstring.

    @ivar uuid: the repository's uuid (L{bytes}).
    @ivar chunkSize: how many bytes a download writes at a time.
    @ivar contents: C{key.raw} -> content (L{bytes}); tests may fill it.
    @ivar partial: C{key.raw} -> the bytes kept from an interrupted upload.
    @ivar locks: C{key.raw} -> how many locks are held on it.
    @ivar clock: the value L{getTimestamp} reports and C{remove(before=)}
        compares with (an L{int}; tests move it).
    @ivar plusUUIDs: uuids reported in the L{Outcome} of every PUT, REMOVE
        and DATA-PRESENT (the C{-PLUS} lists), default none.
    @ivar calls: every call, in order, as a tuple C{(name, arguments...)}
        with keys given as C{key.raw}: C{("checkPresent", raw)},
        C{("lockContent", raw)}, C{("lock.release", raw)},
        C{("remove", raw, before)}, C{("getTimestamp",)},
        C{("get", raw, associatedFile, offset)},
        C{("download.deliver", raw)}, C{("download.finish", raw, ok)},
        C{("put", raw, associatedFile)}, C{("upload.receive", raw, length)},
        C{("upload.finish", raw, valid)}, C{("upload.dataPresent", raw)},
        C{("upload.abort", raw, reason)}.
    @ivar downloads: every L{MemoryDownload} handed out, in order.
    @ivar uploads: every L{MemoryUpload} handed out, in order.
    """

    def __init__(self, uuid, chunkSize=64 * 1024):
        self.uuid = uuid
        self.chunkSize = chunkSize
        self.contents = {}
        self.partial = {}
        self.locks = {}
        self.clock = 0
        self.plusUUIDs = ()
        self.calls = []
        self.downloads = []
        self.uploads = []
        self._failures = {}

    # -- test controls ----------------------------------------------------

    def failNext(self, method, exception):
        """
        Make the next call of C{method} fail with C{exception} (its Deferred
        fails; nothing else happens).  Several failures queued for one
        method are used in order.

        @param method: an L{IRepository} method name, or one of
            C{"lock.release"}, C{"download.deliver"}, C{"download.finish"},
            C{"upload.receive"} (raises synchronously, as it returns a
            consumer), C{"upload.finish"}, C{"upload.dataPresent"}.
        @param exception: the exception instance, e.g. a
            L{annexd.interfaces.RepositoryError}.
        """
        if method not in FAILABLE:
            raise ValueError("cannot fail %r; one of %s" % (
                method, ", ".join(sorted(FAILABLE))))
        self._failures.setdefault(method, []).append(exception)

    def add(self, content, key=None):
        """
        Store C{content} (under C{key}, or under its SHA256E key).

        @return: the L{annexd.protocol.keys.Key}.
        """
        if key is None:
            key = keyFor(content)
        self.contents[key.raw] = content
        return key

    def isLocked(self, key):
        """
        Whether C{key} (a L{Key} or its raw bytes) is locked.
        """
        return self.locks.get(getattr(key, "raw", key), 0) > 0

    def _call(self, name, *args):
        """
        Record a call; raise the failure queued for it, if any.
        """
        self.calls.append((name,) + args)
        queued = self._failures.get(name)
        if queued:
            exception = queued.pop(0)
            if not queued:
                del self._failures[name]
            raise exception

    # -- IRepository ------------------------------------------------------

    def checkPresent(self, key):
        try:
            self._call("checkPresent", key.raw)
        except Exception:
            return defer.fail()
        return defer.succeed(key.raw in self.contents)

    def lockContent(self, key):
        try:
            self._call("lockContent", key.raw)
        except Exception:
            return defer.fail()
        if key.raw not in self.contents:
            return defer.succeed(None)
        self.locks[key.raw] = self.locks.get(key.raw, 0) + 1
        return defer.succeed(MemoryLock(self, key))

    def remove(self, key, before=None):
        try:
            self._call("remove", key.raw, before)
        except Exception:
            return defer.fail()
        if before is not None and self.clock >= before:
            return defer.succeed(Outcome(False, self.plusUUIDs))
        if self.isLocked(key):
            return defer.succeed(Outcome(False, self.plusUUIDs))
        self.contents.pop(key.raw, None)
        return defer.succeed(Outcome(True, self.plusUUIDs))

    def getTimestamp(self):
        try:
            self._call("getTimestamp")
        except Exception:
            return defer.fail()
        return defer.succeed(self.clock)

    def get(self, key, associatedFile, offset):
        try:
            self._call("get", key.raw, associatedFile, offset)
        except Exception:
            return defer.fail()
        content = self.contents.get(key.raw)
        download = MemoryDownload(
            self, key, None if content is None else content[offset:])
        self.downloads.append(download)
        return defer.succeed(download)

    def put(self, key, associatedFile):
        try:
            self._call("put", key.raw, associatedFile)
        except Exception:
            return defer.fail()
        if key.raw in self.contents:
            return defer.succeed(
                Outcome(True, self.plusUUIDs, alreadyHad=True))
        upload = MemoryUpload(self, key, self.partial.get(key.raw, b""))
        self.uploads.append(upload)
        return defer.succeed(upload)


def keyFor(content, extension=b".bin"):
    """
    The SHA256E key of C{content}.

    @rtype: L{annexd.protocol.keys.Key}
    """
    return Key.parse(b"SHA256E-s%d--%s%s" % (
        len(content), hashlib.sha256(content).hexdigest().encode("ascii"),
        extension))


@implementer(IContentLock)
class MemoryLock:
    """
    A lock on content of a L{MemoryRepository}.

    @ivar released: whether L{release} was called.
    """

    def __init__(self, repository, key):
        self._repository = repository
        self.key = key
        self.released = False

    def release(self):
        try:
            self._repository._call("lock.release", self.key.raw)
        except Exception:
            return defer.fail()
        if not self.released:
            self.released = True
            raw = self.key.raw
            locks = self._repository.locks
            locks[raw] -= 1
            if not locks[raw]:
                del locks[raw]
        return defer.succeed(None)


@implementer(IDownload, IPushProducer)
class MemoryDownload:
    """
    Content on its way out of a L{MemoryRepository}: a push producer that
    writes L{MemoryRepository.chunkSize} bytes at a time into the consumer
    given to L{deliver} for as long as it is not paused.

    @ivar length: bytes to deliver (0 when the content is absent).
    @ivar present: whether the repository had the content.
    @ivar sent: bytes written so far.
    @ivar paused: whether the consumer has paused this producer.
    @ivar stopped: whether the consumer has stopped it.
    @ivar history: the consumer's calls, in order: C{"pause"},
        C{"resume"}, C{"stop"}.
    @ivar finished: L{None} until L{finish} is called, then its C{ok}.
    """

    def __init__(self, repository, key, content):
        self._repository = repository
        self.key = key
        self.present = content is not None
        self._content = content or b""
        self.length = len(self._content)
        self.sent = 0
        self.paused = False
        self.stopped = False
        self.history = []
        self.finished = None
        self._consumer = None
        self._deferred = None
        self._writing = False

    def deliver(self, consumer):
        try:
            self._repository._call("download.deliver", self.key.raw)
        except Exception:
            return defer.fail()
        if self._deferred is not None:
            raise RuntimeError("deliver called twice")
        self._deferred = defer.Deferred()
        if not self.length:
            self._deferred.callback(self.present)
            return self._deferred
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._produce()
        return self._deferred

    def _produce(self):
        """
        Write chunks until paused, stopped or done.  A pause or resume
        coming from inside C{consumer.write} is noticed after that write.
        """
        if self._writing:
            return
        self._writing = True
        try:
            while (not self.paused and not self.stopped
                   and self.sent < self.length):
                chunk = self._content[
                    self.sent:self.sent + self._repository.chunkSize]
                self.sent += len(chunk)
                self._consumer.write(chunk)
        finally:
            self._writing = False
        if self.sent == self.length and not self.stopped \
                and self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.unregisterProducer()
            self._deferred.callback(True)

    # -- IPushProducer ----------------------------------------------------

    def pauseProducing(self):
        self.history.append("pause")
        self.paused = True

    def resumeProducing(self):
        self.history.append("resume")
        self.paused = False
        if self._consumer is not None:
            self._produce()

    def stopProducing(self):
        self.history.append("stop")
        if self.stopped:
            return
        self.stopped = True
        if self._consumer is not None:
            self._consumer = None
            self._deferred.errback(ConnectionLost(
                "the consumer stopped the download after %d of %d bytes" % (
                    self.sent, self.length)))

    # -- IDownload --------------------------------------------------------

    def finish(self, ok):
        try:
            self._repository._call("download.finish", self.key.raw, ok)
        except Exception:
            return defer.fail()
        self.finished = ok
        return defer.succeed(None)


@implementer(IConsumer)
class MemorySink:
    """
    The consumer of an upload to a L{MemoryRepository}.

    @ivar length: the announced length.
    @ivar written: bytes received so far.
    @ivar producer: the registered producer, or L{None}.
    @ivar streaming: whether it is a push producer.
    @ivar done: fires with L{length} once every byte is written.
    @ivar overrun: whether more than L{length} bytes were written (they
        are kept, and make the upload fail verification).
    """

    def __init__(self, upload, length):
        self._upload = upload
        self.length = length
        self.written = 0
        self.producer = None
        self.streaming = None
        self.overrun = False
        self.done = defer.Deferred()
        if not length:
            self.done.callback(0)

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self.streaming = streaming
        if not streaming:
            while self.producer is producer:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None
        self.streaming = None

    def write(self, data):
        self._upload.data += data
        self.written += len(data)
        if self.written > self.length:
            self.overrun = True
        if self.written >= self.length and not self.done.called:
            self.done.callback(self.length)


@implementer(IUpload)
class MemoryUpload:
    """
    An accepted PUT to a L{MemoryRepository}.

    @ivar offset: bytes already kept from an earlier, interrupted upload.
    @ivar data: everything received (the kept prefix included).
    @ivar sink: the L{MemorySink} from L{receive}, or L{None}.
    @ivar outcome: the L{Outcome} of L{finish} or L{dataPresent}, or
        L{None}.
    @ivar aborted: L{None}, or the reason given to L{abort}.
    """

    def __init__(self, repository, key, kept):
        self._repository = repository
        self.key = key
        self.offset = len(kept)
        self.data = bytearray(kept)
        self.sink = None
        self.outcome = None
        self.aborted = None

    def receive(self, length):
        self._repository._call("upload.receive", self.key.raw, length)
        if self.sink is not None:
            raise RuntimeError("content already announced")
        self.sink = MemorySink(self, length)
        return self.sink

    def finish(self, valid):
        try:
            self._repository._call("upload.finish", self.key.raw, valid)
        except Exception:
            return defer.fail()
        repository = self._repository
        raw = self.key.raw
        sink = self.sink
        if sink is None or (sink.length == 0 and valid is False):
            # No content, or "DATA 0" + "INVALID": the sender has none.
            return self._end(Outcome(False, repository.plusUUIDs))
        content = bytes(self.data)
        repository.partial.pop(raw, None)
        if sink.written != sink.length or not contentMatches(self.key,
                                                             content):
            # Verification failure drops the temporary content.
            return self._end(Outcome(False, repository.plusUUIDs))
        repository.contents[raw] = content
        return self._end(Outcome(True, repository.plusUUIDs))

    def dataPresent(self):
        try:
            self._repository._call("upload.dataPresent", self.key.raw)
        except Exception:
            return defer.fail()
        present = self.key.raw in self._repository.contents
        return self._end(Outcome(present, self._repository.plusUUIDs))

    def _end(self, outcome):
        self.outcome = outcome
        return defer.succeed(outcome)

    def abort(self, reason):
        self._repository.calls.append(("upload.abort", self.key.raw, reason))
        self.aborted = reason
        if self.outcome is None and self.data:
            # Kept for a resumed upload, as git-annex keeps its temp file.
            self._repository.partial[self.key.raw] = bytes(self.data)
