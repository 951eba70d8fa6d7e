"""
Tests for L{annexd.protocol.server}: annexd serving a git-annex client.

Most tests script the client by hand: raw client lines go into the server's
L{P2PConnection} with C{dataReceived}, and the exact bytes the server writes
to its L{StringTransport} are compared with what git-annex's own server
sends (shared/spec/p2p-protocol.md sections 1.5, 1.6, 3 and 8).  The
repository behind the server is a L{MemoryRepository}.

Then the backpressure tests check that pauses cross the server in both
directions, and the loopback tests connect annexd's L{P2PClient} to its
L{P2PServer} over L{twisted.test.iosim}, to show that both ends agree on the
codec and the framing.
"""

import hashlib
import io

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.interfaces import (
    IContentLock, IDownload, IRepository, IUpload, Outcome, RepositoryError,
    RepositoryUnavailable)
from annexd.protocol.client import P2PClient
from annexd.protocol.framing import P2PConnection
from annexd.protocol.keys import Key
from annexd.protocol.server import P2PServer, ServerMode
from annexd.streams import HashingConsumer, sendFile
from tests.support.wire import Session
from tests.support.memory import MemoryRepository, contentMatches, keyFor

UUID = b"cde702c5-ebce-4e30-bbf7-8501553a0d7a"
CLIENT_UUID = b"3fea7fa4-1866-45ea-9590-899a1e220078"
NODE_UUID = b"4a9b7c48-a136-4c98-8181-edf47b4b12e8"

CONTENT = b"hello world\n"
KEY = keyFor(CONTENT, b".txt")
OTHER = keyFor(b"something else entirely", b".txt")

READONLY = b"ERROR this repository is read-only; write access denied\n"
APPENDONLY = b"ERROR this repository is append-only; removal denied\n"


def line(*parts):
    """
    One protocol line from C{parts} (bytes, or keys as their raw bytes).
    """
    return b" ".join(getattr(p, "raw", p) for p in parts) + b"\n"


class PausingTransport(StringTransport):
    """
    A L{StringTransport} whose write buffer is always "full": while
    L{pauseOnWrite} is set, every write pauses the registered streaming
    producer (as Twisted's C{test_tls} does to simulate a slow peer).

    @ivar producerPaused: whether this transport has paused its producer
        and not resumed it.
    """

    pauseOnWrite = True
    producerPaused = False

    def write(self, data):
        StringTransport.write(self, data)
        self._maybePause()

    def writeSequence(self, data):
        StringTransport.writeSequence(self, data)
        self._maybePause()

    def _maybePause(self):
        if (self.pauseOnWrite and self.producer is not None
                and self.streaming and not self.producerPaused):
            self.producerPaused = True
            self.producer.pauseProducing()

    def resumeRegisteredProducer(self):
        """
        The buffer drained: stop pausing, and resume the producer.
        """
        self.pauseOnWrite = False
        self.producerPaused = False
        self.producer.resumeProducing()


@implementer(IDownload)
class ShortDownload:
    """
    A download that announces 12 bytes, delivers 9 and calls them VALID
    (as a file that shrank while being sent would).
    """

    length = 12
    finished = None

    def deliver(self, consumer):
        consumer.write(CONTENT[:9])
        return defer.succeed(True)

    def finish(self, ok):
        self.finished = ok
        return defer.succeed(None)


class ServerTestsMixin:
    """
    Helpers for tests that talk to a L{P2PServer} in front of
    C{self.repo}.
    """

    def setUp(self):
        self.repo = MemoryRepository(UUID, chunkSize=5)

    def session(self, version=4, **kwargs):
        """
        Start a session as an ssh client does: check the unprompted
        AUTH-SUCCESS, then negotiate C{version} (none for L{None}).
        """
        session = Session(self.repo, **kwargs)
        self.assertEqual(session.received(), line(b"AUTH-SUCCESS", UUID))
        if version is not None:
            self.assertEqual(session.send(b"VERSION %d\n" % version),
                             b"VERSION %d\n" % min(version, 4))
        self.addCleanup(self.endSession, session)
        return session

    def endSession(self, session):
        """
        The client goes away; the session must end without a failure.
        """
        if not session.connection.disconnected:
            session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))


class HandshakeTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    Session start and version negotiation.
    """

    def test_announcesItself(self):
        """
        Over ssh the server speaks first: an unprompted C{AUTH-SUCCESS}
        with the repository's uuid, and nothing else.
        """
        session = Session(self.repo)
        self.addCleanup(self.endSession, session)
        self.assertEqual(session.transport.value(),
                         b"AUTH-SUCCESS " + UUID + b"\n")

    def test_version4(self):
        """
        C{VERSION 4} is answered with C{VERSION 4}.
        """
        session = self.session(version=None)
        self.assertEqual(session.send(b"VERSION 4\n"), b"VERSION 4\n")
        self.assertEqual(session.server.version, 4)

    def test_versionAboveMaximum(self):
        """
        A client offering a version annexd does not know gets the highest
        one annexd speaks, 4.
        """
        session = self.session(version=None)
        self.assertEqual(session.send(b"VERSION 9\n"), b"VERSION 4\n")
        self.assertEqual(session.server.version, 4)

    def test_version1(self):
        """
        C{VERSION 1} is answered with C{VERSION 1}, and the session uses
        it.
        """
        session = self.session(version=None)
        self.assertEqual(session.send(b"VERSION 1\n"), b"VERSION 1\n")
        self.assertEqual(session.server.version, 1)

    def test_renegotiate(self):
        """
        VERSION is accepted again later and switches the version, as a real
        server does.
        """
        session = self.session(version=4)
        self.assertEqual(session.send(b"VERSION 2\n"), b"VERSION 2\n")
        self.assertEqual(session.server.version, 2)

    def test_noVersionIsZero(self):
        """
        Without a VERSION exchange the session is at version 0.
        """
        session = self.session(version=None)
        self.assertEqual(session.server.version, 0)

    def test_authAfterAnnouncement(self):
        """
        Over ssh there is no AUTH: one from the client is not a request.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"AUTH", CLIENT_UUID, b"abc")),
                         b"ERROR unexpected command\n")
        self.assertFalse(session.over)


class IdleTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    What the server does with each kind of message while idle
    (spec section 1.6).
    """

    def test_checkPresentTrue(self):
        """
        CHECKPRESENT of content the repository has: C{SUCCESS}.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")
        self.assertEqual(self.repo.calls, [("checkPresent", KEY.raw)])

    def test_checkPresentFalse(self):
        """
        CHECKPRESENT of content the repository lacks: C{FAILURE}.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_unparseable(self):
        """
        Lines that are no message (unknown word, bad key, arguments to a
        message without fields, an absolute associated file, a keyed
        UNLOCKCONTENT) are answered C{ERROR unknown command}, one by one,
        and the session goes on.
        """
        session = self.session()
        for bad in [b"FROB", b"checkpresent " + KEY.raw,
                    b"CHECKPRESENT notakey", b"GETTIMESTAMP x",
                    b"PUT /abs/path " + KEY.raw, b"UNLOCKCONTENT " + KEY.raw,
                    b"VERSION x", b""]:
            self.assertEqual(session.send(bad + b"\n"),
                             b"ERROR unknown command\n", bad)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")
        self.assertFalse(session.over)
        self.assertEqual(self.repo.calls, [("checkPresent", KEY.raw)])

    def test_unexpected(self):
        """
        Messages that parse but are no request (SUCCESS, DATA 3, PUT-FROM
        0, VALID, UNLOCKCONTENT, CONNECTDONE 0) are answered C{ERROR
        unexpected command}, and the session goes on.
        """
        session = self.session()
        for message in [b"SUCCESS", b"DATA 3", b"PUT-FROM 0", b"VALID",
                        b"UNLOCKCONTENT", b"CONNECTDONE 0",
                        b"TIMESTAMP 5", b"AUTH-SUCCESS " + UUID]:
            self.assertEqual(session.send(message + b"\n"),
                             b"ERROR unexpected command\n", message)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")
        self.assertFalse(session.over)

    def test_burst(self):
        """
        Requests that arrive together (more than the connection's buffer
        limit at once) are answered one by one, in order, without
        recursion.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        burst = (line(b"CHECKPRESENT", KEY) + line(b"CHECKPRESENT", OTHER)
                 + b"GETTIMESTAMP\n") * 3000
        self.assertGreater(len(burst), P2PConnection.bufferLimit)
        self.assertEqual(session.send(burst),
                         b"SUCCESS\nFAILURE\nTIMESTAMP 0\n" * 3000)
        self.assertEqual(len(self.repo.calls), 9000)

    def test_crlf(self):
        """
        A carriage return before the newline is tolerated.
        """
        session = self.session()
        self.assertEqual(session.send(b"CHECKPRESENT " + KEY.raw + b"\r\n"),
                         b"FAILURE\n")

    def test_clientError(self):
        """
        The client's C{ERROR} ends the session silently: no reply, the
        connection is closed, and L{P2PServer.serve}'s Deferred fires.
        """
        session = self.session()
        self.assertEqual(session.send(b"ERROR x\n"), b"")
        self.assertTrue(session.over)
        self.assertIsNone(self.successResultOf(session.served))

    def test_eof(self):
        """
        The client closing the connection ends the session.
        """
        session = self.session()
        session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))
        self.assertEqual(session.received(), b"")

    def test_lineTooLong(self):
        """
        A line longer than git-annex's limit ends the session.
        """
        session = self.session()
        session.send(b"CHECKPRESENT " + b"x" * 40000)
        self.assertTrue(session.over)

    def test_bypass(self):
        """
        BYPASS gets no reply; the server remembers the uuids.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"BYPASS", NODE_UUID, CLIENT_UUID)),
                         b"")
        self.assertEqual(session.server.bypass, (NODE_UUID, CLIENT_UUID))
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_getTimestamp(self):
        """
        GETTIMESTAMP is answered with the repository's clock.
        """
        self.repo.clock = 443
        session = self.session()
        self.assertEqual(session.send(b"GETTIMESTAMP\n"), b"TIMESTAMP 443\n")

    def test_getTimestampVersion1(self):
        """
        Like git-annex, the server does not police versions: GETTIMESTAMP
        is answered under version 1 too.
        """
        self.repo.clock = 7
        session = self.session(version=1)
        self.assertEqual(session.send(b"GETTIMESTAMP\n"), b"TIMESTAMP 7\n")

    def test_connect(self):
        """
        CONNECT (git over P2P) is not served here: an ERROR, and the
        session ends.
        """
        session = self.session()
        self.assertEqual(
            session.send(b"CONNECT git-upload-pack\n"),
            b"ERROR relaying to git not supported on this connection\n")
        self.assertTrue(session.over)

    def test_notifyChange(self):
        """
        NOTIFYCHANGE is not served here: an ERROR, and the session ends.
        """
        session = self.session()
        self.assertEqual(session.send(b"NOTIFYCHANGE\n"),
                         b"ERROR change notification not available\n")
        self.assertTrue(session.over)


class PutTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    PUT: content from the client into the repository.
    """

    def test_put(self):
        """
        The whole exchange: C{PUT-FROM 0}, the client's C{DATA n}, the
        payload and C{VALID}, then C{SUCCESS}; the content is stored.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 0\n")
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"VALID\n"),
                         b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertEqual(self.repo.calls, [
            ("put", KEY.raw, b"file.txt"),
            ("upload.receive", KEY.raw, 12),
            ("upload.finish", KEY.raw, True)])
        self.assertFalse(session.over)

    def test_putInPieces(self):
        """
        The payload may arrive in any pieces, split anywhere, and the
        newline inside it is payload, not a line end.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        wire = b"DATA 12\n" + CONTENT + b"VALID\n"
        replies = b"".join(session.send(wire[i:i + 1])
                           for i in range(len(wire)))
        self.assertEqual(replies, b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})

    def test_putNoAssociatedFile(self):
        """
        An empty associated file (two spaces) reaches the repository as
        L{None}; an encoded one is decoded git-annex's way.
        """
        session = self.session()
        self.assertEqual(session.send(b"PUT  " + KEY.raw + b"\n"),
                         b"PUT-FROM 0\n")
        session.send(b"ERROR x\n")
        self.assertEqual(session.send(line(b"PUT", b"with%space.txt", KEY)),
                         b"PUT-FROM 0\n")
        self.assertEqual([c for c in self.repo.calls if c[0] == "put"], [
            ("put", KEY.raw, None), ("put", KEY.raw, b"with_space.txt")])

    def test_alreadyHave(self):
        """
        PUT of content the repository has: C{ALREADY-HAVE}, no data asked.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"ALREADY-HAVE\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_resume(self):
        """
        With part of an earlier upload kept, the server asks for the rest
        only (C{PUT-FROM <kept length>}), and the whole is verified.
        """
        self.repo.partial[KEY.raw] = CONTENT[:5]
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 5\n")
        self.assertEqual(session.send(b"DATA 7\n" + CONTENT[5:] + b"VALID\n"),
                         b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertEqual(self.repo.partial, {})

    def test_connectionLostMidData(self):
        """
        When the client goes away in the middle of the payload, the upload
        is aborted, nothing is stored, and what arrived is kept: the next
        session is offered C{PUT-FROM} that length.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        session.send(b"DATA 12\n" + CONTENT[:5])
        session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))
        self.assertEqual(self.repo.contents, {})
        self.assertEqual(self.repo.partial, {KEY.raw: CONTENT[:5]})
        self.assertEqual(self.repo.calls[-1][:2], ("upload.abort", KEY.raw))

        again = self.session()
        self.assertEqual(again.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 5\n")

    def test_errorAfterPutFrom(self):
        """
        The client's C{ERROR} after C{PUT-FROM} abandons the PUT silently:
        nothing is stored, and the session goes on.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"ERROR changed my mind\n"), b"")
        self.assertEqual(self.repo.contents, {})
        self.assertIsNotNone(self.repo.uploads[0].aborted)
        self.assertFalse(session.over)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_notDataAfterPutFrom(self):
        """
        Anything but DATA after C{PUT-FROM} is answered C{ERROR expected
        DATA}; the message is consumed, not executed, and the session goes
        on.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"ERROR expected DATA\n")
        self.assertNotIn(("checkPresent", KEY.raw), self.repo.calls)
        self.assertIsNotNone(self.repo.uploads[0].aborted)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_unparseableAfterPutFrom(self):
        """
        An unparseable line after C{PUT-FROM} is answered C{ERROR expected
        DATA} too.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"FROB\n"), b"ERROR expected DATA\n")
        self.assertFalse(session.over)

    def test_dataPresentBeforeVersion4(self):
        """
        DATA-PRESENT is a version 4 message: at version 3 it is not the DATA
        the server waits for.
        """
        session = self.session(version=3)
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA-PRESENT\n"),
                         b"ERROR expected DATA\n")
        self.assertNotIn(("upload.dataPresent", KEY.raw), self.repo.calls)

    def test_dataPresent(self):
        """
        At version 4, DATA-PRESENT after C{PUT-FROM} asks the repository
        whether the content is there by now: C{SUCCESS} if so.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 0\n")
        self.repo.add(CONTENT, KEY)
        self.assertEqual(session.send(b"DATA-PRESENT\n"), b"SUCCESS\n")
        self.assertIn(("upload.dataPresent", KEY.raw), self.repo.calls)

    def test_dataPresentAbsent(self):
        """
        DATA-PRESENT when the content is not there: C{FAILURE}.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA-PRESENT\n"), b"FAILURE\n")
        self.assertEqual(self.repo.contents, {})

    def test_noVerdict(self):
        """
        When the payload is followed by something other than VALID or
        INVALID, the server says C{ERROR expected VALID or INVALID}, then
        verifies the content itself and gives its verdict (C{SUCCESS}).
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(
            session.send(b"DATA 12\n" + CONTENT + b"SUCCESS\n"),
            b"ERROR expected VALID or INVALID\nSUCCESS\n")
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertIn(("upload.finish", KEY.raw, None), self.repo.calls)

    def test_noVerdictWrongContent(self):
        """
        Content that fails verification after a missing verdict gets
        C{FAILURE} after the ERROR line.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(
            session.send(b"DATA 12\nhello wOrld\nFROB\n"),
            b"ERROR expected VALID or INVALID\nFAILURE\n")
        self.assertEqual(self.repo.contents, {})

    def test_wrongContent(self):
        """
        Content whose hash does not match its key is refused even when the
        client says VALID, and nothing is kept of it.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\nhello wOrld\nVALID\n"),
                         b"FAILURE\n")
        self.assertEqual(self.repo.contents, {})
        self.assertEqual(self.repo.partial, {})

    def test_wrongSize(self):
        """
        A payload whose length does not add up to the key's size is
        refused.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 5\nhelloVALID\n"), b"FAILURE\n")
        self.assertEqual(self.repo.contents, {})

    def test_invalidVerified(self):
        """
        INVALID with a non-empty payload means "it changed while I read
        it": the server verifies, and stores it when it is right after all.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"INVALID\n"),
                         b"SUCCESS\n")
        self.assertIn(("upload.finish", KEY.raw, False), self.repo.calls)
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})

    def test_emptyInvalid(self):
        """
        C{DATA 0} followed by C{INVALID} means the client has no content:
        C{FAILURE}.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 0\nINVALID\n"), b"FAILURE\n")
        self.assertEqual(self.repo.contents, {})

    def test_putVersion0(self):
        """
        A version 0 client sends no VALID after the payload: the server
        answers right after the last byte (and verifies).
        """
        session = self.session(version=None)
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 0\n")
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT), b"SUCCESS\n")
        self.assertIn(("upload.finish", KEY.raw, None), self.repo.calls)
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})

    def test_putPlus(self):
        """
        At version 2 and later a stored PUT with further uuids is answered
        C{SUCCESS-PLUS}.
        """
        self.repo.plusUUIDs = (b"u1", b"u2")
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"VALID\n"),
                         b"SUCCESS-PLUS u1 u2\n")

    def test_putPlusVersion1(self):
        """
        A version 1 client gets plain C{SUCCESS} instead.
        """
        self.repo.plusUUIDs = (b"u1",)
        session = self.session(version=1)
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"VALID\n"),
                         b"SUCCESS\n")

    def test_alreadyHavePlus(self):
        """
        ALREADY-HAVE carries the further uuids at version 2 and later, and
        is plain at version 1.
        """
        self.repo.plusUUIDs = (b"u1",)
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"ALREADY-HAVE-PLUS u1\n")
        session.send(b"VERSION 1\n")
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"ALREADY-HAVE\n")


class GetTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    GET: content from the repository to the client.
    """

    def test_get(self):
        """
        GET streams C{DATA n}, the bytes and C{VALID}; the client's
        C{SUCCESS} ends the exchange with no reply, and the repository
        learns it was accepted.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        self.assertEqual(session.send(b"SUCCESS\n"), b"")
        self.assertIs(self.repo.downloads[0].finished, True)
        self.assertEqual(self.repo.calls, [
            ("get", KEY.raw, b"file.txt", 0),
            ("download.deliver", KEY.raw),
            ("download.finish", KEY.raw, True)])
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_getRefused(self):
        """
        The client's C{FAILURE} (its verification failed) finishes the
        download as not accepted, with no reply.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        session.send(line(b"GET 0", b"file.txt", KEY))
        self.assertEqual(session.send(b"FAILURE\n"), b"")
        self.assertIs(self.repo.downloads[0].finished, False)

    def test_getAbsent(self):
        """
        GET of content the repository lacks: C{DATA 0} and C{INVALID}.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 0\nINVALID\n")
        self.assertEqual(session.send(b"FAILURE\n"), b"")
        self.assertFalse(session.over)

    def test_getOffset(self):
        """
        GET at an offset sends the rest of the content only.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"GET 6", b"file.txt", KEY)),
                         b"DATA 6\nworld\nVALID\n")

    def test_getOffsetAtEnd(self):
        """
        GET at the end of the content: C{DATA 0} and C{VALID}.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"GET 12", b"file.txt", KEY)),
                         b"DATA 0\nVALID\n")

    def test_getVersion0(self):
        """
        A version 0 client gets no VALID after the payload.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session(version=None)
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT)
        self.assertEqual(session.send(b"SUCCESS\n"), b"")
        self.assertIs(self.repo.downloads[0].finished, True)

    def test_getVersion0Absent(self):
        """
        A version 0 client asking for absent content gets C{DATA 0} only.
        """
        session = self.session(version=None)
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 0\n")

    def test_notSuccessAfterGet(self):
        """
        After the data, anything but SUCCESS or FAILURE is answered with
        the version 2 list of expected words, and counts as a refusal.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        session.send(line(b"GET 0", b"file.txt", KEY))
        self.assertEqual(
            session.send(line(b"CHECKPRESENT", KEY)),
            b"ERROR expected SUCCESS or SUCCESS-PLUS or FAILURE or "
            b"FAILURE-PLUS\n")
        self.assertIs(self.repo.downloads[0].finished, False)
        self.assertNotIn(("checkPresent", KEY.raw), self.repo.calls)

    def test_notSuccessAfterGetVersion1(self):
        """
        Below version 2 the ERROR names SUCCESS and FAILURE only.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session(version=1)
        session.send(line(b"GET 0", b"file.txt", KEY))
        self.assertEqual(session.send(b"FROB\n"),
                         b"ERROR expected SUCCESS or FAILURE\n")

    def test_errorAfterGet(self):
        """
        The client's C{ERROR} after the data counts as a refusal; no reply,
        and the session goes on.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        session.send(line(b"GET 0", b"file.txt", KEY))
        self.assertEqual(session.send(b"ERROR verification failed\n"), b"")
        self.assertIs(self.repo.downloads[0].finished, False)
        self.assertFalse(session.over)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_shortDownload(self):
        """
        When the repository delivers fewer bytes than the C{DATA} it
        announced, the stream cannot be completed: the server must not
        send a verdict (the client would read it as payload) and must drop
        the connection instead.
        """
        self.patch(self.repo, "get",
                   lambda key, af, offset: defer.succeed(ShortDownload()))
        session = self.session()
        wire = session.send(line(b"GET 0", b"file.txt", KEY))
        self.assertTrue(wire.startswith(b"DATA 12\nhello wor"), wire)
        self.assertNotIn(b"VALID", wire)
        self.assertTrue(session.transport.disconnecting)


class LockTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    LOCKCONTENT and UNLOCKCONTENT.
    """

    def test_lockUnlock(self):
        """
        LOCKCONTENT is answered C{SUCCESS} and holds the lock (the content
        cannot be removed); the bare UNLOCKCONTENT gets no reply and
        releases it, so that a REMOVE afterwards succeeds.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"LOCKCONTENT", KEY)),
                         b"SUCCESS\n")
        self.assertTrue(self.repo.isLocked(KEY))
        self.assertEqual(self.successResultOf(self.repo.remove(KEY)),
                         Outcome(False))
        self.assertEqual(session.send(b"UNLOCKCONTENT\n"), b"")
        self.assertFalse(self.repo.isLocked(KEY))
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {})

    def test_lockAbsent(self):
        """
        LOCKCONTENT of absent content: C{FAILURE}, and the session is idle
        again (no UNLOCKCONTENT expected).
        """
        session = self.session()
        self.assertEqual(session.send(line(b"LOCKCONTENT", KEY)),
                         b"FAILURE\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_notUnlock(self):
        """
        Anything but UNLOCKCONTENT while locked is answered C{ERROR
        expected UNLOCKCONTENT}; the lock is released and the message is
        consumed, not executed.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        session.send(line(b"LOCKCONTENT", KEY))
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         b"ERROR expected UNLOCKCONTENT\n")
        self.assertFalse(self.repo.isLocked(KEY))
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertNotIn("remove", [c[0] for c in self.repo.calls])
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")

    def test_unlockWithKey(self):
        """
        UNLOCKCONTENT with a key (as the upstream design document shows it)
        is unparseable: C{ERROR expected UNLOCKCONTENT}, lock released.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        session.send(line(b"LOCKCONTENT", KEY))
        self.assertEqual(session.send(line(b"UNLOCKCONTENT", KEY)),
                         b"ERROR expected UNLOCKCONTENT\n")
        self.assertFalse(self.repo.isLocked(KEY))
        self.assertFalse(session.over)

    def test_connectionLostWhileLocked(self):
        """
        The lock is released when the client goes away holding it.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        session.send(line(b"LOCKCONTENT", KEY))
        session.connection.connectionLost()
        self.assertFalse(self.repo.isLocked(KEY))
        self.assertIsNone(self.successResultOf(session.served))


class RemoveTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    REMOVE and REMOVE-BEFORE.
    """

    def test_remove(self):
        """
        REMOVE deletes the content: C{SUCCESS}.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {})
        self.assertEqual(self.repo.calls, [("remove", KEY.raw, None)])

    def test_removeAbsent(self):
        """
        REMOVE of absent content succeeds, as in git-annex.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")

    def test_removeBeforePast(self):
        """
        REMOVE-BEFORE a time the repository's clock has reached: C{FAILURE},
        content kept.
        """
        self.repo.add(CONTENT, KEY)
        self.repo.clock = 1000
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 999", KEY)),
                         b"FAILURE\n")
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertEqual(self.repo.calls, [("remove", KEY.raw, 999)])

    def test_removeBeforeFuture(self):
        """
        REMOVE-BEFORE a time still ahead: removed.
        """
        self.repo.add(CONTENT, KEY)
        self.repo.clock = 443
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 1042", KEY)),
                         b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {})

    def test_removePlus(self):
        """
        A removal reported with further uuids is C{SUCCESS-PLUS} at version
        4 ...
        """
        self.repo.plusUUIDs = (b"u1",)
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         b"SUCCESS-PLUS u1\n")

    def test_removePlusVersion1(self):
        """
        ... and plain C{SUCCESS} at version 1.
        """
        self.repo.plusUUIDs = (b"u1",)
        session = self.session(version=1)
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")

    def test_removeFailurePlus(self):
        """
        A refusal with further uuids is C{FAILURE-PLUS} at version 3.
        """
        self.repo.plusUUIDs = (b"u1",)
        self.repo.clock = 10
        session = self.session(version=3)
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 5", KEY)),
                         b"FAILURE-PLUS u1\n")

    def test_removePlusEmpty(self):
        """
        With no further uuids the reply is the plain word even at
        version 4.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")


class ModeTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    Read-only and append-only service.
    """

    def test_readOnlyPut(self):
        """
        A read-only server refuses PUT with git-annex's ERROR text, without
        asking the repository.
        """
        session = self.session(mode=ServerMode.READ_ONLY)
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         READONLY)
        self.assertEqual(self.repo.calls, [])

    def test_readOnlyRemove(self):
        """
        A read-only server refuses REMOVE and REMOVE-BEFORE the same way.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session(mode=ServerMode.READ_ONLY)
        self.assertEqual(session.send(line(b"REMOVE", KEY)), READONLY)
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 5", KEY)),
                         READONLY)
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertEqual(self.repo.calls, [])

    def test_readOnlyServesReads(self):
        """
        A read-only server still answers CHECKPRESENT, GET, LOCKCONTENT and
        GETTIMESTAMP.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session(mode=ServerMode.READ_ONLY)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")
        self.assertEqual(session.send(line(b"GET 0", b"f", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        session.send(b"SUCCESS\n")
        self.assertEqual(session.send(line(b"LOCKCONTENT", KEY)),
                         b"SUCCESS\n")
        session.send(b"UNLOCKCONTENT\n")
        self.assertEqual(session.send(b"GETTIMESTAMP\n"), b"TIMESTAMP 0\n")

    def test_appendOnlyPut(self):
        """
        An append-only server accepts PUT.
        """
        session = self.session(mode=ServerMode.APPEND_ONLY)
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 0\n")
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"VALID\n"),
                         b"SUCCESS\n")
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})

    def test_appendOnlyRemove(self):
        """
        An append-only server refuses REMOVE and REMOVE-BEFORE with
        git-annex's ERROR text, and the session goes on.
        """
        self.repo.add(CONTENT, KEY)
        session = self.session(mode=ServerMode.APPEND_ONLY)
        self.assertEqual(session.send(line(b"REMOVE", KEY)), APPENDONLY)
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 5", KEY)),
                         APPENDONLY)
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertFalse(session.over)


class RepositoryFailureTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    What reaches the client when the repository fails.
    """

    def test_repositoryError(self):
        """
        A L{RepositoryError} is relayed as C{ERROR <text>}, and the session
        goes on.
        """
        self.repo.failNext("checkPresent", RepositoryError("boom"))
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"ERROR boom\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_repositoryUnavailable(self):
        """
        A L{RepositoryUnavailable} is relayed as C{ERROR <text>} too.
        """
        self.repo.failNext("put", RepositoryUnavailable("node1 is down"))
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"f", KEY)),
                         b"ERROR node1 is down\n")
        self.assertFalse(session.over)

    def test_errorTextWithNewline(self):
        """
        An error text with line breaks still goes out as one line.
        """
        self.repo.failNext("remove", RepositoryError(b"two\nlines"))
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         b"ERROR two lines\n")

    def test_errorOnFinish(self):
        """
        A repository that fails once the payload is in: the payload and the
        verdict are consumed, the ERROR replaces SUCCESS, and the session
        goes on.
        """
        self.repo.failNext("upload.finish", RepositoryError("disk full"))
        session = self.session()
        session.send(line(b"PUT", b"f", KEY))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"VALID\n"),
                         b"ERROR disk full\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_errorOnReceive(self):
        """
        A repository that cannot take the content once the client announced
        it: the payload is coming anyway, so the server must skip it (and
        its verdict) before answering; no byte of content may be read as a
        command.  Here the payload is itself a REMOVE line.
        """
        self.repo.add(CONTENT, KEY)
        payload = line(b"REMOVE", KEY)
        key = keyFor(payload)
        self.repo.failNext("upload.receive", RepositoryError("disk full"))
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"f", key)),
                         b"PUT-FROM 0\n")
        wire = session.send(b"DATA %d\n" % len(payload) + payload + b"VALID\n")
        self.assertEqual(wire, b"ERROR disk full\n")
        self.assertIsNotNone(self.repo.uploads[0].aborted)
        self.assertEqual(self.repo.contents, {KEY.raw: CONTENT})
        self.assertNotIn(("remove", KEY.raw, None), self.repo.calls)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_errorOnGet(self):
        """
        A repository that fails a GET before any data: C{ERROR <text>},
        the session goes on.
        """
        self.repo.failNext("get", RepositoryError("no such node"))
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"f", KEY)),
                         b"ERROR no such node\n")
        self.assertFalse(session.over)

    def test_errorMidDownload(self):
        """
        A download that fails after C{DATA} was announced cannot be
        completed: the connection is dropped, with no ERROR line in the
        middle of the payload.
        """
        self.repo.add(CONTENT, KEY)
        self.repo.failNext("download.deliver", RepositoryUnavailable("gone"))
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"f", KEY)),
                         b"DATA 12\n")
        self.assertTrue(session.transport.disconnecting)
        self.assertTrue(session.served.called)

    def test_unexpectedException(self):
        """
        An exception that is no repository error is logged with its
        traceback, and the client gets one ERROR line that reveals nothing
        of it.
        """
        self.repo.failNext("checkPresent", ZeroDivisionError("division by 0"))
        session = self.session()
        wire = session.send(line(b"CHECKPRESENT", KEY))
        self.assertTrue(wire.startswith(b"ERROR "), wire)
        self.assertEqual(wire.count(b"\n"), 1)
        self.assertTrue(wire.endswith(b"\n"))
        for leak in (b"Traceback", b"ZeroDivision", b"division", b"File "):
            self.assertNotIn(leak, wire)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class AuthTests(ServerTestsMixin, unittest.SynchronousTestCase):
    """
    P2P-address sessions: the client must AUTH first.
    """

    TOKEN = b"c2eec8805a9180f36aa6"

    def checkAuth(self, uuid, token):
        self.checked.append((uuid, token))
        return token == self.TOKEN

    def authSession(self, checkAuth=None):
        self.checked = []
        session = Session(self.repo, checkAuth=checkAuth or self.checkAuth)
        self.addCleanup(self.endSession, session)
        return session

    def test_nothingUnprompted(self):
        """
        With authentication required the server does not speak first.
        """
        session = self.authSession()
        self.assertEqual(session.received(), b"")

    def test_onlyAuthBeforeAuth(self):
        """
        Before AUTH succeeds, requests get C{ERROR unexpected command},
        unparseable lines C{ERROR unknown command}, and nothing reaches
        the repository.
        """
        session = self.authSession()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"ERROR unexpected command\n")
        self.assertEqual(session.send(b"VERSION 4\n"),
                         b"ERROR unexpected command\n")
        self.assertEqual(session.send(b"FROB\n"), b"ERROR unknown command\n")
        self.assertEqual(self.repo.calls, [])
        self.assertFalse(session.over)

    def test_wrongToken(self):
        """
        A wrong token gets C{AUTH-FAILURE} and the connection is closed:
        one guess per connection (git-annex's server keeps listening; its
        client closes anyway).
        """
        session = self.authSession()
        self.assertEqual(session.send(line(b"AUTH", CLIENT_UUID, b"bad")),
                         b"AUTH-FAILURE\n")
        self.assertTrue(session.over)

    def test_rightToken(self):
        """
        The right token gets C{AUTH-SUCCESS <uuid>}; tokens are compared
        lower-cased; then the session is served as usual.
        """
        session = self.authSession()
        self.assertEqual(
            session.send(line(b"AUTH", CLIENT_UUID, self.TOKEN.upper())),
            line(b"AUTH-SUCCESS", UUID))
        self.assertEqual(self.checked, [(CLIENT_UUID, self.TOKEN)])
        self.assertEqual(session.server.clientUUID, CLIENT_UUID)
        self.assertEqual(session.send(b"VERSION 4\n"), b"VERSION 4\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")
        self.assertEqual(session.send(line(b"AUTH", CLIENT_UUID, self.TOKEN)),
                         b"ERROR unexpected command\n")

    def test_asynchronousCheck(self):
        """
        C{checkAuth} may answer with a Deferred.
        """
        answer = defer.Deferred()
        session = self.authSession(lambda uuid, token: answer)
        self.assertEqual(session.send(line(b"AUTH", CLIENT_UUID, b"x")), b"")
        answer.callback(True)
        self.assertEqual(session.received(), line(b"AUTH-SUCCESS", UUID))

    def test_errorBeforeAuth(self):
        """
        The client's ERROR before authenticating ends the session.
        """
        session = self.authSession()
        self.assertEqual(session.send(b"ERROR bye\n"), b"")
        self.assertTrue(session.over)


