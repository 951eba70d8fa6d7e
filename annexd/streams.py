# -*- test-case-name: tests.test_localnode -*-
"""
Small stream ends: files as producers, hashes and files as consumers.

They connect a file on disk to the P2P streams (benchmarks, tests, and the
connectors that spool), always chunk by chunk, never a whole object in
memory.
"""

import hashlib

from twisted.internet.interfaces import IConsumer
from twisted.protocols.basic import FileSender
from zope.interface import implementer

#: Bytes read from a file per chunk when sending it.
CHUNK_SIZE = 256 * 1024


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
