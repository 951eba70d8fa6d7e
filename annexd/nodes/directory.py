# -*- test-case-name: tests.test_directorynode -*-
"""
A git-annex directory special remote as a node.

L{DirectoryNode} reads and writes the remote's directory itself, in
git-annex's own layout, so that what annexd stores git-annex can read (and
C{git annex fsck --from} accepts) and the other way round.  The facts below
come from git-annex's C{Remote/Directory.hs}, C{Remote/Helper/Chunked.hs},
C{Remote/Helper/ExportImport.hs}, C{Annex/DirHashes.hs} and
C{Annex/Locations.hs}, and were checked against the real git-annex
(C{tests/test_directorynode.py} checks them again).

Where the directory is: git config C{remote.NAME.annex-directory} (the
C{gitConfig} setting C{annex-directory}).  C{git annex initremote} takes
C{directory=} but stores it only there, never in C{remote.log}, so that it
can differ between clones; git-annex uses nothing else.  annexd falls back
to a C{directory=} field of the remote's configuration when the git setting
is missing; a relative path is taken relative to the gateway repository.

Objects (no C{exporttree}):

  - a key's content is C{DIR/<h[0:3]>/<h[3:6]>/KEYFILE/KEYFILE}, where C{h}
    is the lowercase hex MD5 of the key without its chunk fields
    (C{hashdirlower}, two levels) and C{KEYFILE} is the key escaped like
    git-annex's C{keyFile} (C{& % : /} -> C{&a &s &c %}).  Content that
    old git-annex versions stored under the mixed-case hash
    (C{hashdirmixed}, C{xX/yY/KEYFILE/KEYFILE}) is found there too, as
    git-annex finds it; new content always goes to the lower-case one;
  - a store writes C{DIR/tmp/KEYFILE/KEYFILE}, then renames the directory
    C{DIR/tmp/KEYFILE} to C{DIR/<hash>/KEYFILE} (after removing whatever
    was there) and makes the file and its directory read-only: a store
    that stops half-way never looks present.  annexd uses the same
    temporary names, writes them as the bytes arrive, checks the content
    against its key as it streams (L{Verifier}), and renames only content
    that is complete and matches.  An interrupted upload keeps its
    temporary file: the next PUT of the key resumes from its length;
  - with C{chunk=SIZE}, the content of a key of a stable backend (hashes,
    WORM) is stored as chunk keys C{KEY-S<SIZE>-C<n>} (n from 1; a key
    without chunk fields gets C{-S<SIZE>-C<n>} after its C{-s}/C{-m}
    fields), each like an object of its own: C{DIR/<hash>/CHUNKKEYFILE/
    CHUNKKEYFILE}, where the hash is the base key's (all chunks of a key
    share one hash directory).  Empty content is one empty chunk.  git-annex
    records which chunkings a remote holds of a key in the git-annex
    branch's chunk log C{<h[0:3]>/<h[3:6]>/KEYFILE.log.cnk}, lines
    C{TIMESTAMP UUID:CHUNKSIZE CHUNKCOUNT} (count 0 once removed), and
    reads content as: the recorded chunkings, then the unchunked object,
    then (for a key with a size) the chunking the remote is configured
    with now, even unrecorded.  annexd does the same when it reads, and
    when it stores chunked content it records the chunk log in the gateway
    repository's journal (as git-annex's gateway does in its own), so
    git-annex finds the chunks even after the remote's chunk size changes;
    a remove records count 0.  Keys of unstable backends (URL, VURL,
    external ones) are stored unchunked, as git-annex does;
  - legacy C{chunksize=SIZE} remotes keep C{KEYFILE.chunk1},
    C{KEYFILE.chunk2} ... and C{KEYFILE.chunkcount} (the count, as text)
    in the key's object directory (C{DIR/<hash>/KEYFILE/}); an empty
    content is one empty chunk.  annexd reads and writes that layout too.

C{exporttree=yes}: the directory holds an exported tree that annexd does
not know (it lives in git-annex's export database), so annexd cannot find
or store content in the tree itself.  With C{annexobjects=yes}, git-annex
also keeps objects at C{DIR/.git/annex/objects/<hashdirlower>/KEYFILE/
KEYFILE} (written via a temporary file in the same directory), and annexd
stores, reads and removes content there (never chunked, as exports are
not).  Without it, or with C{importtree=yes} alone, PUT and REMOVE are
refused with git-annex's own reasons and content reads as absent.

What a special remote cannot do: lock content (L{lockContent} gives
L{None}, as git-annex treats special remotes) or keep a clock
(L{getTimestamp} raises L{ProtocolNotSupported}; C{remove(before=)} ignores
C{before}, like a P2P node of protocol version 2).

I/O: metadata operations run in the reactor thread; uploads are written to
disk as they arrive (synchronously, from the consumer's C{write}), downloads
are read in L{CHUNK_SIZE} pieces by a push producer that yields to the
reactor between them, and the final renames (with C{fsync}), resume
prefixes and L{DirectoryNode.storeFile} copies run in the reactor's thread
pool.  A missing directory (an unmounted disk) is L{RepositoryUnavailable}:
annexd never creates the directory itself, only things under it.
"""

import errno
import hashlib
import os
import stat
import struct

from twisted.internet import defer, threads
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.annex.branch import BranchReader, findGitDir
from annexd.annex.chunks import (
    ChunkLog, chunkLogPath, isStableKey, lookupOrder, parseChunkLog,
    parseChunkSize, serializeKey)
from annexd.annex.location import keyFileName
from annexd.annex.verify import Verifier
from annexd.interfaces import (
    IDownload, IRepository, IStoresFiles, IUpload, Outcome,
    ProtocolNotSupported, RepositoryError, RepositoryUnavailable)
