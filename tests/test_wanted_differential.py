"""
Differential test: annexd's preferred-content evaluation
(L{annexd.annex.preferred.wants}) against real git-annex.

One real git-annex repository (L{tests.support.wanted.build_oracle_repo})
knows eight repositories:

    - C{m1} .. C{m5}: the group C{g}; C{m1} and C{m2} are also in C{h};
    - C{o1}: an outsider (semitrusted, no group);
    - C{o2}: an untrusted outsider;
    - C{o3}: a dead repository (it was in C{g}; C{git annex dead} clears
      its groups).

It holds L{KEY_COUNT} random synthetic keys (seeded: L{SEED}), each given
one annexed file with C{git annex fromkey --force}, a random location
state (C{git annex setpresentkey}: the members, the gateway itself, some
lines recording removals), metadata for some keys (C{git annex metadata},
set twice for some, so the logs record removals too) and urls for others
(C{git annex registerurl}/C{unregisterurl}, which also mark the key
present in the web special remote); all that is committed, and before
every round a small random location change is made that stays in the
journal.

Each I{round} configures groups, preferred and required content, group
preferred content, numcopies, trust and maxsize with git-annex's own
commands, then asks git-annex, for every one of the eight repositories,
which keys it wants (C{git annex find --want-get-by=UUID}: file context,
the key's file as associated file), and asks annexd the same question for
every key with C{wants(WantContext(...), default=False)} (git-annex's
default for C{--want-get-by} when no expression applies), giving it what
annexd itself reads from the repository: the L{GatewayState}, the present
uuids (L{LocationLog.presentSync}), the repository sizes
(L{RepoSizes.fromLocationLogs}, also compared with git-annex's own
C{git annex maxsize --json}), and for rounds that use them the key's
metadata and urls (L{readKeyLogs}).  Every answer must agree; where one
does not, git-annex is asked again for that member, alone, before the
disagreement is reported.  The rounds come in three phases (shared/spec/annex-state.md
sections 3 and 4):

    - A: numcopies unset (1), no maxsize: the expression language, the
      balanced family, standard groups, groupwanted, required content,
      odd syntax and unparseable expressions;
    - B: numcopies 3 and C{m5} untrusted: C{lackingcopies} and
      C{balanced=g:lackingcopies};
    - C: maxsize set (C{m1} nearly full, C{m2} exactly full, C{m3} at 0,
      C{m4} with room, C{m5} none; the journal changes leave m1 and m2
      alone): balanced and sizebalanced, also with C{--rebalance}.

Key-only context (no associated file) is not covered: C{find} always has
a file, and C{findkeys --want-get-by} always answers no (section 3.8).

Everything runs once per test process (about a minute or two); the test
methods each check one round, C{test_oracle_*} check the oracle itself
(they do not need annexd).  A summary of every round is written to
C{wanted-differential.txt} in trial's working directory.  Set
C{ANNEXD_KEEP_ORACLE=1} to keep the repository (its path is in the
summary).
"""

import atexit
import os
import random
import shutil
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from twisted.trial import unittest

from tests.support.annex import _make_writable
from tests.support.wanted import (
    SyntheticKey, build_oracle_repo, random_keys)

#: Seed of everything random (keys, files, location states, uuids).
SEED = 20261026

#: Number of synthetic keys.
KEY_COUNT = 600

#: The repositories asked about, in order.
MEMBERS = ["m1", "m2", "m3", "m4", "m5", "o1", "o2", "o3"]

#: Their groups before any round (o3 is made dead, which clears them).
BASE_GROUPS = {
    "m1": {"g", "h"}, "m2": {"g", "h"}, "m3": {"g"}, "m4": {"g"},
    "m5": {"g"}, "o1": set(), "o2": set(), "o3": set(),
}

#: Location changes made (in the journal) before each round.
DELTA_CHANGES = 40

#: The uuid of git-annex's web special remote (registerurl marks keys
#: present there).
WEB_UUID = "00000000-0000-0000-0000-000000000001"

#: How many mismatches are listed in a failure message.
MAX_LISTED = 40


