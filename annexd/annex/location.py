# -*- test-case-name: tests.test_annexstate -*-
"""
Location logs: where they live in the git-annex branch, which repositories
they show as having a key, and recording changes safely.

A key's location log is C{<h[0:3]>/<h[3:6]>/<keyfile>.log}, where C{h} is
the lowercase hex MD5 of the key without its chunk fields (C{-S...},
C{-C...}) and C{keyfile} is the whole key, escaped like git-annex's
C{keyFile} only when it contains one of C{& % : /}
(shared/spec/annex-state.md section 1.6).

L{LocationLog.record} writes the journal directly, exactly as git-annex
does it (section 1.7B): under git-annex's own journal lock, it rewrites
the whole compacted journal file atomically.  The change is visible to
git-annex processes in the repository at once and is committed to the
branch by the next committing git-annex command, e.g. L{commitJournal}.
Cluster uuids are never written: storing "to a cluster" means recording the
nodes that got the content.

Not handled: repositories created with the C{onelevelbranchhash}
difference (one hash level), private repositories (C{annex.private}:
their changes belong in the private journal), C{annex.pidlock}, and
C{GIT_ANNEX_VECTOR_CLOCK}.
"""

import fcntl
import hashlib
import os
import secrets
import threading
import time
from fractions import Fraction

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from annexd.annex.branch import (
    BranchReader, _gitExecutable, branchFileName, journalFileName)
from annexd.annex.logs import (
    MISSING, PRESENT, buildPresenceLog, isClusterUUID, parsePresenceLog,
    presentUUIDs)

__all__ = [
    "locationLogPath", "journalFileName", "branchFileName", "keyFileName",
    "hashDirLower", "JournalLog", "LocationLog", "commitJournal",
    "CommitError", "BranchReader",
]

_ESCAPED = (b"&", b"%", b":", b"/")


def _raw(key):
    raw = getattr(key, "raw", key)
    if not isinstance(raw, bytes):
        raise TypeError("a key is bytes, not %r" % (type(raw).__name__,))
    return raw


def _withoutChunkFields(key):
    sep = key.find(b"--")
    if sep < 0:
        return key
    parts = key[:sep].split(b"-")
    kept = [parts[0]] + [
        p for p in parts[1:]
        if not (p[:1] in (b"S", b"C") and p[1:].isdigit())]
    return b"-".join(kept) + key[sep:]


def keyFileName(key):
    """
    The key as a file name, as git-annex's C{keyFile} makes it: escaped
    (C{&} -> C{&a}, C{%} -> C{&s}, C{:} -> C{&c}, C{/} -> C{%}) only when
    it contains one of those characters.

    @type key: L{bytes} (or a L{annexd.protocol.keys.Key})
    @rtype: L{bytes}
    """
    key = _raw(key)
    if not any(c in key for c in _ESCAPED):
        return key
    return (key.replace(b"&", b"&a").replace(b"%", b"&s")
            .replace(b":", b"&c").replace(b"/", b"%"))


def hashDirLower(key):
    """
    git-annex's C{hashdirlower} of a key: C{aaa/bbb/}, from the MD5 of the
    key without its chunk fields.

    @type key: L{bytes} (or a L{annexd.protocol.keys.Key})
    @rtype: L{str}
    """
    digest = hashlib.md5(_withoutChunkFields(_raw(key))).hexdigest()
    return "%s/%s/" % (digest[:3], digest[3:6])


def locationLogPath(key):
    """
    The path of a key's location log in the git-annex branch, e.g.
    C{39f/be7/WORM--test.log}.

    @type key: L{bytes} (or a L{annexd.protocol.keys.Key})
    @rtype: L{str}
    """
    return hashDirLower(key) + os.fsdecode(keyFileName(key) + b".log")


class CommitError(Exception):
    """
    C{git annex merge} failed.

    @ivar stderr: what it said on stderr.
    @ivar code: its exit code.
    """

    def __init__(self, code, stderr):
        Exception.__init__(self, "git annex merge exited with code %s: %s"
                           % (code, stderr.decode("utf-8", "replace")
                              .strip()))
        self.code = code
        self.stderr = stderr


def commitJournal(repoPath, env=None, reactor=None):
    """
    Commit the journal of the repository at C{repoPath} to its git-annex
    branch (and merge fetched sibling branches) by running C{git annex
    merge} there.  The journal lock is taken by git-annex.

    @param repoPath: the repository (bare or not).
    @type repoPath: L{str}
    @param env: the environment (default: C{os.environ}); C{git} and
        C{git-annex} are found on its C{PATH}.
    @param reactor: the reactor (default: the global one).
    @rtype: L{Deferred} firing with C{None}, or failing with L{CommitError}.
    """
    env = dict(os.environ if env is None else env)
    try:
        git = _gitExecutable(env)
    except FileNotFoundError:
        return defer.fail()
    kw = {} if reactor is None else {"reactor": reactor}
    d = getProcessOutputAndValue(git, ["annex", "merge", "--quiet"],
                                 env=env, path=repoPath, **kw)

    def check(result):
        out, err, code = result
        if code != 0:
            raise CommitError(code, err)

    return d.addCallback(check)


