"""
Tests for L{annexd.annex.chunks}.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from annexd.annex.branch import journalFileName
from annexd.annex.chunks import (
    ChunkLog, buildChunkLog, chunkCount, chunkKey, chunkLogPath, isStableKey,
    lookupOrder, parseChunkLog, parseChunkSize, serializeKey)
from annexd.annex.logs import parseMapLogEntries
from annexd.protocol.keys import Key

MiB = 1024 * 1024

SHA_KEY = Key.parse(b"SHA256E-s3145733--b4a7fc918fe23e30fd8a8885b5331f3"
                    b"01564af1900c349e365422822f233c38f.txt")


class _Reader:
    """
    The part of a L{annexd.annex.branch.BranchReader} a L{ChunkLog} uses:
    the journal is the real one in C{gitDir}, the branch a L{dict}.
    """

    def __init__(self, gitDir, branch=None):
        self.gitDir = gitDir
        self.branch = dict(branch or {})
        self.closed = False

    def readJournalFile(self, path):
        try:
            with open(os.path.join(self.gitDir, "annex", "journal",
                                   journalFileName(path)), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def readBranchSync(self, path):
        return self.branch.get(path, b"")

    def read(self, path):
        data = self.readJournalFile(path)
        return defer.succeed(self.readBranchSync(path) if data is None
                             else data)

    def close(self):
        self.closed = True
        return defer.succeed(None)


class KeyTests(unittest.TestCase):
    """
    Chunk key naming and which keys are chunked.
    """

    def test_chunkKeys(self):
        """
        Chunk keys carry -S and -C after -s and -m, in git-annex's field
        order; the serialisation without them is the base key's.
        """
        key = Key.parse(b"WORM-s10-m1700000000--a b")
        self.assertEqual(serializeKey(key), b"WORM-s10-m1700000000--a b")
        self.assertEqual(serializeKey(key, MiB, 2),
                         b"WORM-s10-m1700000000-S1048576-C2--a b")
        chunk = chunkKey(SHA_KEY, MiB, 4)
        self.assertEqual(chunk.raw, b"SHA256E-s3145733-S1048576-C4--b4a7fc9"
                         b"18fe23e30fd8a8885b5331f301564af1900c349e365422822"
                         b"f233c38f.txt")
        self.assertEqual((chunk.chunkSize, chunk.chunkNumber), (MiB, 4))
        self.assertEqual(chunk, Key.parse(chunk.raw))
        self.assertEqual(serializeKey(chunk), SHA_KEY.raw)

    def test_chunkCount(self):
        """
        Content of a size makes the chunks it fills; empty content is one
        empty chunk.
        """
        self.assertEqual(chunkCount(3145733, MiB), 4)
        self.assertEqual(chunkCount(2 * MiB, MiB), 2)
        self.assertEqual(chunkCount(1, MiB), 1)
        self.assertEqual(chunkCount(0, MiB), 1)

    def test_stableBackends(self):
        """
        Only keys of git-annex's stable backends (hashes, with or without
        E, WORM, git-remote-annex's) are chunked; URL, VURL, external and
        unknown backends' are not.
        """
        for variety in (b"SHA256E", b"SHA256", b"SHA1", b"MD5E", b"SHA3_512",
                        b"SKEIN256E", b"BLAKE2B160", b"BLAKE2SP224E",
                        b"WORM", b"GITBUNDLE", b"GITMANIFEST"):
            self.assertTrue(isStableKey(Key.parse(variety + b"-s1--x")),
                            variety)
        for variety in (b"URL", b"VURL", b"XFOO", b"WORME", b"SHA999",
                        b"NOSUCH"):
            self.assertFalse(isStableKey(Key.parse(variety + b"-s1--x")),
                             variety)

    def test_parseChunkSize(self):
        """
        A C{chunk=} value is a size (0: no chunks); anything else is bad.
        """
        self.assertEqual(parseChunkSize("1MiB"), MiB)
        self.assertEqual(parseChunkSize("0"), 0)
        self.assertIsNone(parseChunkSize("lots"))


class ChunkLogFormatTests(unittest.TestCase):
    """
    The chunk log's path and lines.
    """

    def test_chunkLogPath(self):
        """
        The chunk log is named after the key without chunk fields, in its
        lowercase hash directory.
        """
        self.assertEqual(
            chunkLogPath(SHA_KEY),
            "92e/ecc/SHA256E-s3145733--b4a7fc918fe23e30fd8a8885b5331f30156"
            "4af1900c349e365422822f233c38f.txt.log.cnk")
        self.assertEqual(chunkLogPath(chunkKey(SHA_KEY, MiB, 2)),
                         chunkLogPath(SHA_KEY))

    def test_parseChunkLog(self):
        """
        The newest line of a field wins; counts of 0 and other uuids are
        left out; the chunkings come sorted by size.
        """
        log = (b"1795726632s u1:1048576 4\n"
               b"1795726640s u1:524288 7\n"
               b"1795726650s u1:1048576 0\n"
               b"1795726600s u2:1048576 4\n"
               b"1795726660s u1:65536 48\n")
        self.assertEqual(parseChunkLog(log, b"u1"), [(65536, 48),
                                                     (524288, 7)])
        self.assertEqual(parseChunkLog(log, b"u2"), [(MiB, 4)])
        self.assertEqual(parseChunkLog(log, b"u"), [])
        self.assertEqual(parseChunkLog(b"", b"u1"), [])

    def test_buildChunkLog(self):
        """
        Lines are C{T UUID:CHUNKSIZE COUNT}, ordered by uuid and then by
        chunk size as a number.
        """
        entries = parseMapLogEntries(b"5s u2:1048576 4\n"
                                     b"7s u1:1048576 1\n"
                                     b"6s u1:262144 3\n")
        self.assertEqual(buildChunkLog(entries),
                         b"6s u1:262144 3\n7s u1:1048576 1\n"
                         b"5s u2:1048576 4\n")


class LookupOrderTests(unittest.TestCase):
    """
    L{lookupOrder} follows git-annex's C{chunkKeys}.
    """

    def test_chunked(self):
        """
        Recorded chunkings, then the unchunked key, then the configured
        chunking.
        """
        self.assertEqual(lookupOrder(SHA_KEY, [(65536, 48)], MiB),
                         [(65536, 48), None, (MiB, 4)])

    def test_configuredRecorded(self):
        """
        The configured chunking is not tried twice when it is recorded.
        """
        self.assertEqual(lookupOrder(SHA_KEY, [(MiB, 4)], MiB),
                         [(MiB, 4), None])

    def test_noSize(self):
        """
        Without a size, no chunking is made up.
        """
        key = Key.parse(b"WORM--x")
        self.assertEqual(lookupOrder(key, [(MiB, 2)], MiB), [(MiB, 2), None])

    def test_unchunked(self):
        """
        A remote that is not chunked tries the unchunked key first.
        """
        self.assertEqual(lookupOrder(SHA_KEY, [(MiB, 4)]), [None, (MiB, 4)])
        self.assertEqual(lookupOrder(SHA_KEY, []), [None])

    def test_legacy(self):
        """
        A chunked remote without a size to make chunkings of (old-style
        C{chunksize=}) tries the recorded chunkings, then the unchunked
        key.
        """
        self.assertEqual(lookupOrder(SHA_KEY, [(MiB, 4)], chunked=True),
                         [(MiB, 4), None])


class ChunkLogTests(unittest.TestCase):
    """
    L{ChunkLog} writes the journal as git-annex does.
    """

    def setUp(self):
        self.gitDir = os.path.abspath(self.mktemp())
        os.makedirs(self.gitDir)
        self.reader = _Reader(self.gitDir)
        self.now = 1795726632.7
        self.log = ChunkLog(self.gitDir, reader=self.reader,
                            clock=lambda: self.now)
        self.addCleanup(self.log.close)

    def journal(self, key=SHA_KEY):
        path = os.path.join(self.gitDir, "annex", "journal",
                            journalFileName(chunkLogPath(key)))
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def test_record(self):
        """
        A chunking is one line with the current time in whole seconds; the
        same again writes nothing.
        """
        self.assertTrue(self.log.recordSync(SHA_KEY, b"u1", MiB, 4))
        self.assertEqual(self.journal(), b"1795726632s u1:1048576 4\n")
        self.assertFalse(self.log.recordSync(SHA_KEY, b"u1", MiB, 4))
        self.assertEqual(os.listdir(os.path.join(self.gitDir, "annex",
                                                 "othertmp")), [])

    def test_merge(self):
        """
        The branch's lines are kept, a field's line is replaced, and a line
        not newer than the one it replaces gets its time + 1.
        """
        self.reader.branch[chunkLogPath(SHA_KEY)] = (
            b"1795726640s u1:1048576 4\n1795726600s u2:1048576 4\n")
        self.assertTrue(self.log.recordSync(SHA_KEY, b"u1", MiB, 0))
        self.assertEqual(self.journal(), b"1795726641s u1:1048576 0\n"
                         b"1795726600s u2:1048576 4\n")
        self.assertTrue(self.log.recordSync(SHA_KEY, b"u1", 65536, 48))
        self.assertEqual(self.journal(), b"1795726632s u1:65536 48\n"
                         b"1795726641s u1:1048576 0\n"
                         b"1795726600s u2:1048576 4\n")

    def test_removedUnknown(self):
        """
        A count of 0 for a chunking the log does not name writes nothing.
        """
        self.assertFalse(self.log.recordSync(SHA_KEY, b"u1", MiB, 0))
        self.assertIsNone(self.journal())

    async def test_read(self):
        """
        L{ChunkLog.read} gives the uuid's chunkings, journal first;
        L{ChunkLog.record} records in a thread.
        """
        self.reader.branch[chunkLogPath(SHA_KEY)] = b"1s u1:65536 48\n"
        self.assertEqual(await self.log.read(SHA_KEY, b"u1"), [(65536, 48)])
        self.assertTrue(await self.log.record(SHA_KEY, b"u1", MiB, 4))
        self.assertEqual(await self.log.read(SHA_KEY, b"u1"),
                         [(65536, 48), (MiB, 4)])
        self.assertEqual(await self.log.read(SHA_KEY, b"u2"), [])

    def test_ownReader(self):
        """
        L{ChunkLog.close} leaves a reader it was given open.
        """
        self.log.close()
        self.assertFalse(self.reader.closed)