class BackpressureTests(unittest.SynchronousTestCase):
    """
    Pauses cross the server: a slow consumer behind the server holds the
    sender in front of it back.
    """

    def test_putPausesClient(self):
        """
        During a PUT relayed to a node (a L{P2PClient} on a second
        connection, whose transport pauses its producer on every write), the
        node transport's pause reaches the client's transport; more bytes
        from the client are then held, not written; when the node side
        resumes, the client's transport is resumed and the held bytes go
        on.
        """
        nodeTransport = PausingTransport()
        nodeConnection = P2PConnection("node")
        nodeConnection.makeConnection(nodeTransport)
        node = P2PClient(nodeConnection, uuid=NODE_UUID)
        node.version = 4

        session = Session(node)
        self.assertEqual(session.received(), line(b"AUTH-SUCCESS", NODE_UUID))
        session.send(b"VERSION 4\n")
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)), b"")
        self.assertEqual(nodeTransport.value(), line(b"PUT", b"file.txt", KEY))
        nodeTransport.clear()
        nodeConnection.dataReceived(b"PUT-FROM 0\n")
        self.assertEqual(session.received(), b"PUT-FROM 0\n")

        self.assertEqual(session.transport.producerState, "producing")
        session.send(b"DATA 12\n" + CONTENT[:4])
        self.assertEqual(nodeTransport.value(), b"DATA 12\n" + CONTENT[:4])
        self.assertTrue(nodeTransport.producerPaused)
        self.assertIs(nodeTransport.producer, session.connection)
        self.assertEqual(session.transport.producerState, "paused")

        session.send(CONTENT[4:] + b"VALID\n")
        self.assertEqual(nodeTransport.value(), b"DATA 12\n" + CONTENT[:4])
        self.assertEqual(session.transport.producerState, "paused")

        nodeTransport.resumeRegisteredProducer()
        self.assertEqual(session.transport.producerState, "producing")
        self.assertEqual(nodeTransport.value(),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        self.assertIsNone(nodeTransport.producer)
        self.assertEqual(session.received(), b"")
        nodeConnection.dataReceived(b"SUCCESS\n")
        self.assertEqual(session.received(), b"SUCCESS\n")

    def test_getPausesRepository(self):
        """
        During a GET, a client transport that pauses its producer pauses
        the repository's download producer, which stops writing; resuming
        it sends the rest and the verdict.
        """
        repo = MemoryRepository(UUID, chunkSize=4)
        repo.add(CONTENT, KEY)
        session = Session(repo, transport=PausingTransport())
        session.send(b"VERSION 4\n")
        session.received()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\nhell")
        download = repo.downloads[0]
        self.assertIs(session.transport.producer, download)
        self.assertTrue(download.paused)
        self.assertEqual(download.sent, 4)
        self.assertEqual(download.history, ["pause"])

        session.transport.resumeRegisteredProducer()
        self.assertEqual(session.received(), b"o world\nVALID\n")
        self.assertEqual(download.history, ["pause", "resume"])
        self.assertIsNone(session.transport.producer)
        self.assertEqual(session.send(b"SUCCESS\n"), b"")
        self.assertIs(download.finished, True)
        session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))


    def test_clientLostMidDownload(self):
        """
        When the client goes away while the download is paused, its
        transport stops the producer (as Twisted's transports do): the
        download fails, is finished as not accepted, and the session ends.
        """
        repo = MemoryRepository(UUID, chunkSize=4)
        repo.add(CONTENT, KEY)
        session = Session(repo, transport=PausingTransport())
        session.send(b"VERSION 4\n")
        session.send(line(b"GET 0", b"file.txt", KEY))
        download = repo.downloads[0]
        self.assertTrue(download.paused)

        session.transport.producer.stopProducing()
        session.connection.connectionLost()
        self.assertEqual(download.history, ["pause", "stop"])
        self.assertIs(download.finished, False)
        self.assertIsNone(self.successResultOf(session.served))