@dataclass
class Round:
    """
    One configuration of the repository.

    @ivar name: short name (the test method's suffix).
    @ivar wanted: the expression for every member (L{str}), or member ->
        expression (members not listed: C{""}, no expression), or a
        L{list} of expressions given to the members in turn (member I{i}
        gets C{wanted[i % len(wanted)]}).
    @ivar groups: member -> extra groups (besides L{BASE_GROUPS}).
    @ivar required: member -> required content.
    @ivar groupwanted: group -> group preferred content.
    @ivar raw: member -> expression written to the journal without
        git-annex checking it (after the C{wanted} ones).
    @ivar phase: C{"A"}, C{"B"} or C{"C"}.
    @ivar rebalance: ask with git-annex's C{--rebalance} (and annexd with
        C{WantContext.rebalance}).
    """

    name: str
    wanted: object
    groups: dict = field(default_factory=dict)
    required: dict = field(default_factory=dict)
    groupwanted: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    phase: str = "A"
    rebalance: bool = False

    def expressions(self):
        """
        member -> the expression git-annex is told (raw ones included).
        """
        if isinstance(self.wanted, str):
            result = {m: self.wanted for m in MEMBERS}
        elif isinstance(self.wanted, list):
            result = {m: self.wanted[i % len(self.wanted)]
                      for i, m in enumerate(MEMBERS)}
        else:
            result = {m: self.wanted.get(m, "") for m in MEMBERS}
        result.update(self.raw)
        return result

    def describe(self, member):
        """
        A one-line description of what applies to C{member}.
        """
        text = self.expressions()[member]
        if member in self.raw:
            text += "  [raw, journal]"
        if self.required.get(member):
            text += "  [required: %s]" % self.required[member]
        extra = self.groups.get(member)
        if extra:
            text += "  [groups +%s]" % ",".join(sorted(extra))
        if self.rebalance:
            text += "  [--rebalance]"
        return text or "(none)"

    def needsKeyLogs(self):
        """
        Whether an expression of this round reads metadata or urls.
        """
        return any("metadata=" in e or "url=" in e
                   for e in self.expressions().values())


_STANDARD_1 = {
    "groups": {"m1": {"client"}, "m2": {"transfer"}, "m3": {"backup"},
               "m4": {"archive"}, "m5": {"smallarchive"},
               "o1": {"incrementalbackup"}, "o2": {"source"},
               "o3": {"manual"}},
    "wanted": "standard",
}

_STANDARD_2 = {
    # m4 is in two standard groups (standard acts as present); o2 uses
    # standard inside a larger expression.
    "groups": {"m1": {"public"}, "m2": {"manual"}, "m3": {"unwanted"},
               "m4": {"archive", "backup"}, "m5": {"client"},
               "o1": {"archive"}, "o2": {"smallarchive"},
               "o3": {"transfer"}},
    "wanted": {"m1": "standard", "m2": "standard", "m3": "standard",
               "m4": "standard", "m5": "standard", "o1": "standard",
               "o2": "standard or include=k/*", "o3": "standard"},
}

