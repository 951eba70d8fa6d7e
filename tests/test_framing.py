"""
Tests for L{annexd.protocol.framing}: lines and C{DATA} payloads over a
byte stream, flow control in both directions, and the end of a connection
(shared/spec/p2p-protocol.md sections 1.1 and 1.4).

Everything runs on a L{StringTransport}; no reactor is involved.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.protocol.framing import (
    ConnectionClosed, DataOverrun, DataSink, LineTooLong, P2PConnection)
from annexd.protocol.messages import (
    MAX_LINE_LENGTH, Data, Error, Failure as FailureMessage, Success,
    UnparseableMessage, Valid, Version, parseLine)
from tests.test_messages import K4, messages

# -- doubles ------------------------------------------------------------------


@implementer(IConsumer)
class RecordingConsumer:
    """
    A consumer that records what it is given.

    @ivar writes: the chunks written, in order.
    @ivar producer: the registered producer, or L{None}.
    @ivar registrations: C{(producer, streaming)} of every registration.
    @ivar unregistrations: how many times C{unregisterProducer} was called.
    @ivar pauseOnWrite: when true, C{write} pauses the producer, like a
        transport whose buffer just filled up.
    """

    def __init__(self, pauseOnWrite=False):
        self.writes = []
        self.producer = None
        self.registrations = []
        self.unregistrations = 0
        self.pauseOnWrite = pauseOnWrite

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self.registrations.append((producer, streaming))

    def unregisterProducer(self):
        self.producer = None
        self.unregistrations += 1

    def write(self, data):
        self.writes.append(data)
        if self.pauseOnWrite:
            self.producer.pauseProducing()

    @property
    def data(self):
        return b"".join(self.writes)


class StreamReader:
    """
    Reads a connection the way a session does: one message after the
    other, each C{DATA} payload into a fresh L{RecordingConsumer}, starting
    the next read from inside the callback of the previous one.

    @ivar events: messages, C{("payload", bytes)} and
        C{("unparseable", line)} in the order they were read.
    """

    def __init__(self, connection):
        self.connection = connection
        self.events = []
        self.consumers = []

    def start(self):
        self.connection.readMessage().addCallbacks(
            self._gotMessage, self._failed)

    def _gotMessage(self, message):
        self.events.append(message)
        if isinstance(message, Data):
            consumer = RecordingConsumer()
            self.consumers.append((message.length, consumer))
            self.connection.readData(message.length, consumer).addCallback(
                self._gotPayload, consumer)
        else:
            self.start()

    def _gotPayload(self, length, consumer):
        self.events.append(("payload", consumer.data))
        self.start()

    def _failed(self, failure):
        failure.trap(UnparseableMessage, ConnectionClosed)
        if failure.check(UnparseableMessage):
            self.events.append(("unparseable", failure.value.line))
            self.start()
        else:
            self.events.append(("closed",))


def connect(peer="test peer"):
    """
    A L{P2PConnection} connected to a fresh L{StringTransport}.
    """
    transport = StringTransport()
    connection = P2PConnection(peer)
    connection.makeConnection(transport)
    return connection, transport


def lose(connection, reason=None):
    connection.connectionLost(
        Failure(reason if reason is not None else ConnectionDone()))


# -- a stream of messages and payloads --------------------------------------

def _lineItem(line):
    try:
        expected = [parseLine(line)]
    except UnparseableMessage as e:
        expected = [("unparseable", e.line)]
    return line + b"\n", expected


def _dataItem(payload):
    return (Data(len(payload)).toLine() + b"\n" + payload,
            [Data(len(payload)), ("payload", payload)])


_items = st.one_of(
    messages.filter(lambda m: not isinstance(m, Data)).map(
        lambda m: _lineItem(m.toLine())),
    st.binary(max_size=300).map(_dataItem),
    st.sampled_from([b"VALID", b"INVALID\r", b"BOGUS", b"SUCCESS  ",
                     b"PUT /abs " + K4, b"", b"DATA -1"]).map(_lineItem),
)

#: C{(stream bytes, expected events)}.
streams = st.lists(_items, max_size=12).map(
    lambda items: (b"".join(i[0] for i in items),
                   [e for i in items for e in i[1]]))


def chunked(data, sizes):
    """
    Split C{data} into chunks of the given sizes, used in a cycle.
    """
    chunks = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos:pos + size])
        pos += size
        i += 1
    return chunks


# -- tests --------------------------------------------------------------------

class InterfaceTests(SynchronousTestCase):
    """
    The connection and the sink provide the interfaces they claim.
    """

    def test_interfaces(self):
        """
        L{P2PConnection} is an L{IPushProducer} (towards payload
        consumers), L{DataSink} an L{IConsumer}.
        """
        connection, transport = connect()
        self.assertTrue(verifyObject(IPushProducer, connection))
        self.assertTrue(verifyObject(IConsumer, connection.sendData(1)))


class ChunkingTests(SynchronousTestCase):
    """
    Where the transport splits the stream makes no difference.
    """

    def assertStream(self, chunks, expected):
        connection, transport = connect()
        reader = StreamReader(connection)
        reader.start()
        for chunk in chunks:
            connection.dataReceived(chunk)
        self.assertEqual(reader.events, expected)
        for length, consumer in reader.consumers:
            self.assertEqual(len(consumer.data), length)
            self.assertEqual(consumer.producer, None)
            self.assertEqual(consumer.registrations, [(connection, True)])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "producing")

    @settings(max_examples=200, deadline=None)
    @given(streams, st.lists(st.integers(1, 40), min_size=1, max_size=20))
    def test_anyChunks(self, stream, sizes):
        """
        A stream of messages (parseable or not) and C{DATA} payloads, fed
        in chunks of random sizes down to one byte, reads as the same
        messages and payloads as when it is fed whole.
        """
        data, expected = stream
        self.assertStream([data], expected)
        self.assertStream(chunked(data, sizes), expected)

    def test_byteByByte(self):
        """
        One byte at a time: lines, a payload containing a newline, the
        C{VALID} after it, a C{DATA 0}.
        """
        data = (b"VERSION 4\r\nDATA 11\nsmall file\nVALID\nDATA 0\n"
                b"INVALID\nSUCCESS\n")
        expected = [Version(4), Data(11), ("payload", b"small file\n"),
                    Valid(), Data(0), ("payload", b""), parseLine(b"INVALID"),
                    Success()]
        self.assertStream([data[i:i + 1] for i in range(len(data))],
                          expected)

    def test_bufferedBeforeReading(self):
        """
        Everything may arrive before anybody reads; it is all delivered
        once reading starts.
        """
        connection, transport = connect()
        connection.dataReceived(b"SUCCESS\nDATA 3\nabcFAILURE\n")
        reader = StreamReader(connection)
        reader.start()
        self.assertEqual(reader.events, [Success(), Data(3),
                                         ("payload", b"abc"),
                                         FailureMessage()])


class ReadDataTests(SynchronousTestCase):
    """
    Tests for L{P2PConnection.readData}.
    """

    def test_incremental(self):
        """
        A payload is handed to the consumer as it arrives: the consumer
        sees the first bytes before the rest has come, the connection is
        its streaming producer meanwhile, and unregisters before the
        Deferred fires with the length.
        """
        connection, transport = connect()
        connection.dataReceived(b"DATA 11\nsmall")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Data(11))
        consumer = RecordingConsumer()
        d = connection.readData(11, consumer)
        self.assertEqual(consumer.writes, [b"small"])
        self.assertIs(consumer.producer, connection)
        self.assertEqual(consumer.registrations, [(connection, True)])
        self.assertNoResult(d)
        connection.dataReceived(b" fi")
        self.assertEqual(consumer.writes, [b"small", b" fi"])
        self.assertNoResult(d)
        unregisteredBeforeFiring = []
        d.addCallback(lambda n: unregisteredBeforeFiring.append(
            consumer.producer is None) or n)
        connection.dataReceived(b"le\nVALID\n")
        self.assertEqual(self.successResultOf(d), 11)
        self.assertEqual(consumer.data, b"small file\n")
        self.assertEqual(unregisteredBeforeFiring, [True])
        self.assertEqual(consumer.unregistrations, 1)
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Valid())

    def test_newlineInPayload(self):
        """
        C{DATA 11\\nsmall file\\nVALID\\n} arriving at once: the first
        C{\\n} after "file" belongs to the payload, and C{VALID} is the next
        line.
        """
        connection, transport = connect()
        connection.dataReceived(b"DATA 11\nsmall file\nVALID\n")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Data(11))
        consumer = RecordingConsumer()
        self.assertEqual(
            self.successResultOf(connection.readData(11, consumer)), 11)
        self.assertEqual(consumer.data, b"small file\n")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Valid())

    def test_neverMoreThanRequested(self):
        """
        The consumer gets exactly the requested number of bytes even when
        far more is buffered, and the rest is left for the next read.
        """
        connection, transport = connect()
        connection.dataReceived(b"abcdefgh" * 100 + b"\nSUCCESS\n")
        consumer = RecordingConsumer()
        self.assertEqual(
            self.successResultOf(connection.readData(5, consumer)), 5)
        self.assertEqual(consumer.data, b"abcde")
        consumer2 = RecordingConsumer()
        self.successResultOf(connection.readData(795, consumer2))
        self.assertEqual(len(consumer2.data), 795)
        # The byte left is the newline ending an empty (unparseable) line.
        self.failureResultOf(connection.readMessage(), UnparseableMessage)
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Success())

    def test_zeroLength(self):
        """
        Reading zero bytes succeeds at once without writing anything.
        """
        connection, transport = connect()
        consumer = RecordingConsumer()
        self.assertEqual(
            self.successResultOf(connection.readData(0, consumer)), 0)
        self.assertEqual(consumer.writes, [])
        self.assertIs(consumer.producer, None)

    def test_discard(self):
        """
        With no consumer the payload is read and dropped.
        """
        connection, transport = connect()
        connection.dataReceived(b"0123456789SUCCESS\n")
        self.assertEqual(
            self.successResultOf(connection.readData(10, None)), 10)
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Success())

    def test_onePendingRead(self):
        """
        Only one read may be pending at a time.
        """
        connection, transport = connect()
        connection.readMessage()
        self.assertRaises(RuntimeError, connection.readMessage)
        self.assertRaises(RuntimeError, connection.readData, 1, None)


class BackpressureTests(SynchronousTestCase):
    """
    A slow consumer, or nobody reading, holds the peer back.
    """

    def test_consumerPausesInWrite(self):
        """
        A consumer that pauses its producer inside C{write} pauses the
        transport, and gets no more bytes, even buffered ones, until it
        resumes; then the transport is resumed.
        """
        connection, transport = connect()
        connection.dataReceived(b"DATA 10\n")
        self.successResultOf(connection.readMessage())
        consumer = RecordingConsumer(pauseOnWrite=True)
        d = connection.readData(10, consumer)
        self.assertEqual(consumer.writes, [])
        self.assertEqual(transport.producerState, "producing")

        connection.dataReceived(b"abc")
        self.assertEqual(consumer.writes, [b"abc"])
        self.assertEqual(transport.producerState, "paused")

        connection.dataReceived(b"def")
        connection.dataReceived(b"g")
        self.assertEqual(consumer.writes, [b"abc"])
        self.assertEqual(transport.producerState, "paused")

        connection.resumeProducing()
        self.assertEqual(consumer.writes, [b"abc", b"defg"])
        self.assertEqual(transport.producerState, "paused")
        self.assertNoResult(d)

        connection.dataReceived(b"hijVALID\n")
        self.assertEqual(consumer.writes, [b"abc", b"defg"])
        consumer.pauseOnWrite = False
        connection.resumeProducing()
        self.assertEqual(consumer.data, b"abcdefghij")
        self.assertEqual(self.successResultOf(d), 10)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Valid())

    def test_pausedOnLastWrite(self):
        """
        A consumer that pauses on the write that completes the payload does
        not leave the transport paused: the payload is over.
        """
        connection, transport = connect()
        consumer = RecordingConsumer(pauseOnWrite=True)
        d = connection.readData(4, consumer)
        connection.dataReceived(b"abcdSUCCESS\n")
        self.assertEqual(self.successResultOf(d), 4)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Success())

    def test_bufferLimit(self):
        """
        With no read pending, the transport is paused once C{bufferLimit}
        bytes are waiting, and resumed when a C{readMessage} takes the
        backlog below it.
        """
        connection, transport = connect()
        connection.bufferLimit = 64
        connection.dataReceived(b"VERSION 4\n" * 6)
        self.assertEqual(transport.producerState, "producing")
        connection.dataReceived(b"VERSION 4\n")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Version(4))
        self.assertEqual(transport.producerState, "producing")

    def test_defaultBufferLimit(self):
        """
        The default limit: more than C{bufferLimit} bytes of unread lines
        pause the transport; reading them resumes it.
        """
        connection, transport = connect()
        limit = P2PConnection.bufferLimit
        count = limit // len(b"SUCCESS\n") + 10
        connection.dataReceived(b"SUCCESS\n" * count)
        self.assertEqual(transport.producerState, "paused")
        for i in range(11):
            self.assertEqual(self.successResultOf(connection.readMessage()),
                             Success())
        self.assertEqual(transport.producerState, "producing")

    def test_payloadOverLimit(self):
        """
        While a payload is read into a paused consumer, bytes keep being
        buffered only up to the limit; the transport stays paused until
        the consumer resumes.
        """
        connection, transport = connect()
        connection.bufferLimit = 16
        consumer = RecordingConsumer(pauseOnWrite=True)
        d = connection.readData(100, consumer)
        connection.dataReceived(b"x" * 10)
        self.assertEqual(transport.producerState, "paused")
        connection.dataReceived(b"y" * 90)
        consumer.pauseOnWrite = False
        connection.resumeProducing()
        self.assertEqual(self.successResultOf(d), 100)
        self.assertEqual(consumer.data, b"x" * 10 + b"y" * 90)
        self.assertEqual(transport.producerState, "producing")

    def test_sinkProducer(self):
        """
        A producer registered on a L{DataSink} is registered on the
        transport, so the transport's write buffer paces it; unregistering
        removes it.
        """
        connection, transport = connect()
        sink = connection.sendData(10)
        producer = object()
        sink.registerProducer(producer, True)
        self.assertIs(transport.producer, producer)
        self.assertTrue(transport.streaming)
        self.assertRaises(RuntimeError, sink.registerProducer, producer, True)
        sink.unregisterProducer()
        self.assertIs(transport.producer, None)


class LineErrorTests(SynchronousTestCase):
    """
    Lines that are too long, and lines that do not parse.
    """

    def test_lineTooLong(self):
        """
        More than 32768 bytes without a newline fail the pending
        C{readMessage} with L{LineTooLong} and abort the connection.
        """
        connection, transport = connect()
        d = connection.readMessage()
        connection.dataReceived(b"E" * MAX_LINE_LENGTH)
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting)
        connection.dataReceived(b"E")
        self.failureResultOf(d, LineTooLong)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.disconnected)  # abortConnection

    def test_lineTooLongBuffered(self):
        """
        A long line already buffered when C{readMessage} is called fails it
        at once, even when it has a newline further on.
        """
        connection, transport = connect()
        connection.dataReceived(b"ERROR " + b"x" * 40000 + b"\nSUCCESS\n")
        self.failureResultOf(connection.readMessage(), LineTooLong)
        self.assertTrue(transport.disconnected)

    def test_longestLine(self):
        """
        A line of exactly 32768 bytes is still read.
        """
        connection, transport = connect()
        line = b"ERROR " + b"x" * (MAX_LINE_LENGTH - 6)
        connection.dataReceived(line + b"\n")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Error(b"x" * (MAX_LINE_LENGTH - 6)))
        self.assertFalse(transport.disconnecting)

    def test_unparseable(self):
        """
        An unparseable line fails the C{readMessage} with
        L{UnparseableMessage} carrying the line; the connection goes on
        and the next C{readMessage} works.
        """
        connection, transport = connect()
        connection.dataReceived(b"BOGUS line\r\nUNLOCKCONTENT " + K4
                                + b"\nSUCCESS\n")
        failure = self.failureResultOf(connection.readMessage(),
                                       UnparseableMessage)
        self.assertEqual(failure.value.line, b"BOGUS line")
        self.failureResultOf(connection.readMessage(), UnparseableMessage)
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Success())
        self.assertFalse(transport.disconnecting)


class ConnectionLostTests(SynchronousTestCase):
    """
    What readers, writers and waiters see when the connection ends.
    """

    def test_pendingReadMessage(self):
        """
        A pending C{readMessage} fails with L{ConnectionClosed} carrying the
        transport's reason; a partial line is dropped.
        """
        connection, transport = connect()
        d = connection.readMessage()
        connection.dataReceived(b"SUCC")
        lose(connection, ConnectionLost())
        failure = self.failureResultOf(d, ConnectionClosed)
        self.assertTrue(failure.value.reason.check(ConnectionLost))
        self.assertTrue(connection.disconnected)

    def test_pendingReadData(self):
        """
        A pending C{readData} fails with L{ConnectionClosed} whose
        C{received} says how many bytes the consumer got; the consumer is
        unregistered.
        """
        connection, transport = connect()
        connection.dataReceived(b"DATA 10\nabc")
        self.successResultOf(connection.readMessage())
        consumer = RecordingConsumer()
        d = connection.readData(10, consumer)
        connection.dataReceived(b"de")
        lose(connection)
        failure = self.failureResultOf(d, ConnectionClosed)
        self.assertEqual(failure.value.received, 5)
        self.assertEqual(consumer.data, b"abcde")
        self.assertIs(consumer.producer, None)

    def test_bufferedLinesAfterLoss(self):
        """
        Complete lines buffered when the connection is lost are still
        delivered; then C{readMessage} fails with L{ConnectionClosed}.
        """
        connection, transport = connect()
        connection.dataReceived(b"SUCCESS\nFAILURE\nDATA 3\nabcVALID\npart")
        lose(connection)
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Success())
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         FailureMessage())
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Data(3))
        consumer = RecordingConsumer()
        self.assertEqual(
            self.successResultOf(connection.readData(3, consumer)), 3)
        self.assertEqual(consumer.data, b"abc")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Valid())
        self.failureResultOf(connection.readMessage(), ConnectionClosed)

    def test_readDataAfterLossShort(self):
        """
        A C{readData} started after the loss for more than is buffered
        delivers what there is, then fails with C{received} set.
        """
        connection, transport = connect()
        connection.dataReceived(b"abcd")
        lose(connection)
        consumer = RecordingConsumer()
        failure = self.failureResultOf(connection.readData(10, consumer),
                                       ConnectionClosed)
        self.assertEqual(failure.value.received, 4)
        self.assertEqual(consumer.data, b"abcd")
        self.assertIs(consumer.producer, None)

    def test_readerInCallbackAfterLoss(self):
        """
        A reader that reads again from its callback gets every buffered
        message, then L{ConnectionClosed}.
        """
        connection, transport = connect()
        connection.dataReceived(b"SUCCESS\nDATA 2\nxyFAILURE\n")
        lose(connection)
        reader = StreamReader(connection)
        reader.start()
        self.assertEqual(reader.events,
                         [Success(), Data(2), ("payload", b"xy"),
                          FailureMessage(), ("closed",)])

    def test_whenClosed(self):
        """
        L{P2PConnection.whenClosed} fires once the connection is lost, and
        at once afterwards; C{lostReason} says why.
        """
        connection, transport = connect()
        d = connection.whenClosed()
        self.assertNoResult(d)
        lose(connection, ConnectionLost())
        self.successResultOf(d)
        self.successResultOf(connection.whenClosed())
        self.assertTrue(connection.lostReason.check(ConnectionLost))

    def test_sinkLost(self):
        """
        An unfinished outgoing payload's C{done} fails with
        L{ConnectionClosed} carrying the bytes written.
        """
        connection, transport = connect()
        sink = connection.sendData(10)
        sink.write(b"abc")
        lose(connection)
        failure = self.failureResultOf(sink.done, ConnectionClosed)
        self.assertEqual(failure.value.received, 3)

    def test_sendAfterLoss(self):
        """
        Sending after the loss writes nothing; a new sink is failed at once.
        """
        connection, transport = connect()
        lose(connection)
        connection.sendMessage(Success())
        sink = connection.sendData(5)
        self.failureResultOf(sink.done, ConnectionClosed)
        self.assertEqual(transport.value(), b"")


class SendTests(SynchronousTestCase):
    """
    Tests for L{P2PConnection.sendMessage} and L{P2PConnection.sendData}.
    """

    def test_sendMessage(self):
        """
        A message is written as its line and a newline.
        """
        connection, transport = connect()
        connection.sendMessage(Version(4))
        connection.sendMessage(Error(b""))
        self.assertEqual(transport.value(), b"VERSION 4\nERROR \n")

    def test_sendData(self):
        """
        C{sendData(n)} announces the payload; writing exactly C{n} bytes
        fires C{done} with C{n}.
        """
        connection, transport = connect()
        sink = connection.sendData(11)
        self.assertIsInstance(sink, DataSink)
        self.assertEqual(transport.value(), b"DATA 11\n")
        sink.write(b"small ")
        self.assertNoResult(sink.done)
        sink.write(b"")
        sink.write(b"file\n")
        self.assertEqual(self.successResultOf(sink.done), 11)
        self.assertEqual(sink.written, 11)
        connection.sendMessage(Valid())
        self.assertEqual(transport.value(), b"DATA 11\nsmall file\nVALID\n")

    def test_overrun(self):
        """
        Writing past the announced length raises L{DataOverrun}, writes
        none of the excess, and aborts the connection.
        """
        connection, transport = connect()
        sink = connection.sendData(3)
        sink.write(b"ab")
        self.assertRaises(DataOverrun, sink.write, b"cd")
        self.assertEqual(transport.value(), b"DATA 3\nab")
        self.assertTrue(transport.disconnected)
        lose(connection)
        self.failureResultOf(sink.done, ConnectionClosed)

    def test_overrunAfterDone(self):
        """
        Writing into a finished sink is an overrun too.
        """
        connection, transport = connect()
        sink = connection.sendData(2)
        sink.write(b"ab")
        self.successResultOf(sink.done)
        self.assertRaises(DataOverrun, sink.write, b"c")
        self.assertTrue(transport.disconnected)

    def test_zero(self):
        """
        C{sendData(0)} announces an empty payload and is done at once.
        """
        connection, transport = connect()
        sink = connection.sendData(0)
        self.assertEqual(self.successResultOf(sink.done), 0)
        self.assertEqual(transport.value(), b"DATA 0\n")


class StopProducingTests(SynchronousTestCase):
    """
    A payload consumer that goes away.
    """

    def test_dropRestOfPayload(self):
        """
        When the consumer stops the connection mid-payload, the rest of the
        payload is read and dropped, the next message still parses, and the
        transport is not disconnected.
        """
        connection, transport = connect()
        connection.dataReceived(b"DATA 10\nabc")
        self.successResultOf(connection.readMessage())
        consumer = RecordingConsumer()
        d = connection.readData(10, consumer)
        consumer.producer.stopProducing()
        self.assertFalse(transport.disconnecting)
        connection.dataReceived(b"defg")
        connection.dataReceived(b"hijVAL")
        connection.dataReceived(b"ID\n")
        self.assertEqual(consumer.data, b"abc")
        self.assertTrue(d.called)
        d.addErrback(lambda f: None)
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Valid())
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "producing")

    def test_stopWhilePaused(self):
        """
        A consumer that paused and then stops does not leave the transport
        paused: the rest of the payload is drained.
        """
        connection, transport = connect()
        consumer = RecordingConsumer(pauseOnWrite=True)
        d = connection.readData(6, consumer)
        connection.dataReceived(b"abc")
        self.assertEqual(transport.producerState, "paused")
        connection.dataReceived(b"def")
        connection.stopProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(consumer.data, b"abc")
        self.assertTrue(d.called)
        d.addErrback(lambda f: None)
        connection.dataReceived(b"SUCCESS\n")
        self.assertEqual(self.successResultOf(connection.readMessage()),
                         Success())
        self.assertFalse(transport.disconnecting)


class BurstTests(SynchronousTestCase):
    """
    Many small messages arriving at once are handled without recursion.
    """

    def test_tenThousandLines(self):
        """
        10000 lines in one C{dataReceived}, read by a reader that calls
        C{readMessage} again inside each callback, are all delivered (a
        RecursionError would stop the chain early).
        """
        connection, transport = connect()
        reader = StreamReader(connection)
        reader.start()
        connection.dataReceived(b"SUCCESS\n" * 10000)
        self.assertEqual(len(reader.events), 10000)
        self.assertEqual(set(reader.events), {Success()})

    def test_tenThousandBufferedAwait(self):
        """
        10000 lines (and payloads) buffered before reading starts, read by
        a coroutine that awaits each C{readMessage} and C{readData} the way
        the sessions do, are all delivered without recursion.
        """
        connection, transport = connect()
        connection.dataReceived(b"SUCCESS\n" * 10000
                                + b"DATA 1\nxVALID\n" * 10000)
        events = []

        async def read():
            while len(events) < 40000:
                message = await connection.readMessage()
                events.append(message)
                if isinstance(message, Data):
                    consumer = RecordingConsumer()
                    await connection.readData(message.length, consumer)
                    events.append(consumer.data)

        self.successResultOf(ensureDeferred(read()))
        self.assertEqual(events[:2], [Success(), Success()])
        self.assertEqual(events[-3:], [Data(1), b"x", Valid()])

    def test_tenThousandPayloads(self):
        """
        Payloads read from callbacks do not recurse either.
        """
        connection, transport = connect()
        reader = StreamReader(connection)
        reader.start()
        connection.dataReceived(b"DATA 1\nxVALID\n" * 10000)
        self.assertEqual(len(reader.events), 30000)
        self.assertEqual(reader.events[-3:],
                         [Data(1), ("payload", b"x"), Valid()])