class LoopbackTests(unittest.SynchronousTestCase):
    """
    annexd's L{P2PClient} against annexd's L{P2PServer} in front of a
    L{MemoryRepository}, over L{twisted.test.iosim}.  (iosim never pauses
    producers: this shows that both ends agree on messages and framing,
    not backpressure.)
    """

    def setUp(self):
        self.repo = MemoryRepository(UUID)
        serverConnection = P2PConnection("loopback client")
        clientConnection = P2PConnection("loopback server")
        _, _, self.pump = iosim.connectedServerAndClient(
            lambda: serverConnection, lambda: clientConnection, greet=False)
        self.server = P2PServer(serverConnection, self.repo)
        self.served = self.server.serve()
        self.client = P2PClient(clientConnection, uuid=UUID)

    def result(self, d):
        """
        Pump until quiet, then return what C{d} fired with.
        """
        return self.successResultOf(self.pumped(d))

    def pumped(self, d):
        """
        Pump until quiet and return C{d} itself.
        """
        self.pump.flush()
        return d

    def test_session(self):
        """
        Handshake; PUT of 1 MiB streamed from a file producer; CHECKPRESENT;
        GET back with an identical sha256; LOCKCONTENT and UNLOCKCONTENT;
        REMOVE-BEFORE; GETTIMESTAMP; and a clean close.
        """
        self.assertIs(self.result(self.client.handshake()), self.client)
        self.assertEqual(self.client.version, 4)
        self.assertEqual(self.server.version, 4)

        block = hashlib.sha512(b"annexd").digest()
        data = b"".join(hashlib.sha512(block + b"%d" % i).digest()
                        for i in range(16384))
        self.assertEqual(len(data), 1024 * 1024)
        key = keyFor(data)

        self.assertIs(self.result(self.client.checkPresent(key)), False)
        upload = self.result(self.client.put(key, b"big file.bin"))
        self.assertEqual(upload.offset, 0)
        sent = sendFile(io.BytesIO(data), upload.receive(len(data)))
        self.result(sent)
        self.assertEqual(self.result(upload.finish(True)), Outcome(True))
        self.assertEqual(self.repo.contents[key.raw], data)
        self.assertIn(("put", key.raw, b"big_file.bin"), self.repo.calls)

        self.assertIs(self.result(self.client.checkPresent(key)), True)
        self.assertEqual(self.result(self.client.put(key, None)),
                         Outcome(True, alreadyHad=True))

        download = self.result(self.client.get(key, b"big file.bin", 0))
        self.assertEqual(download.length, len(data))
        consumer = HashingConsumer()
        self.assertIs(self.result(download.deliver(consumer)), True)
        self.assertEqual(consumer.hexdigest(),
                         hashlib.sha256(data).hexdigest())
        self.result(download.finish(True))
        self.assertIs(self.repo.downloads[-1].finished, True)

        tail = self.result(self.client.get(key, None, 1000000))
        consumer = HashingConsumer()
        self.assertIs(self.result(tail.deliver(consumer)), True)
        self.assertEqual(consumer.hexdigest(),
                         hashlib.sha256(data[1000000:]).hexdigest())
        self.result(tail.finish(True))

        lock = self.result(self.client.lockContent(key))
        self.assertTrue(self.repo.isLocked(key))
        self.result(lock.release())
        self.assertFalse(self.repo.isLocked(key))

        self.repo.clock = 443
        self.assertEqual(self.result(self.client.getTimestamp()), 443)
        self.assertEqual(self.result(self.client.remove(key, before=400)),
                         Outcome(False))
        self.assertEqual(self.result(self.client.remove(key, before=1042)),
                         Outcome(True))
        self.assertIn(("remove", key.raw, 1042), self.repo.calls)
        self.assertIs(self.result(self.client.checkPresent(key)), False)

        self.result(self.client.close())
        self.assertIsNone(self.successResultOf(self.served))

    def test_resumedPut(self):
        """
        A PUT resumed from kept content: the client is told the offset and
        sends the rest only.
        """
        self.result(self.client.handshake())
        data = b"0123456789" * 1000
        key = keyFor(data)
        self.repo.partial[key.raw] = data[:3000]
        upload = self.result(self.client.put(key, None))
        self.assertEqual(upload.offset, 3000)
        upload.receive(len(data) - 3000).write(data[3000:])
        self.assertEqual(self.result(upload.finish(True)), Outcome(True))
        self.assertEqual(self.repo.contents[key.raw], data)

    def test_errorsKeepSession(self):
        """
        A repository error reaches the client as L{RepositoryError}, and
        the session stays usable.
        """
        self.result(self.client.handshake())
        self.repo.failNext("checkPresent", RepositoryError("boom"))
        failure = self.failureResultOf(
            self.pumped(self.client.checkPresent(KEY)), RepositoryError)
        self.assertEqual(failure.value.text, b"boom")
        self.assertIs(self.result(self.client.checkPresent(KEY)), False)

    def test_plusAndAlreadyHave(self):
        """
        SUCCESS-PLUS and ALREADY-HAVE-PLUS lists reach the client as the
        L{Outcome}'s uuids.
        """
        self.result(self.client.handshake())
        self.repo.plusUUIDs = (NODE_UUID,)
        upload = self.result(self.client.put(KEY, None))
        upload.receive(len(CONTENT)).write(CONTENT)
        self.assertEqual(self.result(upload.finish(True)),
                         Outcome(True, (NODE_UUID,)))
        self.assertEqual(self.result(self.client.put(KEY, None)),
                         Outcome(True, (NODE_UUID,), alreadyHad=True))


