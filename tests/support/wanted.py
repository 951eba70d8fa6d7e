"""
A real git-annex repository that answers "does repository U want key K?".

L{build_oracle_repo} makes one non-bare git-annex repository, the
I{gateway}, whose git-annex branch knows a number of I{member}
repositories.  Each member is a real repository (C{git init} + C{git annex
reinit UUID} + C{git annex describe here NAME}, so its uuid is
deterministic) whose git-annex branch the gateway fetches and merges once:
after that the members are only uuids with descriptions in the gateway's
C{uuid.log} (their remotes are removed again, so that nothing in the
gateway's git config refers to them).

L{OracleRepo} then drives the gateway with git-annex's own commands:

    - groups (C{git annex group}/C{ungroup}), preferred and required
      content (C{git annex wanted}/C{required}/C{groupwanted}), C{maxsize},
      C{numcopies}, trust (C{trust}/C{semitrust}/C{untrust}/C{dead});
    - synthetic keys, each given one annexed file (C{git annex fromkey
      --force --batch}: no content is needed);
    - location state (C{git annex setpresentkey --batch}; it writes the
      journal and does not commit, see shared/spec/annex-state.md surprise
      6);
    - an expression C{git annex wanted} refuses to store
      (L{OracleRepo.write_raw_preferred}: written to the journal the way
      git-annex writes it);
    - metadata (C{git annex metadata --batch --json}) and urls (C{git
      annex registerurl}/C{unregisterurl --batch});

and asks git-annex which keys a member wants with C{git annex find
--want-get-by=UUID --format='${key}\\n'} (L{OracleRepo.oracle}, optionally
with C{--rebalance}), which keys the location logs give a member (C{find
--in=UUID}, L{OracleRepo.located}), and how large git-annex thinks every
repository is (C{git annex maxsize --json}, L{OracleRepo.repo_sizes}).  Any
matching option replaces C{find}'s default of listing only files whose
content is present here (doc/git-annex-find.mdwn), so C{--want-get-by}
alone lists every annexed file the member wants, present here or not.
C{find} evaluates in file context: the associated file is the path of the
key's file relative to the repository top.

L{random_keys} makes a reproducible mix of synthetic keys and file names.
"""

import fcntl
import json
import os
import random
import shutil
import time
import uuid as uuidlib
from dataclasses import dataclass

from tests.support.annex import AnnexEnvironment

__all__ = [
    "OracleRepo", "SyntheticKey", "build_oracle_repo", "member_uuid",
    "random_keys", "random_presence",
]


def member_uuid(seed, index):
    """
    The deterministic uuid of member C{index} for C{seed}: a version 4
    uuid drawn from C{random.Random((seed, index))}.

    @rtype: L{str}
    """
    rng = random.Random("annexd-oracle-member:%s:%d" % (seed, index))
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class SyntheticKey:
    """
    A key without content and the annexed file that points to it.

    @ivar key: the key, as git-annex serialises it.
    @ivar file: its file, relative to the repository top, C{/}-separated.
    @ivar size: the key's C{-s} field, or L{None}.
    """

    key: str
    file: str
    size: int | None


