# -*- test-case-name: tests.test_chunks -*-
"""
git-annex's chunks (C{Remote/Helper/Chunked.hs}, C{Logs/Chunk.hs}), for
the special remote nodes that store content in chunks.

  - with C{chunk=SIZE}, content of a key of a stable backend (hashes, WORM,
    git-remote-annex's; L{isStableKey}) is stored as chunk keys
    C{KEY-S<SIZE>-C<n>} (n from 1, the fields in git-annex's order;
    L{chunkKey}, L{serializeKey}); empty content is one empty chunk
    (L{chunkCount});
  - which chunkings a remote holds of a key is recorded in the git-annex
    branch's chunk log C{<h[0:3]>/<h[3:6]>/KEYFILE.log.cnk}
    (L{chunkLogPath}; the hash and name are the key's without chunk
    fields), lines C{T UUID:CHUNKSIZE COUNT}, the newest line of a field
    winning, a count of 0 meaning none any more (L{parseChunkLog},
    L{ChunkLog});
  - content is looked for in the recorded chunkings, then as the unchunked
    key, then (for a key with a size) in the chunks the configured size
    would make; a remote that is not chunked tries the unchunked key first
    (L{lookupOrder}).
"""

import dataclasses
import os
import time
from fractions import Fraction

from twisted.internet import threads

from annexd.annex.location import JournalLog, hashDirLower, keyFileName
from annexd.annex.logs import formatTimestamp, parseMapLogEntries
from annexd.annex.state import parseSize

__all__ = [
    "isStableKey", "serializeKey", "chunkKey", "chunkCount",
    "parseChunkSize", "chunkLogPath", "parseChunkLog", "buildChunkLog",
    "lookupOrder", "ChunkLog",
]

# Backends whose keys git-annex stores chunked (Backend.isStableKey): the
# hashes, WORM and git-remote-annex's; URL, VURL, external (X...) and
# unknown ones are stored whole.
_STABLE_FIXED = frozenset([b"WORM", b"GITBUNDLE", b"GITMANIFEST"])
_HASH_SIZES = {
    b"SHA": (b"256", b"512", b"224", b"384"),
    b"SHA3_": (b"512", b"384", b"256", b"224"),
    b"SKEIN": (b"512", b"256"),
    b"BLAKE2B": (b"160", b"224", b"256", b"384", b"512"),
    b"BLAKE2BP": (b"512",),
    b"BLAKE2S": (b"160", b"224", b"256"),
    b"BLAKE2SP": (b"224", b"256"),
}
_STABLE_HASHES = frozenset(
    [prefix + size for prefix, sizes in _HASH_SIZES.items() for size in sizes]
    + [b"SHA1", b"MD5"])


def isStableKey(key):
    """
    Whether git-annex stores content of C{key} chunked on a chunked remote
    (its backend always makes the same key for the same content).

    @type key: L{annexd.protocol.keys.Key}
    @rtype: L{bool}
    """
    variety = key.variety
    if variety in _STABLE_FIXED:
        return True
    if variety.endswith(b"E") and variety[:-1] in _STABLE_HASHES:
        return True
    return variety in _STABLE_HASHES


def serializeKey(key, chunkSize=None, chunkNumber=None):
    """
    The canonical serialisation of C{key} without its chunk fields, or with
    the given ones (a chunk key).

    @type key: L{annexd.protocol.keys.Key}
    @rtype: L{bytes}
    """
    out = [key.variety]
    if key.size is not None:
        out.append(b"-s%d" % key.size)
    if key.mtime is not None:
        out.append(b"-m%d" % key.mtime)
    if chunkSize is not None:
        out.append(b"-S%d-C%d" % (chunkSize, chunkNumber))
    out.append(b"--" + key.name)
    return b"".join(out)


def chunkKey(key, chunkSize, number):
    """
    Chunk C{number} (from 1) of C{key} stored in chunks of C{chunkSize}:
    C{KEY-S<chunkSize>-C<number>}.

    @type key: L{annexd.protocol.keys.Key}
    @rtype: L{annexd.protocol.keys.Key}
    """
    return dataclasses.replace(
        key, raw=serializeKey(key, chunkSize, number), chunkSize=chunkSize,
        chunkNumber=number)


