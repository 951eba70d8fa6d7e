# -*- test-case-name: tests.test_externalnode -*-
"""
External special remotes as nodes: annexd drives a remote's program
(C{git-annex-remote-NAME}) with git-annex's external special remote
protocol, as git-annex does (doc/design/external_special_remote_protocol,
Remote/External.hs).

The protocol, as annexd speaks it
=================================

The program is started in the gateway repository (its working directory,
with C{GIT_DIR}, and C{GIT_WORK_TREE} for a non-bare repository, in its
environment, as git-annex's C{propGitEnv} does).  It speaks first,
C{VERSION 1} or C{VERSION 2} (identical; anything else gets C{ERROR
unsupported VERSION} and the program is not used).  annexd sends
C{EXTENSIONS INFO GETGITREMOTENAME}, the extensions it implements (not
C{ASYNC}, C{TRANSFER-RETRIEVE-URL}, C{CHECKPRESENT-URL},
C{UNAVAILABLERESPONSE} nor C{DELEGATE}); the program answers with its own
C{EXTENSIONS} list (or C{UNSUPPORTED-REQUEST}); asking for one annexd did
not offer makes it unusable, as in git-annex.  Then C{PREPARE}, answered
C{PREPARE-SUCCESS} or C{PREPARE-FAILURE}.  A program that cannot be
started, or whose start-up fails, marks the node down with the back-off of
L{annexd.nodes.pool.SessionPool}.

Each program process does one request at a time; up to C{maxProcesses} run
at once and idle ones are reused (closed after C{idleTimeout} seconds).
Requests: C{TRANSFER STORE|RETRIEVE KEY FILE} (C{TRANSFER-SUCCESS} /
C{TRANSFER-FAILURE}), C{CHECKPRESENT KEY} (C{-SUCCESS}, C{-FAILURE},
C{-UNKNOWN}: an error), C{REMOVE KEY}, and C{GETORDERED} (asked once, at the
first download: C{ORDERED} means the program writes a retrieved file from
its first byte to its last, and only then does annexd stream the file while
it grows, as git-annex's proxy does; any other answer means it does not).
While a request runs the program may ask: C{GETCONFIG}/C{SETCONFIG} (the
remote.log configuration; changes are kept in memory, for that process, as
in git-annex), C{GETCREDS} (from the environment variables
C{<uuid>-<setting>login}/C{password}, then credentials a C{SETCREDS} gave
(kept in memory), then the file C{annex/creds/<uuid>-<setting>} of the
gateway, then base64 creds embedded in the configuration), C{GETUUID},
C{GETGITDIR} (absolute), C{GETGITREMOTENAME}, C{DIRHASH},
C{DIRHASH-LOWER}, C{GETSTATE} (what a C{SETSTATE} stored, kept in memory,
else the remote state log of the git-annex branch: annexd never writes
that log), C{GETURLS} (urls a C{SETURL*}/C{SETURI*} recorded, kept in
memory, and the url log of the branch), C{GETWANTED} (the branch's
preferred content; C{SETWANTED} is ignored), C{PROGRESS}, C{DEBUG},
C{INFO}.  An C{ERROR} from the program fails the request (the program is
not used again); a line that is not part of the protocol, or a reply that
does not fit the request, gets C{ERROR} back, ends the program and fails
the request (git-annex gives up the same way).  A program that exits fails
its request with L{RepositoryUnavailable}, which carries the end of what
it wrote on stderr.

Content
=======

A program takes and gives content as files, always named by the key (as
git-annex does: C{git-annex-remote-rclone}, for one, stores a file under
its own name), in a directory of their own in C{spoolDirectory} that is
removed once the transfer is over; paths inside the repository are sent
relative to it, as git-annex sends them.

Uploads (L{ExternalNode.put}) spool the content to one
L{annexd.router.spool.Spool} file while a L{Verifier} checks it; the spool
is refused before any byte is written when it would leave less than
C{annex.diskreserve} free.  Content whose verdict is not L{False} is stored
with C{TRANSFER STORE}.  L{ExternalNode.storeFile} (clusters spool once
for many such nodes) stores a file the caller made, through a hard link
named by the key (or a copy where no link can be made).

Downloads (L{ExternalNode.get}) run C{TRANSFER RETRIEVE} into a file of
their own.  The download is handed out as soon as the program has written
a first byte past the offset when it says C{ORDERED} and the key has a
size (it is then streamed while the file grows, woken by inotify where
there is one, with a bounded poll besides); otherwise once the file is
complete.  A C{TRANSFER-FAILURE} before that is a download of length 0
whose C{deliver} says L{False} (the node lacks the content); after it, the
stream ends short and C{deliver} says L{False}.  An offset is honoured by
retrieving the content and skipping its first bytes: the protocol has no
way to retrieve part of a key, so resuming saves nothing, except with
chunks, whose first ones are not retrieved at all.

Chunks (C{chunk=} in the configuration) are handled as git-annex does it
(Remote/Helper/Chunked.hs): content of a stable key is stored as chunk keys
C{KEY-S<size>-C<n>} (the chunk files are cut from the spool one at a time)
and recorded in the chunk log of the gateway's git-annex branch (its
journal, like annexd's location logs); content is looked for as the
recorded chunk lists, the unchunked key, and the chunks the configured
size would make.  C{chunksize=} (old style) stores unchunked, as git-annex
does for external remotes.  Encryption is not supported (the router does
not make such nodes).

Not supported: export/import remotes, ASYNC, remotes that answer with
urls or delegates, C{readonly=true} (url-only) remotes, content locks
(L{ExternalNode.lockContent} says the content cannot be locked, as
git-annex's proxy does) and timestamps.
"""

import base64
import dataclasses
import errno
import hashlib
import os
import shutil
import tempfile
from collections import deque

from twisted.internet import defer, error as ierror, threads
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from annexd.annex import logs
from annexd.annex.branch import BranchReader
from annexd.annex.chunks import (
    ChunkLog, chunkCount, chunkKey, chunkLogPath, isStableKey, lookupOrder,
    parseChunkLog, parseChunkSize)
from annexd.annex.location import hashDirLower, keyFileName
from annexd.annex.verify import Verifier
from annexd.interfaces import (
    IDownload, IRepository, IStoresFiles, IUpload, Outcome,
    ProtocolNotSupported, RepositoryError, RepositoryUnavailable)
from annexd.nodes.pool import IDLE_TIMEOUT, NodeHealth
from annexd.nodes.process import childEnvironment
from annexd.protocol.keys import InvalidKey, Key
from annexd.router.spool import Spool, SpoolRefused, checkRoom

try:
    from twisted.internet import inotify as _inotify
    from twisted.python.filepath import FilePath
except ImportError:  # not Linux
    _inotify = None

__all__ = ["ExternalNode", "hashDirMixed", "hashDirLower"]

#: The protocol versions annexd speaks (git-annex's two, which are the
#: same protocol).
VERSIONS = (1, 2)

#: The extensions annexd implements and offers.
EXTENSIONS = (b"INFO", b"GETGITREMOTENAME")

#: How much of a program's stderr is kept for error messages.
STDERR_KEEP = 4096

#: Seconds a program may take to exit once asked to (stdin closed).
EXIT_GRACE = 5.0

#: Seconds to wait, after a program exited, for the end of its output
#: (a child of it may hold the pipes open).
DRAIN_GRACE = 1.0

#: Seconds a program may take from its start to PREPARE-SUCCESS.
STARTUP_TIMEOUT = 120.0

#: The longest protocol line accepted.
MAX_LINE = 1024 * 1024

#: Bytes read from a retrieved file per write to the consumer.
READ_SIZE = 256 * 1024

#: Reads per reactor turn before the next ones are scheduled.
READS_PER_TURN = 8

#: Seconds between looks at a growing file without inotify.
POLL_INTERVAL = 0.05

#: Seconds between looks at a growing file with inotify (a safety net).
WATCH_POLL_INTERVAL = 0.5