# Within one process, POSIX record locks do not exclude each other: writers
# of the same repository in several threads also take this lock.
_processLocks = {}
_processLocksGuard = threading.Lock()


def _processLock(gitDir):
    with _processLocksGuard:
        lock = _processLocks.get(gitDir)
        if lock is None:
            lock = _processLocks[gitDir] = threading.Lock()
        return lock


class JournalLog:
    """
    Logs of one kind in one repository's git-annex branch: read through a
    L{BranchReader}, changed in its journal under git-annex's journal lock
    (L{change}).  L{LocationLog} and L{annexd.annex.chunks.ChunkLog} are
    its kinds.

    @ivar gitDir: the repository's git directory.
    @ivar reader: the L{BranchReader} used.
    """

    def __init__(self, gitDir, reader=None, clock=time.time, env=None,
                 reactor=None):
        """
        @param gitDir: the git directory (see
            L{annexd.annex.branch.findGitDir}).
        @type gitDir: L{str}
        @param reader: a L{BranchReader} of the same repository; by default
            one of its own (environment C{env}, reactor C{reactor}), which
            L{close} closes.
        @param clock: returns the current POSIX time (for timestamps).
        @param env: the environment of its own reader's git children.
        @param reactor: the reactor of its own reader (default: the global
            one).
        """
        self.gitDir = os.path.abspath(gitDir)
        self._ownReader = reader is None
        if reader is None:
            kw = {} if reactor is None else {"reactor": reactor}
            reader = BranchReader(self.gitDir, env=env, **kw)
        self.reader = reader
        self._clock = clock
        self._annexDir = os.path.join(self.gitDir, "annex")
        self._journalDir = os.path.join(self._annexDir, "journal")
        self._tmpDir = os.path.join(self._annexDir, "othertmp")
        self._lock = _processLock(self.gitDir)

    def close(self):
        """
        Close the reader if this log made it (a reader given to the
        constructor is left alone).

        @rtype: L{Deferred}
        """
        if self._ownReader:
            return self.reader.close()
        return defer.succeed(None)

    def change(self, path, modify):
        """
        Change the log at C{path} in the git-annex branch by rewriting its
        journal file under git-annex's journal lock
        (C{gitDir/annex/journal.lck}).

        The current content is the journal file if there is one, else the
        branch blob; C{modify} gets it and returns the new content, or
        L{None} to leave it as it is.  The new content is written to a
        temporary file in C{gitDir/annex/othertmp/} (under a shared lock
        on C{othertmp.lck}, which keeps git-annex from cleaning that
        directory meanwhile) that is renamed into the journal.

        This blocks while another process holds the journal lock (git-annex
        holds it while it commits the journal); run it in a thread
        (C{deferToThread}) to keep the reactor free.

        @param path: the log's path in the branch.
        @type path: L{str}
        @param modify: called with the current content (L{bytes}), under
            the lock.
        @return: whether anything was written.
        @rtype: L{bool}
        """
        with self._lock:
            os.makedirs(self._annexDir, exist_ok=True)
            fd = os.open(os.path.join(self._annexDir, "journal.lck"),
                         os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                current = self.reader.readJournalFile(path)
                if current is None:
                    current = self.reader.readBranchSync(path)
                data = modify(current)
                if data is None:
                    return False
                self._writeJournal(path, data)
                return True
            finally:
                os.close(fd)  # releases the lock

    def _writeJournal(self, path, data):
        fd = os.open(os.path.join(self._annexDir, "othertmp.lck"),
                     os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH)
            os.makedirs(self._tmpDir, exist_ok=True)
            tmp = os.path.join(self._tmpDir, "annexd-%d-%s" % (
                os.getpid(), secrets.token_hex(8)))
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view):]
                finally:
                    os.close(out)
                os.makedirs(self._journalDir, exist_ok=True)
                os.replace(tmp, os.path.join(self._journalDir,
                                             journalFileName(path)))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)