def chunkCount(size, chunkSize):
    """
    How many chunks of C{chunkSize} content of C{size} bytes makes (empty
    content is one empty chunk).

    @rtype: L{int}
    """
    return max(1, -(-size // chunkSize))


def parseChunkSize(value):
    """
    The chunk size a C{chunk=} (or C{chunksize=}) value sets.

    @type value: L{str}
    @return: the size in bytes (0: no chunks), or L{None} if C{value} is
        not a size.
    @rtype: L{int} or L{None}
    """
    size = parseSize(value)
    if size is None or size < 0:
        return None
    return size


def chunkLogPath(key):
    """
    The path of C{key}'s chunk log in the git-annex branch, e.g.
    C{92e/ecc/SHA256E-s3145733--b4a7....txt.log.cnk} (named after the key
    without its chunk fields).

    @type key: L{annexd.protocol.keys.Key}
    @rtype: L{str}
    """
    base = serializeKey(key)
    return hashDirLower(base) + os.fsdecode(keyFileName(base) + b".log.cnk")


def parseChunkLog(data, uuid):
    """
    The chunkings of C{uuid} that a chunk log records as present (the
    newest line of each field).

    @type data: L{bytes}
    @type uuid: L{bytes}
    @return: C{[(chunkSize, count)]}, both above 0, sorted (as git-annex's
        C{getCurrentChunks} lists them).
    @rtype: L{list}
    """
    found = []
    prefix = uuid + b":"
    for field, (clock, value) in parseMapLogEntries(data).items():
        if not field.startswith(prefix):
            continue
        method = field[len(prefix):]
        if not method.isdigit() or not value.strip().isdigit():
            continue
        size, count = int(method), int(value.strip())
        if size > 0 and count > 0:
            found.append((size, count))
    return sorted(found)


def buildChunkLog(entries):
    """
    A chunk log's content, one line per field, in git-annex's order (by
    uuid, then chunk size).

    @param entries: C{{field: (clock, value)}} as
        L{annexd.annex.logs.parseMapLogEntries} makes them (a field is
        C{UUID:CHUNKSIZE}).
    @rtype: L{bytes}
    """
    def order(item):
        field = item[0]
        uuid, _, method = field.rpartition(b":")
        return (uuid, int(method) if method.isdigit() else -1, method)
    return b"".join(
        b"%s %s %s\n" % (formatTimestamp(clock), field, value)
        for field, (clock, value) in sorted(entries.items(), key=order))


def lookupOrder(key, recorded, chunkSize=None, chunked=None):
    """
    The chunkings to look for content of C{key} in, most likely first
    (git-annex's C{chunkKeys}): the recorded ones, then the unchunked key,
    then the chunks C{chunkSize} would make (for a key with a size, when
    that is not recorded already).  A remote that is not chunked tries the
    unchunked key first.

    @type key: L{annexd.protocol.keys.Key}
    @param recorded: the chunk log's C{(chunkSize, count)}s of the remote
        (L{parseChunkLog}).
    @param chunkSize: the configured chunk size to look for speculatively,
        or L{None}.
    @param chunked: whether the remote is configured to chunk (an old-style
        C{chunksize=} remote is, without a size to look for); by default,
        whether C{chunkSize} is set.
    @return: C{(chunkSize, count)}s, and L{None} for the unchunked key.
    @rtype: L{list}
    """
    if chunked is None:
        chunked = chunkSize is not None
    lists = list(recorded)
    if not chunked:
        return [None] + lists
    lists.append(None)
    if chunkSize is not None and key.size is not None:
        speculative = (chunkSize, chunkCount(key.size, chunkSize))
        if speculative not in recorded:
            lists.append(speculative)
    return lists


class ChunkLog(JournalLog):
    """
    The chunk logs of one repository: read through its L{BranchReader},
    written to its journal under git-annex's journal lock, the way
    L{annexd.annex.location.LocationLog} writes location logs
    (L{JournalLog.change}).
    """

    def __init__(self, gitDir, reactor=None, reader=None, clock=time.time,
                 env=None):
        """
        @param gitDir: the git directory (see
            L{annexd.annex.branch.findGitDir}).
        @type gitDir: L{str}
        @param reactor: the reactor of its own reader (default: the global
            one).
        @param reader: a L{BranchReader} of the same repository; by default
            one of its own, which L{close} closes.
        @param clock: returns the current POSIX time (for timestamps).
        @param env: the environment of its own reader's git children.
        """
        JournalLog.__init__(self, gitDir, reader=reader, clock=clock,
                            env=env, reactor=reactor)

    def read(self, key, uuid):
        """
        The chunkings of C{key} the log records for C{uuid}.

        @return: a Deferred firing with L{parseChunkLog}'s list.
        """
        return self.reader.read(chunkLogPath(key)).addCallback(
            parseChunkLog, uuid)

    def record(self, key, uuid, chunkSize, count):
        """
        L{recordSync} in a thread (it waits for git-annex's journal lock).

        @return: a Deferred firing with its result.
        """
        return threads.deferToThread(self.recordSync, key, uuid, chunkSize,
                                     count)

    def recordSync(self, key, uuid, chunkSize, count):
        """
        Record that repository C{uuid} holds C{count} chunks of
        C{chunkSize} of C{key} (0: none any more): its line gets the
        current time in whole seconds (or its previous timestamp + 1 if
        that is not older).  Nothing is written when the log says so
        already, nor a count of 0 for a chunking it does not name.
        Blocking: run it in a thread.

        @type key: L{annexd.protocol.keys.Key}
        @type uuid: L{bytes}
        @return: whether anything was written.
        @rtype: L{bool}
        """
        field = b"%s:%d" % (uuid, chunkSize)
        value = b"%d" % (count,)

        def modify(current):
            entries = parseMapLogEntries(current)
            old = entries.get(field)
            if old is not None and old[1] == value:
                return None
            if old is None and count == 0:
                return None
            clock = Fraction(int(self._clock()))
            if old is not None and old[0] >= clock:
                clock = old[0] + 1
            entries[field] = (clock, value)
            return buildChunkLog(entries)

        return self.change(chunkLogPath(key), modify)