#: Messages the program may send while a request runs; they are answered
#: (or noted) and the request goes on.
_REMOTE_REQUESTS = frozenset([
    b"VERSION", b"PROGRESS", b"DIRHASH", b"DIRHASH-LOWER", b"SETCONFIG",
    b"GETCONFIG", b"SETCREDS", b"GETCREDS", b"GETUUID", b"GETGITDIR",
    b"GETGITREMOTENAME", b"SETWANTED", b"GETWANTED", b"SETSTATE",
    b"GETSTATE", b"SETURLPRESENT", b"SETURLMISSING", b"SETURIPRESENT",
    b"SETURIMISSING", b"GETURLS", b"DEBUG", b"INFO"])

#: Replies of the protocol (to tell a misplaced reply from an unknown line).
_REPLIES = frozenset([
    b"EXTENSIONS", b"PREPARE-SUCCESS", b"PREPARE-FAILURE",
    b"TRANSFER-SUCCESS", b"TRANSFER-FAILURE", b"TRANSFER-RETRIEVE-URL",
    b"CHECKPRESENT-SUCCESS", b"CHECKPRESENT-FAILURE",
    b"CHECKPRESENT-UNKNOWN", b"CHECKPRESENT-URL", b"REMOVE-SUCCESS",
    b"REMOVE-FAILURE", b"COST", b"AVAILABILITY", b"ORDERED", b"UNORDERED",
    b"INITREMOTE-SUCCESS", b"INITREMOTE-FAILURE", b"CLAIMURL-SUCCESS",
    b"CLAIMURL-FAILURE", b"CHECKURL-CONTENTS", b"CHECKURL-MULTI",
    b"CHECKURL-FAILURE", b"WHEREIS-SUCCESS", b"WHEREIS-FAILURE", b"CONFIG",
    b"CONFIGEND", b"INFOFIELD", b"INFOVALUE", b"INFOEND",
    b"EXPORTSUPPORTED-SUCCESS", b"EXPORTSUPPORTED-FAILURE",
    b"REMOVEEXPORTDIRECTORY-SUCCESS", b"REMOVEEXPORTDIRECTORY-FAILURE",
    b"RENAMEEXPORT-SUCCESS", b"RENAMEEXPORT-FAILURE", b"DELEGATE",
    b"UNSUPPORTED-REQUEST"])

#: The characters of git-annex's mixed-case directory hash.
_MIXED = b"0123456789zqjxkmvwgpfZQJXKMVWGPF"


# -- keys -----------------------------------------------------------------------------


def _asKey(key):
    if isinstance(key, Key):
        return key
    try:
        return Key.parse(key)
    except InvalidKey as e:
        raise RepositoryError("invalid key %r: %s" % (key[:200], e))


def _nonChunk(key):
    """
    The serialised key without its chunk fields (what git-annex hashes for
    directory hashes and names log files after).
    """
    if isinstance(key, bytes):
        try:
            key = Key.parse(key)
        except InvalidKey:
            return key
    if key.chunkSize is None and key.chunkNumber is None:
        return key.raw
    return dataclasses.replace(key, chunkSize=None,
                               chunkNumber=None).serialize()


def hashDirMixed(key):
    """
    git-annex's mixed-case directory hash of a key (C{DIRHASH}): C{"f9/Mw/"}.

    @type key: L{bytes} or L{Key}
    @rtype: L{str}
    """
    digest = hashlib.md5(_nonChunk(key)).digest()
    word = int.from_bytes(digest[:4], "little")
    chars = [_MIXED[(word >> (6 * i)) & 31] for i in range(8)]
    swapped = []
    for i in range(0, 8, 2):
        swapped += [chars[i + 1], chars[i]]
    text = bytes(swapped[:4]).decode("ascii")
    return "%s/%s/" % (text[:2], text[2:4])


def _logPath(key, extension):
    """
    The branch file of a key's log (C{.log.cnk}, C{.log.rmt}, C{.log.web}).
    """
    base = _nonChunk(key)
    return hashDirLower(base) + os.fsdecode(keyFileName(base) + extension)


@dataclasses.dataclass(frozen=True)
class _Piece:
    """
    One key to transfer for some content: the unchunked key, or a chunk.

    @ivar start: where its bytes start in the content.
    @ivar size: how many bytes it has, when known.
    """

    key: Key
    start: int
    size: int | None


def _pieces(key, chunkSize, count):
    """
    The chunks of C{key} stored C{chunkSize} bytes each, C{count} of them.
    """
    pieces = []
    for number in range(1, count + 1):
        start = (number - 1) * chunkSize
        size = chunkSize
        if number == count:
            size = None if key.size is None else max(0, key.size - start)
        pieces.append(_Piece(chunkKey(key, chunkSize, number), start, size))
    return pieces


# -- the program ----------------------------------------------------------------------


class _Malformed(Exception):
    """
    A reply whose parameters do not fit the request.
    """


