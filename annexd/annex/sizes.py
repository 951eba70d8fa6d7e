# -*- test-case-name: tests.test_preferred -*-
"""
Repository sizes, as the balanced preferred content terms use them
(shared/spec/annex-state.md sections 4.2 and 4.3).

There is no size log: a repository's size is the sum of the sizes (the
C{-s} field, 0 when there is none) of every key that is not dead whose
location log shows the repository present, over the git-annex branch plus
the journal.  Every uuid in C{uuid.log} starts at 0; cluster uuids are
never counted.

L{RepoSizes.fromLocationLogs} computes that with one C{git ls-tree} and
one C{git cat-file --batch} pass.  annexd then keeps it current itself:
L{RepoSizes.apply} when a node confirms it got or lost content, and
L{RepoSizes.reserve} / L{RepoSizes.release} around a PUT in flight (only
additions are counted, like git-annex's live updates: better to think a
repository fuller than it is).

Not handled: unmerged sibling branches (run C{git annex merge} first) and
keys that are dead in the journal but not in the branch (git-annex keeps
counting their branch locations; this does not).
"""

import os
import re
import subprocess
import threading
from collections import deque
from collections.abc import Mapping

from annexd.annex import logs
from annexd.annex.branch import (
    BRANCH_REF, _gitExecutable, branchFileName, cutTornAppend,
    journalFileName)

__all__ = ["RepoSizes", "isLocationLogPath", "keyFromLogPath", "keySize"]

_UNESCAPE = re.compile(rb"&[acs]|%")
_UNESCAPED = {b"&a": b"&", b"&c": b":", b"&s": b"%", b"%": b"/"}


def isLocationLogPath(path):
    """
    Whether a git-annex branch path is a location log: exactly two C{/}
    and ending in C{.log} (not C{.log.met}, C{.log.web}, ...).

    @type path: L{str} or L{bytes}
    @rtype: L{bool}
    """
    if isinstance(path, str):
        return path.count("/") == 2 and path.endswith(".log")
    return path.count(b"/") == 2 and path.endswith(b".log")


def keyFromLogPath(path):
    """
    The key of a location log path: its file name without C{.log}, with
    git-annex's key file escaping reversed (C{%} -> C{/}, C{&c} -> C{:},
    C{&s} -> C{%}, C{&a} -> C{&}, left to right).

    @type path: L{bytes} or L{str}
    @rtype: L{bytes}
    """
    if isinstance(path, str):
        path = os.fsencode(path)
    name = path.rsplit(b"/", 1)[-1]
    if name.endswith(b".log"):
        name = name[:-4]
    return _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(0)], name)


def keySize(key):
    """
    The C{-s} field of a key (an L{annexd.protocol.keys.Key} or its
    serialization), or L{None}.

    @rtype: L{int} or L{None}
    """
    size = getattr(key, "size", None)
    if size is not None or not isinstance(key, bytes):
        return size
    sep = key.find(b"--")
    if sep < 0:
        return None
    for part in key[:sep].split(b"-")[1:]:
        if part[:1] == b"s" and part[1:].isdigit():
            return int(part[1:])
    return None


def _raw(key):
    raw = getattr(key, "raw", key)
    if not isinstance(raw, bytes):
        raise TypeError("a key is a Key or bytes")
    return raw