ROUNDS = [
    # ------------------------------------------------------------ phase A
    Round("anything", "anything"),
    Round("unset", ""),
    Round("nothing", "nothing"),
    Round("present", "present"),
    Round("balanced_g", "balanced=g"),
    Round("balanced_g2", "balanced=g:2"),
    Round("fullybalanced_g", "fullybalanced=g"),
    Round("fullybalanced_g2", "fullybalanced=g:2"),
    Round("fullybalanced_g7", "fullybalanced=g:7"),
    Round("balanced_h_or_nosuch", "balanced=h or balanced=nosuchgroup"),
    Round("copies", ["copies=g:1", "copies=2", "lackingcopies=1",
                     "approxlackingcopies=1"]),
    Round("copies_trust", ["copies=untrusted:1 or copies=semitrusted+:3",
                           "copies=h:2", "copies=dead:1",
                           "inallgroup=h or onlyingroup=g"]),
    Round("globs", ["include=archive/* or include=*/archive/*",
                    "exclude=public/* and exclude=*.iso",
                    "include=*f002* or include=k/?l* or include=*[[:space:]]*",
                    "include=*.[mM][pP]3 or include=[!a-k]*"]),
    Round("sizes", ["largerthan=1mb", "smallerthan=100kb or largerthan=5gb",
                    "largerthan=1MiB and smallerthan=1.5GiB",
                    "smallerthan=1000000 or largerthan=1048576"]),
    Round("precedence", [
        "include=*.iso or largerthan=1mb and not copies=2",
        "include=*.iso or ( largerthan=1mb and not copies=2 )",
        "not include=archive/* or copies=g:2 and smallerthan=1gb",
        "include=k/* largerthan=100kb or include=public/*"]),
    Round("backends", ["securehash", "inbackend=WORM or inbackend=URL",
                       "securehash and not inbackend=SHA256E",
                       "inbackend=MD5 or inbackend=SHA1 or inbackend=XXH3"]),
    Round("present_based", ["present or include=archive/*", "not present",
                            "copies=1 or not balanced=g",
                            "not not present or include=k/*"]),
    Round("preferreddir", ["inpreferreddir", "inpreferreddir or present",
                           "fullybalanced=g and not copies=g:1",
                           "not fullybalanced=h"]),
    Round("standard_1", _STANDARD_1["wanted"],
          groups=_STANDARD_1["groups"]),
    Round("standard_2", _STANDARD_2["wanted"],
          groups=_STANDARD_2["groups"]),
    Round("groupwanted",
          {"m1": "groupwanted", "m2": "groupwanted or include=k/*",
           "m3": "groupwanted", "m4": "groupwanted", "m5": "groupwanted",
           "o1": "groupwanted", "o2": "groupwanted", "o3": "groupwanted"},
          # m1 and m2 are in g and h, which both have group preferred
          # content (groupwanted acts as present); o1 is in archive, whose
          # groupwanted is "standard" (expanded); o2 has no group; o3 is in
          # incrementalbackup, whose groupwanted uses groupwanted (present).
          groups={"o1": {"archive"}, "o3": {"incrementalbackup"}},
          groupwanted={"g": "balanced=g:2", "h": "include=archive/*",
                       "archive": "standard",
                       "incrementalbackup": "groupwanted or largerthan=1gb"}),
    Round("required",
          {"m1": "nothing", "m2": "include=k/*", "m3": "", "m4": "",
           "m5": "balanced=g", "o1": "anything", "o2": "", "o3": "present"},
          required={"m1": "include=*.iso", "m2": "largerthan=1gb",
                    "m4": "present", "m5": "include=public/*",
                    "o2": "copies=3"}),
    Round("syntax_1", {
        "m1": "include=*.iso or",
        "m2": "( largerthan=1mb or include=k/*",
        "m3": "include=*.iso ) or present",
        "m4": "not not present",
        "m5": "anything and not ( balanced=g or nothing )",
        "o1": "balanced=g:0 or smallerthan=1e3",
        "o2": "or",
        "o3": "not"}),
    Round("syntax_2", {
        "m1": "and anything",
        "m2": "()",
        "m3": "balanced= or include=k/*",
        "m4": "largerthan=1kbit and copies=0",
        "m5": "lackingcopies=0 and balanced=g:-1",
        "o1": "include=*.iso(largerthan=1mb)",
        "o2": "unused or include=archive/*",
        "o3": "copies=semitrusted:1 and not copies=trusted:1"}),
    Round("syntax_3", {
        "m1": "not",
        "m2": "( )",
        "m3": "nothing or ()",
        "m4": "() or present",
        "m5": "not ()",
        "o1": "include=*.iso and",
        "o2": "( include=*.iso or ) and largerthan=1mb",
        "o3": ") ) include=k/*"}),
    Round("metadata_1", ["metadata=author=bob*",
                         "metadata=author=ALICE or metadata=author=*smith",
                         "metadata=year<2000",
                         "metadata=year>=2020 or metadata=year<=1985"]),
    Round("metadata_2", ["metadata=tag=*[[:space:]]* or metadata=tag=!*",
                         "metadata=year>1999 and not metadata=year=2020",
                         "metadata=year-lastchanged>=2000-01-01 and "
                         "metadata=tag=red",
                         "metadata=lastchanged>2000 and not metadata=tag=x"]),
    Round("urls", ["url=https://example.org/*",
                   "url=*.iso or url=http://mirror.test/1*",
                   "url=* and copies=2",
                   "not url=* and copies=semitrusted:2"]),
    Round("unparseable",
          {"m1": "anything", "m2": "anything", "m3": "anything",
           "m4": "anything", "m5": "include=*.iso", "o1": "anything",
           "o2": "anything", "o3": "anything"},
          # git annex wanted refuses these; they act as "present".
          raw={"m1": "include=*.iso or frobnicate=3",
               "m2": "balanced=g:two",
               "m3": "largerthan=1 mb",
               "m4": "copies=g:x or anything",
               "o1": "largerthan=.5mb"}),
    # ------------------------------------------------------------ phase B
    Round("lackingcopies_balanced", "balanced=g:lackingcopies", phase="B"),
    Round("lackingcopies_fullybalanced", "fullybalanced=g:lackingcopies",
          phase="B"),
    Round("lackingcopies_terms",
          ["lackingcopies=1", "lackingcopies=2 or approxlackingcopies=3",
           "approxlackingcopies=1 and not copies=g:1",
           "lackingcopies=3"], phase="B"),
    Round("standard_nc3", _STANDARD_1["wanted"],
          groups=_STANDARD_1["groups"], phase="B"),
    Round("balanced_g2_nc3", "balanced=g:2", phase="B"),
    # ------------------------------------------------------------ phase C
    Round("maxsize_balanced_g", "balanced=g", phase="C"),
    Round("maxsize_balanced_g2", "balanced=g:2", phase="C"),
    Round("maxsize_fullybalanced_g3", "fullybalanced=g:3", phase="C"),
    Round("sizebalanced_g", "sizebalanced=g", phase="C"),
    Round("sizebalanced_g2", "sizebalanced=g:2", phase="C"),
    Round("fullysizebalanced_g2", "fullysizebalanced=g:2", phase="C"),
    Round("fullysizebalanced_g4", "fullysizebalanced=g:4", phase="C"),
    Round("maxsize_balanced_lacking", "balanced=g:lackingcopies",
          phase="C"),
    Round("sizebalanced_lacking", "sizebalanced=g:lackingcopies",
          phase="C"),
    # --rebalance: balanced acts as fullybalanced; with N > members that
    # are not "too full" (m1 and m2 are over 90%) balanced=g:4 switches to
    # the size-based choice.
    Round("rebalance_balanced_g2", "balanced=g:2", phase="C",
          rebalance=True),
    Round("rebalance_balanced_g4", "balanced=g:4", phase="C",
          rebalance=True),
    Round("rebalance_sizebalanced_g2", "sizebalanced=g:2", phase="C",
          rebalance=True),
    Round("rebalance_mixed", ["fullybalanced=g:3", "balanced=g:lackingcopies",
                              "present or balanced=h",
                              "sizebalanced=g:3 or include=k/*"],
          phase="C", rebalance=True),
]