class _Program(ProcessProtocol):
    """
    One process of an external special remote program.

    @ivar gone: L{None} while it can be read from; else the
        L{RepositoryUnavailable} every read fails with.
    @ivar broken: L{None} while it may be reused; else why not.
    @ivar exited: fires once the process has exited.
    @ivar ended: fires once it has exited and its pipes are closed.
    @ivar config: settings its C{SETCONFIG}s changed.
    """

    def __init__(self, node, executable):
        self.node = node
        self.executable = executable
        self.program = os.path.basename(executable)
        self.stderr = b""
        self.gone = None
        self.broken = None
        self.exited = defer.Deferred()
        self.ended = defer.Deferred()
        self.config = {}
        self.extensions = ()
        self.progress = 0
        self._buffer = b""
        self._lines = deque()
        self._waiter = None
        self._exitReason = None
        self._drainTimer = None
        self._killTimer = None
        #: the process has ended (exited, pipes closed)
        self.over = False

    def __repr__(self):
        pid = getattr(self.transport, "pid", None)
        return "<_Program %s pid %s>" % (self.program, pid)

    # -- process events -----------------------------------------------------------

    def outReceived(self, data):
        self._buffer += data
        if b"\n" in self._buffer:
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._lines.append(line[:-1] if line.endswith(b"\r")
                                   else line)
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
            self.abandon("%s: %s sent a line longer than %d bytes" % (
                self.node.name, self.program, MAX_LINE))
        self._wake()

    def errReceived(self, data):
        self.stderr = (self.stderr + data)[-STDERR_KEEP:]
        self.node._log.debug("{name}: {program}: {text}",
                             name=self.node.name, program=self.program,
                             text=data.decode("utf-8", "replace").rstrip())

    def processExited(self, reason):
        self._exitReason = reason
        if not self.exited.called:
            self.exited.callback(None)
        if not self.ended.called and self._drainTimer is None:
            self._drainTimer = self.node._clock.callLater(
                DRAIN_GRACE, self._closePipes)

    def _closePipes(self):
        self._drainTimer = None
        try:
            self.transport.loseConnection()
        except Exception:
            pass

    def processEnded(self, reason):
        self.over = True
        if self._exitReason is None:
            self._exitReason = reason
        for timer in (self._drainTimer, self._killTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._drainTimer = self._killTimer = None
        if self.gone is None:
            self.gone = RepositoryUnavailable(self.describeEnd())
        if self.broken is None:
            self.broken = "ended"
        self._wake()
        if not self.exited.called:
            self.exited.callback(None)
        self.ended.callback(None)

    def describeEnd(self):
        """
        How the program ended, with the end of its stderr.
        """
        detail = self.stderr.decode("utf-8", "replace").strip()
        how = "ended"
        value = getattr(self._exitReason, "value", None)
        if isinstance(value, ierror.ProcessTerminated):
            how = ("was killed by signal %d" % value.signal
                   if value.signal is not None
                   else "exited with status %s" % value.exitCode)
        elif isinstance(value, ierror.ProcessDone):
            how = "exited"
        return "%s: %s %s%s" % (self.node.name, self.program, how,
                                ": " + detail if detail else "")

    # -- reading and writing --------------------------------------------------------

    def _wake(self):
        waiter = self._waiter
        if waiter is None:
            return
        if self._lines:
            self._waiter = None
            waiter.callback(self._lines.popleft())
        elif self.gone is not None:
            self._waiter = None
            waiter.errback(self.gone)

    def _cancelRead(self, d):
        if self._waiter is d:
            self._waiter = None

    def readLine(self):
        """
        @return: a Deferred firing with the next line (without its end), or
            failing with L{gone} once there is none to come.
        """
        d = defer.Deferred(self._cancelRead)
        self._waiter = d
        self._wake()
        return d

    def send(self, line):
        if self.gone is None and self.transport is not None:
            self.transport.write(line + b"\n")

    # -- ending ------------------------------------------------------------------------

    def stop(self):
        """
        Ask it to exit (close its stdin); kill it if it does not.
        """
        if self.broken is None:
            self.broken = "stopped"
        if self.over or self.transport is None:
            return
        try:
            self.transport.closeStdin()
        except Exception:
            pass
        if self._killTimer is None:
            self._killTimer = self.node._clock.callLater(EXIT_GRACE,
                                                         self._killLate)

    def _killLate(self):
        self._killTimer = None
        self.kill()

    def kill(self):
        try:
            self.transport.signalProcess("KILL")
        except (ierror.ProcessExitedAlready, OSError, AttributeError):
            pass

    def retire(self, why):
        """
        Stop using it (reads fail with C{why}) and let it exit: its stdin is
        closed, and it is killed if it does not exit soon.
        """
        if self.gone is None:
            self.gone = RepositoryUnavailable(why)
        if self.broken is None:
            self.broken = why
        self._wake()
        self.stop()

    def abandon(self, why):
        """
        Stop using it at once (reads fail with C{why}) and kill it.
        """
        if self.gone is None:
            self.gone = RepositoryUnavailable(why)
        if self.broken is None:
            self.broken = why
        self._wake()
        self.kill()

    # -- exchanges -----------------------------------------------------------------

    async def exchange(self, request, replies):
        """
        Send C{request} (unless L{None}) and read until one of C{replies}
        comes, answering what the program asks meanwhile.

        @param replies: reply word -> a function of the rest of the line
            that returns the result (or raises L{_Malformed}).
        @raise RepositoryError: the program sent C{ERROR}.
        @raise RepositoryUnavailable: it ended, or broke the protocol.
        """
        if request is not None:
            self.send(request)
        while True:
            line = await self.readLine()
            word, _, rest = line.partition(b" ")
            parse = replies.get(word)
            if parse is not None:
                try:
                    return parse(rest)
                except _Malformed:
                    self.violation(line, True)
            elif word in _REMOTE_REQUESTS:
                await self.node._answer(self, word, rest)
            elif word == b"ERROR":
                self.broken = "it sent ERROR"
                # "The special remote program should exit after sending
                # this": give it the chance.
                self.stop()
                raise RepositoryError(
                    "%s: external special remote error: %s" % (
                        self.node.name, _text(rest)))
            else:
                self.violation(line, word in _REPLIES)

    def violation(self, line, known):
        """
        The program broke the protocol: tell it, end it, and fail.
        """
        word = line.partition(b" ")[0][:100]
        self.send((b"ERROR unexpected " if known
                   else b"ERROR unknown request: ") + word)
        why = "%s: protocol error: %s sent %r (%s)" % (
            self.node.name, self.program, line[:200],
            "not expected now" if known else "not a protocol message")
        # Nothing more is said to it; it may read the ERROR and exit (it is
        # killed if it does not).
        self.retire(why)
        raise RepositoryUnavailable(why)

    async def transfer(self, direction, key, path):
        """
        C{TRANSFER direction key path}.

        @return: C{(True, None)} or C{(False, its reason)}.
        """
        def success(rest):
            if rest != direction + b" " + key:
                raise _Malformed()
            return True, None

        def failure(rest):
            parts = rest.split(b" ", 2)
            if parts[:2] != [direction, key]:
                raise _Malformed()
            return False, _text(parts[2]) if len(parts) > 2 else ""
        return await self.exchange(
            b"TRANSFER %s %s %s" % (direction, key, path),
            {b"TRANSFER-SUCCESS": success, b"TRANSFER-FAILURE": failure})


def _text(data):
    return data.decode("utf-8", "replace")


def _forKey(key, result):
    """
    A reply parser for C{WORD KEY}: C{result} when it names C{key}.
    """
    def parse(rest):
        if rest != key:
            raise _Malformed()
        return result
    return parse


def _reasonForKey(key):
    """
    A reply parser for C{WORD KEY REASON}: the reason (L{bytes}).
    """
    def parse(rest):
        named, _, why = rest.partition(b" ")
        if named != key:
            raise _Malformed()
        return why
    return parse


# -- the node -------------------------------------------------------------------------


@implementer(IRepository, IStoresFiles)
class ExternalNode:
    """
    An external special remote reached through its program.

    @ivar uuid: the remote's uuid (L{bytes}).
    @ivar name: the git remote's name (also what C{GETGITREMOTENAME} says).
    @ivar bypass: always empty (a special remote proxies nothing).
    @ivar needsFile: L{True} (see L{IStoresFiles}).
    @ivar maxProcesses: at most this many program processes at once.
    @ivar idleTimeout: seconds an idle process is kept (L{None}: always).
    @ivar ordered: whether the program writes retrieved files in order
        (L{None} until it was asked).
    @ivar started: processes started successfully since the node was made.
    """

    _log = Logger()

    bypass = ()

    #: A program only stores from a file: a cluster spools once for all
    #: such nodes and calls L{storeFile} (L{put} spools for itself).
    needsFile = True

    def __init__(self, reactor, uuid, name, config, gitConfig, repoPath,
                 environment=None, maxProcesses=1, spoolDirectory=None,
                 diskReserve=100000000):
        if isinstance(uuid, str):
            uuid = uuid.encode("ascii")
        self.reactor = reactor
        self._clock = reactor
        self.uuid = uuid
        self.name = name or uuid.decode("ascii", "replace")
        self.config = {str(k): str(v) for k, v in (config or {}).items()}
        self.gitConfig = dict(gitConfig or {})
        self.repoPath = os.path.abspath(repoPath)
        self.gitDir = _gitDirOf(self.repoPath)
        self.maxProcesses = max(1, int(maxProcesses))
        self.spoolDirectory = os.path.abspath(
            spoolDirectory if spoolDirectory is not None
            else os.path.join(self.gitDir, "annex", "tmp"))
        self.diskReserve = diskReserve
        self.idleTimeout = IDLE_TIMEOUT
        self.ordered = None
        self.externalType = (self.gitConfig.get("annex-externaltype")
                             or self.config.get("externaltype") or "")
        self.program = "git-annex-remote-" + self.externalType
        self.readOnly = self.gitConfig.get(
            "annex-readonly", "").strip().lower() in ("true", "yes", "on",
                                                      "1")
        env = (childEnvironment() if environment is None
               else dict(environment))
        env["GIT_DIR"] = self.gitDir
        if self.gitDir != self.repoPath:
            env["GIT_WORK_TREE"] = self.repoPath
        else:
            env.pop("GIT_WORK_TREE", None)
        self._env = env
        self.unusable = None
        self.chunkMode = None
        self.chunkSize = None
        self._configure()
        self._health = NodeHealth(reactor)
        self._started = 0
        self._slots = defer.DeferredSemaphore(self.maxProcesses)
        self._idle = []
        self._busy = set()
        self._timers = {}
        self._programs = set()
        self._transfers = set()
        self._closed = False
        self._reader = None
        self._chunkLog = None
        self._notifier = None
        self._creds = {}
        self._state = {}
        self._urls = {}

    def __repr__(self):
        return "<ExternalNode %s (%s)>" % (self.name, self.program)

    def _configure(self):
        config = self.config
        if config.get("encryption", "none") not in ("none", ""):
            self.unusable = ("%s: encrypted special remotes (encryption=%s)"
                             " are not supported" % (
                                 self.name, config.get("encryption")))
            return
        if (config.get("readonly", "").lower() in ("true", "yes")
                or self.externalType == "readonly"):
            self.unusable = ("%s: readonly external special remotes (which"
                             " download from recorded urls) are not"
                             " supported" % (self.name,))
            return
        if not self.externalType or "/" in self.externalType:
            self.unusable = "%s: no usable externaltype (%r)" % (
                self.name, self.externalType)
            return
        if config.get("chunksize"):
            # Old-style chunks: external remotes store unchunked.
            self.chunkMode = "legacy"
        elif config.get("chunk"):
            size = parseChunkSize(config["chunk"])
            if size is None:
                self.unusable = "%s: bad configuration chunk=%s" % (
                    self.name, config["chunk"])
                return
            if size > 0:
                self.chunkMode = "chunks"
                self.chunkSize = size

    # -- helpers -----------------------------------------------------------------------

    def _unavailable(self, text):
        return RepositoryUnavailable("%s: %s" % (self.name, text))

    def _check(self, writing=False):
        if self._closed:
            raise self._unavailable("closed")
        if self.unusable is not None:
            raise RepositoryUnavailable(self.unusable)
        if writing and self.readOnly:
            raise RepositoryError("%s is read-only (annex-readonly)" % (
                self.name,))

    def _safe(self, key):
        if any(c in key.raw for c in b" \t\r\n\v\f"):
            raise RepositoryError(
                "%s: %s cannot be stored on an external special remote:"
                " its name contains whitespace" % (self.name, key))

    def _branch(self):
        if self._reader is None:
            self._reader = BranchReader(self.gitDir, reactor=self.reactor,
                                        env=self._env)
        return self._reader

    async def _readBranch(self, path):
        try:
            return await self._branch().read(path)
        except Exception as e:
            self._log.warn("{name}: cannot read {path} of the git-annex"
                           " branch: {why}", name=self.name, path=path,
                           why=str(e))
            return b""

    def _wireName(self, path):
        """
        A path as sent to the program: relative to the repository (the
        program's working directory) when inside it, as git-annex does.
        """
        path = os.path.abspath(path)
        if path.startswith(self.repoPath + os.sep):
            path = os.path.relpath(path, self.repoPath)
        raw = os.fsencode(path)
        if b"\n" in raw or b"\r" in raw:
            raise RepositoryError("%s: unusable path %r" % (self.name, path))
        return raw

    def _makeDir(self):
        """
        A directory of its own for one transfer, in the spool directory.
        """
        try:
            os.makedirs(self.spoolDirectory, exist_ok=True)
            return tempfile.mkdtemp(prefix="annexd-external-",
                                    dir=self.spoolDirectory)
        except OSError as e:
            raise RepositoryError("%s: cannot make a transfer directory in"
                                  " %s: %s" % (self.name, self.spoolDirectory,
                                               e))

    @staticmethod
    def _removeDir(directory):
        shutil.rmtree(directory, ignore_errors=True)

    def _notifierFor(self):
        """
        The node's inotify instance, or L{None} without inotify.
        """
        if _inotify is None:
            return None
        if self._notifier is None:
            try:
                notifier = _inotify.INotify(self.reactor)
                notifier.startReading()
            except Exception as e:
                self._log.info("{name}: no inotify ({why}): polling",
                               name=self.name, why=str(e))
                self._notifier = False
                return None
            self._notifier = notifier
        return self._notifier or None

    # -- processes ----------------------------------------------------------------------

    def _executable(self):
        path = self._env.get("PATH", os.defpath)
        found = shutil.which(self.program, path=path)
        if found is None:
            raise self._unavailable("cannot run %s: it is not installed in"
                                    " PATH (%s)" % (self.program, path))
        return found

    def _connect(self):
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self):
        executable = self._executable()
        program = _Program(self, executable)
        try:
            self.reactor.spawnProcess(
                program, executable, [executable], env=self._env,
                path=self.repoPath, childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as e:
            raise self._unavailable("cannot run %s: %s" % (executable, e))
        self._programs.add(program)
        program.ended.addBoth(lambda _: self._programs.discard(program))
        timer = self._clock.callLater(
            STARTUP_TIMEOUT, program.abandon,
            "%s: %s did not get ready in %d s" % (
                self.name, program.program, STARTUP_TIMEOUT))
        try:
            await self._handshake(program)
        except RepositoryError as e:
            program.retire(str(e))
            raise self._unavailable("%s failed to start: %s" % (
                program.program, e))
        except BaseException as e:
            program.retire(str(e) or "start-up failed")
            raise
        finally:
            if timer.active():
                timer.cancel()
        return program

    async def _handshake(self, program):
        line = await program.readLine()
        word, _, rest = line.partition(b" ")
        if word != b"VERSION":
            program.violation(line, word in _REPLIES or word in
                              _REMOTE_REQUESTS)
        try:
            version = int(rest)
        except ValueError:
            program.violation(line, True)
        if version not in VERSIONS:
            program.send(b"ERROR unsupported VERSION")
            raise self._unavailable(
                "%s speaks version %d of the external special remote"
                " protocol; annexd knows versions %s" % (
                    program.program, version,
                    " and ".join(str(v) for v in VERSIONS)))

        def extensions(rest):
            return tuple(rest.split())
        wanted = await program.exchange(
            b"EXTENSIONS " + b" ".join(EXTENSIONS),
            {b"EXTENSIONS": extensions,
             b"UNSUPPORTED-REQUEST": lambda rest: ()})
        unknown = [e for e in wanted if e not in EXTENSIONS]
        if unknown:
            raise self._unavailable(
                "%s requested extensions that annexd does not support: %s"
                % (program.program, _text(b" ".join(unknown))))
        program.extensions = wanted

        def failed(rest):
            raise self._unavailable("%s: PREPARE failed: %s" % (
                program.program, _text(rest) or "no reason given"))
        await program.exchange(b"PREPARE", {
            b"PREPARE-SUCCESS": lambda rest: True,
            b"PREPARE-FAILURE": failed})

    async def _newSession(self):
        """
        Start a program, unless the node is down and not due for a retry;
        keep the node's up/down state.
        """
        program = await self._health.connect(self._connect, self.name,
                                             self._log)
        self._started += 1
        self._health.connected(self.name, self._log)
        return program

    def _takeIdle(self):
        while self._idle:
            program = self._idle.pop()
            timer = self._timers.pop(program, None)
            if timer is not None and timer.active():
                timer.cancel()
            if program.broken is None and program.gone is None:
                return program
            program.stop()
        return None

    async def _checkout(self):
        self._check()
        if not self._idle:
            self._health.check(self.name)
        await self._slots.acquire()
        try:
            self._check()
            program = self._takeIdle()
            if program is None:
                program = await self._newSession()
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(program)
        return program

    def _checkin(self, program):
        self._busy.discard(program)
        if (program.broken is None and program.gone is None
                and not self._closed):
            self._idle.append(program)
            if self.idleTimeout is not None:
                self._timers[program] = self._clock.callLater(
                    self.idleTimeout, self._expire, program)
            self._slots.release()
            return
        program.stop()
        if program.exited.called:
            self._slots.release()
        else:
            # Its slot is free once it has exited: until then it may still
            # be storing or writing a file.
            program.exited.addBoth(lambda _: self._slots.release())

    def _expire(self, program):
        self._timers.pop(program, None)
        if program in self._idle:
            self._idle.remove(program)
            program.stop()

    async def _withProgram(self, action):
        program = await self._checkout()
        try:
            return await action(program)
        finally:
            self._checkin(program)

    def _run(self, coroutine):
        return defer.Deferred.fromCoroutine(coroutine)

    async def _isOrdered(self, program):
        """
        Whether the program writes retrieved files in order (C{GETORDERED},
        asked once).
        """
        if self.ordered is None:
            answer = await program.exchange(b"GETORDERED", {
                b"ORDERED": lambda rest: True,
                b"UNORDERED": lambda rest: False,
                b"UNSUPPORTED-REQUEST": lambda rest: False})
            self.ordered = answer
        return self.ordered

    # -- answering the program --------------------------------------------------------

    async def _answer(self, program, word, rest):
        """
        Answer (or note) what the program asked during a request.
        """
        send = program.send
        if word == b"PROGRESS":
            try:
                program.progress = int(rest)
            except ValueError:
                pass
        elif word == b"DEBUG":
            self._log.debug("{name}: {program}: {text}", name=self.name,
                            program=program.program, text=_text(rest))
        elif word == b"INFO":
            self._log.info("{name}: {program}: {text}", name=self.name,
                           program=program.program, text=_text(rest))
        elif word == b"DIRHASH":
            send(b"VALUE " + hashDirMixed(rest).encode("ascii"))
        elif word == b"DIRHASH-LOWER":
            send(b"VALUE " + hashDirLower(_nonChunk(rest)).encode("ascii"))
        elif word == b"SETCONFIG":
            setting, _, value = rest.partition(b" ")
            program.config[setting] = value
        elif word == b"GETCONFIG":
            value = program.config.get(rest)
            if value is None:
                value = self.config.get(_text(rest), "").encode(
                    "utf-8", "surrogateescape")
            send(b"VALUE " + value)
        elif word == b"SETCREDS":
            parts = rest.split(b" ", 2) + [b"", b""]
            self._creds[parts[0]] = (parts[1], parts[2])
        elif word == b"GETCREDS":
            login, password = self._credsFor(program, rest)
            send(b"CREDS %s %s" % (login, password))
        elif word == b"GETUUID":
            send(b"VALUE " + self.uuid)
        elif word == b"GETGITDIR":
            send(b"VALUE " + os.fsencode(self.gitDir))
        elif word == b"GETGITREMOTENAME":
            send(b"VALUE " + self.name.encode("utf-8", "surrogateescape"))
        elif word == b"SETWANTED":
            self._log.info("{name}: {program} asked to set its preferred"
                           " content to {expr!r}: ignored", name=self.name,
                           program=program.program, expr=_text(rest))
        elif word == b"GETWANTED":
            data = await self._readBranch("preferred-content.log")
            expr = logs.parsePreferredContentLog(data).get(self.uuid, "")
            send(b"VALUE " + expr.encode("utf-8", "surrogateescape"))
        elif word == b"SETSTATE":
            key, _, value = rest.partition(b" ")
            self._state[_nonChunk(key)] = value
        elif word == b"GETSTATE":
            key = _nonChunk(rest)
            value = self._state.get(key)
            if value is None:
                data = await self._readBranch(_logPath(key, b".log.rmt"))
                value = logs.parseNewUUIDLog(data).get(self.uuid, b"")
            send(b"VALUE " + value)
        elif word in (b"SETURLPRESENT", b"SETURIPRESENT", b"SETURLMISSING",
                      b"SETURIMISSING"):
            key, _, url = rest.partition(b" ")
            if word.startswith(b"SETURI"):
                url = b":" + url   # git-annex's OtherDownloader mark
            urls = self._urls.setdefault(_nonChunk(key), {})
            urls[url] = word.endswith(b"PRESENT")
        elif word == b"GETURLS":
            key, _, prefix = rest.partition(b" ")
            for url in await self._urlsOf(_nonChunk(key)):
                if url.startswith(prefix):
                    send(b"VALUE " + url)
            send(b"VALUE ")
        elif word == b"VERSION":
            send(b"ERROR too late to send VERSION")

    def _credsFor(self, program, setting):
        base = ("%s-%s" % (_text(self.uuid), _text(setting))).replace(
            "/", "_")
        login = self._env.get(base + "login")
        password = self._env.get(base + "password")
        if login is not None and password is not None:
            return (login.encode("utf-8", "surrogateescape"),
                    password.encode("utf-8", "surrogateescape"))
        if setting in self._creds:
            return self._creds[setting]
        try:
            with open(os.path.join(self.gitDir, "annex", "creds", base),
                      "rb") as f:
                pair = _credPair(f.read())
        except OSError:
            pair = None
        if pair is not None:
            return pair
        embedded = program.config.get(setting)
        if embedded is None:
            embedded = self.config.get(_text(setting), "").encode("utf-8")
        if embedded:
            try:
                pair = _credPair(base64.b64decode(embedded, validate=True))
            except ValueError:
                pair = None
            if pair is not None:
                return pair
        return b"", b""

    async def _urlsOf(self, key):
        data = await self._readBranch(_logPath(key, b".log.web"))
        urls = {info: True for info, (clock, status)
                in logs.parsePresenceLog(data).items()
                if status == logs.PRESENT}
        urls.update(self._urls.get(key, {}))
        found = []
        for url, present in urls.items():
            if not present:
                continue
            # git-annex's getDownloader: the url without its downloader
            # mark.
            for mark in (b"yt:", b"quvi:", b":"):
                if url.startswith(mark):
                    url = url[len(mark):]
                    break
            found.append(url)
        return found

    # -- chunks ---------------------------------------------------------------------------

    async def _candidates(self, key):
        """
        The lists of pieces the content of C{key} may be stored as, most
        likely first (git-annex's C{chunkKeys}).
        """
        whole = [_Piece(key, 0, key.size)]
        if key.chunkNumber is not None or key.chunkSize is not None:
            return [whole]
        data = await self._readBranch(chunkLogPath(key))
        order = lookupOrder(
            key, parseChunkLog(data, self.uuid),
            self.chunkSize if self.chunkMode == "chunks" else None,
            chunked=self.chunkMode is not None)
        return [whole if chunking is None else _pieces(key, *chunking)
                for chunking in order]

    def _chunked(self, key):
        """
        The chunk size to store C{key} with, or L{None}.
        """
        if (self.chunkMode != "chunks" or key.chunkNumber is not None
                or key.chunkSize is not None
                or not isStableKey(key)):
            return None
        return self.chunkSize

    def _recordChunks(self, key, chunkSize, count):
        if self._chunkLog is None:
            self._chunkLog = ChunkLog(self.gitDir, reader=self._branch(),
                                      env=self._env)

        def failed(reason):
            self._log.warn("{name}: cannot record the chunks of {key} in the"
                           " chunk log: {why}", name=self.name, key=str(key),
                           why=reason.getErrorMessage())
        return self._chunkLog.record(key, self.uuid, chunkSize,
                                     count).addErrback(failed)

    # -- IRepository ----------------------------------------------------------------------

    def checkPresent(self, key):
        return self._run(self._checkPresent(key))

    async def _checkPresent(self, key):
        key = _asKey(key)
        self._check()
        self._safe(key)
        lists = await self._candidates(key)
        return await self._withProgram(
            lambda program: self._presentIn(program, lists))

    async def _presentIn(self, program, lists):
        error = None
        for pieces in lists:
            found = True
            for piece in pieces:
                raw = piece.key.raw

                answer = await program.exchange(b"CHECKPRESENT " + raw, {
                    b"CHECKPRESENT-SUCCESS": _forKey(raw, True),
                    b"CHECKPRESENT-FAILURE": _forKey(raw, False),
                    b"CHECKPRESENT-UNKNOWN": _reasonForKey(raw)})
                if answer is True:
                    continue
                if answer is not False:
                    error = error or (_text(answer) or
                                      "CHECKPRESENT failed with no reason"
                                      " given")
                found = False
                break
            if found:
                return True
        if error is not None:
            raise RepositoryError("%s: cannot tell whether it has the"
                                  " content: %s" % (self.name, error))
        return False

    def lockContent(self, key):
        # Special remotes cannot lock content (git-annex's proxy answers
        # FAILURE to LOCKCONTENT).
        return defer.succeed(None)

    def getTimestamp(self):
        return defer.fail(ProtocolNotSupported(
            "%s: an external special remote has no clock" % (self.name,)))

    def remove(self, key, before=None):
        # The remote has no clock: like a P2P session older than protocol 3,
        # BEFORE cannot be passed on.
        return self._run(self._remove(key))

    async def _remove(self, key):
        key = _asKey(key)
        self._check(writing=True)
        self._safe(key)
        lists = await self._candidates(key)
        await self._withProgram(lambda program: self._removeAll(program,
                                                                lists))
        data = await self._readBranch(chunkLogPath(key))
        for size, count in parseChunkLog(data, self.uuid):
            await self._recordChunks(key, size, 0)
        return Outcome(True)

    async def _removeAll(self, program, lists):
        seen = set()
        for pieces in lists:
            for piece in pieces:
                raw = piece.key.raw
                if raw in seen:
                    continue
                seen.add(raw)

                answer = await program.exchange(b"REMOVE " + raw, {
                    b"REMOVE-SUCCESS": _forKey(raw, None),
                    b"REMOVE-FAILURE": _reasonForKey(raw)})
                if answer is not None:
                    raise RepositoryError("%s: cannot remove %s: %s" % (
                        self.name, _text(raw),
                        _text(answer) or "REMOVE failed with no reason"
                        " given"))

    def get(self, key, associatedFile, offset):
        return self._run(self._get(key, offset))

    async def _get(self, key, offset):
        key = _asKey(key)
        self._check()
        self._safe(key)
        if offset < 0:
            raise RepositoryError("%s: negative offset" % (self.name,))
        if key.size is not None and offset >= key.size:
            # Nothing to send: whether the node has it is the verdict.
            present = await self._checkPresent(key)
            return _EmptyDownload(present)
        lists = await self._candidates(key)
        directory = self._makeDir()
        try:
            expected = 0 if key.size is None else key.size
            if self.chunkMode == "chunks":
                expected = min(expected, 2 * self.chunkSize)
            try:
                checkRoom(directory, expected, self.diskReserve)
            except SpoolRefused as e:
                raise RepositoryError("%s: %s" % (self.name, e))
            program = await self._checkout()
        except BaseException:
            self._removeDir(directory)
            raise
        retrieval = _Retrieval(self, program, key, lists, offset, directory)
        retrieval.start()
        return await retrieval.ready

    def put(self, key, associatedFile):
        return self._run(self._put(key))

    async def _put(self, key):
        key = _asKey(key)
        self._check(writing=True)
        self._safe(key)
        if not self._idle:
            # Refused now rather than after the whole content was sent.
            self._health.check(self.name)
        if key.size is not None:
            try:
                checkRoom(self.spoolDirectory, key.size, self.diskReserve)
            except SpoolRefused as e:
                raise RepositoryError("%s refuses %s: %s" % (self.name, key,
                                                              e))
        return _Upload(self, key)

    # -- IStoresFiles ------------------------------------------------------------------

    def storeFile(self, key, path):
        return self._run(self._storeFile(key, path))

    async def _storeFile(self, key, path):
        key = _asKey(key)
        self._check(writing=True)
        self._safe(key)
        directory = self._makeDir()
        try:
            named = os.path.join(directory, os.fsdecode(keyFileName(key)))
            await self._place(path, named, directory)
            return await self._store(key, named, directory)
        finally:
            self._removeDir(directory)

    async def _place(self, source, target, directory, start=0, size=None):
        """
        Make C{target} hold the bytes of C{source} from C{start} (C{size}
        of them, or to the end): a hard link when that is the whole file,
        else a copy (within the disk reserve).
        """
        whole = os.path.getsize(source)
        if size is None:
            size = whole - start
        if start == 0 and size == whole:
            try:
                os.link(source, target)
                return
            except OSError:
                pass
        try:
            checkRoom(directory, size, self.diskReserve)
        except SpoolRefused as e:
            raise RepositoryError("%s: %s" % (self.name, e))
        await threads.deferToThread(_copyRange, source, target, start, size)

    async def _store(self, key, path, directory):
        """
        C{TRANSFER STORE} the content of C{key} in C{path} (in chunks when
        configured).
        """
        chunkSize = self._chunked(key)
        size = os.path.getsize(path)
        if chunkSize is None:
            ok, why = await self._withProgram(
                lambda program: program.transfer(b"STORE", key.raw,
                                                 self._wireName(path)))
            return self._stored(key, ok, why)
        count = chunkCount(size, chunkSize)
        pieces = _pieces(key, chunkSize, count)

        async def storeChunks(program):
            for piece in pieces:
                chunkPath = os.path.join(
                    directory, os.fsdecode(keyFileName(piece.key.raw)))
                await self._place(path, chunkPath, directory, piece.start,
                                  min(chunkSize, size - piece.start))
                try:
                    ok, why = await program.transfer(
                        b"STORE", piece.key.raw, self._wireName(chunkPath))
                finally:
                    _unlink(chunkPath)
                if not ok:
                    return ok, why
            return True, None
        ok, why = await self._withProgram(storeChunks)
        if ok:
            await self._recordChunks(key, chunkSize, count)
        return self._stored(key, ok, why)

    def _stored(self, key, ok, why):
        if not ok:
            self._log.warn("{name}: storing {key} failed: {why}",
                           name=self.name, key=str(key),
                           why=why or "TRANSFER failed with no reason given")
        return Outcome(bool(ok))

    # -- monitoring and closing ---------------------------------------------------

    @property
    def up(self):
        """
        Whether the node is up (usable, and not marked down after a failed
        connect); cheap, for choosing among nodes on every request.
        """
        return self._health.error is None and self.unusable is None

    def status(self):
        """
        The node's state, in the shape of L{SessionPool.status}: C{idle}
        and C{busy} count program processes, C{started} the processes
        started, C{maxSessions} is C{maxProcesses}.
        """
        return self._health.status(self.name, self.uuid, len(self._idle),
                                   len(self._busy), self._started,
                                   self.maxProcesses, self.unusable)

    @property
    def started(self):
        return self._started

    def close(self):
        """
        End every program (transfers under way fail); later requests fail.

        @return: a Deferred firing once every program has exited.
        """
        self._closed = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers = {}
        idle, self._idle = self._idle, []
        for transfer in list(self._transfers):
            transfer.cancel("%s: closed" % (self.name,))
        waits = []
        for program in list(self._programs):
            waits.append(program.ended)
            if program in idle:
                program.stop()
            else:
                program.abandon("%s: closed" % (self.name,))
        done = defer.DeferredList(waits)

        def closeRest(result):
            rest = []
            if self._reader is not None:
                rest.append(self._reader.close())
            if self._notifier:
                self._notifier.loseConnection()
            self._notifier = None
            return defer.DeferredList(rest)
        return done.addCallback(closeRest)


def _gitDirOf(repoPath):
    """
    The git directory of a repository, without running git: C{.git} (a
    directory, or a file naming one) or the repository itself (bare).
    """
    dotgit = os.path.join(repoPath, ".git")
    if os.path.isdir(dotgit):
        return dotgit
    if os.path.isfile(dotgit):
        try:
            with open(dotgit) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text.startswith("gitdir:"):
            return os.path.normpath(os.path.join(
                repoPath, text[len("gitdir:"):].strip()))
    return repoPath


def _credPair(data):
    lines = data.decode("utf-8", "surrogateescape").splitlines()
    if len(lines) != 2:
        return None
    return (lines[0].encode("utf-8", "surrogateescape"),
            lines[1].encode("utf-8", "surrogateescape"))


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _copyRange(source, target, start, size):
    """
    Copy C{size} bytes of C{source} from C{start} to a new file C{target}.
    """
    with open(source, "rb") as src, open(target, "xb") as out:
        src.seek(start)
        left = size
        while left > 0:
            data = src.read(min(left, 1024 * 1024))
            if not data:
                raise OSError(errno.EIO, "%s ended early" % (source,))
            out.write(data)
            left -= len(data)


# -- uploads ---------------------------------------------------------------------------


@implementer(IConsumer)
class _SpoolSink:
    """
    The consumer an upload's sender writes into: the spool file and the
    verifier.

    @ivar done: fires once C{length} bytes are written.
    """

    def __init__(self, spool, verifier, length):
        self._spool = spool
        self._verifier = verifier
        self.length = length
        self.written = 0
        self.producer = None
        self.failed = None
        self.done = defer.Deferred()
        if length == 0:
            self.done.callback(0)

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        if not streaming:
            # A pull producer: ask for data until it unregisters.
            while self.producer is producer and self.failed is None:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        if self.failed is not None:
            raise RepositoryUnavailable(self.failed)
        n = len(data)
        if self.written + n > self.length:
            self.fail("the sender wrote more than the %d bytes announced"
                      % (self.length,))
            raise ValueError("%d bytes past the announced length %d" % (
                self.written + n - self.length, self.length))
        try:
            self._spool.append(data)
        except OSError as e:
            self.fail("cannot spool: %s" % (e,))
            raise RepositoryUnavailable(self.failed)
        self._verifier.update(data)
        self.written += n
        if self.written == self.length and not self.done.called:
            self.done.callback(self.length)

    def fail(self, why):
        if self.failed is None:
            self.failed = why
            producer, self.producer = self.producer, None
            if producer is not None:
                producer.stopProducing()
            if not self.done.called:
                self.done.errback(RepositoryUnavailable(why))


@implementer(IUpload)
class _Upload:
    """
    An accepted PUT: content is spooled, then stored from the spool file.
    """

    offset = 0

    def __init__(self, node, key):
        self._node = node
        self._key = key
        self._verifier = Verifier(key)
        self._directory = None
        self._spool = None
        self._sink = None
        self._done = False
        self.completed = defer.Deferred()

    def receive(self, length):
        node = self._node
        if self._sink is not None:
            raise RuntimeError("content already announced")
        if self._done:
            raise RepositoryUnavailable("%s: the upload is over" % (
                node.name,))
        if self._key.size is not None and length != self._key.size:
            raise RepositoryError("%s: %s has %d bytes, not %d" % (
                node.name, self._key, self._key.size, length))
        self._directory = node._makeDir()
        try:
            self._spool = Spool(self._directory, 0, length, node.diskReserve,
                                named=True)
        except SpoolRefused as e:
            self._cleanup()
            raise RepositoryError("%s refuses %s: %s" % (node.name,
                                                          self._key, e))
        self._sink = _SpoolSink(self._spool, self._verifier, length)
        return self._sink

    def finish(self, valid):
        return defer.Deferred.fromCoroutine(self._finish(valid))

    async def _finish(self, valid):
        node = self._node
        key = self._key
        try:
            if self._done:
                raise RepositoryUnavailable("%s: the upload is over" % (
                    node.name,))
            sink = self._sink
            if sink is None or sink.written < sink.length:
                raise RepositoryUnavailable(
                    "upload to %s ended after %d of %d bytes" % (
                        node.name, 0 if sink is None else sink.written,
                        0 if sink is None else sink.length))
            verdict = self._verifier.verdict()
            if valid is False or verdict is False:
                node._log.warn(
                    "{name}: not storing {key}: {why}", name=node.name,
                    key=str(key), why="the sender said it is invalid"
                    if valid is False else "it does not match its key")
                return Outcome(False)
            node._check(writing=True)
            named = os.path.join(self._directory,
                                 os.fsdecode(keyFileName(key)))
            await node._place(self._spool.path, named, self._directory)
            # The spool's own name goes at once; the key's name holds the
            # content for the program.
            self._spool.close()
            return await node._store(key, named, self._directory)
        finally:
            self._cleanup()

    def dataPresent(self):
        return defer.Deferred.fromCoroutine(self._dataPresent())

    async def _dataPresent(self):
        try:
            if self._sink is not None:
                raise RuntimeError("content already announced")
            return Outcome(await self._node._checkPresent(self._key))
        finally:
            self._cleanup()

    def abort(self, reason):
        if self._sink is not None:
            self._sink.done.addErrback(lambda _: None)
            self._sink.fail("upload aborted: %s" % (reason,))
        self._cleanup()

    def _cleanup(self):
        if self._done:
            return
        self._done = True
        if self._spool is not None:
            self._spool.close()
        if self._directory is not None:
            self._node._removeDir(self._directory)
        self.completed.callback(None)


# -- downloads -------------------------------------------------------------------------


@implementer(IDownload)
class _EmptyDownload:
    """
    A download with nothing to send: C{deliver} says whether the content
    is there.
    """

    length = 0

    def __init__(self, present):
        self._present = present

    def deliver(self, consumer):
        return defer.succeed(bool(self._present))

    def finish(self, ok):
        return defer.succeed(None)


class _Segment:
    """
    One retrieved piece: a file that grows until the program is done.

    @ivar skip: bytes at its start that are not delivered (the offset).
    @ivar complete: the program said TRANSFER-SUCCESS.
    @ivar consumed: fires when the reader is done with it.
    """

    def __init__(self, piece, path, skip):
        self.piece = piece
        self.path = path
        self.skip = skip
        self.complete = False
        self.size = None
        self.consumed = defer.Deferred()

    def currentSize(self):
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0


class _Retrieval:
    """
    A download's retrieval: C{TRANSFER RETRIEVE} of the pieces of one of
    the key's candidate lists, in order, into files of one directory, on
    one program process.

    @ivar ready: fires with the L{IDownload} once it can be handed out.
    @ivar segments: the pieces retrieved or being retrieved.
    @ivar result: L{None} while running; then L{True} (all retrieved),
        L{False} (failed), or the L{Exception} that ended it.
    """

    def __init__(self, node, program, key, lists, offset, directory):
        self.node = node
        self.program = program
        self.key = key
        self.lists = lists
        self.offset = offset
        self.directory = directory
        self.ready = defer.Deferred()
        self._waiters = []
        self._finishedFired = False
        self.segments = []
        self.result = None
        self.reason = None
        self.streaming = False
        self.download = None
        self._cancelled = None
        self._poller = None
        self._watching = False
        self._cleaned = False

    def start(self):
        self.node._transfers.add(self)
        d = defer.Deferred.fromCoroutine(self._run())
        d.addBoth(self._ended)

    # -- running ---------------------------------------------------------------------

    async def _run(self):
        node, program = self.node, self.program
        try:
            if self.key.size is not None:
                self.streaming = await node._isOrdered(program)
            if self.streaming:
                self._watch()
            firstError = None
            for pieces in self.lists:
                needed = [p for p in pieces
                          if p.size is None or p.start + p.size > self.offset]
                if not needed:
                    continue
                outcome = await self._retrieveList(needed)
                if outcome is True:
                    return True
                if outcome is False:
                    return False
                # Not there (nothing handed out yet): the next list.
                firstError = firstError or outcome
            self.reason = firstError or "no way to retrieve it"
            return None
        finally:
            node._checkin(program)

    async def _retrieveList(self, pieces):
        """
        @return: L{True}; L{False} for a failure once the download was
            handed out; else the reason the first piece failed.
        """
        for index, piece in enumerate(pieces):
            if index >= 2:
                # At most two pieces on disk: wait for the reader.
                await self.segments[-2].consumed
            if self._cancelled:
                raise RepositoryUnavailable(self._cancelled)
            path = os.path.join(self.directory,
                                os.fsdecode(keyFileName(piece.key.raw)))
            skip = max(0, self.offset - piece.start)
            segment = _Segment(piece, path, skip)
            self.segments.append(segment)
            ok, why = await self.program.transfer(
                b"RETRIEVE", piece.key.raw, self.node._wireName(path))
            if not ok:
                why = why or "TRANSFER failed with no reason given"
                if index == 0 and not self.ready.called:
                    self.segments.remove(segment)
                    _unlink(path)
                    return why
                self.reason = why
                return False
            segment.complete = True
            segment.size = segment.currentSize()
            if piece.size is not None and segment.size != piece.size:
                self.reason = "%s has %d bytes, not %d" % (
                    _text(piece.key.raw), segment.size, piece.size)
            self.poke()
        return True

    def whenFinished(self):
        """
        @return: a new Deferred firing (with L{None}) once the retrieval is
            over.
        """
        d = defer.Deferred()
        if self._finishedFired:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def _ended(self, result):
        self.node._transfers.discard(self)
        self._unwatch()
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, (RepositoryError,
                                      RepositoryUnavailable)):
                error = RepositoryUnavailable("%s: %s" % (
                    self.node.name, result.getErrorMessage()))
            self.result = error
        elif result is None:
            self.result = False
            self.reason = self.reason or "not there"
        else:
            self.result = result
        for segment in self.segments:
            if not segment.consumed.called and self._cancelled:
                segment.consumed.callback(None)
        if not self.ready.called:
            if isinstance(self.result, Exception):
                self.cleanup()
                self.ready.errback(self.result)
            elif result is None:
                # Absent: as a P2P node that lacks the content.
                self.cleanup()
                self.ready.callback(_ExternalDownload(self, 0))
            else:
                self._handOut(fromFiles=True)
        self._finishedFired = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        self.poke()

    # -- readiness ----------------------------------------------------------------------

    def _handOut(self, fromFiles=False):
        if self.ready.called:
            return
        if fromFiles:
            # Complete: what the files hold.
            total = sum(s.size or 0 for s in self.segments) - (
                self.segments[0].skip if self.segments else 0)
            if self.key.size is not None and self.result is True:
                total = min(total, self.key.size - self.offset)
            length = max(0, total)
        else:
            length = self.key.size - self.offset
        self.download = _ExternalDownload(self, length)
        self.ready.callback(self.download)

    def poke(self, *ignored):
        """
        Something changed (a file grew, a piece is complete): hand the
        download out when it can be, and feed its reader.
        """
        if not self.ready.called and self.segments and \
                self.result is None:
            first = self.segments[0]
            if self.streaming and self.key.size is not None:
                if first.currentSize() > first.skip or first.complete:
                    self._handOut()
            elif first.complete and self.key.size is not None:
                self._handOut()
        if self.download is not None:
            self.download.more()

    def _watch(self):
        node = self.node
        notifier = node._notifierFor()
        interval = POLL_INTERVAL
        if notifier is not None:
            try:
                notifier.watch(
                    FilePath(self.directory),
                    mask=(_inotify.IN_MODIFY | _inotify.IN_CLOSE_WRITE
                          | _inotify.IN_CREATE | _inotify.IN_MOVED_TO),
                    callbacks=[self.poke])
                self._watching = True
                interval = WATCH_POLL_INTERVAL
            except Exception as e:
                node._log.info("{name}: cannot watch {dir} ({why}):"
                               " polling", name=node.name,
                               dir=self.directory, why=str(e))
        self._poller = LoopingCall(self.poke)
        self._poller.clock = node._clock
        self._poller.start(interval, now=False)

    def _unwatch(self):
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._watching:
            self._watching = False
            notifier = self.node._notifier
            if notifier:
                try:
                    notifier.ignore(FilePath(self.directory))
                except Exception:
                    pass

    # -- ending -------------------------------------------------------------------------

    def cancel(self, why):
        """
        Give up: end the program if it is still retrieving.
        """
        if self.result is None and not self._cancelled:
            self._cancelled = why
            self.program.abandon(why)
            for segment in self.segments:
                if not segment.consumed.called:
                    segment.consumed.callback(None)

    def cleanup(self):
        if not self._cleaned:
            self._cleaned = True
            self._unwatch()
            self.node._removeDir(self.directory)