class RepoSizes(Mapping):
    """
    uuid -> repository size in bytes: the committed sizes (branch + journal
    as swept, plus L{apply}'d changes) plus the sizes of the PUTs in
    flight (L{reserve}).

    A uuid is in the mapping when C{uuid.log} lists it, when some key is
    present there, or when it has a reservation; L{get} gives 0 for any
    other.

    With C{trackKeys} (the default) it remembers which repositories hold
    each key, so L{apply} and L{reserve} are idempotent per C{(key,
    uuid)}.
    """

    def __init__(self, sizes=None, holders=None, trackKeys=True):
        """
        @param sizes: initial uuid -> committed size.
        @param holders: initial key L{bytes} -> iterable of the uuids that
            hold it (used only with C{trackKeys}).
        @param trackKeys: remember the holders of every key.
        """
        self._sizes = dict(sizes or {})
        self._trackKeys = trackKeys
        self._index = {}
        self._uuids = []
        self._holders = {}
        if trackKeys:
            for key, uuids in (holders or {}).items():
                mask = 0
                for uuid in uuids:
                    mask |= self._bit(uuid)
                if mask:
                    self._holders[key] = mask
        self._reservations = {}
        self._reserved = {}
        self._reservedKeys = {}
        self._lock = threading.Lock()
        self._origin = None

    # -------------------------------------------------------------- sweep

    @classmethod
    def fromLocationLogs(cls, gitDir, reader=None, env=None, trackKeys=True):
        """
        Sum the key sizes in every location log of the repository at
        C{gitDir} (branch and journal; blocking).

        The branch's location logs are found with C{git ls-tree -r -z}
        (paths with exactly two C{/} ending in C{.log}) and read with one
        C{git cat-file --batch}; the journal's (and private journal's)
        files of that shape are added to their branch content (every log
        is a union).  Dead keys (every uuid's status C{X}) count nowhere.

        @param gitDir: the git directory.
        @param reader: an L{annexd.annex.branch.BranchReader} of the same
            repository, whose journal directories and environment are
            used (optional).
        @param env: the environment for git (default: the reader's, else
            C{os.environ}).
        @param trackKeys: see L{RepoSizes}.
        @rtype: L{RepoSizes}
        """
        gitDir = os.path.abspath(gitDir)
        if env is None and reader is not None:
            env = getattr(reader, "_env", None)
        journalDirs = [os.path.join(gitDir, "annex", "journal"),
                       os.path.join(gitDir, "annex", "journal-private")]
        if reader is not None:
            journalDirs = [reader.journalDir, reader.privateJournalDir]

        # The journal is read first: git-annex updates the branch before it
        # deletes the journal files it committed, so a change is seen in
        # one place or the other (the union makes seeing both harmless).
        journal = {}
        for directory in journalDirs:
            for name, data in _journalFiles(directory):
                path = os.fsencode(branchFileName(name))
                if isLocationLogPath(path) or path == b"uuid.log":
                    journal[path] = journal.get(path, b"") + data

        commit = _branchCommit(_gitExecutable(env), gitDir, env)
        sizes = {}
        holders = {}
        described = set()

        def handle(path, data):
            extra = journal.pop(path, None)
            if extra is not None:
                data += extra
            if path == b"uuid.log":
                described.update(logs.parseOldUUIDLog(data))
                return
            entries = logs.parsePresenceLog(data)
            present = [u for u, (clock, status) in entries.items()
                       if status == logs.PRESENT]
            if not present:
                return  # nothing present, or a dead key
            key = keyFromLogPath(path)
            if b"--" not in key:
                return
            size = keySize(key) or 0
            present = [u for u in present if not logs.isClusterUUID(u)]
            for uuid in present:
                sizes[uuid] = sizes.get(uuid, 0) + size
            if trackKeys and present:
                holders[key] = present

        for path, data in _branchLogs(_gitExecutable(env), gitDir, env):
            handle(path, data)
        for path in list(journal):
            if path in journal:
                handle(path, b"")
        for uuid in described:
            sizes.setdefault(uuid, 0)
        result = cls(sizes, holders, trackKeys)
        result._origin = (gitDir, env, commit, journalDirs)
        return result

    def reload(self):
        """
        Bring the sizes up to date with the git-annex branch after it
        changed (a commit, a merge): only the location logs the commits
        changed are read, so this costs what the change costs, not what the
        repository holds.  Needs a L{RepoSizes} made by
        L{fromLocationLogs} with C{trackKeys}.

        @return: how many location logs were read.
        """
        if self._origin is None:
            raise ValueError("only swept sizes can be reloaded")
        gitDir, env, old, journalDirs = self._origin
        git = _gitExecutable(env)
        new = _branchCommit(git, gitDir, env)
        if new == old or new is None:
            return 0
        if old is None:
            changed = None
        else:
            diff = _run(git, gitDir, env, "diff-tree", "-r", "-z",
                        "--no-renames", "--name-only", old.decode(),
                        new.decode())
            changed = [p for p in diff.stdout.split(b"\0")
                       if isLocationLogPath(p)]
        if changed is None or not self._trackKeys:
            fresh = RepoSizes.fromLocationLogs(gitDir, env=env,
                                               trackKeys=self._trackKeys)
            with self._lock:
                self._sizes = fresh._sizes
                self._index, self._uuids = fresh._index, fresh._uuids
                self._holders = fresh._holders
            self._origin = fresh._origin
            return -1
        contents = _readBlobs(git, gitDir, env, new, changed)
        for path in changed:
            data = contents.get(path, b"")
            journalName = journalFileName(os.fsdecode(path))
            for directory in journalDirs:
                try:
                    with open(os.path.join(directory, journalName), "rb") as f:
                        data += cutTornAppend(f.read())
                except OSError:
                    pass
            entries = logs.parsePresenceLog(data)
            now = {u for u, (clock, status) in entries.items()
                   if status == logs.PRESENT and not logs.isClusterUUID(u)}
            key = keyFromLogPath(path)
            before = set(self.holders(key))
            for uuid in before - now:
                self.apply(key, uuid, False)
            for uuid in now - before:
                self.apply(key, uuid, True)
        self._origin = (gitDir, env, new, journalDirs)
        return len(changed)

    # ------------------------------------------------------------ mapping

    def _bit(self, uuid):
        index = self._index.get(uuid)
        if index is None:
            index = self._index[uuid] = len(self._uuids)
            self._uuids.append(uuid)
        return 1 << index

    def __getitem__(self, uuid):
        committed = self._sizes.get(uuid)
        reserved = self._reserved.get(uuid)
        if committed is None and reserved is None:
            raise KeyError(uuid)
        return (committed or 0) + (reserved or 0)

    def __contains__(self, uuid):
        return uuid in self._sizes or uuid in self._reserved

    def __iter__(self):
        return iter(set(self._sizes) | set(self._reserved))

    def __len__(self):
        return len(set(self._sizes) | set(self._reserved))

    def get(self, uuid, default=0):
        """
        The size of C{uuid} (with its reservations), C{default} when
        unknown.

        @rtype: L{int}
        """
        try:
            return self[uuid]
        except KeyError:
            return default

    def committed(self, uuid):
        """
        The size of C{uuid} without the PUTs in flight.

        @rtype: L{int}
        """
        return self._sizes.get(uuid, 0)

    def reserved(self, uuid):
        """
        The bytes reserved on C{uuid} by PUTs in flight.

        @rtype: L{int}
        """
        return self._reserved.get(uuid, 0)

    def holders(self, key):
        """
        The uuids known to hold C{key} (with C{trackKeys}).

        @rtype: L{frozenset} of uuid L{bytes}
        """
        mask = self._holders.get(_raw(key), 0)
        return frozenset(u for i, u in enumerate(self._uuids)
                         if mask >> i & 1)

    def __repr__(self):
        return "<RepoSizes %r>" % ({u: self[u] for u in self},)

    # ------------------------------------------------------- live updates

    def apply(self, key, uuid, present):
        """
        Record that C{uuid} got (C{present} true) or lost the content of
        C{key}: its size grows or shrinks by the key's size.  With
        C{trackKeys}, nothing changes when C{uuid} already had that status.
        A confirmed addition also ends C{uuid}'s reservation of the key.
        Cluster uuids are ignored.

        @return: the change in bytes.
        @rtype: L{int}
        """
        if logs.isClusterUUID(uuid):
            return 0
        raw = _raw(key)
        size = keySize(key) or 0
        with self._lock:
            if present:
                self._dropReservation(raw, uuid)
            if self._trackKeys:
                bit = self._bit(uuid)
                mask = self._holders.get(raw, 0)
                if bool(mask & bit) == bool(present):
                    self._sizes.setdefault(uuid, 0)
                    return 0
                mask = mask | bit if present else mask & ~bit
                if mask:
                    self._holders[raw] = mask
                else:
                    self._holders.pop(raw, None)
            delta = size if present else -size
            self._sizes[uuid] = self._sizes.get(uuid, 0) + delta
            return delta

    def reserve(self, key, uuid):
        """
        Count C{key}'s size in C{uuid}'s size while a PUT to it is in
        flight.  Several reservations of the same key on the same uuid
        count once; a uuid known to hold the key is not grown.  Cluster
        uuids are ignored.

        @return: whether the size grew.
        @rtype: L{bool}
        """
        if logs.isClusterUUID(uuid):
            return False
        raw = _raw(key)
        with self._lock:
            if self._trackKeys:
                bit = self._index.get(uuid)
                if bit is not None and self._holders.get(raw, 0) >> bit & 1:
                    return False
            count = self._reservations.get((raw, uuid), 0)
            self._reservations[(raw, uuid)] = count + 1
            if count:
                return False
            self._reserved[uuid] = (self._reserved.get(uuid, 0)
                                    + (keySize(raw) or 0))
            self._reservedKeys[uuid] = self._reservedKeys.get(uuid, 0) + 1
            return True

    def release(self, key, uuid):
        """
        End one reservation of L{reserve} (the PUT ended, whatever its
        outcome; on success call L{apply} as well).

        @return: whether the size shrank.
        @rtype: L{bool}
        """
        raw = _raw(key)
        with self._lock:
            count = self._reservations.get((raw, uuid))
            if not count:
                return False
            if count > 1:
                self._reservations[(raw, uuid)] = count - 1
                return False
            self._dropReservation(raw, uuid)
            return True

    def _dropReservation(self, raw, uuid):
        if self._reservations.pop((raw, uuid), None) is None:
            return
        keys = self._reservedKeys[uuid] - 1
        if keys:
            self._reservedKeys[uuid] = keys
            self._reserved[uuid] -= keySize(raw) or 0
        else:
            del self._reservedKeys[uuid]
            del self._reserved[uuid]


