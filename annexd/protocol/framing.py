# -*- test-case-name: tests.test_framing -*-
"""
Framing of the P2P protocol over a byte stream: lines, and raw C{DATA}
payloads.

L{P2PConnection} is the one framing layer that both annexd's server sessions
(front-ends) and its client sessions (node connectors) sit on.  It is pull
based, matching the protocol's strict lock-step:

  - L{P2PConnection.readMessage} returns a Deferred that fires with the next
    parsed message;
  - L{P2PConnection.readData} streams the next C{n} raw bytes into an
    L{IConsumer} as they arrive, never holding a whole payload;
  - L{P2PConnection.sendMessage} writes a line;
    L{P2PConnection.sendData} announces a payload and returns a
    L{DataSink}, an L{IConsumer} that checks the announced length.

Bytes are only parsed when somebody is reading.  When nobody is, at most
L{P2PConnection.bufferLimit} bytes are kept and the transport is paused, so
a peer that sends faster than we consume is held back by the kernel, not by
our memory.  While a payload is streaming, the connection is the consumer's
streaming producer: when the consumer pauses it, the connection pauses its
transport and stops delivering bytes it has already buffered.
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from annexd.protocol.messages import (
    MAX_LINE_LENGTH, Data, UnparseableMessage, parseLine)


class ProtocolError(Exception):
    """
    The peer broke the protocol; the connection cannot go on.
    """


class LineTooLong(ProtocolError):
    """
    The peer sent more than L{MAX_LINE_LENGTH} bytes without a newline.
    """


class ConnectionClosed(Exception):
    """
    The connection ended before the awaited message or data arrived.

    @ivar received: for L{P2PConnection.readData}, how many payload bytes
        had been delivered.
    @ivar reason: the L{Failure} the transport reported.
    """

    def __init__(self, message="connection closed", received=0, reason=None):
        Exception.__init__(self, message)
        self.received = received
        self.reason = reason


class DataOverrun(Exception):
    """
    More bytes were written into a L{DataSink} than it announced.
    """


@implementer(IConsumer)
class DataSink:
    """
    The consumer side of an outgoing C{DATA} payload: what is written here
    goes to the connection's transport, and the producer registered here is
    registered on the transport (so the transport's write buffer paces it).

    @ivar length: the announced length.
    @ivar written: bytes written so far.
    @ivar done: a Deferred that fires with L{length} once every byte has
        been written, or fails with L{ConnectionClosed} if the connection is
        lost first.
    """

    def __init__(self, connection, length):
        self._connection = connection
        self.length = length
        self.written = 0
        self.done = defer.Deferred()
        self._producer = None
        if length == 0:
            self.done.callback(0)

    def registerProducer(self, producer, streaming):
        """
        Register C{producer} on the underlying transport.
        """
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        self._producer = producer
        transport = self._connection.transport
        if self._connection.disconnected:
            producer.stopProducing()
            return
        transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        """
        Unregister the producer from the transport.
        """
        if self._producer is not None:
            self._producer = None
            if not self._connection.disconnected:
                self._connection.transport.unregisterProducer()

    def write(self, data):
        """
        Write payload bytes.

        @raise DataOverrun: (and the connection is aborted) if C{data} goes
            past the announced length: the peer could not tell the excess
            from the next message.
        """
        n = len(data)
        if self.written + n > self.length:
            self._connection.abort("payload longer than announced")
            raise DataOverrun("%d bytes past the announced length %d" % (
                self.written + n - self.length, self.length))
        self.written += n
        if n:
            self._connection.transport.write(data)
        if self.written == self.length and not self.done.called:
            self.done.callback(self.length)

    def _lost(self, reason):
        if not self.done.called:
            self.done.errback(ConnectionClosed(
                "connection lost after %d of %d payload bytes" % (
                    self.written, self.length), self.written, reason))


class _Reader:
    """
    The pending payload read: where bytes go, and how many remain.
    """

    def __init__(self, remaining, consumer, deferred):
        self.remaining = remaining
        self.consumer = consumer
        self.deferred = deferred
        self.received = 0


@implementer(IPushProducer)
class P2PConnection(Protocol):
    """
    One P2P protocol connection's framing; see the module docstring.

    @ivar bufferLimit: how many unread bytes are kept before the transport
        is paused.
    @ivar disconnected: whether the connection has been lost.
    @ivar peer: a short description of the peer, for logs and errors.
    """

    _log = Logger()

    bufferLimit = 256 * 1024
    maxLineLength = MAX_LINE_LENGTH

    def __init__(self, peer="peer"):
        self.peer = peer
        self._buffer = bytearray()
        self._pos = 0
        self._lineWaiter = None
        self._reader = None
        self._pauses = set()
        self._transportPaused = False
        self.disconnected = False
        self.lostReason = None
        self._sinks = []
        self._closedWaiters = []
        self._processing = False
        self._again = False

    # -- Protocol ---------------------------------------------------------

    def connectionMade(self):
        self._updatePause()

    def dataReceived(self, data):
        reader = self._reader
        if (reader is not None and self._pos == len(self._buffer)
                and len(data) < reader.remaining and not self._processing
                and "consumer" not in self._pauses):
            # The hot path of a payload: nothing buffered, the consumer is
            # ready, and the payload goes on after this chunk: hand the
            # chunk over as it is, without copying it.
            reader.remaining -= len(data)
            reader.received += len(data)
            if reader.consumer is not None:
                reader.consumer.write(data)
            return
        if self._pos and self._pos >= len(self._buffer) // 2:
            del self._buffer[:self._pos]
            self._pos = 0
        self._buffer += data
        self._process()

    def connectionLost(self, reason=ConnectionDone()):
        if self.disconnected:
            return
        self.disconnected = True
        self.lostReason = reason
        self._process()
        reader = self._reader
        if reader is not None and (
                len(self._buffer) - self._pos < reader.remaining):
            # The payload can never complete.  (One whose bytes are all
            # buffered completes when its consumer resumes.)
            self._reader = None
            if reader.consumer is not None:
                reader.consumer.unregisterProducer()
            reader.deferred.errback(ConnectionClosed(
                "connection to %s lost after %d payload bytes, %d missing" % (
                    self.peer, reader.received, reader.remaining),
                reader.received, reason))
        waiter, self._lineWaiter = self._lineWaiter, None
        if waiter is not None:
            waiter.errback(ConnectionClosed(
                "connection to %s closed" % (self.peer,), 0, reason))
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink._lost(reason)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    # -- reading ----------------------------------------------------------

    def readMessage(self):
        """
        Wait for the next message.

        Use it with C{await} (or return the Deferred from a callback): a
        callback that calls L{readMessage} again and adds callbacks to an
        already-fired Deferred nests one call per buffered line.

        @return: a Deferred firing with a L{Message}; or failing with
            L{UnparseableMessage} (the connection goes on: the caller
            decides how to answer), L{LineTooLong} (the connection is
            aborted), or L{ConnectionClosed}.
        """
        if self._lineWaiter is not None or self._reader is not None:
            raise RuntimeError("a read is already pending")
        d = self._lineWaiter = defer.Deferred()
        if self.disconnected:
            self._process()
            if self._lineWaiter is d:
                self._lineWaiter = None
                d.errback(ConnectionClosed(
                    "connection to %s closed" % (self.peer,), 0,
                    self.lostReason))
            return d
        self._process()
        return d

    def readData(self, length, consumer):
        """
        Stream the next C{length} raw bytes into C{consumer}.

        The connection registers itself as C{consumer}'s streaming producer
        for the duration and unregisters before the returned Deferred fires.

        @param consumer: an L{IConsumer}, or L{None} to discard the bytes.
        @return: a Deferred firing with C{length} once every byte has been
            written to C{consumer}, or failing with L{ConnectionClosed}
            (whose C{received} says how many were).
        """
        if self._lineWaiter is not None or self._reader is not None:
            raise RuntimeError("a read is already pending")
        d = defer.Deferred()
        reader = _Reader(length, consumer, d)
        if consumer is not None:
            consumer.registerProducer(self, True)
        self._reader = reader
        self._process()
        if self._reader is reader and self.disconnected:
            self._reader = None
            if consumer is not None:
                consumer.unregisterProducer()
            d.errback(ConnectionClosed(
                "connection to %s lost after %d payload bytes" % (
                    self.peer, reader.received), reader.received,
                self.lostReason))
        return d

    def _process(self):
        """
        Hand buffered bytes to whoever is reading, as far as allowed.

        Callbacks fired from here often start the next read at once; such a
        nested call only asks the running loop to go round again, so a burst
        of buffered lines does not recurse.
        """
        if self._processing:
            self._again = True
            return
        self._processing = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._processOnce()
        finally:
            self._processing = False
        self._updatePause()

    def _processOnce(self):
        while True:
            reader = self._reader
            if reader is not None:
                if "consumer" in self._pauses:
                    break
                available = len(self._buffer) - self._pos
                if reader.remaining and not available:
                    break
                take = min(available, reader.remaining)
                if take:
                    chunk = bytes(self._buffer[self._pos:self._pos + take])
                    self._pos += take
                    reader.remaining -= take
                    reader.received += take
                    if reader.consumer is not None:
                        reader.consumer.write(chunk)
                if reader.remaining == 0 and self._reader is reader:
                    self._reader = None
                    if reader.consumer is not None:
                        reader.consumer.unregisterProducer()
                    self._pauses.discard("consumer")
                    reader.deferred.callback(reader.received)
                continue
            waiter = self._lineWaiter
            if waiter is None:
                break
            end = self._buffer.find(b"\n", self._pos)
            if (len(self._buffer) if end < 0 else end) - self._pos > self.maxLineLength:
                self._lineWaiter = None
                self.abort("line longer than %d bytes" % self.maxLineLength)
                waiter.errback(LineTooLong(
                    "%s sent a line longer than %d bytes" % (
                        self.peer, self.maxLineLength)))
                break
            if end < 0:
                break
            line = bytes(self._buffer[self._pos:end])
            self._pos = end + 1
            self._lineWaiter = None
            try:
                message = parseLine(line)
            except UnparseableMessage as e:
                waiter.errback(e)
            else:
                waiter.callback(message)

    # -- IPushProducer (towards the consumer of a payload) ----------------

    def pauseProducing(self):
        """
        The consumer of the current payload cannot take more for now.
        """
        self._pauses.add("consumer")
        self._updatePause()

    def resumeProducing(self):
        """
        The consumer of the current payload can take more.
        """
        self._pauses.discard("consumer")
        self._process()

    def stopProducing(self):
        """
        The consumer of the current payload is gone.  The rest of the
        payload is read and dropped, so this connection stays in step with
        its peer; whoever awaits the payload learns of the loss from its
        consumer (for a L{DataSink}, its C{done} Deferred fails).
        """
        reader = self._reader
        if reader is not None:
            reader.consumer = None
        self._pauses.discard("consumer")
        self._process()

    def _updatePause(self):
        if self.transport is None or self.disconnected:
            return
        unread = len(self._buffer) - self._pos
        idle = (self._reader is None and self._lineWaiter is None
                and unread >= self.bufferLimit)
        consumerBusy = "consumer" in self._pauses and self._reader is not None
        pause = idle or consumerBusy or (
            self._reader is not None and unread >= self.bufferLimit)
        if pause and not self._transportPaused:
            self._transportPaused = True
            self.transport.pauseProducing()
        elif not pause and self._transportPaused:
            self._transportPaused = False
            self.transport.resumeProducing()

    # -- writing ----------------------------------------------------------

    def sendMessage(self, message):
        """
        Send one message.

        @type message: L{Message}
        """
        if self.disconnected:
            return
        self.transport.writeSequence([message.toLine(), b"\n"])

    def sendData(self, length):
        """
        Announce a payload of C{length} bytes and return the L{DataSink} to
        write it into.
        """
        sink = DataSink(self, length)
        if self.disconnected:
            sink._lost(self.lostReason)
            return sink
        self.transport.write(Data(length).toLine() + b"\n")
        if not sink.done.called:
            self._sinks.append(sink)
            sink.done.addBoth(self._sinkDone, sink)
        return sink

    def _sinkDone(self, result, sink):
        if sink in self._sinks:
            self._sinks.remove(sink)
        return result

    # -- ending -----------------------------------------------------------

    def abort(self, why):
        """
        Drop the connection at once: the stream cannot be resynchronised.
        """
        if not self.disconnected and self.transport is not None:
            self._log.debug("aborting connection to {peer}: {why}",
                            peer=self.peer, why=why)
            abortConnection = getattr(self.transport, "abortConnection", None)
            if abortConnection is not None:
                abortConnection()
            else:
                self.transport.loseConnection()

    def close(self):
        """
        End the session the way git-annex does: close our side cleanly.
        """
        if not self.disconnected and self.transport is not None:
            self.transport.loseConnection()

    def whenClosed(self):
        """
        @return: a Deferred firing with L{None} once the connection is lost
            (L{lostReason} says why).
        """
        d = defer.Deferred()
        if self.disconnected:
            d.callback(None)
        else:
            self._closedWaiters.append(d)
        return d