@dataclass
class Mismatch:
    """
    One disagreement.
    """

    round: str
    member: str
    expression: str
    key: str
    file: str
    present: str
    annex: bool
    annexd: object


@dataclass
class RoundResult:
    """
    What one round found.

    @ivar oracle: member -> set of keys git-annex says it wants.
    @ivar annexd: member -> set of keys annexd says it wants, or L{None}
        when annexd could not be asked (see C{error}).
    @ivar compared: number of (member, key) decisions compared.
    @ivar mismatches: the L{Mismatch}es.
    @ivar error: why annexd could not be asked, or L{None}.
    @ivar seconds: time taken (git-annex, annexd).
    @ivar perExpression: what applies to a member (L{Round.describe}) ->
        C{[compared, agreeing]}.
    @ivar located: for the members with a raw expression, the keys
        git-annex says they have (C{find --in}).
    @ivar annexSizes: git-annex's repository sizes and maxsizes when the
        round was asked (L{OracleRepo.repo_sizes}).
    @ivar sizeMismatches: C{(member, git-annex size, annexd size)} where
        L{annexd.annex.sizes.RepoSizes} disagrees with git-annex.
    @ivar requeried: C{(member, changed)} for members whose git-annex
        answers were asked again, one at a time, because annexd disagreed
        (C{changed}: the second answer differed: the oracle is unstable).
    """

    round: Round
    oracle: dict
    annexd: dict | None = None
    compared: int = 0
    mismatches: list = field(default_factory=list)
    error: str | None = None
    seconds: tuple = (0.0, 0.0)
    perExpression: dict = field(default_factory=dict)
    located: dict = field(default_factory=dict)
    annexSizes: dict = field(default_factory=dict)
    sizeMismatches: list = field(default_factory=list)
    requeried: list = field(default_factory=list)