@implementer(IDownload, IPushProducer)
class _ExternalDownload:
    """
    A retrieval handed out: C{deliver} streams its files, in order, from
    the offset, as they grow.
    """

    def __init__(self, retrieval, length):
        self._retrieval = retrieval
        self.length = length
        self._consumer = None
        self._delivered = 0
        self._index = 0
        self._position = None
        self._fd = None
        self._paused = False
        self._feeding = False
        self._scheduled = None
        self._result = None
        self._finished = False

    # -- deliver ---------------------------------------------------------------------

    def deliver(self, consumer):
        if self._result is not None:
            raise RuntimeError("already delivered")
        self._result = defer.Deferred()
        if self.length == 0:
            self._end()
            return self._result
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self.more()
        return self._result

    def _verdict(self):
        retrieval = self._retrieval
        if isinstance(retrieval.result, Exception):
            raise retrieval.result
        return (retrieval.result is True and retrieval.reason is None
                and self._delivered == self.length)

    def more(self):
        """
        Write what can be written now.
        """
        if (self._consumer is None or self._paused or self._feeding
                or self._result is None or self._result.called):
            return
        self._feeding = True
        try:
            self._feed()
        finally:
            self._feeding = False

    def _feed(self):
        retrieval = self._retrieval
        for _ in range(READS_PER_TURN):
            if self._paused:
                return
            if self._delivered >= self.length:
                self._end()
                return
            if self._index >= len(retrieval.segments):
                if retrieval.result is not None:
                    self._end()
                return
            segment = retrieval.segments[self._index]
            if not segment.complete and not retrieval.streaming:
                if retrieval.result is not None:
                    self._end()
                return
            if self._fd is None:
                try:
                    self._fd = os.open(segment.path, os.O_RDONLY)
                except FileNotFoundError:
                    if segment.complete or retrieval.result is not None:
                        self._nextSegment(segment)
                        continue
                    return
                except OSError as e:
                    self._fail(RepositoryUnavailable("%s: cannot read %s: %s"
                                                     % (retrieval.node.name,
                                                        segment.path, e)))
                    return
                self._position = segment.skip
            want = min(READ_SIZE, self.length - self._delivered)
            try:
                data = os.pread(self._fd, want, self._position)
            except OSError as e:
                self._fail(RepositoryUnavailable("%s: cannot read %s: %s" % (
                    retrieval.node.name, segment.path, e)))
                return
            if data:
                self._position += len(data)
                self._delivered += len(data)
                self._consumer.write(data)
                continue
            if segment.complete:
                self._nextSegment(segment)
                continue
            if retrieval.result is not None:
                # It ended without completing this piece.
                self._end()
            # Else: wait for the file to grow (inotify, poll, or the end of
            # the transfer call more()).
            return
        # Fair to others: go on at the next turn.
        if self._scheduled is None:
            self._scheduled = retrieval.node._clock.callLater(0, self._later)

    def _later(self):
        self._scheduled = None
        self.more()

    def _nextSegment(self, segment):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _unlink(segment.path)
        if not segment.consumed.called:
            segment.consumed.callback(None)
        self._index += 1

    def _end(self):
        """
        Everything was written, or the retrieval ended short: the verdict,
        once the retrieval is over.
        """
        if self._result is None or self._result.called or self._finished:
            return
        self._finished = True
        self._close()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        result = self._result
        d = self._retrieval.whenFinished()
        d.addCallback(lambda _: self._verdict())
        d.chainDeferred(result)

    def _fail(self, error):
        if self._result is None or self._result.called:
            return
        self._finished = True
        self._close()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        self._retrieval.cancel(str(error))
        self._result.errback(error)

    def _close(self):
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- IPushProducer -----------------------------------------------------------------

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self.more()

    def stopProducing(self):
        self._fail(RepositoryUnavailable("%s: the receiver stopped the"
                                         " download" % (
                                             self._retrieval.node.name,)))

    # -- finish ------------------------------------------------------------------------

    def finish(self, ok):
        retrieval = self._retrieval
        self._close()
        if self._result is not None and not self._result.called:
            self._result.addErrback(lambda _: None)
            self._fail(RepositoryUnavailable("%s: download abandoned" % (
                retrieval.node.name,)))
        retrieval.cancel("%s: download finished early" % (
            retrieval.node.name,))
        return retrieval.whenFinished().addCallback(
            lambda _: retrieval.cleanup())