class OracleRepo:
    """
    The gateway repository built by L{build_oracle_repo}.

    @ivar env: its L{AnnexEnvironment}.
    @ivar path: the gateway's work tree.
    @ivar gitDir: its C{.git} directory.
    @ivar uuid: the gateway's own uuid.
    @ivar members: member name -> uuid, in creation order.
    @ivar keys: the L{SyntheticKey}s added so far.
    """

    def __init__(self, env, path, uuid, members):
        self.env = env
        self.path = path
        self.gitDir = os.path.join(path, ".git")
        self.uuid = uuid
        self.members = dict(members)
        self.keys = []

    def __repr__(self):
        return "<OracleRepo %s: %d members, %d keys>" % (
            self.path, len(self.members), len(self.keys))

    # ------------------------------------------------------------ running

    def annex(self, *args, **kw):
        """
        C{git annex ARGS} in the gateway (see L{AnnexEnvironment.annex}).
        """
        return self.env.annex(self.path, *args, **kw)

    def git(self, *args, **kw):
        """
        C{git ARGS} in the gateway (see L{AnnexEnvironment.git}).
        """
        return self.env.git(self.path, *args, **kw)

    def ref(self, member):
        """
        How git-annex commands are told about a member: its uuid (a member
        name is also accepted here; uuids pass through).

        @rtype: L{str}
        """
        return self.members.get(member, member)

    # ------------------------------------------------------ configuration

    def group(self, member, *groups):
        """
        Add C{member} to C{groups} (C{git annex group}).
        """
        for g in groups:
            self.annex("group", "--quiet", self.ref(member), g)

    def ungroup(self, member, *groups):
        """
        Remove C{member} from C{groups} (C{git annex ungroup}).
        """
        for g in groups:
            self.annex("ungroup", "--quiet", self.ref(member), g)

    def groups(self, member):
        """
        The groups of C{member} as git-annex reports them.

        @rtype: L{set} of L{str}
        """
        return set(self.annex("group", self.ref(member)).split())

    def set_groups(self, member, groups):
        """
        Make C{member}'s groups exactly C{groups}.
        """
        current = self.groups(member)
        groups = set(groups)
        self.ungroup(member, *sorted(current - groups))
        self.group(member, *sorted(groups - current))

    def wanted(self, member, expression):
        """
        Set C{member}'s preferred content (C{git annex wanted}); C{""}
        unsets it.  git-annex refuses expressions that do not parse
        (L{AnnexCommandError}).
        """
        self.annex("wanted", "--quiet", self.ref(member), expression)

    def required(self, member, expression):
        """
        Set C{member}'s required content (C{git annex required}); C{""}
        unsets it.
        """
        self.annex("required", "--quiet", self.ref(member), expression)

    def groupwanted(self, group, expression):
        """
        Set a group's preferred content (C{git annex groupwanted}).
        """
        self.annex("groupwanted", "--quiet", group, expression)

    def maxsize(self, member, size):
        """
        Set C{member}'s maxsize (C{git annex maxsize}; C{size} is a number
        of bytes or a string with units).
        """
        self.annex("maxsize", "--quiet", self.ref(member), str(size))

    def repo_sizes(self):
        """
        git-annex's own idea of the repositories' sizes (what the balanced
        family uses: its repository size database, location logs of the
        branch plus the journal) and maxsizes, from C{git annex maxsize
        --json}.  Dead repositories are not listed.

        @return: uuid -> C{(size, maxsize or None)}
        @rtype: L{dict}
        """
        info = json.loads(self.annex("maxsize", "--json").splitlines()[0])
        return {r["uuid"]: (r["size"]["size"], r["size"]["maxsize"])
                for r in info["repositories"]}

    def numcopies(self, n):
        """
        Set numcopies (C{git annex numcopies N}).
        """
        self.annex("numcopies", "--quiet", str(n))

    def trust(self, member, level):
        """
        Set C{member}'s trust: C{trust}, C{semitrust}, C{untrust} or
        C{dead} (the git-annex command of that name).
        """
        if level not in ("trust", "semitrust", "untrust", "dead"):
            raise ValueError(level)
        self.annex(level, "--quiet", self.ref(member))

    def commit_journal(self):
        """
        Commit the journal to the git-annex branch (C{git annex merge}).
        """
        self.annex("merge", "--quiet")

    def journal_files(self):
        """
        The names of the files in the journal.

        @rtype: L{list} of L{str}
        """
        journal = os.path.join(self.gitDir, "annex", "journal")
        if not os.path.isdir(journal):
            return []
        return sorted(os.listdir(journal))

    def write_raw_preferred(self, member, expression,
                            log="preferred-content.log"):
        """
        Store C{expression} as C{member}'s preferred content without
        git-annex checking it, the way git-annex records it: the whole new
        C{preferred-content.log} (current journal file, else the branch's
        file, plus one line C{UUID EXPRESSION timestamp=Ts} newer than every
        other line) written to the journal under git-annex's journal lock
        (C{.git/annex/journal.lck}) and renamed into place.  The next
        committing git-annex command commits it.

        This is how an expression that C{git annex wanted} refuses (one
        that does not parse) can still reach a repository (written by
        another, e.g. newer, git-annex).
        """
        u = self.ref(member)
        if any(c in expression for c in "\r\n"):
            raise ValueError("an expression is one line")
        annex_dir = os.path.join(self.gitDir, "annex")
        journal = os.path.join(annex_dir, "journal")
        os.makedirs(journal, exist_ok=True)
        fd = os.open(os.path.join(annex_dir, "journal.lck"),
                     os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            target = os.path.join(journal, log)
            if os.path.exists(target):
                with open(target, "rb") as f:
                    current = f.read()
            else:
                result = self.env.run(
                    ["git", "cat-file", "blob", "refs/heads/git-annex:" + log],
                    cwd=self.path, check=False)
                current = result.stdout if result.returncode == 0 else b""
            newest = int(time.time())
            for line in current.splitlines():
                stamp = line.rsplit(b" ", 1)[-1]
                if stamp.startswith(b"timestamp=") and stamp.endswith(b"s"):
                    try:
                        newest = max(newest, int(float(stamp[10:-1])) + 1)
                    except ValueError:
                        pass
            if current and not current.endswith(b"\n"):
                current += b"\n"
            data = current + ("%s %s timestamp=%ds\n" % (
                u, expression, newest)).encode("utf-8")
            tmpdir = os.path.join(annex_dir, "othertmp")
            os.makedirs(tmpdir, exist_ok=True)
            tmp = os.path.join(tmpdir, "oracle-%d" % (os.getpid(),))
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        finally:
            os.close(fd)

    # --------------------------------------------------------------- keys

    def add_keys(self, keys):
        """
        Give every L{SyntheticKey} its file (C{git annex fromkey --force
        --batch -z}: no content needed) and commit them.
        """
        keys = list(keys)
        if not keys:
            return
        data = b"".join(
            ("%s %s" % (k.key, k.file)).encode("utf-8") + b"\0"
            for k in keys)
        self.env.run(["git-annex", "fromkey", "--force", "--batch", "-z",
                      "--quiet"], cwd=self.path, input=data)
        self.git("commit", "-q", "-m", "add %d synthetic keys" % len(keys))
        self.keys.extend(keys)

    def set_present(self, changes):
        """
        Record location changes (C{git annex setpresentkey --batch}): each
        change is C{(key, uuid-or-member, present)}.  They stay in the
        journal until some git-annex command commits it.
        """
        lines = []
        for key, who, present in changes:
            if " " in key:
                raise ValueError("setpresentkey --batch: no space in keys")
            lines.append("%s %s %d\n" % (key, self.ref(who),
                                         1 if present else 0))
        if lines:
            self.env.run(["git-annex", "setpresentkey", "--batch"],
                         cwd=self.path, input="".join(lines))

    def set_metadata(self, entries):
        """
        Set metadata fields of keys (C{git annex metadata --batch --json}):
        each entry is C{(key, {field: [values]})}; the listed fields get
        exactly those values (so setting a field again records removals).
        """
        lines = [json.dumps({"key": key, "fields": fields}) + "\n"
                 for key, fields in entries]
        if lines:
            self.env.run(["git-annex", "metadata", "--batch", "--json"],
                         cwd=self.path, input="".join(lines))

    def register_urls(self, pairs, unregister=False):
        """
        Record (or with C{unregister}, forget) urls of keys (C{git annex
        registerurl --batch} / C{unregisterurl --batch}): each pair is
        C{(key, url)}.  This also records the key as present in the web
        special remote (uuid C{00000000-0000-0000-0000-000000000001}) while
        it has a url.
        """
        lines = ["%s %s\n" % (key, url) for key, url in pairs]
        if lines:
            self.env.run(["git-annex",
                          "unregisterurl" if unregister else "registerurl",
                          "--batch"], cwd=self.path, input="".join(lines))

    # ------------------------------------------------------------- oracle

    def find(self, *matching):
        """
        The keys of the annexed files that match the matching options
        C{matching} (C{git annex find MATCHING --format='${key}\\n'}; any
        matching option lifts C{find}'s default restriction to content
        present here).

        @rtype: L{set} of L{str}
        """
        if not matching:
            raise ValueError("without a matching option, find only lists "
                             "content present here")
        out = self.annex("find", *matching, "--format=${key}\\n")
        return set(line for line in out.split("\n") if line)

    def oracle(self, member, rebalance=False):
        """
        The keys whose files C{member} wants to get, according to git-annex:
        C{git annex find --want-get-by=UUID --format='${key}\\n'} over every
        annexed file in the gateway (file context, present here or not).

        @param rebalance: add git-annex's C{--rebalance} option (balanced
            terms act as their C{fully} forms).
        @rtype: L{set} of L{str}
        """
        extra = ("--rebalance",) if rebalance else ()
        return self.find(*extra, "--want-get-by=" + self.ref(member))

    def located(self, member):
        """
        The keys whose location log says C{member} has them, according to
        git-annex (C{git annex find --in=UUID}).

        @rtype: L{set} of L{str}
        """
        return self.find("--in=" + self.ref(member))


def build_oracle_repo(base_dir, members=5, names=None, seed=0, uuids=None,
                      annex=None):
    """
    Build the gateway repository and C{members} member repositories in
    C{base_dir} (which must not exist or be empty).

    Commands: C{git init gateway}, C{git annex init gateway}; for each
    member C{git init members/NAME}, C{git annex reinit UUID} (a
    deterministic uuid, L{member_uuid}), C{git annex describe here NAME};
    then in the gateway C{git remote add NAME ...}, C{git fetch}, C{git
    annex merge} (the members' C{uuid.log} lines become the gateway's) and
    C{git remote remove NAME}.  The gateway gets one commit on C{main}.

    @param members: how many members.
    @param names: their names (default C{m1}, C{m2}, ...).
    @param seed: varies the members' uuids.
    @param uuids: the members' uuids (default: L{member_uuid}C{(seed, i)}).
    @rtype: L{OracleRepo}
    """
    if os.path.exists(base_dir) and os.listdir(base_dir):
        raise ValueError("%s exists and is not empty" % (base_dir,))
    if names is None:
        names = ["m%d" % i for i in range(1, members + 1)]
    names = list(names)
    if len(names) != members or len(set(names)) != members:
        raise ValueError("need %d distinct member names" % (members,))
    if uuids is None:
        uuids = [member_uuid(seed, i) for i in range(1, members + 1)]
    uuids = list(uuids)
    if len(uuids) != members or len(set(uuids)) != members:
        raise ValueError("need %d distinct member uuids" % (members,))
    env = AnnexEnvironment(base_dir, annex)
    base = env.base_dir
    gw = os.path.join(base, "gateway")
    env.git(base, "init", "-q", gw)
    env.annex(gw, "init", "--quiet", "gateway")
    with open(os.path.join(gw, "README"), "w") as f:
        f.write("preferred content oracle\n")
    env.git(gw, "add", "README")
    env.git(gw, "commit", "-q", "-m", "seed")

    byname = {}
    os.makedirs(os.path.join(base, "members"))
    for name, u in zip(names, uuids):
        path = os.path.join(base, "members", name)
        env.git(base, "init", "-q", path)
        env.annex(path, "reinit", "--quiet", u)
        env.annex(path, "describe", "--quiet", "here", name)
        byname[name] = u
        env.git(gw, "remote", "add", name, path)
    env.git(gw, "fetch", "-q", "--all")
    env.annex(gw, "merge", "--quiet")
    for name in names:
        env.git(gw, "remote", "remove", name)
    shutil.rmtree(os.path.join(base, "members"))
    own = env.config(gw, "annex.uuid")
    repo = OracleRepo(env, gw, own, byname)
    known = repo.annex("info", "--fast", "--json")
    for name, u in byname.items():
        if u not in known:
            raise RuntimeError("member %s (%s) is not in uuid.log" % (name, u))
    return repo


# ----------------------------------------------------------- random keys

_EXTS = [".iso", ".mp3", ".tar.gz", ".txt", ".jpg", ".flac", "", ".dät"]
_DIRS = ["", "archive/", "public/", "k/", "x/public/", "public/sub/",
         "a/archive/b/", "docs/", "\u00fcn\u00efc\u00f6d\u00e9 dir/",
         "archive/2024/", "k/archive/", "music/"]
_WORDS = ["alpha", "beta", "gamma", "delta", "f002", "report", "movie",
          "\u00fcber", "caf\u00e9", "\u65e5\u672c", "song", "data",
          "photo", "backup"]
# Sizes around the thresholds the expressions use (1mb, 1MiB, 100kb, 5gb).
_EDGE_SIZES = [0, 1, 999, 1000, 1023, 1024, 999999, 1000000, 1000001,
               1048575, 1048576, 1048577, 100000, 102400, 5000000000,
               5368709120, 10 ** 10]


def _size(rng):
    r = rng.random()
    if r < 0.15:
        return rng.choice(_EDGE_SIZES)
    if r < 0.35:
        return rng.randrange(0, 2000)
    if r < 0.6:
        return rng.randrange(0, 2 * 10 ** 6)
    if r < 0.85:
        return rng.randrange(0, 2 * 10 ** 9)
    return rng.randrange(0, 10 ** 10 + 1)


def _hex(rng, n):
    return "%0*x" % (n, rng.getrandbits(4 * n))


def _key(rng):
    """
    One random key: C{(key, size)}.
    """
    kind = rng.random()
    size = _size(rng)
    ext = rng.choice(_EXTS)
    word = rng.choice(_WORDS)
    if kind < 0.30:
        return "SHA256E-s%d--%s%s" % (size, _hex(rng, 64), ext), size
    if kind < 0.38:
        return "SHA256E--%s%s" % (_hex(rng, 64), ext), None
    if kind < 0.44:
        return "SHA256-s%d--%s" % (size, _hex(rng, 64)), size
    if kind < 0.56:
        name = "%s%s/%s-%d%s" % (rng.choice(["", "dir/", "\u00e4/"]), word,
                                 word, rng.randrange(10 ** 6), ext)
        if rng.random() < 0.8:
            return "WORM-s%d-m%d--%s" % (
                size, rng.randrange(10 ** 9, 2 * 10 ** 9), name), size
        if rng.random() < 0.5:
            return "WORM-m%d--%s" % (rng.randrange(10 ** 9, 2 * 10 ** 9),
                                     name), None
        return "WORM--%s" % (name,), None
    if kind < 0.66:
        url = "https://example.com/%s/%s%%20%d&x=%s:%d%s" % (
            word, word, rng.randrange(10 ** 6), word, rng.randrange(100),
            ext)
        if rng.random() < 0.5:
            return "URL--%s" % (url,), None
        return "URL-s%d--%s" % (size, url), size
    if kind < 0.74:
        return "MD5-s%d--%s" % (size, _hex(rng, 32)), size
    if kind < 0.78:
        return "MD5E-s%d--%s%s" % (size, _hex(rng, 32), ext), size
    if kind < 0.81:
        return "SHA1-s%d--%s" % (size, _hex(rng, 40)), size
    if kind < 0.85:
        return "SHA512E-s%d--%s%s" % (size, _hex(rng, 128), ext), size
    if kind < 0.88:
        return "BLAKE2B256E-s%d--%s%s" % (size, _hex(rng, 64), ext), size
    if kind < 0.90:
        return "SHA3_256-s%d--%s" % (size, _hex(rng, 64)), size
    if kind < 0.92:
        return "XXH3-s%d--%s" % (size, _hex(rng, 16)), size
    if kind < 0.94:
        return "VURL-s%d--https://example.org/v/%s%d" % (
            size, word, rng.randrange(10 ** 6)), size
    if kind < 0.96:
        # A chunk key: the location log path is hashed without the chunk
        # fields, the balanced HMAC uses the whole key.
        chunk = max(1, size // 4) if size else 1
        return "SHA256-s%d-S%d-C%d--%s" % (
            size, chunk, rng.randrange(1, 5), _hex(rng, 64)), size
    if kind < 0.98:
        return "SKEIN256-s%d--%s" % (size, _hex(rng, 64)), size
    return "SHA256E-s%d--%s%s" % (size, _hex(rng, 64), ".ISO"), size


def random_keys(rng, count):
    """
    C{count} distinct random L{SyntheticKey}s: SHA256E with and without
    sizes, SHA256, WORM (with and without size and mtime, names with
    C{/} and non-ASCII), URL keys (with C{%}, C{&}, C{:}), MD5, MD5E, SHA1,
    SHA512E, BLAKE2B256E, SHA3_256, XXH3, VURL, chunk keys, SKEIN256; sizes
    from 0 to 10 GB with extra weight on the thresholds C{1mb}, C{1MiB},
    C{100kb}, C{5gb}.  Files go in directories like C{archive/},
    C{public/}, C{k/}, C{x/public/}, C{a/archive/b/}, a non-ASCII directory
    with a space, or the top; their names have extensions C{.iso},
    C{.mp3}, C{.tar.gz}, ... independent of the key's.

    @type rng: L{random.Random}
    @rtype: L{list} of L{SyntheticKey}
    """
    keys = []
    seen_keys = set()
    seen_files = set()
    while len(keys) < count:
        key, size = _key(rng)
        if key in seen_keys:
            continue
        name = "%s%s-%d%s" % (
            rng.choice(_DIRS), rng.choice(_WORDS), len(keys),
            rng.choice(_EXTS + [" copy.iso", ".ISO"]))
        if name in seen_files:
            continue
        seen_keys.add(key)
        seen_files.add(name)
        keys.append(SyntheticKey(key, name, size))
    return keys


def random_presence(rng, keys, uuids, probability=0.3):
    """
    A random location state: key -> set of uuids (each uuid independently
    with C{probability}).

    @rtype: L{dict} of L{str} to L{set} of L{str}
    """
    return {k.key: {u for u in uuids if rng.random() < probability}
            for k in keys}