class _Run:
    """
    Everything, computed once: the repository, the keys, and every
    round's results.
    """

    def __init__(self):
        self.results = {}
        self.error = None
        self.repo = None
        self.keys = []
        self.names = {}
        self.maxsizes = {}
        self.setupSeconds = 0.0

    # ------------------------------------------------------------ set-up

    def build(self, base):
        t0 = time.time()
        rng = random.Random(SEED)
        repo = self.repo = build_oracle_repo(
            base, members=len(MEMBERS), names=MEMBERS, seed=SEED)
        self.names = {u: m for m, u in repo.members.items()}
        self.names[repo.uuid] = "gw"
        self.names[WEB_UUID] = "web"
        self.keys = random_keys(rng, KEY_COUNT)
        repo.add_keys(self.keys)
        # Groups, trust.
        self.currentGroups = {m: set() for m in MEMBERS}
        for m in MEMBERS:
            self._setGroups(m, BASE_GROUPS[m] | ({"g"} if m == "o3" else
                                                 set()))
        repo.trust("o2", "untrust")
        repo.trust("o3", "dead")
        self.currentGroups["o3"] = repo.groups("o3")
        # Location state: every repository with probability 0.3, the
        # gateway with 0.05; then 10% of those lines turned into removals.
        uuids = [repo.members[m] for m in MEMBERS]
        changes = []
        removals = []
        for k in self.keys:
            for u in uuids:
                if rng.random() < 0.3:
                    changes.append((k.key, u, True))
                    if rng.random() < 0.1:
                        removals.append((k.key, u, False))
            if rng.random() < 0.05:
                changes.append((k.key, repo.uuid, True))
        repo.set_present(changes)
        repo.set_present(removals)
        self._keyLogs(rng)
        repo.commit_journal()
        self.rng = rng
        self.currentWanted = {m: None for m in MEMBERS}
        self.currentRequired = {m: "" for m in MEMBERS}
        self.currentGroupwanted = {}
        self.phase = "A"
        self.setupSeconds = time.time() - t0

    def _keyLogs(self, rng):
        """
        Metadata for a quarter of the keys (then changed again for some:
        removals in the log), urls for a sixth (some unregistered again).
        """
        authors = ["Bob Smith", "alice", "carol", "\u00c4DA", "bob"]
        years = ["1985", "1999", "2000", "2007", "2020", "2024", "unknown",
                 "19x9", "2000.5", "-3"]
        tags = ["red", "big file", "!bang", "x"]
        first, second = [], []
        for k in self.keys:
            if rng.random() < 0.25:
                fields = {"author": rng.sample(authors, rng.randint(1, 2)),
                          "year": [rng.choice(years)]}
                if rng.random() < 0.5:
                    fields["tag"] = rng.sample(tags, rng.randint(1, 2))
                first.append((k.key, fields))
                if rng.random() < 0.3:
                    second.append((k.key, {
                        "author": rng.sample(authors, rng.randint(0, 1)),
                        "year": [rng.choice(years)]}))
        self.repo.set_metadata(first)
        self.repo.set_metadata(second)
        urls = []
        for k in self.keys:
            if rng.random() < 0.16:
                urls.append((k.key, rng.choice([
                    "https://example.org/%s/%d.iso",
                    "https://example.org/%s/%d.mp3",
                    "http://mirror.test/%s/%d"]) % (
                        rng.choice(["a", "b"]), rng.randrange(1000))))
        self.repo.register_urls(urls)
        self.repo.register_urls(rng.sample(urls, len(urls) // 5),
                                unregister=True)

    def _setGroups(self, member, groups):
        current = self.currentGroups[member]
        if current != groups:
            self.repo.ungroup(member, *sorted(current - groups))
            self.repo.group(member, *sorted(groups - current))
            self.currentGroups[member] = set(groups)

    def _enterPhase(self, phase):
        repo = self.repo
        if phase == self.phase:
            return
        if phase == "B":
            repo.numcopies(3)
            repo.trust("m5", "untrust")
        elif phase == "C":
            if self.phase == "A":
                self._enterPhase("B")
            self.repo.commit_journal()
            known = self.repo.repo_sizes()
            sizes = {m: known[self.repo.members[m]][0] for m in MEMBERS[:5]}
            self.sizesAtC = sizes
            self.maxsizes = {
                "m1": sizes["m1"] + 10 ** 9,        # nearly full
                "m2": sizes["m2"],                   # exactly full
                "m3": 0,                             # "full" (surprise 3)
                "m4": sizes["m4"] + 10 ** 12,        # room
                "o1": 10 ** 9,                       # not in g
            }
            for m, size in self.maxsizes.items():
                repo.maxsize(m, size)
        self.phase = phase

    def configure(self, rnd):
        repo = self.repo
        self._enterPhase(rnd.phase)
        for m in MEMBERS:
            self._setGroups(m, BASE_GROUPS[m] | set(rnd.groups.get(m, ())))
        for g in sorted(set(self.currentGroupwanted) | set(rnd.groupwanted)):
            expr = rnd.groupwanted.get(g, "")
            if self.currentGroupwanted.get(g, "") != expr:
                repo.groupwanted(g, expr)
                self.currentGroupwanted[g] = expr
        for m in MEMBERS:
            expr = rnd.required.get(m, "")
            if self.currentRequired[m] != expr:
                repo.required(m, expr)
                self.currentRequired[m] = expr
        wanted = rnd.expressions()
        for m in MEMBERS:
            if m in rnd.raw:
                continue
            if self.currentWanted[m] != wanted[m]:
                repo.wanted(m, wanted[m])
                self.currentWanted[m] = wanted[m]
        for m, expr in sorted(rnd.raw.items()):
            repo.write_raw_preferred(m, expr)
            self.currentWanted[m] = None  # overwritten by the next wanted
        # A few location changes that stay in the journal.  In phase C
        # they leave m1 and m2 alone: they stay nearly and exactly full.
        uuids = [repo.members[m] for m in MEMBERS
                 if not (self.phase == "C" and m in ("m1", "m2"))]
        uuids.append(repo.uuid)
        delta = [(self.rng.choice(self.keys).key, self.rng.choice(uuids),
                  self.rng.random() < 0.5) for _ in range(DELTA_CHANGES)]
        repo.set_present(delta)

    # ------------------------------------------------------------- rounds

    def ask(self, rnd):
        """
        git-annex's answers for every member: the first one alone (it
        brings git-annex's repository size database up to date), the
        others two at a time.
        """
        oracle = {MEMBERS[0]: self.repo.oracle(MEMBERS[0], rnd.rebalance)}
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {m: pool.submit(self.repo.oracle, m, rnd.rebalance)
                       for m in MEMBERS[1:]}
            for m, future in futures.items():
                oracle[m] = future.result()
        return oracle

    def run(self, rnd):
        t0 = time.time()
        self.configure(rnd)
        result = RoundResult(rnd, self.ask(rnd))
        result.located = {m: self.repo.located(m) for m in rnd.raw}
        result.annexSizes = self.repo.repo_sizes()
        t1 = time.time()
        try:
            self.compare(result)
            if result.mismatches:
                self.requery(result)
        except Exception:
            result.error = traceback.format_exc()
        result.seconds = (t1 - t0, time.time() - t1)
        return result

    def requery(self, result):
        """
        Ask git-annex again, one process at a time, for the members with
        disagreements, and compare again with those answers.
        """
        members = sorted({m.member for m in result.mismatches})
        changed = False
        for m in members:
            again = self.repo.oracle(m, result.round.rebalance)
            result.requeried.append((m, again != result.oracle[m]))
            changed = changed or again != result.oracle[m]
            result.oracle[m] = again
        if changed:
            self.compare(result)

    def compare(self, result):
        from annexd.annex.branch import BranchReader
        from annexd.annex.location import LocationLog
        from annexd.annex.preferred import WantContext, readKeyLogs, wants
        from annexd.annex.sizes import RepoSizes
        from annexd.annex.state import GatewayState
        from annexd.protocol.keys import Key

        result.compared = 0
        result.mismatches = []
        result.perExpression = {}
        result.sizeMismatches = []
        repo = self.repo
        env = repo.env.env
        state = GatewayState.load(repo.path, env=env)
        sizes = RepoSizes.fromLocationLogs(state.gitDir, env=env)
        reader = BranchReader(state.gitDir, env=env)
        try:
            log = LocationLog(state.gitDir, reader=reader)
            present = {k.key: log.presentSync(k.key.encode("utf-8"))
                       for k in self.keys}
            keyLogs = {}
            if result.round.needsKeyLogs():
                keyLogs = {k.key: readKeyLogs(reader, k.key.encode("utf-8"))
                           for k in self.keys}
        finally:
            reader.close()
        for u, (size, maxsize) in sorted(result.annexSizes.items()):
            ours = sizes.get(u.encode("ascii"), 0)
            if ours != size:
                result.sizeMismatches.append(
                    (self.names.get(u, u), size, ours))
        parsed = {k.key: Key.parse(k.key.encode("utf-8")) for k in self.keys}
        expressions = result.round.expressions()
        result.annexd = {}
        for m in MEMBERS:
            u = repo.members[m].encode("ascii")
            wanted = result.annexd[m] = set()
            stats = result.perExpression.setdefault(
                result.round.describe(m), [0, 0])
            for k in self.keys:
                metadata, urls = keyLogs.get(k.key, ({}, []))
                try:
                    answer = wants(WantContext(
                        state, u, parsed[k.key], k.file, present[k.key],
                        sizes, metadata=metadata, urls=urls,
                        rebalance=result.round.rebalance), default=False)
                except Exception as e:
                    answer = "error: %s: %s" % (type(e).__name__, e)
                if answer is True:
                    wanted.add(k.key)
                expected = k.key in result.oracle[m]
                result.compared += 1
                stats[0] += 1
                if answer is expected:
                    stats[1] += 1
                else:
                    result.mismatches.append(Mismatch(
                        result.round.name, m, expressions[m], k.key, k.file,
                        ",".join(sorted(self.names.get(
                            p.decode("ascii", "replace"),
                            p.decode("ascii", "replace")[:8])
                            for p in present[k.key])),
                        expected, answer))

    def runAll(self, base):
        try:
            self.build(base)
            for rnd in ROUNDS:
                self.results[rnd.name] = self.run(rnd)
        except Exception:
            self.error = traceback.format_exc()
        self.writeSummary()

    # ------------------------------------------------------------ report

    def summary(self):
        lines = ["wanted differential: %d keys, seed %d, repository %s"
                 % (KEY_COUNT, SEED, self.repo.path if self.repo else "-"),
                 "set-up %.1fs; maxsizes %r" % (
                     self.setupSeconds, self.maxsizes), ""]
        if self.error:
            lines += ["ERROR:", self.error]
        total = agree = 0
        for rnd in ROUNDS:
            r = self.results.get(rnd.name)
            if r is None:
                continue
            lines.append("%-28s %s  git-annex %.1fs, annexd %.1fs" % (
                rnd.name, "annexd not run" if r.error else
                "%d/%d agree" % (r.compared - len(r.mismatches), r.compared),
                r.seconds[0], r.seconds[1]))
            for expr, (n, ok) in r.perExpression.items():
                lines.append("    %5d/%5d  %s" % (ok, n, expr))
            lines.append("    git-annex wants: %s" % " ".join(
                "%s=%d" % (m, len(r.oracle[m])) for m in MEMBERS))
            if rnd.phase == "C":
                lines.append("    git-annex sizes (size/maxsize): %s" % (
                    " ".join("%s=%s/%s" % ((self.names.get(u, u[:8]),)
                                           + tuple(v))
                             for u, v in sorted(r.annexSizes.items()))))
            if r.sizeMismatches:
                lines.append("    repository sizes differ (member, "
                             "git-annex, annexd): %r" % (r.sizeMismatches,))
            if r.requeried:
                lines.append("    asked git-annex again (member, answer "
                             "changed): %r" % (r.requeried,))
            if r.error:
                lines.append("    " + r.error.strip().splitlines()[-1])
            total += r.compared
            agree += r.compared - len(r.mismatches)
        lines += ["", "TOTAL %d/%d agree" % (agree, total)]
        return "\n".join(lines) + "\n"

    def writeSummary(self):
        try:
            with open("wanted-differential.txt", "w",
                      encoding="utf-8") as f:
                f.write(self.summary())
                for r in self.results.values():
                    if r.mismatches:
                        f.write("\n" + formatMismatches(r.mismatches, None))
        except OSError:
            pass


def formatMismatches(mismatches, limit=MAX_LISTED):
    """
    A table of disagreements: round, member, expression, key, file,
    present set, git-annex's answer, annexd's answer.
    """
    rows = [("round", "member", "expression", "key", "file", "present",
             "git-annex", "annexd")]
    shown = mismatches if limit is None else mismatches[:limit]
    for m in shown:
        rows.append((m.round, m.member, m.expression, m.key, m.file,
                     m.present or "-", str(m.annex), str(m.annexd)))
    lines = [" | ".join(row) for row in rows]
    if limit is not None and len(mismatches) > limit:
        lines.append("... and %d more" % (len(mismatches) - limit))
    return "\n".join(lines) + "\n"


_run = None
_base = None


def _cleanup():
    if _base is not None and os.path.isdir(_base):
        if os.environ.get("ANNEXD_KEEP_ORACLE"):
            return
        _make_writable(_base)
        shutil.rmtree(_base, ignore_errors=True)


def results():
    """
    The L{_Run}, computed on first use.
    """
    global _run, _base
    if _run is None:
        _base = tempfile.mkdtemp(prefix="annexd-wanted-")
        atexit.register(_cleanup)
        _run = _Run()
        _run.runAll(os.path.join(_base, "oracle"))
    return _run


class WantedDifferentialTests(unittest.SynchronousTestCase):
    """
    annexd's C{wants} agrees with git-annex's C{--want-get-by} for every
    (round, member, key); one test method per round (generated from
    L{ROUNDS}), plus checks of the oracle itself.
    """

    def _results(self):
        run = results()
        if run.error:
            self.fail("building or running the oracle failed:\n"
                      + run.error)
        return run

    def checkRound(self, name):
        """
        Every decision of round C{name} agrees.
        """
        run = self._results()
        r = run.results[name]
        if r.error:
            self.fail("annexd could not be asked:\n" + r.error)
        self.assertEqual(r.compared, KEY_COUNT * len(MEMBERS))
        if r.mismatches:
            self.fail("%d of %d decisions disagree in round %s:\n%s" % (
                len(r.mismatches), r.compared, name,
                formatMismatches(r.mismatches)))

    def test_repo_sizes_agree(self):
        """
        In every round, annexd's L{annexd.annex.sizes.RepoSizes} (location
        logs of the branch and the journal) gives every repository the size
        git-annex's own repository size database has (C{git annex maxsize
        --json}; shared/spec/annex-state.md section 4.2).
        """
        run = self._results()
        bad = {name: r.sizeMismatches for name, r in run.results.items()
               if r.sizeMismatches}
        if any(r.error for r in run.results.values()):
            self.fail("annexd could not be asked")
        self.assertEqual(bad, {})

    def test_oracle_stable(self):
        """
        Where annexd disagreed, asking git-annex again (alone) gave the same
        answer: the oracle's answers do not depend on running two C{find}s
        at once.
        """
        run = self._results()
        changed = {name: [m for m, c in r.requeried if c]
                   for name, r in run.results.items()}
        self.assertEqual({n: c for n, c in changed.items() if c}, {})

    def test_oracle_lists_absent_content(self):
        """
        C{find --want-get-by} lists files whose content is not present
        here: with C{anything} every member wants every key (no content is
        in the repository at all).
        """
        run = self._results()
        everything = {k.key for k in run.keys}
        self.assertEqual(len(everything), KEY_COUNT)
        oracle = run.results["anything"].oracle
        for m in MEMBERS:
            self.assertEqual(oracle[m], everything, m)

    def test_oracle_default_false(self):
        """
        With no expression (or C{nothing}) git-annex's C{--want-get-by}
        answers no: the default annexd is asked with (C{default=False}).
        """
        run = self._results()
        for name in ("unset", "nothing"):
            for m in MEMBERS:
                self.assertEqual(run.results[name].oracle[m], set(),
                                 (name, m))

    def test_oracle_unparseable_is_present(self):
        """
        An expression that does not parse acts as C{present}
        (shared/spec/annex-state.md section 3.1): for the raw expressions
        of round C{unparseable}, git-annex wants exactly the keys that
        C{git annex find --in=MEMBER} lists.
        """
        run = self._results()
        r = run.results["unparseable"]
        for m in r.round.raw:
            self.assertEqual(r.oracle[m], r.located[m], m)
            self.assertTrue(0 < len(r.oracle[m]) < KEY_COUNT, m)

    def test_oracle_test_vectors(self):
        """
        The oracle reproduces the balanced test vectors of
        shared/spec/annex-state.md section 3.7 (group of the four fixed
        uuids 1111... 4444, C{balanced=backup} and C{balanced=backup:2}).
        """
        uuids = ["11111111-1111-4111-8111-111111111111",
                 "22222222-2222-4222-8222-222222222222",
                 "33333333-3333-4333-8333-333333333333",
                 "44444444-4444-4444-8444-444444444444"]
        vectors = [
            ("WORM--test", "2", "23"),
            ("URL--https://example.com/a%20b&c", "2", "23"),
            ("WORM-s0-m1700000000--dir/with:colon&amp%pct", "4", "41"),
            ("MD5-s5--5d41402abc4b2a76b9719d911017c592", "1", "12"),
            ("SHA1--a9993e364706816aba3e25717850c26c9cd0d89d", "4", "41"),
            ("SHA256-s1048576-S262144-C2--59fdd34a0b323f6044e147b843d8ca24"
             "6a9414d2c7a06c8e95a7e04c3cdaf395", "3", "34"),
            ("BLAKE2B256E-s42--d161d71145abeec5ef15abcf0459cec60a27321e2f0a"
             "c0ef7ace5254f5944476.tar.gz", "3", "34"),
            ("WORM-s12-m1600000000--\u00fcber-\u00fcn\u00efc\u00f6d\u00e9"
             ".txt", "1", "12"),
            ("SHA256E-s127904006--5feceb66ffc86f38d952786c6d696c79c2dbc239dd"
             "4e91b46729d73a27fb57e9.mp3", "4", "41"),
            ("SHA256-s343043868--6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22"
             "f1d49c01e52ddb7875b4b", "2", "23"),
        ]
        base = self.mktemp()
        repo = build_oracle_repo(base, members=4, names=["1", "2", "3", "4"],
                                 uuids=uuids)
        self.addCleanup(_make_writable, base)
        repo.add_keys(SyntheticKey(k, "f%d" % i, None)
                      for i, (k, _, _) in enumerate(vectors))
        for m in repo.members:
            repo.group(m, "backup")
        for column, expr in ((1, "balanced=backup"), (2, "balanced=backup:2")):
            for m in repo.members:
                repo.wanted(m, expr)
            got = {k: "" for k, _, _ in vectors}
            for m in repo.members:
                for k in repo.oracle(m):
                    got[k] += m
            for row in vectors:
                self.assertEqual(sorted(got[row[0]]), sorted(row[column]),
                                 (expr, row[0]))


def _makeTest(name):
    def test(self):
        self.checkRound(name)
    test.__name__ = "test_round_%s" % (name,)
    test.__doc__ = "annexd agrees with git-annex in round C{%s}." % (name,)
    return test


for _i, _rnd in enumerate(ROUNDS):
    _t = _makeTest(_rnd.name)
    _t.__name__ = "test_round_%02d_%s" % (_i, _rnd.name)
    setattr(WantedDifferentialTests, _t.__name__, _t)
del _i, _rnd, _t
