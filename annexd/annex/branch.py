# -*- test-case-name: tests.test_annexstate -*-
"""
Reading files of the git-annex branch the way git-annex does.

The effective content of a branch file (shared/spec/annex-state.md
section 1.1) combines:

  1. the blob in C{refs/heads/git-annex};
  2. the journal, C{GITDIR/annex/journal/<mangled path>}: changes not
     committed yet.  A journal file holds the whole file and B{replaces} the
     branch blob;
  3. the private journal, C{GITDIR/annex/journal-private/<mangled path>}:
     when it has the file, the result is branch blob + journal file +
     private file (every log is union-merged on read, so duplicates are
     harmless);
  4. unmerged sibling branches: every other C{*/git-annex} ref (under
     C{refs/remotes/} and C{refs/heads/}, e.g. C{refs/remotes/node1/git-annex}
     or a pushed C{refs/heads/synced/git-annex}) whose sha is neither in
     C{GITDIR/annex/mergedrefs} nor in C{GITDIR/annex/ignoredrefs} and that
     has commits the branch lacks: its blob is appended, which is what
     merging it would produce.

Journal content that does not end in C{\\n} is cut back to its last C{\\n}
(a torn append).  A file that exists nowhere reads as C{b""}.

To be safe against git-annex committing the journal at the same time, a
read looks at the journal B{before} it resolves the branch: git-annex
updates the branch before it deletes the journal files it committed, so a
change is always seen in one place or the other.

L{BranchReader} reads blobs through long-lived C{git cat-file --batch}
children: a blocking one (L{subprocess}) for L{BranchReader.readSync} and
one driven by the reactor for L{BranchReader.read}.  Blobs are cached by
the tree sha of the branch (and the commit sha of siblings), so unchanged
files cost one small request per batch of reads.

Refs are found by reading the ref files and C{packed-refs} directly, so
repositories using the C{reftable} ref format would see no siblings; a
gateway created by annexd or C{git init} uses the files format.  Tags named
C{git-annex} and linked worktrees are not considered.
"""

import os
import shutil
import subprocess
import threading
from collections import OrderedDict, deque

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure

__all__ = [
    "BranchReader", "CatFileError", "findGitDir", "journalFileName",
    "branchFileName", "cutTornAppend", "BRANCH_REF",
]

#: The full name of the git-annex branch.
BRANCH_REF = b"refs/heads/git-annex"

#: Default bounds of the blob cache.
CACHE_ENTRIES = 8192
CACHE_BYTES = 32 * 1024 * 1024

#: How much of cat-file's stderr is kept for error messages.
STDERR_KEEP = 4096


class CatFileError(Exception):
    """
    The C{git cat-file --batch} child failed, ended, or said something
    unexpected.
    """


def _gitExecutable(env):
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    git = shutil.which("git", path=path)
    if git is None:
        raise FileNotFoundError("git not found on PATH %r" % (path,))
    return git