def _journalFiles(directory):
    """
    C{(name, content)} of the files of a journal directory (torn appends
    cut back); nothing if it does not exist.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError):
            continue  # committed meanwhile: the branch has it
        yield name, cutTornAppend(data)


def _run(git, gitDir, env, *args):
    return subprocess.run(
        [git, "--git-dir=" + gitDir, *args], env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)


def _branchLogs(git, gitDir, env):
    """
    C{(path, content)} of C{uuid.log} and every location log in the
    git-annex branch: C{git ls-tree -r -z} of the branch's tree streamed
    into one C{git cat-file --batch --buffer} by a writer thread.
    """
    tree = _run(git, gitDir, env, "rev-parse", "--verify", "--quiet",
                BRANCH_REF.decode("ascii") + "^{tree}")
    if tree.returncode != 0:
        return  # no git-annex branch yet
    tree = tree.stdout.strip()
    lsTree = subprocess.Popen(
        [git, "--git-dir=" + gitDir, "ls-tree", "-r", "-z", tree.decode()],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    catFile = subprocess.Popen(
        [git, "--git-dir=" + gitDir, "cat-file", "--batch", "--buffer"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    paths = deque()
    failure = []

    def feed():
        try:
            pending = b""
            while True:
                chunk = lsTree.stdout.read(1 << 16)
                if not chunk:
                    break
                entries = (pending + chunk).split(b"\0")
                pending = entries.pop()
                requests = []
                for entry in entries:
                    info, tab, path = entry.partition(b"\t")
                    parts = info.split(b" ")
                    if (len(parts) != 3 or parts[1] != b"blob"
                            or not (isLocationLogPath(path)
                                    or path == b"uuid.log")):
                        continue
                    paths.append(path)
                    requests.append(parts[2] + b"\n")
                if requests:
                    catFile.stdin.write(b"".join(requests))
        except BaseException as e:  # reported by the reader
            failure.append(e)
        finally:
            try:
                catFile.stdin.close()
            except OSError:
                pass

    writer = threading.Thread(target=feed, name="RepoSizes-feed",
                              daemon=True)
    writer.start()
    out = catFile.stdout
    completed = False
    try:
        while True:
            header = out.readline()
            if not header:
                break
            parts = header.split()
            path = paths.popleft()
            if len(parts) != 3:
                continue  # "<sha> missing"
            size = int(parts[2])
            content = out.read(size + 1)
            if len(content) != size + 1:
                raise RuntimeError("git cat-file ended early")
            yield path, content[:-1]
        completed = True
    finally:
        if not completed:
            for proc in (lsTree, catFile):
                if proc.poll() is None:
                    proc.kill()
        writer.join()
        for proc in (lsTree, catFile):
            proc.wait()
            proc.stdout.close()
    if failure:
        raise failure[0]
    if lsTree.returncode != 0:
        raise RuntimeError("git ls-tree failed (%s)" % (lsTree.returncode,))


def _branchCommit(git, gitDir, env):
    result = _run(git, gitDir, env, "rev-parse", "--verify", "--quiet",
                  BRANCH_REF.decode("ascii"))
    return result.stdout.strip() or None if result.returncode == 0 else None


def _readBlobs(git, gitDir, env, commit, paths):
    """
    {path: content} of C{paths} at C{commit} (missing ones left out), with
    one C{git cat-file --batch}.
    """
    request = b"".join(commit + b":" + path + b"\n" for path in paths)
    result = subprocess.run([git, "--git-dir=" + gitDir, "cat-file", "--batch"],
                            input=request, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    out = result.stdout
    contents = {}
    pos = 0
    for path in paths:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3:
            continue
        size = int(header[2])
        contents[path] = out[pos:pos + size]
        pos += size + 1
    return contents
