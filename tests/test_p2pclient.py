"""
Tests for L{annexd.protocol.client.P2PClient} against a scripted node.
"""

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from annexd.protocol.client import P2PClient
from annexd.protocol.framing import P2PConnection
from tests.support.memory import keyFor

UUID = b"22222222-2222-4222-8222-222222222222"
KEY = keyFor(b"hello world\n", b".txt")


class LockReleaseTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.transport = StringTransport()
        self.connection = P2PConnection("node")
        self.connection.makeConnection(self.transport)
        self.client = P2PClient(self.connection, uuid=UUID)
        self.client.version = 4

    def test_releaseConfirmed(self):
        """
        UNLOCKCONTENT has no reply: the release is over only once the node
        has answered a CHECKPRESENT sent after it, so that nothing asked
        of the node afterwards can find the content still locked; the
        session is free again then.
        """
        locking = self.client.lockContent(KEY)
        self.connection.dataReceived(b"SUCCESS\n")
        lock = self.successResultOf(locking)
        self.transport.clear()
        released = lock.release()
        self.assertEqual(self.transport.value(),
                         b"UNLOCKCONTENT\nCHECKPRESENT " + KEY.raw + b"\n")
        self.assertNoResult(released)
        asked = self.client.checkPresent(KEY)
        self.assertNoResult(asked)
        self.connection.dataReceived(b"SUCCESS\n")
        self.successResultOf(released)
        self.assertIsNone(self.successResultOf(lock.release()))
        self.connection.dataReceived(b"FAILURE\n")
        self.assertIs(self.successResultOf(asked), False)

    def test_releaseOnBrokenSession(self):
        """
        When the session breaks during the release, the release is over
        all the same (the node's process ends, and its lock with it).
        """
        locking = self.client.lockContent(KEY)
        self.connection.dataReceived(b"SUCCESS\n")
        lock = self.successResultOf(locking)
        released = lock.release()
        self.connection.connectionLost()
        self.successResultOf(released)