def findGitDir(repoPath, env=None):
    """
    The absolute git directory of a repository: C{repoPath} itself for a
    bare repository, C{repoPath/.git} (or wherever it points) otherwise.
    Runs C{git rev-parse --absolute-git-dir}.

    @param repoPath: the repository (its top or its git directory).
    @type repoPath: L{str}
    @param env: the environment for git (default: C{os.environ}).
    @rtype: L{str}
    @raise subprocess.CalledProcessError: if it is not a repository.
    """
    result = subprocess.run(
        [_gitExecutable(env), "rev-parse", "--absolute-git-dir"],
        cwd=repoPath, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return os.fsdecode(result.stdout.rstrip(b"\n"))


def journalFileName(branchPath):
    """
    The journal's name for a branch file: every C{_} doubled, then every
    C{/} turned into C{_} (C{2d5/f2a/K_x.log} is C{2d5_f2a_K__x.log}).

    @type branchPath: L{str}
    @rtype: L{str}
    """
    return branchPath.replace("_", "__").replace("/", "_")


def branchFileName(journalName):
    """
    The inverse of L{journalFileName}: read left to right, C{__} is C{_}
    and a single C{_} is C{/} (a lone C{_} at the very end is dropped, as
    git-annex's C{fileJournal} does).

    @type journalName: L{str}
    @rtype: L{str}
    """
    out = []
    i, n = 0, len(journalName)
    while i < n:
        c = journalName[i]
        if c != "_":
            out.append(c)
            i += 1
        elif i + 1 >= n:
            i += 1
        elif journalName[i + 1] == "_":
            out.append("_")
            i += 2
        else:
            out.append("/")
            i += 1
    return "".join(out)


def cutTornAppend(data):
    """
    Cut journal content that does not end in C{\\n} back to its last
    C{\\n} (to nothing when it has none).

    @type data: L{bytes}
    @rtype: L{bytes}
    """
    if not data or data.endswith(b"\n"):
        return data
    return data[:data.rfind(b"\n") + 1]


def _readFile(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _isSha(text):
    return len(text) in (40, 64) and all(c in b"0123456789abcdef"
                                        for c in text)


def _dirStamp(path):
    """
    What changes when a directory's entries (or a file's content) do
    (L{None} if it is gone).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino)


class _StatCache:
    """
    A file parsed again only when its stat changes.
    """

    def __init__(self, path, parse):
        self.path = path
        self.parse = parse
        self.signature = None
        self.value = parse(b"")

    def get(self):
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if signature != self.signature:
            data = _readFile(self.path) if signature is not None else None
            self.value = self.parse(data or b"")
            self.signature = signature
        return self.value


def _parseLooseRef(data):
    sha = data.strip()
    return sha if _isSha(sha) else None


def _parsePackedRefs(data):
    refs = {}
    for line in data.split(b"\n"):
        if not line or line[:1] in (b"#", b"^"):
            continue
        sha, _, name = line.partition(b" ")
        if _isSha(sha):
            refs[name.decode("utf-8", "surrogateescape")] = sha
    return refs


def _parseRefShas(data):
    """
    The shas at the start of each line (C{mergedrefs}: C{SHA\\tREF};
    C{ignoredrefs}: C{SHA}).
    """
    shas = set()
    for line in data.split(b"\n"):
        sha = line.split(b"\t", 1)[0].strip()
        if _isSha(sha):
            shas.add(sha)
    return frozenset(shas)


def _parseHeader(header):
    """
    C{(sha, type, size)} for a cat-file header, L{None} for a missing
    object.
    """
    if header.endswith((b" missing", b" ambiguous")):
        return None
    parts = header.split(b" ")
    if len(parts) != 3 or not parts[2].isdigit():
        raise CatFileError("unexpected cat-file output %r" % (header[:200],))
    return parts[0], parts[1], int(parts[2])


def _treeOf(commit):
    """
    The tree sha in a commit object's text.
    """
    for line in commit.split(b"\n"):
        if line.startswith(b"tree "):
            return line[5:].strip()
        if not line:
            break
    raise CatFileError("no tree in commit object")


class _SyncCatFile:
    """
    A blocking C{git cat-file --batch} child.
    """

    def __init__(self, argv, env):
        self._proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)

    def request(self, name):
        """
        @return: C{(sha, type, content)}, or L{None} if missing.
        """
        proc = self._proc
        try:
            proc.stdin.write(name + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline()
            if not header.endswith(b"\n"):
                raise CatFileError("git cat-file ended")
            parsed = _parseHeader(header[:-1])
            if parsed is None:
                return None
            sha, kind, size = parsed
            content = proc.stdout.read(size + 1)
            if len(content) != size + 1:
                raise CatFileError("git cat-file ended")
            return sha, kind, content[:-1]
        except (OSError, ValueError) as e:
            raise CatFileError("git cat-file failed: %s" % (e,))

    def close(self):
        proc = self._proc
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


class _CatFileProtocol(ProcessProtocol):
    """
    A C{git cat-file --batch} child driven by the reactor: requests are
    written at once and answered in order from a FIFO of L{Deferred}s.

    @ivar ended: L{Deferred}s fired when the child has exited.
    """

    def __init__(self):
        self._pending = deque()
        self._buffer = bytearray()
        self._expect = None
        self._stderr = bytearray()
        self._failure = None
        self.ended = []
        self.running = True

    def request(self, name):
        """
        @rtype: L{Deferred} firing with C{(sha, type, content)}, or L{None}
            for a missing object.
        """
        if not self.running or self._failure is not None:
            return defer.fail(self._failure or CatFileError(
                "git cat-file has ended"))
        d = defer.Deferred()
        self._pending.append(d)
        self.transport.write(name + b"\n")
        return d

    def outReceived(self, data):
        self._buffer += data
        try:
            self._parse()
        except CatFileError as e:
            self._fail(Failure(e))
            self.transport.signalProcess("KILL")

    def _parse(self):
        buf = self._buffer
        pos = 0
        try:
            while True:
                if self._expect is None:
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        break
                    header = bytes(buf[pos:nl])
                    pos = nl + 1
                    parsed = _parseHeader(header)
                    if parsed is None:
                        self._answer(None)
                    else:
                        self._expect = parsed
                else:
                    sha, kind, size = self._expect
                    if len(buf) - pos < size + 1:
                        break
                    content = bytes(buf[pos:pos + size])
                    pos += size + 1
                    self._expect = None
                    self._answer((sha, kind, content))
        finally:
            del buf[:pos]

    def _answer(self, result):
        if not self._pending:
            raise CatFileError("unrequested cat-file output")
        self._pending.popleft().callback(result)

    def errReceived(self, data):
        self._stderr += data
        del self._stderr[:-STDERR_KEEP]

    def _fail(self, failure):
        if self._failure is None:
            self._failure = failure
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(failure)

    def processEnded(self, reason):
        self.running = False
        detail = bytes(self._stderr).decode("utf-8", "replace").strip()
        self._fail(Failure(CatFileError(
            "git cat-file ended (%s)%s" % (
                reason.getErrorMessage(),
                (": " + detail) if detail else ""))))
        ended, self.ended = self.ended, []
        for d in ended:
            d.callback(None)


class BranchReader:
    """
    Reads the effective content of files of a repository's git-annex
    branch: branch blob, journal, private journal and unmerged sibling
    branches (see the module docstring).

    Use L{readSync} where blocking is acceptable (process start-up) and
    L{read} from the reactor.  Call L{close} when done.  L{read} must be
    called from the reactor thread; the blocking methods (L{readSync},
    L{readBranchSync}, L{readJournalFile}) may also be called from one
    other thread at a time (for example by L{annexd.annex.location.
    LocationLog.record} run with C{deferToThread}).

    @ivar gitDir: the repository's git directory.
    @ivar journalDir: C{gitDir/annex/journal}.
    @ivar privateJournalDir: C{gitDir/annex/journal-private}.
    """

    def __init__(self, gitDir, reactor=None, env=None,
                 cacheEntries=CACHE_ENTRIES, cacheBytes=CACHE_BYTES):
        """
        @param gitDir: the git directory (the repository itself when it is
            bare; see L{findGitDir}).
        @type gitDir: L{str}
        @param reactor: the reactor for L{read} (default: the global one).
        @param env: the environment for git children (default:
            C{os.environ}).
        @param cacheEntries: most blobs cached.
        @param cacheBytes: most bytes of blobs cached.
        """
        self.gitDir = os.path.abspath(gitDir)
        self.journalDir = os.path.join(self.gitDir, "annex", "journal")
        self.privateJournalDir = os.path.join(
            self.gitDir, "annex", "journal-private")
        self._reactor = reactor
        self._env = dict(env) if env is not None else None
        self._git = _gitExecutable(env)
        self._cache = OrderedDict()
        self._cacheLock = threading.Lock()
        self._cacheBytes = 0
        self._cacheEntriesMax = cacheEntries
        self._cacheBytesMax = cacheBytes
        self._inflight = {}
        self._sync = None
        self._syncLock = threading.Lock()
        self._proto = None
        self._batch = None
        self._closed = False
        self._newer = {}
        self._looseRefs = None
        self._resolved = None
        self._branchRef = _StatCache(
            os.path.join(self.gitDir, *BRANCH_REF.decode("ascii").split("/")),
            _parseLooseRef)
        self._packedRefs = _StatCache(
            os.path.join(self.gitDir, "packed-refs"), _parsePackedRefs)
        self._mergedRefs = _StatCache(
            os.path.join(self.gitDir, "annex", "mergedrefs"), _parseRefShas)
        self._ignoredRefs = _StatCache(
            os.path.join(self.gitDir, "annex", "ignoredrefs"), _parseRefShas)

    def _argv(self):
        return [self._git, "--git-dir=" + self.gitDir, "cat-file", "--batch"]

    # ----------------------------------------------------------- journal

    def journalPath(self, path):
        """
        Where the journal keeps branch file C{path}.

        @type path: L{str}
        @rtype: L{str}
        """
        return os.path.join(self.journalDir, journalFileName(path))

    def readJournalFile(self, path):
        """
        The journal's content for branch file C{path} (torn appends cut
        back), or L{None} when the journal does not have it.

        @type path: L{str}
        @rtype: L{bytes} or L{None}
        """
        data = _readFile(self.journalPath(path))
        return None if data is None else cutTornAppend(data)

    def _readJournals(self, path):
        journal = self.readJournalFile(path)
        private = _readFile(os.path.join(
            self.privateJournalDir, journalFileName(path)))
        if private is not None:
            private = cutTornAppend(private)
        return journal, private

    @staticmethod
    def _combine(journal, private, branch, siblings):
        if private is None:
            base = journal if journal is not None else branch
        else:
            base = branch + (journal or b"") + private
        return base + b"".join(siblings)

    # ------------------------------------------------------------- cache

    def _cacheGet(self, key):
        with self._cacheLock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def _cachePut(self, key, value):
        with self._cacheLock:
            if len(value) > self._cacheBytesMax // 4 or key in self._cache:
                return
            self._cache[key] = value
            self._cacheBytes += len(value)
            while (len(self._cache) > self._cacheEntriesMax
                   or self._cacheBytes > self._cacheBytesMax):
                _, old = self._cache.popitem(last=False)
                self._cacheBytes -= len(old)

    @staticmethod
    def _blobName(treeish, path):
        return treeish + b":" + os.fsencode(path)

    @staticmethod
    def _blobContent(result):
        if result is None or result[1] != b"blob":
            return b""
        return result[2]

    # ---------------------------------------------------------- siblings

    def _siblingRefs(self):
        """
        Every C{*/git-annex} ref under C{refs/heads} and C{refs/remotes}
        except the branch itself: C{{name: sha}}.
        """
        refs = {name: sha for name, sha in self._packedRefs.get().items()
                if name.endswith("/git-annex")
                and name.startswith(("refs/heads/", "refs/remotes/"))}
        refs.update(self._looseSiblingRefs())
        refs.pop(BRANCH_REF.decode("ascii"), None)
        return refs

    def _looseSiblingRefs(self):
        """
        The loose C{*/git-annex} refs, walked again only when a directory
        under C{refs/heads} or C{refs/remotes} changed: git writes a ref
        to a lock file renamed over it, which changes its directory, so
        the directories' stats (and the refs' own) are a complete
        signature.  (A read of the
        location log on every checkpresent spent most of its time walking
        these directories.)
        """
        cached = self._looseRefs
        if cached is not None and all(
                _dirStamp(path) == stamp for path, stamp in cached[0]):
            return cached[1]
        stamps = []
        refs = {}
        for top in ("refs/heads", "refs/remotes"):
            base = os.path.join(self.gitDir, top)
            stamps.append((base, _dirStamp(base)))
            for dirpath, dirnames, filenames in os.walk(base):
                if dirpath != base:
                    stamps.append((dirpath, _dirStamp(dirpath)))
                if "git-annex" not in filenames:
                    continue
                full = os.path.join(dirpath, "git-annex")
                name = top + "/" + os.path.relpath(full, base).replace(
                    os.sep, "/")
                # The ref itself too, should something write it in place.
                stamps.append((full, _dirStamp(full)))
                data = _readFile(full)
                sha = (data or b"").strip()
                if _isSha(sha):
                    refs[name] = sha
        self._looseRefs = (stamps, refs)
        return refs

    def _siblingCandidates(self, commit):
        """
        The sibling shas that may be unmerged, in ref name order, without
        the ones known merged or ignored.
        """
        skip = self._mergedRefs.get() | self._ignoredRefs.get()
        seen = []
        for name, sha in sorted(self._siblingRefs().items()):
            if sha != commit and sha not in skip and sha not in seen:
                seen.append(sha)
        return seen

    def _revListArgs(self, commit, sibling):
        return ["--git-dir=" + self.gitDir, "rev-list", "-n1",
                (commit + b".." + sibling).decode("ascii")]

    def _rememberNewer(self, commit, sibling, newer):
        if len(self._newer) > 4096:
            self._newer.clear()
        self._newer[(commit, sibling)] = newer

    def _siblingsSync(self, commit):
        result = []
        for sibling in self._siblingCandidates(commit):
            if commit is None:
                result.append(sibling)
                continue
            newer = self._newer.get((commit, sibling))
            if newer is None:
                proc = subprocess.run(
                    [self._git] + self._revListArgs(commit, sibling),
                    env=self._env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                newer = proc.returncode == 0 and bool(proc.stdout.strip())
                self._rememberNewer(commit, sibling, newer)
            if newer:
                result.append(sibling)
        return result

    def _siblingsAsync(self, commit):
        candidates = self._siblingCandidates(commit)
        if commit is None:
            return defer.succeed(candidates)
        unknown = [s for s in candidates if (commit, s) not in self._newer]
        if not unknown:
            return defer.succeed(
                [s for s in candidates if self._newer[(commit, s)]])

        def check(sibling):
            d = getProcessOutputAndValue(
                self._git, self._revListArgs(commit, sibling),
                env=self._env if self._env is not None else os.environ,
                reactor=self._getReactor())

            def done(result):
                out, err, code = result
                self._rememberNewer(commit, sibling,
                                    code == 0 and bool(out.strip()))
            return d.addCallback(done)

        d = defer.gatherResults([check(s) for s in unknown],
                                consumeErrors=True)
        d.addCallback(lambda _: [s for s in candidates
                                 if self._newer.get((commit, s))])
        return d

    # -------------------------------------------------------------- sync

    def _syncRequest(self, name):
        if self._closed:
            raise CatFileError("the reader is closed")
        if self._sync is None:
            self._sync = _SyncCatFile(self._argv(), self._env)
        try:
            return self._sync.request(name)
        except CatFileError:
            sync, self._sync = self._sync, None
            sync.close()
            raise

    def _syncBlob(self, treeish, path):
        key = (treeish, path)
        value = self._cacheGet(key)
        if value is None:
            value = self._blobContent(
                self._syncRequest(self._blobName(treeish, path)))
            self._cachePut(key, value)
        return value

    def _syncResolve(self):
        # The branch's sha from its loose ref (else packed-refs), so that a
        # read while the branch has not moved costs two stats, not a
        # round trip through cat-file; the commit is read when it moved.
        if self._closed:
            raise CatFileError("the reader is closed")
        sha = self._branchRef.get() or self._packedRefs.get().get(
            BRANCH_REF.decode("ascii"))
        resolved = self._resolved
        if sha is not None and resolved is not None and resolved[0] == sha:
            return resolved
        result = self._syncRequest(sha or BRANCH_REF)
        if result is None or result[1] != b"commit":
            return None, None
        resolved = (result[0], _treeOf(result[2]))
        if sha == result[0]:
            self._resolved = resolved
        return resolved

    def readBranchSync(self, path):
        """
        The blob of C{path} in C{refs/heads/git-annex} only (no journal,
        no siblings), blocking.

        @type path: L{str}
        @rtype: L{bytes}
        """
        with self._syncLock:
            commit, tree = self._syncResolve()
            return self._syncBlob(tree, path) if tree is not None else b""

    def readSync(self, path):
        """
        The effective content of branch file C{path}, blocking.

        @param path: e.g. C{"uuid.log"} or C{"39f/be7/WORM--test.log"}.
        @type path: L{str}
        @rtype: L{bytes}
        @raise CatFileError: if git fails.
        """
        with self._syncLock:
            journal, private = self._readJournals(path)
            commit, tree = self._syncResolve()
            siblings = self._siblingsSync(commit)
            branch = b""
            if tree is not None and (journal is None or private is not None):
                branch = self._syncBlob(tree, path)
            blobs = [self._syncBlob(s, path) for s in siblings]
            return self._combine(journal, private, branch, blobs)

    # ------------------------------------------------------------- async

    def _getReactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def _asyncRequest(self, name):
        if self._closed:
            return defer.fail(CatFileError("the reader is closed"))
        proto = self._proto
        if proto is None or not proto.running:
            proto = _CatFileProtocol()
            argv = self._argv()
            self._getReactor().spawnProcess(
                proto, argv[0], ["git"] + argv[1:],
                env=self._env if self._env is not None else os.environ)
            self._proto = proto
        return proto.request(name)

    def _asyncBlob(self, treeish, path):
        key = (treeish, path)
        value = self._cacheGet(key)
        if value is not None:
            return defer.succeed(value)
        d = defer.Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._inflight[key] = [d]

        def done(result):
            del self._inflight[key]
            if isinstance(result, Failure):
                for w in waiters:
                    w.errback(result)
            else:
                value = self._blobContent(result)
                self._cachePut(key, value)
                for w in waiters:
                    w.callback(value)

        self._asyncRequest(self._blobName(treeish, path)).addBoth(done)
        return d

    def _startBatch(self):
        waiters, self._batch = self._batch, None

        def resolved(result):
            if result is None or result[1] != b"commit":
                return None, None
            return result[0], _treeOf(result[2])

        def siblings(state):
            commit, tree = state
            return self._siblingsAsync(commit).addCallback(
                lambda sibs: (commit, tree, sibs))

        def deliver(result):
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

        d = self._asyncRequest(BRANCH_REF)
        d.addCallback(resolved)
        d.addCallback(siblings)
        d.addBoth(deliver)

    def _resolveBatch(self):
        """
        The branch state for reads whose journal has been looked at: one
        resolution, sent on the next reactor turn, serves every read made
        before it is sent.
        """
        if self._batch is None:
            self._batch = []
            self._getReactor().callLater(0, self._startBatch)
        d = defer.Deferred()
        self._batch.append(d)
        return d

    def read(self, path):
        """
        The effective content of branch file C{path}, without blocking on
        git (the journal files are read directly).

        @param path: e.g. C{"uuid.log"} or C{"39f/be7/WORM--test.log"}.
        @type path: L{str}
        @rtype: L{Deferred} firing with L{bytes}, or failing with
            L{CatFileError}.
        """
        if self._closed:
            return defer.fail(CatFileError("the reader is closed"))
        try:
            journal, private = self._readJournals(path)
        except OSError:
            return defer.fail()

        def gotState(state):
            commit, tree, siblings = state
            needBranch = tree is not None and (
                journal is None or private is not None)
            ds = [self._asyncBlob(tree, path) if needBranch
                  else defer.succeed(b"")]
            ds.extend(self._asyncBlob(s, path) for s in siblings)
            if len(ds) == 1:
                return ds[0].addCallback(
                    lambda branch: self._combine(journal, private, branch,
                                                 ()))
            d = defer.gatherResults(ds, consumeErrors=True)
            d.addCallback(lambda blobs: self._combine(
                journal, private, blobs[0], blobs[1:]))
            d.addErrback(lambda f: f.value.subFailure
                         if isinstance(f.value, defer.FirstError) else f)
            return d

        return self._resolveBatch().addCallback(gotState)

    # ------------------------------------------------------------- close

    def close(self):
        """
        Stop the cat-file children.  Reads afterwards fail.

        @rtype: L{Deferred} firing when the reactor-driven child (if any)
            has exited.
        """
        self._closed = True
        if self._sync is not None:
            sync, self._sync = self._sync, None
            sync.close()
        proto, self._proto = self._proto, None
        if proto is None or not proto.running:
            return defer.succeed(None)
        d = defer.Deferred()
        proto.ended.append(d)
        proto.transport.closeStdin()
        return d