from annexd.streams import CHUNK_SIZE

#: Bytes a download writes per reactor turn before it lets others run.
TURN_BYTES = 4 * CHUNK_SIZE

#: The name of the temporary file an upload to C{annexobjects=yes} writes
#: next to the object (suffix of the key's file name).
ANNEXOBJECT_TMP_SUFFIX = ".annexd-tmp"

# The alphabet of git-annex's hashdirmixed (Utility/MD5.hs).
_MIXED_CHARS = "0123456789zqjxkmvwgpfZQJXKMVWGPF"

#: How the remote chunks content.
NO_CHUNKS, CHUNKS, LEGACY_CHUNKS = "none", "chunks", "legacy"


def hashDirLower(nonChunkKey):
    """
    git-annex's C{hashDirLower def}: C{("aaa", "bbb")}.

    @param nonChunkKey: the serialised key, without chunk fields.
    """
    digest = hashlib.md5(nonChunkKey).hexdigest()
    return digest[:3], digest[3:6]


def hashDirMixed(nonChunkKey):
    """
    git-annex's C{hashDirMixed def} (the hash of non-bare repositories'
    objects, and of directory remotes written by old versions):
    C{("xX", "yY")}.
    """
    digest = hashlib.md5(nonChunkKey).digest()
    letters = []
    for word in struct.unpack("<4I", digest):
        chars = [_MIXED_CHARS[(word >> (6 * i)) & 31] for i in range(8)]
        swapped = []
        for i in range(0, 8, 2):
            swapped += [chars[i + 1], chars[i]]
        letters.extend(swapped[:6])
    return "".join(letters[:2]), "".join(letters[2:4])


def keyFile(serialized):
    """
    git-annex's C{keyFile}: the key as one file-name component (str).
    """
    return os.fsdecode(keyFileName(serialized))


def _yesNo(value):
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("yes", "true"):
        return True
    if lowered in ("no", "false", ""):
        return False
    raise ValueError(value)


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _mkdirsUnder(top, path):
    """
    Create C{path} and its missing parents, all below C{top} (which must
    exist: it is never created, so that an unmounted disk's mount point
    stays empty).
    """
    relative = os.path.relpath(path, top)
    if relative.startswith(os.pardir):
        raise ValueError("%s is not under %s" % (path, top))
    current = top
    for part in relative.split(os.sep):
        if part in ("", os.curdir):
            continue
        current = os.path.join(current, part)
        try:
            os.mkdir(current)
        except FileExistsError:
            pass


def _allowWrite(path):
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IWUSR)
    except OSError:
        pass


def _preventWrite(path):
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        pass


def _removeTree(path):
    """
    Remove C{path} (a directory, possibly read-only, with its files) if it
    exists.  @return: whether there was anything.
    """
    if not os.path.lexists(path):
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        _allowWrite(path)
        for name in os.listdir(path):
            child = os.path.join(path, name)
            if os.path.isdir(child) and not os.path.islink(child):
                _removeTree(child)
            else:
                os.unlink(child)
        os.rmdir(path)
    else:
        os.unlink(path)
    return True


def _removeEmptyParents(top, path):
    """
    Remove the empty directories from C{path} up to, not including, C{top}.
    """
    top = os.path.normpath(top)
    current = os.path.normpath(path)
    while current != top and current.startswith(top + os.sep):
        try:
            os.rmdir(current)
        except OSError:
            return
        current = os.path.dirname(current)


