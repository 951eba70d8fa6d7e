# -*- test-case-name: tests.test_localnode -*-
"""
Small stream ends: files as producers, hashes and files as consumers.

They connect a file on disk to the P2P streams (benchmarks, tests, and the
connectors that spool), always chunk by chunk, never a whole object in
memory.
"""

import errno
import fcntl
import hashlib
import os
import stat

from twisted.internet import main, process
from twisted.internet.interfaces import IConsumer
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import FileSender
from zope.interface import implementer

#: Bytes read from a file per chunk when sending it.
CHUNK_SIZE = 256 * 1024

#: Bytes read per system call from an ssh session's standard input, and the
#: size asked of its pipes.
PIPE_SIZE = 1024 * 1024


class _FileSender(FileSender):
    CHUNK_SIZE = CHUNK_SIZE


def sendFile(fileObject, consumer):
    """
    Write the rest of C{fileObject} into C{consumer} (as a pull producer
    paced by the consumer).

    @return: a Deferred firing when the last byte is written, or failing if
        the consumer stops the transfer.
    """
    return _FileSender().beginFileTransfer(fileObject, consumer)


@implementer(IConsumer)
class HashingConsumer:
    """
    A consumer that hashes what it is given and, optionally, writes it to a
    file.

    @ivar length: bytes received.
    @ivar hash: the running hash object.
    """

    def __init__(self, algorithm="sha256", fileObject=None):
        self.hash = hashlib.new(algorithm)
        self.length = 0
        self.producer = None
        self._file = fileObject

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not streaming:
            # A pull producer: ask for data until it unregisters.
            while self.producer is producer:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.hash.update(data)
        self.length += len(data)
        if self._file is not None:
            self._file.write(data)

    def hexdigest(self):
        return self.hash.hexdigest()


class _PipeReader(process.ProcessReader):
    """
    A L{process.ProcessReader} that reads L{PIPE_SIZE} bytes per call where
    Twisted's reads 8 KiB: a 1 GiB upload over ssh is then a few thousand
    reads, not 131,072 trips through the reactor and the protocol.
    """

    def doRead(self):
        try:
            data = os.read(self.fd, PIPE_SIZE)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.dataReceived(data)
        return None


def _growPipe(fd):
    """
    Ask for a L{PIPE_SIZE} kernel buffer if C{fd} is a pipe (best effort:
    the system's pipe-max-size may refuse, which only costs speed).
    """
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


class PipeStandardIO(StandardIO):
    """
    L{StandardIO} on an ssh session's descriptors, for bulk data: large
    reads (L{_PipeReader}) and large pipe buffers.  Like L{StandardIO} it
    does not close the descriptors.
    """

    def __init__(self, proto, stdin=0, stdout=1, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        for fd in (stdin, stdout):
            _growPipe(fd)
        self.protocol = proto
        self._writer = process.ProcessWriter(reactor, self, "write", stdout)
        self._reader = _PipeReader(reactor, self, "read", stdin)
        self._reader.startReading()
        self.protocol.makeConnection(self)
