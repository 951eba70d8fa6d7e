# -*- test-case-name: tests.test_spool -*-
"""
The one spool file of a cluster upload, for nodes that fall behind.

While all nodes keep pace, a cluster upload streams straight from the
client to every node, and the slowest node paces the client.  When one node
alone holds the client back for longer than a bound, the L{TeeConsumer}
decouples it: from then on the stream is also appended to a L{Spool} (one
anonymous temporary file per upload, however many nodes lag), and a
L{SpoolReader} feeds the lagging node from that file at the node's own
pace.  The client is then paced by the remaining nodes.

A spool is only made when the disk keeps C{annex.diskreserve} free after
the rest of the upload has been written to it.
"""

import os
import shutil
import tempfile
import weakref

from twisted.internet import defer
from twisted.logger import Logger

#: Bytes read from the spool per write to a node.
READ_SIZE = 256 * 1024

#: Every spool whose file is open (weakly: a spool dropped without
#: L{Spool.close} leaves with its file).
_openSpools = weakref.WeakSet()


def spooledBytes():
    """
    The bytes held right now in the files of all open spools (of every
    cluster in this process), for monitoring.
    """
    return sum(spool.end - spool.start for spool in list(_openSpools))


class SpoolRefused(Exception):
    """
    No spool file can be made (disk reserve, or an unusable directory).
    """


def checkRoom(directory, size, diskReserve):
    """
    Check that C{size} bytes can be spooled in C{directory} and leave
    C{diskReserve} bytes free (made if missing).

    @raise SpoolRefused: with the reason, if not.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        free = shutil.disk_usage(directory).free
    except OSError as e:
        raise SpoolRefused("cannot spool in %s: %s" % (directory, e))
    if free - size < diskReserve:
        raise SpoolRefused(
            "spooling %d bytes in %s would leave less than "
            "annex.diskreserve (%d bytes) free" % (
                size, directory, diskReserve))


class Spool:
    """
    An anonymous temporary file holding the upload's stream from stream
    position L{start} on.

    @ivar start: the stream position of the file's first byte.
    @ivar end: the stream position just past the last byte written.
    @ivar finished: whether the stream is complete.
    """

    _log = Logger()

    def __init__(self, directory, start, remaining, diskReserve, named=False):
        """
        @param remaining: bytes of the stream still to come.
        @param named: give the file a name (L{path}), for nodes that store
            from a file; it is removed when the spool closes.
        @raise SpoolRefused: if the disk cannot take them and keep
            C{diskReserve} bytes free.
        """
        checkRoom(directory, remaining, diskReserve)
        try:
            if named:
                self._file = tempfile.NamedTemporaryFile(
                    dir=directory, prefix="annexd-spool-")
                self.path = self._file.name
            else:
                self._file = tempfile.TemporaryFile(dir=directory,
                                                    prefix="annexd-spool-")
                self.path = None
        except OSError as e:
            raise SpoolRefused("cannot spool in %s: %s" % (directory, e))
        self._fd = self._file.fileno()
        self.start = start
        self.end = start
        self.finished = False
        self._readers = []
        _openSpools.add(self)

    def append(self, data):
        """
        Add the next bytes of the stream.
        """
        self._file.write(data)
        self._file.flush()
        self.end += len(data)
        for reader in list(self._readers):
            reader.more()

    def finish(self):
        """
        The stream is complete.
        """
        self.finished = True
        for reader in list(self._readers):
            reader.more()
        if not self._readers:
            self.close()

    def read(self, position, size):
        """
        Up to C{size} bytes from stream position C{position}.
        """
        return os.pread(self._fd, min(size, self.end - position),
                        position - self.start)

    def attach(self, reader):
        self._readers.append(reader)

    def detach(self, reader):
        if reader in self._readers:
            self._readers.remove(reader)
        if not self._readers and self.finished:
            self.close()

    def close(self):
        _openSpools.discard(self)
        if self._file is not None:
            self._file.close()
            self._file = None


class SpoolReader:
    """
    Feeds one node's sink from the spool, at the node's pace.

    @ivar drained: fires when the node has been given the whole stream,
        or fails if it was stopped.
    """

    def __init__(self, spool, sink, position, skip, total):
        """
        @param position: the stream position the node continues from.
        @param skip: the stream position before which the node wants
            nothing (it had that much already).
        @param total: the stream's full length.
        """
        self._spool = spool
        self._sink = sink
        self.position = max(position, skip)
        self._total = total
        self._paused = False
        self._feeding = False
        self.drained = defer.Deferred()
        spool.attach(self)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self.more()

    def stopProducing(self, why="the node stopped taking data"):
        self._spool.detach(self)
        if not self.drained.called:
            self.drained.errback(SpoolRefused(why))

    def more(self):
        """
        Feed the node what it can take of what the spool has.
        """
        if self._feeding or self.drained.called:
            return
        self._feeding = True
        try:
            while not self._paused and self.position < self._spool.end:
                chunk = self._spool.read(self.position, READ_SIZE)
                if not chunk:
                    break
                self.position += len(chunk)
                try:
                    self._sink.write(chunk)
                except Exception as e:
                    self.stopProducing("the node failed: %s" % (e,))
                    return
            if self.position >= self._total and self._spool.finished:
                self._spool.detach(self)
                self._sink.unregisterProducer()
                self.drained.callback(None)
        finally:
            self._feeding = False