class LocationLog(JournalLog):
    """
    The location logs of one repository: reading which repositories have a
    key, and recording changes in its journal.

    @ivar gitDir: the repository's git directory.
    @ivar reader: the L{BranchReader} used.
    """

    def present(self, key):
        """
        The uuids whose current status in the key's location log (branch,
        journal, siblings) is present.  Cluster uuids are not added (no
        cluster uuid is ever written to a location log).

        @type key: L{bytes} (or a L{annexd.protocol.keys.Key})
        @rtype: L{Deferred} firing with a L{set} of uuid L{bytes}
        """
        return self.reader.read(locationLogPath(key)).addCallback(
            presentUUIDs)

    def presentSync(self, key):
        """
        Like L{present}, blocking.

        @rtype: L{set} of uuid L{bytes}
        """
        return presentUUIDs(self.reader.readSync(locationLogPath(key)))

    def record(self, key, uuid, present):
        """
        Record that repository C{uuid} has (C{present} true) or no longer
        has the content of C{key}: L{recordAll} for one uuid.

        @type key: L{bytes} (or a L{annexd.protocol.keys.Key})
        @param uuid: a repository uuid; cluster uuids are ignored.
        @type uuid: L{bytes}
        @type present: L{bool}
        @return: whether anything was written: L{False} for a cluster uuid,
            or when the uuid already has that status.
        @rtype: L{bool}
        """
        return bool(self.recordAll(key, [uuid], present))

    def recordAll(self, key, uuids, present):
        """
        Record that each repository of C{uuids} has (C{present} true) or no
        longer has the content of C{key}, by rewriting the key's journal
        file once (L{change}): a cluster upload that reached three nodes is
        one read and one write, not three.

        The current content is compacted to one line per uuid, each new
        line gets the current time in whole seconds (or the uuid's previous
        timestamp + 1 if that is not older), and the lines are written
        sorted by uuid.

        This blocks while another process holds the journal lock (git-annex
        holds it while it commits the journal); run it in a thread
        (C{deferToThread}) to keep the reactor free.

        @type key: L{bytes} (or a L{annexd.protocol.keys.Key})
        @param uuids: repository uuids (L{bytes}); cluster uuids and
            malformed ones are ignored.
        @type present: L{bool}
        @return: the uuids whose status changed (nothing is written when
            none did).
        @rtype: L{list} of L{bytes}
        """
        for uuid in uuids:
            if not isinstance(uuid, bytes):
                raise TypeError("a uuid is bytes")
        wanted = [u for u in dict.fromkeys(uuids)
                  if u and not isClusterUUID(u)
                  and not any(c in u for c in b" \r\n")]
        if not wanted:
            return []
        status = PRESENT if present else MISSING
        changed = []

        def modify(current):
            entries = parsePresenceLog(current)
            now = Fraction(int(self._clock()))
            for uuid in wanted:
                old = entries.get(uuid)
                if old is not None and old[1] == status:
                    continue
                clock = now
                if old is not None and old[0] >= clock:
                    clock = old[0] + 1
                entries[uuid] = (clock, status)
                changed.append(uuid)
            return buildPresenceLog(entries) if changed else None

        self.change(locationLogPath(key), modify)
        return changed


class JournalCommitter:
    """
    Commits a long-running front-end's location changes promptly: about
    C{delay} seconds after the last change, one C{git annex merge}; changes
    made while it runs get another one after it.  (git-annex's p2phttp
    commits about a second after going idle; a journal left uncommitted is
    invisible to other clients' C{git pull}.)
    """

    _log = Logger()

    def __init__(self, reactor, repoPath, delay=1.0, env=None,
                 commit=commitJournal):
        self.reactor = reactor
        self.repoPath = repoPath
        self.delay = delay
        self.env = env
        self._commit = commit
        self._timer = None
        self._running = None
        self._again = False
        #: how many commits ran (tests and metrics)
        self.commits = 0

    def changed(self):
        """
        The journal changed: commit soon.
        """
        if self._running is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.delay)
        else:
            self._timer = self.reactor.callLater(self.delay, self._run)

    def _run(self):
        self._timer = None
        self._again = False
        self._running = defer.maybeDeferred(
            self._commit, self.repoPath, env=self.env, reactor=self.reactor)

        def failed(reason):
            self._log.warn("could not commit the git-annex branch of {repo}: "
                           "{why}", repo=self.repoPath,
                           why=reason.getErrorMessage())

        def done(_):
            self.commits += 1
            self._running = None
            if self._again:
                self.changed()

        self._running.addErrback(failed).addBoth(done)

    def flush(self):
        """
        Commit now if anything is pending (shutdown).

        @return: a Deferred firing when the journal is committed.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._run()
        running = self._running
        if running is None:
            return defer.succeed(None)
        d = defer.Deferred()
        running.addBoth(lambda r: (d.callback(None), r)[1])
        return d