def _fileSize(path):
    """
    The size of the regular file C{path}, or L{None}.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _finalizeDir(top, tmp, dest):
    """
    git-annex's C{finalizeStoreGeneric}: replace C{dest} by the directory
    C{tmp} (renamed), then make its files and itself read-only.
    """
    _removeTree(dest)
    _mkdirsUnder(top, os.path.dirname(dest))
    os.rename(tmp, dest)
    for name in os.listdir(dest):
        _preventWrite(os.path.join(dest, name))
    _preventWrite(dest)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(IRepository, IStoresFiles)
class DirectoryNode:
    """
    A directory special remote, reached directly on disk.

    @ivar uuid: the remote's uuid (L{bytes}).
    @ivar name: the remote's name.
    @ivar directory: the absolute directory, or L{None} if not configured.
    @ivar chunking: L{NO_CHUNKS}, L{CHUNKS} or L{LEGACY_CHUNKS}.
    @ivar chunkSize: the configured chunk size, or L{None}.
    @ivar exportTree: C{exporttree=yes}.
    @ivar annexObjects: C{exporttree=yes} with C{annexobjects=yes}: objects
        are at C{DIR/.git/annex/objects}.
    @ivar importTree: C{importtree=yes}.
    @ivar bypass: always empty (a special remote has no BYPASS).
    @ivar started: transfers (uploads, downloads, stored files) started.
    """

    _log = Logger()

    bypass = ()

    #: Stores from a stream (put); storeFile only for callers that have a
    #: file anyway.
    needsFile = False

    #: No session limit: requests are independent disk operations.
    maxSessions = None

    def __init__(self, reactor, uuid, name, config, gitConfig, repoPath,
                 environment=None):
        """
        @param config: the remote's C{remote.log} fields (L{str} to L{str}).
        @param gitConfig: its C{remote.NAME.*} git settings, without the
            prefix (C{{"annex-directory": "/srv/d"}}).
        @param repoPath: the gateway repository: relative directories are
            taken from there, and its git-annex branch has the chunk logs.
        @param environment: the environment of git children (default: ours).
        """
        self.reactor = reactor
        self.uuid = uuid.encode("ascii") if isinstance(uuid, str) else uuid
        self.name = name or _text(self.uuid)
        self.config = dict(config or {})
        self.gitConfig = dict(gitConfig or {})
        self.repoPath = repoPath
        self.environment = (dict(environment) if environment is not None
                            else None)
        self.started = 0
        self.directory = None
        self.chunking = NO_CHUNKS
        self.chunkSize = None
        self.exportTree = self.annexObjects = self.importTree = False
        #: why every request fails (a configuration annexd cannot serve)
        self._problem = None
        self._closed = False
        #: serialised key -> the transfer writing it
        self._writing = {}
        self._active = set()
        self._gitDir = None
        self._reader = None
        self._chunkLog = None
        self._warnedLog = False
        try:
            self._configure()
        except _ConfigError as e:
            self._problem = str(e)

    def __repr__(self):
        return "<DirectoryNode %s at %s>" % (self.name, self.directory)

    # -- configuration ------------------------------------------------------

    def _configure(self):
        config, name = self.config, self.name
        kind = config.get("type", "directory")
        if kind != "directory":
            raise _ConfigError("%s: a special remote of type %s is not a"
                               " directory remote" % (name, kind))
        encryption = config.get("encryption", "none") or "none"
        if encryption != "none":
            raise _ConfigError(
                "%s: encrypted special remotes are not supported" % (name,))
        directory = (self.gitConfig.get("annex-directory")
                     or config.get("directory"))
        if not directory:
            raise _ConfigError(
                "%s: no directory configured (git config remote.%s."
                "annex-directory)" % (name, name))
        if not os.path.isabs(directory):
            directory = os.path.join(self.repoPath or os.curdir, directory)
        self.directory = os.path.abspath(directory)
        for field, legacy in (("chunksize", True), ("chunk", False)):
            value = config.get(field)
            if value is None:
                continue
            size = parseChunkSize(value)
            if size is None:
                raise _ConfigError("%s: bad configuration %s=%s" % (
                    name, field, value))
            if size > 0:
                self.chunking = LEGACY_CHUNKS if legacy else CHUNKS
                self.chunkSize = size
            break
        try:
            self.exportTree = _yesNo(config.get("exporttree"))
            self.importTree = _yesNo(config.get("importtree"))
            self.annexObjects = self.exportTree and _yesNo(
                config.get("annexobjects"))
        except ValueError as e:
            raise _ConfigError("%s: bad yes/no value %s" % (name, e))
        if self.exportTree or self.importTree:
            # Exports and imports are never chunked.
            self.chunking, self.chunkSize = NO_CHUNKS, None

    def _refusal(self):
        """
        Why this remote does not take or drop content by key (git-annex's
        words), or L{None}.
        """
        if self.exportTree and not self.annexObjects:
            return ("remote is configured with exporttree=yes; use"
                    " `git-annex export` to store content on it")
        if self.importTree and not self.exportTree:
            return ("remote is configured with importtree=yes and without"
                    " exporttree=yes; cannot modify content stored on it")
        return None

    def _byKey(self):
        """
        Whether content is addressed by key at all.
        """
        return self._refusal() is None

    def _check(self):
        """
        @raise RepositoryUnavailable: closed, misconfigured, or the
            directory is not there.
        """
        if self._closed:
            raise RepositoryUnavailable("%s: closed" % (self.name,))
        if self._problem is not None:
            raise RepositoryUnavailable(self._problem)
        if not os.path.isdir(self.directory):
            raise RepositoryUnavailable(
                "%s: directory %s is not accessible" % (
                    self.name, self.directory))

    # -- layout -------------------------------------------------------------

    def _objectLocations(self, serialized):
        """
        The paths where content stored under the serialised key (a key or
        a chunk key) may be, most likely first.
        """
        top = self.directory
        name = keyFile(serialized)
        base = _withoutChunkFields(serialized)
        if self.annexObjects:
            return [os.path.join(top, ".git", "annex", "objects",
                                 *hashDirLower(base), name, name)]
        return [os.path.join(top, *hashDirLower(base), name, name),
                os.path.join(top, *hashDirMixed(base), name, name)]

    def _storeDir(self, serialized):
        name = keyFile(serialized)
        return os.path.join(self.directory,
                            *hashDirLower(_withoutChunkFields(serialized)),
                            name)

    def _tmpDir(self, serialized):
        return os.path.join(self.directory, "tmp", keyFile(serialized))

    def _existing(self, serialized):
        for path in self._objectLocations(serialized):
            if _fileSize(path) is not None:
                return path
        return None

    def _chunkLists(self, key, recorded):
        """
        The chunk-key lists to try, in git-annex's order (see
        L{annexd.annex.chunks.lookupOrder}), as C{(chunkSize, count)};
        C{None} stands for the unchunked object.
        """
        return lookupOrder(
            key, recorded,
            self.chunkSize if self.chunking == CHUNKS else None,
            chunked=self.chunking != NO_CHUNKS)

    def _chunkFiles(self, key, chunkSize, count):
        """
        The paths of every chunk of a chunking, or L{None} if one is
        missing.
        """
        paths = []
        for n in range(1, count + 1):
            path = self._existing(serializeKey(key, chunkSize, n))
            if path is None:
                return None
            paths.append(path)
        return paths

    def _legacyFiles(self, key):
        """
        The chunk files of a key stored by a legacy C{chunksize=} remote,
        or L{None} (C{Remote.Directory.LegacyChunked.withCheckedFiles}).
        """
        for base in self._objectLocations(serializeKey(key)):
            countFile = base + ".chunkcount"
            if os.path.isfile(countFile):
                try:
                    with open(countFile, "rb") as f:
                        text = f.read().strip()
                    count = int(text) if text.isdigit() else 0
                except OSError:
                    count = 0
                chunks = [base + ".chunk%d" % n for n in range(1, count + 1)]
                if chunks and all(os.path.isfile(c) for c in chunks):
                    return chunks
                return None
            chunks = []
            while os.path.isfile(base + ".chunk%d" % (len(chunks) + 1)):
                chunks.append(base + ".chunk%d" % (len(chunks) + 1))
            if chunks:
                return chunks
        return None

    async def _locate(self, key):
        """
        The files holding the content of C{key}, in order, or L{None}.
        """
        if not self._byKey():
            return None
        if self.annexObjects:
            path = self._existing(serializeKey(key))
            return None if path is None else [path]
        if self.chunking == LEGACY_CHUNKS:
            return self._legacyFiles(key)
        if self.chunking == NO_CHUNKS:
            # As git-annex: the unchunked object first, without reading
            # the chunk log.
            path = self._existing(serializeKey(key))
            if path is not None:
                return [path]
        recorded = await self._recordedChunks(key)
        for chunking in self._chunkLists(key, recorded):
            if chunking is None:
                path = self._existing(serializeKey(key))
                if path is not None:
                    return [path]
            else:
                paths = self._chunkFiles(key, *chunking)
                if paths is not None:
                    return paths
        return None

    # -- the chunk log --------------------------------------------------------

    def _findGitDir(self):
        if (self._gitDir is None and self.repoPath is not None
                and not self._warnedLog):
            try:
                self._gitDir = findGitDir(self.repoPath, self.environment)
            except Exception as e:
                self._warnLog("cannot find the gateway's git directory in"
                              " %s: %s" % (self.repoPath, e))
        return self._gitDir

    def _warnLog(self, text):
        if not self._warnedLog:
            self._warnedLog = True
            self._log.warn("{name}: chunk logs unavailable: {why}",
                           name=self.name, why=text)

    def _branchReader(self):
        if self._reader is None and not self._closed:
            gitDir = self._findGitDir()
            if gitDir is None:
                return None
            try:
                self._reader = BranchReader(gitDir, reactor=self.reactor,
                                            env=self.environment)
            except Exception as e:
                self._warnLog(str(e))
        return self._reader

    async def _recordedChunks(self, key):
        reader = self._branchReader()
        if reader is None:
            return []
        try:
            data = await reader.read(chunkLogPath(key))
        except Exception as e:
            self._warnLog(str(e))
            return []
        return parseChunkLog(data, self.uuid)

    def _chunkLogWriter(self):
        """
        The gateway's chunk log writer, or L{None} (made in the reactor
        thread, used from others).
        """
        if self._chunkLog is None:
            reader = self._branchReader()
            if reader is not None:
                self._chunkLog = ChunkLog(self._gitDir, reader=reader)
        return self._chunkLog

    def _recordChunks(self, writer, key, chunkSize, count):
        """
        Record a chunking in the gateway's journal (blocking; in a thread).

        @param writer: from L{_chunkLogWriter}.
        @return: L{None} if recorded, else why not.
        """
        if writer is None:
            return "no gateway repository to record it in"
        try:
            writer.recordSync(key, self.uuid, chunkSize, count)
        except Exception as e:
            return str(e) or e.__class__.__name__
        return None

    # -- threads ----------------------------------------------------------------

    def _inThread(self, f, *args):
        getPool = getattr(self.reactor, "getThreadPool", None)
        if getPool is None:
            return defer.maybeDeferred(f, *args)
        return threads.deferToThreadPool(self.reactor, getPool(), f, *args)

    # -- IRepository --------------------------------------------------------

    def checkPresent(self, key):
        return defer.Deferred.fromCoroutine(self._checkPresent(key))

    async def _checkPresent(self, key):
        self._check()
        return (await self._locate(key)) is not None

    def lockContent(self, key):
        # Special remotes cannot lock content.
        return defer.succeed(None)

    def getTimestamp(self):
        return defer.fail(ProtocolNotSupported(
            "%s is a special remote: no GETTIMESTAMP" % (self.name,)))

    def remove(self, key, before=None):
        return defer.Deferred.fromCoroutine(self._remove(key))

    async def _remove(self, key):
        self._check()
        refusal = self._refusal()
        if refusal is not None:
            if self.exportTree:
                refusal = ("dropping content from an export is not"
                           " supported; use `git annex export` to export a"
                           " tree that lacks the files you want to remove")
            else:
                refusal = ("dropping content from this remote is not"
                           " supported because it is configured with"
                           " importtree=yes")
            raise RepositoryError("%s: %s" % (self.name, refusal))
        serialized = serializeKey(key)
        if serialized in self._writing:
            raise RepositoryError("%s: %s is being stored" % (
                self.name, _text(key.raw)))
        recorded = []
        try:
            if self.annexObjects:
                for path in self._objectLocations(serialized):
                    if os.path.lexists(path):
                        _allowWrite(os.path.dirname(path))
                        os.unlink(path)
                    _removeEmptyParents(self.directory, os.path.dirname(path))
            else:
                for path in self._objectLocations(serialized):
                    # The key's directory: the object, or legacy chunks.
                    if _removeTree(os.path.dirname(path)):
                        _removeEmptyParents(
                            self.directory,
                            os.path.dirname(os.path.dirname(path)))
                recorded = await self._recordedChunks(key)
                for chunking in self._chunkLists(key, recorded):
                    if chunking is not None and self._removeChunks(
                            key, *chunking) and chunking not in recorded:
                        recorded.append(chunking)
        except OSError as e:
            self._check()
            self._log.warn("{name}: cannot remove {key}: {why}",
                           name=self.name, key=str(key), why=e)
            return Outcome(False)
        if recorded:
            writer = self._chunkLogWriter()
            for chunkSize in sorted({size for size, _ in recorded}):
                why = await self._inThread(self._recordChunks, writer, key,
                                           chunkSize, 0)
                if why is not None:
                    self._log.warn("{name}: cannot record the removal of"
                                   " the chunks of {key}: {why}",
                                   name=self.name, key=str(key), why=why)
        return Outcome((await self._locate(key)) is None)

    def _removeChunks(self, key, chunkSize, count):
        """
        Remove the chunks of a chunking (and any further ones).

        @return: whether any was there.
        """
        found = False
        n = 1
        while True:
            serialized = serializeKey(key, chunkSize, n)
            here = False
            for path in self._objectLocations(serialized):
                if _removeTree(os.path.dirname(path)):
                    here = True
                    _removeEmptyParents(
                        self.directory,
                        os.path.dirname(os.path.dirname(path)))
            found = found or here
            if n >= count and not here:
                return found
            n += 1

    def get(self, key, associatedFile, offset):
        return defer.Deferred.fromCoroutine(self._get(key, offset))

    async def _get(self, key, offset):
        self._check()
        paths = await self._locate(key)
        pieces = None
        if paths is not None:
            pieces = []
            for path in paths:
                size = _fileSize(path)
                if size is None:
                    pieces = None
                    break
                pieces.append((path, size))
        download = _Download(self, key, pieces, offset or 0)
        return download

    def put(self, key, associatedFile):
        return defer.Deferred.fromCoroutine(self._put(key))

    async def _put(self, key):
        self._check()
        refusal = self._refusal()
        if refusal is not None:
            raise RepositoryError("%s: %s" % (self.name, refusal))
        if (await self._locate(key)) is not None:
            return Outcome(True, alreadyHad=True)
        stage = self._stage(key)
        self._claim(stage)
        try:
            offset = stage.resumable()
            self._checkRoom(key, offset)
            verifier = Verifier(key, offset)
            if offset:
                await self._inThread(stage.feedPrefix, verifier, offset)
        except BaseException:
            self._release(stage)
            raise
        self.started += 1
        return _Upload(self, stage, verifier, offset)

    # -- storing ------------------------------------------------------------

    def _stage(self, key):
        if self.annexObjects:
            return _AnnexObjectStage(self, key)
        if self.chunking == CHUNKS and isStableKey(key):
            return _ChunkStage(self, key, self.chunkSize,
                               self._chunkLogWriter())
        if self.chunking == LEGACY_CHUNKS:
            return _LegacyStage(self, key, self.chunkSize)
        return _PlainStage(self, key)

    def _claim(self, stage):
        if stage.serialized in self._writing:
            raise RepositoryError(
                "%s: transfer of %s already in progress" % (
                    self.name, _text(stage.key.raw)))
        self._writing[stage.serialized] = stage

    def _release(self, stage):
        if self._writing.get(stage.serialized) is stage:
            del self._writing[stage.serialized]

    def _checkRoom(self, key, offset):
        if key.size is None:
            return
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < key.size - offset:
            raise RepositoryError(
                "%s: not enough free disk space in %s (%d bytes needed,"
                " %d free)" % (self.name, self.directory,
                               key.size - offset, free))

    def _commit(self, stage, verifier, valid):
        """
        The end of a store: rename the staged content into place if it is
        complete and matches its key, else remove it.  Runs in a thread.

        @return: C{(stored, why not, warning)}.
        """
        verdict = verifier.verdict()
        if valid is False or verdict is False or stage.error is not None:
            why = ("the sender said the content is invalid"
                   if valid is False else stage.error
                   if stage.error is not None else
                   "the content does not match its key")
            stage.discard()
            return False, why, None
        try:
            warning = stage.commit()
        except OSError as e:
            stage.discard()
            return False, "storing failed: %s" % (e,), None
        return True, None, warning

    def _committed(self, result, stage):
        """
        Log what L{_commit} did (in the reactor thread).

        @return: the L{Outcome}.
        """
        stored, why, warning = result
        if why is not None:
            self._log.warn("{name}: not storing {key}: {why}",
                           name=self.name, key=str(stage.key), why=why)
        if warning is not None:
            self._log.warn("{name}: {key}: {why}", name=self.name,
                           key=str(stage.key), why=warning)
        return Outcome(stored)

    def storeFile(self, key, path):
        return defer.Deferred.fromCoroutine(self._storeFile(key, path))

    async def _storeFile(self, key, path):
        self._check()
        refusal = self._refusal()
        if refusal is not None:
            raise RepositoryError("%s: %s" % (self.name, refusal))
        if (await self._locate(key)) is not None:
            return Outcome(True, alreadyHad=True)
        stage = self._stage(key)
        self._claim(stage)
        self.started += 1
        self._active.add(stage)
        try:
            self._checkRoom(key, 0)
            result = await self._inThread(self._copyIn, stage, path)
            return self._committed(result, stage)
        finally:
            self._active.discard(stage)
            self._release(stage)

    def _copyIn(self, stage, path):
        """
        Copy the file C{path} into C{stage}, checking it, and commit it
        (in a thread).
        """
        verifier = Verifier(stage.key)
        try:
            stage.start(0)
            with open(path, "rb") as f:
                while True:
                    data = f.read(CHUNK_SIZE)
                    if not data:
                        break
                    verifier.update(data)
                    stage.write(data)
        except OSError as e:
            stage.error = stage.error or "cannot copy %s into %s: %s" % (
                path, self.directory, e)
        stage.close()
        return self._commit(stage, verifier, None)

    # -- life ---------------------------------------------------------------

    def close(self):
        """
        Stop serving: later requests fail; uploads in progress are
        abandoned (their temporary files are kept for a resume).

        @return: a Deferred firing when done.
        """
        self._closed = True
        for transfer in list(self._active):
            abort = getattr(transfer, "abortTransfer", None)
            if abort is not None:
                abort("%s closed" % (self.name,))
        reader, self._reader = self._reader, None
        if reader is not None:
            return reader.close()
        return defer.succeed(None)

    def status(self):
        """
        The node's state, in the shape of
        L{annexd.nodes.pool.SessionPool.status}: C{busy} counts the
        transfers in progress, C{started} those started; C{up} says whether
        the directory is there.
        """
        error = None
        try:
            self._check()
        except RepositoryUnavailable as e:
            error = str(e)
        return {
            "name": self.name,
            "uuid": _text(self.uuid),
            "up": error is None,
            "idle": 0,
            "busy": len(self._active),
            "started": self.started,
            "error": error,
            "retryIn": None,
            "maxSessions": self.maxSessions,
        }


class _ConfigError(Exception):
    pass


def _withoutChunkFields(serialized):
    sep = serialized.find(b"--")
    if sep < 0:
        return serialized
    parts = serialized[:sep].split(b"-")
    kept = [parts[0]] + [
        p for p in parts[1:]
        if not (p[:1] in (b"S", b"C") and p[1:].isdigit())]
    return b"-".join(kept) + serialized[sep:]


# ---------------------------------------------------------------- stages

class _Stage:
    """
    Where the bytes of one store go before they are renamed into place: a
    sequence of pieces (temporary files), each at most C{limit} bytes
    (L{None}: one piece).  Subclasses say where pieces are and how they
    are committed.

    @ivar written: bytes in the pieces (the resumed prefix included).
    @ivar error: why the store cannot succeed (a write failed), or L{None}.
    """

    limit = None

    def __init__(self, node, key):
        self.node = node
        self.key = key
        self.serialized = serializeKey(key)
        self.top = node.directory
        self.written = 0
        self.error = None
        self._index = 0         # 1-based index of the open piece, 0: none
        self._pieceLength = 0   # bytes in the open piece
        self._fd = None

    # Subclasses: piecePath(n) -> path; pieceDir(n) -> its own directory,
    # created below the top; commit().

    def pieceDir(self, n):
        return os.path.dirname(self.piecePath(n))

    def resumable(self):
        """
        How many bytes earlier attempts left in the pieces, in order (the
        offset to resume from).
        """
        total = 0
        n = 1
        while True:
            size = _fileSize(self.piecePath(n))
            if size is None:
                return total
            if self.limit is not None and size > self.limit:
                return 0
            total += size
            if self.limit is None or size < self.limit:
                return total
            n += 1

    def feedPrefix(self, verifier, offset):
        """
        Feed the first C{offset} bytes of the pieces to C{verifier}
        (blocking: in a thread).
        """
        left = offset
        n = 1
        while left > 0:
            with open(self.piecePath(n), "rb") as f:
                while left > 0:
                    data = f.read(min(CHUNK_SIZE, left))
                    if not data:
                        break
                    verifier.feedPrefix(data)
                    left -= len(data)
            n += 1
        verifier.prefixFed()

    def start(self, offset):
        """
        Open the piece where byte C{offset} goes (earlier pieces are
        complete), cutting it there.
        """
        self.written = offset
        if self.limit is None:
            n, inPiece = 1, offset
        else:
            n, inPiece = offset // self.limit + 1, offset % self.limit
            if inPiece == 0 and n > 1:
                # The last complete piece stays closed until more comes.
                n, inPiece = n - 1, self.limit
        self._open(n, inPiece)

    def _open(self, n, keep):
        _mkdirsUnder(self.top, self.pieceDir(n))
        path = self.piecePath(n)
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except PermissionError:
            # git-annex creates its temporary files read-only.
            _allowWrite(path)
            fd = os.open(path, flags, 0o644)
        try:
            os.ftruncate(fd, keep)
            os.lseek(fd, keep, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._index = n
        self._pieceLength = keep

    def write(self, data):
        if self.error is not None:
            return
        view = memoryview(data)
        try:
            while view:
                if self.limit is not None and self._pieceLength >= self.limit:
                    self._closePiece()
                    self._open(self._index + 1, 0)
                room = len(view) if self.limit is None else min(
                    len(view), self.limit - self._pieceLength)
                n = os.write(self._fd, view[:room])
                view = view[n:]
                self._pieceLength += n
                self.written += n
        except OSError as e:
            self.error = "cannot write to %s: %s" % (
                self.node.directory, e.strerror or e)
            self.close()

    def _closePiece(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self):
        try:
            self._closePiece()
        except OSError as e:
            if self.error is None:
                self.error = str(e)

    @property
    def pieces(self):
        """
        How many pieces the content has.
        """
        return max(1, self._index)

    def discard(self):
        """
        Remove what was staged (subclasses remove their files).
        """
        self.close()


class _PlainStage(_Stage):
    """
    An unchunked object: C{DIR/tmp/KEYFILE/KEYFILE}.
    """

    def piecePath(self, n):
        name = keyFile(self.serialized)
        return os.path.join(self.node._tmpDir(self.serialized), name)

    def commit(self):
        self.close()
        _fsync(self.piecePath(1))
        _finalizeDir(self.top, self.node._tmpDir(self.serialized),
                     self.node._storeDir(self.serialized))

    def discard(self):
        self.close()
        try:
            _removeTree(self.node._tmpDir(self.serialized))
        except OSError:
            pass


class _ChunkStage(_Stage):
    """
    Chunks of C{chunk=SIZE}: chunk key n at C{DIR/tmp/CHUNKKEYFILE/
    CHUNKKEYFILE}, each renamed into place at the end, in order, then the
    chunk log.
    """

    def __init__(self, node, key, chunkSize, logWriter):
        _Stage.__init__(self, node, key)
        self.limit = chunkSize
        self._logWriter = logWriter

    def _chunk(self, n):
        return serializeKey(self.key, self.limit, n)

    def pieceDir(self, n):
        return self.node._tmpDir(self._chunk(n))

    def piecePath(self, n):
        return os.path.join(self.pieceDir(n), keyFile(self._chunk(n)))

    def _removeFrom(self, n):
        """
        Remove the temporary chunks from number C{n} on.
        """
        while os.path.lexists(self.pieceDir(n)):
            try:
                _removeTree(self.pieceDir(n))
            except OSError:
                return
            n += 1

    def commit(self):
        """
        @return: a warning, or L{None}.
        """
        self.close()
        count = self.pieces
        for n in range(1, count + 1):
            _fsync(self.piecePath(n))
        for n in range(1, count + 1):
            _finalizeDir(self.top, self.pieceDir(n),
                         self.node._storeDir(self._chunk(n)))
        # Chunks past the end, from an older longer attempt.
        self._removeFrom(count + 1)
        why = self.node._recordChunks(self._logWriter, self.key, self.limit,
                                      count)
        if why is None:
            return None
        if self.key.size is None:
            # git-annex could not find these chunks without the log.
            for n in range(1, count + 1):
                _removeTree(self.node._storeDir(self._chunk(n)))
            raise OSError(errno.EIO, "cannot record the chunk log: %s" % (
                why,))
        return ("stored in %d chunks, but the chunk log could not be"
                " recorded (%s): git-annex finds them while the remote's"
                " chunk size stays %d" % (count, why, self.limit))

    def discard(self):
        self.close()
        self._removeFrom(1)


class _LegacyStage(_Stage):
    """
    Legacy C{chunksize=SIZE}: C{DIR/tmp/KEYFILE/KEYFILE.chunkN} and
    C{KEYFILE.chunkcount}, the directory renamed into place at the end.
    """

    def __init__(self, node, key, chunkSize):
        _Stage.__init__(self, node, key)
        self.limit = chunkSize

    def pieceDir(self, n):
        return self.node._tmpDir(self.serialized)

    def piecePath(self, n):
        return os.path.join(self.pieceDir(n), "%s.chunk%d" % (
            keyFile(self.serialized), n))

    def commit(self):
        self.close()
        count = self.pieces
        tmp = self.pieceDir(1)
        name = keyFile(self.serialized)
        for n in range(1, count + 1):
            _fsync(self.piecePath(n))
        for entry in os.listdir(tmp):
            # Chunks past the end, from an older longer attempt.
            if entry.startswith(name + ".chunk") and entry[
                    len(name) + 6:].isdigit() and int(
                    entry[len(name) + 6:]) > count:
                os.unlink(os.path.join(tmp, entry))
        with open(os.path.join(tmp, name + ".chunkcount"), "w") as f:
            f.write("%d" % count)
        _finalizeDir(self.top, tmp, self.node._storeDir(self.serialized))

    def discard(self):
        self.close()
        try:
            _removeTree(self.pieceDir(1))
        except OSError:
            pass


class _AnnexObjectStage(_Stage):
    """
    An object of an C{exporttree=yes annexobjects=yes} remote: written to
    C{KEYFILE.annexd-tmp} next to C{DIR/.git/annex/objects/.../KEYFILE/
    KEYFILE}, then renamed.
    """

    def _dest(self):
        return self.node._objectLocations(self.serialized)[0]

    def piecePath(self, n):
        return self._dest() + ANNEXOBJECT_TMP_SUFFIX

    def commit(self):
        self.close()
        tmp = self.piecePath(1)
        _fsync(tmp)
        _preventWrite(tmp)
        dest = self._dest()
        if os.path.lexists(dest):
            _allowWrite(os.path.dirname(dest))
        os.rename(tmp, dest)

    def discard(self):
        self.close()
        path = self.piecePath(1)
        try:
            os.unlink(path)
        except OSError:
            pass
        _removeEmptyParents(self.top, os.path.dirname(path))


# ---------------------------------------------------------------- upload

@implementer(IConsumer)
class _Sink:
    """
    The consumer of an upload: writes to the stage as the bytes come,
    hashing them.

    @ivar done: fires with L{length} once every byte is written.
    """

    def __init__(self, upload, length):
        self._upload = upload
        self.length = length
        self.written = 0
        self.overrun = False
        self.producer = None
        self.done = defer.Deferred()
        if not length:
            self.done.callback(0)

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        if not streaming:
            while self.producer is producer:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        if self._upload._over:
            # Late bytes of a finished or abandoned upload.
            return
        if self.written + len(data) > self.length:
            self.overrun = True
            data = data[:max(0, self.length - self.written)]
        self.written += len(data)
        if data:
            self._upload._verifier.update(data)
            self._upload._stage.write(data)
        if self.written >= self.length and not self.done.called:
            self.done.callback(self.length)


@implementer(IUpload)
class _Upload:
    """
    An accepted PUT to a L{DirectoryNode}.
    """

    def __init__(self, node, stage, verifier, offset):
        self._node = node
        self._stage = stage
        self._verifier = verifier
        self.offset = offset
        self._sink = None
        self._over = False
        node._active.add(self)

    def receive(self, length):
        if self._sink is not None:
            raise RuntimeError("content already announced")
        if self._over:
            raise RuntimeError("the upload is over")
        try:
            self._stage.start(self.offset)
        except OSError as e:
            raise RepositoryError("%s: cannot write to %s: %s" % (
                self._node.name, self._node.directory, e.strerror or e))
        self._sink = _Sink(self, length)
        return self._sink

    def finish(self, valid):
        if self._over:
            return defer.succeed(Outcome(False))
        self._over = True
        self._node._active.discard(self)
        stage, sink = self._stage, self._sink
        if sink is None:
            # No content came: nothing to store (what an earlier attempt
            # left stays for a resume).
            self._node._release(stage)
            return defer.succeed(Outcome(False))
        stage.close()
        if sink.written < sink.length or sink.overrun:
            stage.error = stage.error or "got %d of %d bytes" % (
                sink.written, sink.length)
        d = self._node._inThread(self._node._commit, stage, self._verifier,
                                 valid)
        d.addCallback(self._node._committed, stage)

        def done(result):
            self._node._release(stage)
            return result
        return d.addBoth(done)

    def dataPresent(self):
        if self._over:
            return defer.succeed(Outcome(False))
        self._over = True
        self._node._active.discard(self)
        self._node._release(self._stage)
        return self._node.checkPresent(self._stage.key).addCallback(Outcome)

    def abort(self, reason):
        self.abortTransfer(reason)

    def abortTransfer(self, reason):
        if self._over:
            return
        self._over = True
        self._node._active.discard(self)
        stage = self._stage
        stage.close()
        if stage.written == 0:
            stage.discard()
        # Else the pieces stay: the next PUT of the key resumes from them.
        self._node._release(stage)


# ---------------------------------------------------------------- download

@implementer(IDownload, IPushProducer)
class _Download:
    """
    Content on its way out of a L{DirectoryNode}: a push producer that reads
    the content's files in order, L{CHUNK_SIZE} bytes at a time, and gives
    the reactor a turn after every L{TURN_BYTES}.

    @ivar length: bytes to deliver (0 when the content is absent).
    @ivar present: whether the content was found.
    @ivar sent: bytes written so far.
    """

    def __init__(self, node, key, pieces, offset):
        self._node = node
        self.key = key
        self.present = pieces is not None
        total = sum(size for _, size in pieces or ())
        self.length = max(0, total - offset) if self.present else 0
        self.sent = 0
        self._pieces = list(pieces or ())
        self._offset = offset
        self._fd = None
        self._pieceLeft = 0
        self._next = 0
        self._consumer = None
        self._deferred = None
        self._paused = False
        self._stopped = False
        self._call = None
        self._writing = False
        self._over = False
        if self.present:
            node.started += 1
            node._active.add(self)
            self._seek(offset)

    def _seek(self, offset):
        """
        Skip the pieces that end before C{offset}.
        """
        while self._next < len(self._pieces):
            size = self._pieces[self._next][1]
            if offset < size:
                break
            offset -= size
            self._next += 1
        self._skip = offset

    def _openNext(self):
        path, size = self._pieces[self._next]
        self._next += 1
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        if self._skip:
            os.lseek(fd, self._skip, os.SEEK_SET)
        self._pieceLeft = size - self._skip
        self._skip = 0
        self._fd = fd

    def _closeFile(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _end(self):
        self._closeFile()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self._over:
            self._over = True
            self._node._active.discard(self)

    def deliver(self, consumer):
        if self._deferred is not None:
            raise RuntimeError("deliver called twice")
        self._deferred = defer.Deferred()
        if not self.present:
            self._end()
            self._deferred.callback(False)
            return self._deferred
        if not self.length:
            self._end()
            self._deferred.callback(True)
            return self._deferred
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._schedule()
        return self._deferred

    def _schedule(self):
        if (self._call is None and not self._paused and not self._stopped
                and self._consumer is not None):
            self._call = self._node.reactor.callLater(0, self._produce)

    def _produce(self):
        self._call = None
        if self._writing:
            return
        self._writing = True
        budget = TURN_BYTES
        try:
            while (not self._paused and not self._stopped and budget > 0
                   and self.sent < self.length):
                if self._fd is None or self._pieceLeft == 0:
                    self._closeFile()
                    self._openNext()
                data = os.read(self._fd, min(CHUNK_SIZE, self._pieceLeft,
                                             self.length - self.sent))
                if not data:
                    raise OSError(errno.EIO, "%s shrank while being read" % (
                        self._pieces[self._next - 1][0],))
                self._pieceLeft -= len(data)
                self.sent += len(data)
                budget -= len(data)
                self._consumer.write(data)
        except Exception as e:
            self._writing = False
            self._fail(e)
            return
        self._writing = False
        if self._stopped or self._consumer is None:
            return
        if self.sent >= self.length:
            consumer, self._consumer = self._consumer, None
            self._end()
            consumer.unregisterProducer()
            self._deferred.callback(True)
        else:
            self._schedule()

    def _fail(self, error):
        consumer, self._consumer = self._consumer, None
        self._end()
        if consumer is not None:
            consumer.unregisterProducer()
        if not self._deferred.called:
            self._deferred.errback(RepositoryUnavailable(
                "%s: reading %s failed after %d of %d bytes: %s" % (
                    self._node.name, _text(self.key.raw), self.sent,
                    self.length, error)))

    # -- IPushProducer ------------------------------------------------------

    def pauseProducing(self):
        self._paused = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def resumeProducing(self):
        self._paused = False
        self._schedule()

    def stopProducing(self):
        if self._stopped:
            return
        self._stopped = True
        consumer, self._consumer = self._consumer, None
        self._end()
        if consumer is not None and not self._deferred.called:
            self._deferred.errback(ConnectionLost(
                "the consumer stopped the download after %d of %d bytes" % (
                    self.sent, self.length)))

    # -- IDownload ----------------------------------------------------------

    def finish(self, ok):
        self._stopped = True
        self._consumer = None
        self._end()
        return defer.succeed(None)
