"""
Tests for L{annexd.streams.PipeStandardIO}: an ssh session's pipes read in
large pieces.
"""

import fcntl
import os

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from annexd.streams import PIPE_SIZE, PipeStandardIO


class Collect(protocol.Protocol):
    def __init__(self):
        self.chunks = []
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class PipeStandardIOTests(unittest.TestCase):

    def pipes(self):
        """
        Two pipes: our stdin's (we write to its other end) and our
        stdout's (we read its other end).
        """
        inRead, inWrite = os.pipe()
        outRead, outWrite = os.pipe()
        self.open = {inRead, inWrite, outRead, outWrite}
        self.addCleanup(lambda: [self.close(fd) for fd in list(self.open)])
        return inRead, inWrite, outRead, outWrite

    def close(self, fd):
        """
        Close C{fd} once (a second close could hit a reused number).
        """
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def test_largeReads(self):
        """
        The pipe grows to L{PIPE_SIZE} and what it holds arrives in one
        piece, where Twisted's StandardIO hands over 8 KiB at a time.
        """
        inRead, inWrite, outRead, outWrite = self.pipes()
        proto = Collect()
        stdio = PipeStandardIO(proto, stdin=inRead, stdout=outWrite,
                               reactor=reactor)
        self.assertEqual(fcntl.fcntl(inRead, fcntl.F_GETPIPE_SZ), PIPE_SIZE)
        payload = os.urandom(512 * 1024)
        self.assertEqual(os.write(inWrite, payload), len(payload))
        self.close(inWrite)
        stdio.write(b"reply")

        def check(_):
            self.assertEqual(b"".join(proto.chunks), payload)
            self.assertEqual(len(proto.chunks[0]), len(payload))
            self.assertEqual(os.read(outRead, 100), b"reply")
        return proto.lost.addCallback(check)

    def test_descriptorsStayOpen(self):
        """
        Like L{StandardIO}, it does not close the descriptors it was given
        (the control socket's session closes them itself).
        """
        inRead, inWrite, outRead, outWrite = self.pipes()
        proto = Collect()
        PipeStandardIO(proto, stdin=inRead, stdout=outWrite, reactor=reactor)
        self.close(inWrite)

        def check(_):
            os.fstat(inRead)
            os.fstat(outWrite)
        return proto.lost.addCallback(check)