class MemoryRepositoryTests(unittest.SynchronousTestCase):
    """
    The test double itself.
    """

    def test_interfaces(self):
        """
        L{MemoryRepository} and what it hands out provide their interfaces.
        """
        repo = MemoryRepository(UUID)
        repo.add(CONTENT, KEY)
        self.assertTrue(verifyObject(IRepository, repo))
        self.assertTrue(verifyObject(
            IDownload, self.successResultOf(repo.get(KEY, None, 0))))
        self.assertTrue(verifyObject(
            IContentLock, self.successResultOf(repo.lockContent(KEY))))
        self.assertTrue(verifyObject(
            IUpload, self.successResultOf(repo.put(OTHER, None))))

    def test_specKey(self):
        """
        L{keyFor} gives the key git-annex gives C{hello world\\n}, and
        L{contentMatches} checks SHA256E, SHA256 and size-only keys.
        """
        self.assertEqual(KEY.raw, b"SHA256E-s12--a948904f2f0f479b8f8197694b3"
                         b"0184b0d2ed1c1cd2a1ec0fb85d299a192a447.txt")
        self.assertTrue(contentMatches(KEY, CONTENT))
        self.assertFalse(contentMatches(KEY, b"hello world!"))
        plain = Key.parse(b"SHA256-s12--a948904f2f0f479b8f8197694b30184b0d2"
                          b"ed1c1cd2a1ec0fb85d299a192a447")
        self.assertTrue(contentMatches(plain, CONTENT))
        worm = Key.parse(b"WORM-s5-m1700000000--foo.txt")
        self.assertTrue(contentMatches(worm, b"12345"))
        self.assertFalse(contentMatches(worm, b"1234"))

    def test_failNext(self):
        """
        L{MemoryRepository.failNext} fails the next call only, and refuses
        unknown method names.
        """
        repo = MemoryRepository(UUID)
        repo.failNext("getTimestamp", RepositoryUnavailable("x"))
        self.failureResultOf(repo.getTimestamp(), RepositoryUnavailable)
        self.assertEqual(self.successResultOf(repo.getTimestamp()), 0)
        self.assertEqual(repo.calls, [("getTimestamp",), ("getTimestamp",)])
        self.assertRaises(ValueError, repo.failNext, "frob", Exception())

    def test_stopDownload(self):
        """
        A download stopped by its consumer stops writing and fails its
        Deferred.
        """
        repo = MemoryRepository(UUID, chunkSize=4)
        repo.add(CONTENT, KEY)
        download = self.successResultOf(repo.get(KEY, None, 0))
        transport = PausingTransport()
        d = download.deliver(transport)
        self.assertEqual(transport.value(), b"hell")
        download.stopProducing()
        download.resumeProducing()
        self.assertEqual(transport.value(), b"hell")
        self.failureResultOf(d)
