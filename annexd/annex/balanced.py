# -*- test-case-name: tests.test_preferred -*-
"""
The balanced family of preferred content terms: C{balanced=},
C{fullybalanced=}, C{sizebalanced=} and C{fullysizebalanced=}
(shared/spec/annex-state.md section 3.7), as git-annex 10.20261026 does
them.

The B{picker}: the HMAC-SHA256, keyed with the concatenation of the sorted
uuids of B{every} member of the group, of the key's serialization, read as
a big-endian unsigned integer C{x}; the C{n} picks are
C{cands[(x + i) % len(cands)]} for C{i} in C{0 .. n-1}, over the B{sorted
filtered} candidates (L{pickerIndex}, L{pick}).

The candidates: for C{balanced}/C{fullybalanced}, the members that pass
L{hasSpace} (a member with a maxsize and a known size must still fit the
key; a maxsize of 0 is "full" for a key with a size); for
C{sizebalanced}/C{fullysizebalanced}, the L{sizeFilter}: the C{n} members
with a maxsize that have the largest proportion of free space.

C{GROUP:lackingcopies} picks C{numcopies - (copies outside the group that
are neither dead nor untrusted)} members, as the binary does (the
April 2026 source subtracts the copies inside the group too).

Also here, because L{annexd.annex.preferred} needs them for its own terms:
Haskell's C{readish} for integers (L{readishInt}), the location list with
cluster uuids (L{keyLocations}) and the C{copies=} count
(L{parseCopies}, L{countCopies}).
"""

import hashlib
import hmac
import re

from annexd.annex import logs

__all__ = [
    "TERMS", "LACKINGCOPIES", "BalancedTerm", "pickerIndex", "pick",
    "picks", "hasSpace", "sizeFilter", "tooFull", "wantsBalanced",
    "members", "keyLocations", "loggedLocations", "readishInt",
    "keyInfo", "parseCopies", "countCopies", "trustLevel",
    "DEFAULT_THRESHOLD", "fullyBalancedThreshold",
]

#: The term names of the family.
TERMS = ("balanced", "fullybalanced", "sizebalanced", "fullysizebalanced")

#: The count of C{GROUP:lackingcopies}.
LACKINGCOPIES = "lackingcopies"

#: Default C{annex.fullybalancedthreshhold} (90%), used with C{rebalance}.
DEFAULT_THRESHOLD = 0.9

_TRUST_ORDER = {logs.DEAD: 0, logs.UNTRUSTED: 1, logs.SEMITRUSTED: 2,
                logs.TRUSTED: 3}


# ------------------------------------------------------------ small helpers

_READISH_INT = re.compile(
    r"[ \t\n\r\f\v]*(-[ \t\n\r\f\v]*)?"
    r"(?:0[xX]([0-9a-fA-F]+)|0[oO]([0-7]+)|([0-9]+))")
_FRACTION_OR_EXPONENT = re.compile(r"\.[0-9]|[eE][+-]?[0-9]")


def readishInt(text):
    """
    Read a leading integer the way git-annex's C{readish} does for an
    C{Int}: optional whitespace, an optional C{-}, then a decimal, C{0x}
    hex or C{0o} octal literal; anything after it is ignored (C{"2abc"}
    is 2), but a decimal with a fraction or exponent (C{"1.0"}, C{"1e3"})
    is not an integer.  The result wraps like a 64-bit C{Int}.

    @type text: L{str}
    @rtype: L{int} or L{None}
    """
    match = _READISH_INT.match(text)
    if match is None:
        return None
    neg, hexa, octal, dec = match.groups()
    if dec is not None:
        if _FRACTION_OR_EXPONENT.match(text, match.end()):
            return None
        value = int(dec)
    elif hexa is not None:
        value = int(hexa, 16)
    else:
        value = int(octal, 8)
    if neg:
        value = -value
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def keyInfo(key):
    """
    C{(raw, variety, size)} of a key: an L{annexd.protocol.keys.Key} or its
    serialization as L{bytes} (read loosely: the variety is the text
    before the first C{-}, the size the C{-s} field before C{--}).

    @rtype: C{(bytes, bytes, int or None)}
    """
    raw = getattr(key, "raw", None)
    if raw is not None:
        return raw, key.variety, key.size
    if not isinstance(key, bytes):
        raise TypeError("a key is a Key or bytes, not %r"
                        % (type(key).__name__,))
    sep = key.find(b"--")
    head = key if sep < 0 else key[:sep]
    parts = head.split(b"-")
    size = None
    for part in parts[1:]:
        if part[:1] == b"s" and part[1:].isdigit():
            size = int(part[1:])
            break
    return key, parts[0], size


def trustLevel(state, uuid):
    """
    The trust level of C{uuid} in C{state} (semitrusted when unlisted).

    @rtype: L{str}
    """
    return state.trust.get(uuid, logs.SEMITRUSTED)


def members(state, group):
    """
    Every uuid whose current C{group.log} set contains C{group} (trust is
    not checked).

    @type group: L{str}
    @rtype: L{frozenset} of uuid L{bytes}
    """
    return frozenset(u for u, groups in state.groups.items()
                     if group in groups)


def loggedLocations(state, present):
    """
    git-annex's C{loggedLocations}: the uuids a location log shows present
    plus the uuid of every cluster (C{cluster.log}, dead nodes already
    removed) that has one of them among its nodes.  Dead repositories are
    B{not} removed.

    @param present: the present uuids of the location log (no clusters).
    @rtype: L{frozenset} of uuid L{bytes}
    """
    present = frozenset(present)
    clusters = getattr(state, "clusterLog", None)
    if not clusters or not present:
        return present
    extra = [c for c, nodes in clusters.items() if not present.isdisjoint(nodes)]
    return present.union(extra) if extra else present


def keyLocations(state, present):
    """
    git-annex's C{Remote.keyLocations}: L{loggedLocations} without dead
    repositories.  C{present}, C{inallgroup=} and C{onlyingroup=} use this
    list (cluster uuids included); counts of copies leave clusters out.

    @rtype: L{frozenset} of uuid L{bytes}
    """
    return frozenset(u for u in loggedLocations(state, present)
                     if trustLevel(state, u) != logs.DEAD)


def _copiesCount(uuids):
    return sum(1 for u in uuids if not logs.isClusterUUID(u))


def parseCopies(value):
    """
    Parse the value of C{copies=}: C{N}, C{TRUST:N}, C{TRUST+:N} or
    C{GROUP:N} (a group named like a trust level is read as the trust
    level).

    @type value: L{str}
    @return: C{(kind, arg, n)}: C{("all", None, n)}, C{("trust", level,
        n)}, C{("trust+", level, n)} or C{("group", group, n)}.
    @raise ValueError: C{"bad value for copies"} or C{"bad number for
        copies"}, git-annex's messages.
    """
    parts = value.split(":")
    if len(parts) == 1:
        kind, arg, num = "all", None, parts[0]
    elif len(parts) == 2:
        spec, num = parts
        if spec.endswith("+") and spec[:-1] in _TRUST_ORDER:
            kind, arg = "trust+", spec[:-1]
        elif spec in _TRUST_ORDER:
            kind, arg = "trust", spec
        else:
            kind, arg = "group", spec
    else:
        raise ValueError("bad value for copies")
    n = readishInt(num)
    if n is None:
        raise ValueError("bad number for copies")
    return kind, arg, n


def countCopies(spec, state, locations, notPresent=frozenset()):
    """
    The number of copies that C{copies=} counts: the uuids of
    C{locations} (see L{keyLocations}) not in C{notPresent} that pass the
    trust or group filter of C{spec} (from L{parseCopies}), cluster uuids
    left out.

    @rtype: L{int}
    """
    kind, arg, n = spec
    if kind == "all":
        good = None
    elif kind == "group":
        good = lambda u: arg in state.groups.get(u, ())  # noqa: E731
    elif kind == "trust":
        good = lambda u: trustLevel(state, u) == arg  # noqa: E731
    else:
        level = _TRUST_ORDER[arg]
        good = lambda u: _TRUST_ORDER[trustLevel(state, u)] >= level  # noqa
    return _copiesCount(u for u in locations if u not in notPresent
                        and (good is None or good(u)))


def fullyBalancedThreshold(state):
    """
    C{annex.fullybalancedthreshhold} (a percentage) / 100, default
    L{DEFAULT_THRESHOLD}.

    @rtype: L{float}
    """
    config = getattr(state, "config", None) or {}
    value = config.get("annex.fullybalancedthreshhold")
    if value is None:
        return DEFAULT_THRESHOLD
    match = re.match(r"\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)",
                     value)
    return DEFAULT_THRESHOLD if match is None else float(match.group(1)) / 100


def _knownSize(sizes, uuid):
    if sizes is None or uuid not in sizes:
        return None
    return sizes[uuid]


# ------------------------------------------------------------------ picker

def pickerIndex(members, key):
    """
    The picker's C{x}: HMAC-SHA256 keyed with the concatenation of the
    sorted uuids of C{members} (the whole group), of the key's
    serialization (chunk fields included), as a big-endian unsigned
    integer.

    @param members: uuid L{bytes}.
    @param key: an L{annexd.protocol.keys.Key} or its serialization.
    @rtype: L{int}
    """
    raw = keyInfo(key)[0]
    secret = b"".join(sorted(set(members)))
    return int.from_bytes(hmac.new(secret, raw, hashlib.sha256).digest(),
                          "big")


def pick(members, candidates, key, n):
    """
    The C{n} uuids the picker chooses among C{candidates} (a subset of
    C{members}): C{cands[(x + i) % len(cands)]} for C{i} in C{0 .. n-1},
    over the sorted candidates, wrapping around (and repeating) when C{n}
    is larger; empty when C{n <= 0} or there are no candidates.

    @rtype: L{list} of uuid L{bytes}
    """
    cands = sorted(set(candidates))
    if n <= 0 or not cands:
        return []
    x = pickerIndex(members, key)
    return [cands[(x + i) % len(cands)] for i in range(n)]


def picks(members, candidates, key, n, uuid):
    """
    Whether C{uuid} is in L{pick}C{(members, candidates, key, n)}, without
    building a long list when C{n} is large.

    @rtype: L{bool}
    """
    cands = sorted(set(candidates))
    if n <= 0 or uuid not in cands:
        return False
    if n >= len(cands):
        return True
    x = pickerIndex(members, key)
    return (cands.index(uuid) - x) % len(cands) < n


# ------------------------------------------------------------ size filters

def _repoHasSpace(keySize, inRepo, repoSize, maxSize):
    if inRepo:
        return repoSize <= maxSize
    return repoSize + keySize <= maxSize


def hasSpace(uuid, key, present, maxSizes, sizes):
    """
    The C{hasspace} test of C{balanced}/C{fullybalanced}: C{uuid} passes
    unless it has a maxsize M B{and} a known size R (C{uuid in sizes}),
    and R > M when the key is already logged there, or R + keysize > M
    otherwise (keysize 0 for a key without a size).  A maxsize of 0 is not
    special: it is "full" for every key with a size.

    @param present: the uuids whose location log shows the key.
    @param maxSizes: uuid -> bytes (C{maxsize.log}).
    @param sizes: uuid -> repository size, or L{None} (no sizes known).
    @rtype: L{bool}
    """
    maxSize = maxSizes.get(uuid)
    if maxSize is None:
        return True
    repoSize = _knownSize(sizes, uuid)
    if repoSize is None:
        return True
    return _repoHasSpace(keyInfo(key)[2] or 0, uuid in present, repoSize,
                         maxSize)


def sizeFilter(members, key, n, present, maxSizes, sizes):
    """
    The candidates of C{sizebalanced}/C{fullysizebalanced}: among
    C{members} with a maxsize M > 0 that pass L{hasSpace} (R taken as 0
    when unknown), the C{n} with the largest proportion of free space
    C{(M - R + (keysize if the key is logged there else 0)) / M} (an IEEE
    double); ties go to the larger uuid.

    @rtype: L{list} of uuid L{bytes}, best first
    """
    keySize = keyInfo(key)[2] or 0
    scored = []
    for uuid in sorted(set(members)):
        maxSize = maxSizes.get(uuid)
        if maxSize is None:
            continue
        repoSize = _knownSize(sizes, uuid)
        if repoSize is None:
            repoSize = 0
        inRepo = uuid in present
        if not _repoHasSpace(keySize, inRepo, repoSize, maxSize):
            continue
        if maxSize <= 0:
            continue
        free = maxSize - repoSize + (keySize if inRepo else 0)
        scored.append((uuid, float(free) / float(maxSize)))
    scored.sort(key=lambda pair: pair[1])
    scored.reverse()
    return [uuid for uuid, score in scored[:max(n, 0)]]


def tooFull(uuid, maxSizes, sizes, threshold=DEFAULT_THRESHOLD):
    """
    Whether C{uuid} is "too full" for C{--rebalance}: it has a maxsize M
    other than 0, a known size R, and R >= M * threshold.

    @rtype: L{bool}
    """
    maxSize = maxSizes.get(uuid)
    if not maxSize:
        return False
    repoSize = _knownSize(sizes, uuid)
    if repoSize is None:
        return False
    return float(repoSize) >= float(maxSize) * threshold


# ------------------------------------------------------------------- terms

class BalancedTerm:
    """
    One parsed C{balanced=} / C{fullybalanced=} / C{sizebalanced=} /
    C{fullysizebalanced=} term.

    @ivar term: the term name (one of L{TERMS}).
    @ivar value: its value, C{GROUP}, C{GROUP:N} or C{GROUP:lackingcopies}.
    @ivar group: the group name.
    @ivar count: N (an L{int}; 1 when not given) or L{LACKINGCOPIES}.
    @ivar unstable: whether the term is negation-unstable (it contains
        C{present}): true for C{balanced} and C{sizebalanced}.
    """

    def __init__(self, term, value):
        """
        @raise ValueError: with git-annex's message (C{"bad value for
            balanced"}, C{"bad number for balanced"}, ...) when C{value}
            does not parse.
        """
        if term not in TERMS:
            raise ValueError("unknown term %r" % (term,))
        base = term[len("fully"):] if term.startswith("fully") else term
        self.term = term
        self.value = value
        self.fully = term.startswith("fully")
        self.sizeBased = base == "sizebalanced"
        parts = value.split(":")
        if len(parts) == 1:
            self.group, self.count = parts[0], 1
        elif len(parts) == 2:
            self.group = parts[0]
            if parts[1] == LACKINGCOPIES:
                self.count = LACKINGCOPIES
            else:
                self.count = readishInt(parts[1])
                if self.count is None:
                    raise ValueError("bad number for %s" % (base,))
        else:
            raise ValueError("bad value for %s" % (base,))
        self.unstable = not self.fully
        self._copies = None
        if not self.fully and self.count != LACKINGCOPIES:
            # balanced=G:N is "present or (not copies=G:N and ...)".
            self._copies = parseCopies(value if ":" in value
                                       else value + ":1")

    def __repr__(self):
        return "<BalancedTerm %s=%s>" % (self.term, self.value)

    def evaluate(self, uuid, key, state, present, sizes, numcopies=None,
                 assumeNotPresent=frozenset(), rebalance=False,
                 threshold=None):
        """
        Whether repository C{uuid} wants C{key} by this term.

        @param uuid: the repository asked about.
        @param key: an L{annexd.protocol.keys.Key} (or its serialization).
        @param state: the L{annexd.annex.state.GatewayState} (groups,
            trust, C{clusterLog}, C{maxSize}, C{numCopies}).
        @param present: the uuids the key's location log shows present
            (without cluster uuids; this adds them).
        @param sizes: uuid -> repository size (e.g. a
            L{annexd.annex.sizes.RepoSizes}), or L{None}.
        @param numcopies: numcopies for this context (C{.gitattributes} in
            file context), or L{None} for C{numcopies.log} (or 1).
        @param assumeNotPresent: uuids to count as not having the key
            (drop checks, section 3.6).
        @param rebalance: git-annex's C{--rebalance}.
        @param threshold: C{annex.fullybalancedthreshhold} as a fraction;
            default from C{state.config}.
        @return: C{(wanted, liveUpdate)}: C{liveUpdate} is true when the
            picker chose C{uuid} (git-annex then records a live size
            update; the caller should reserve the key's size).
        @rtype: C{(bool, bool)}
        """
        if numcopies is None:
            numcopies = state.numCopies or 1
        logged = loggedLocations(state, present)
        locations = frozenset(u for u in logged
                              if trustLevel(state, u) != logs.DEAD)
        mem = members(state, self.group)
        lacking = self.count == LACKINGCOPIES
        if lacking:
            outside = [u for u in locations
                       if u not in mem and u not in assumeNotPresent
                       and trustLevel(state, u) != logs.UNTRUSTED]
            n = numcopies - _copiesCount(outside)
        else:
            n = self.count

        def fully():
            if n <= 0 or not mem:
                return False
            maxSizes = state.maxSize
            sizeBased = self.sizeBased
            if rebalance and not sizeBased and n > 1:
                limit = threshold
                if limit is None:
                    limit = fullyBalancedThreshold(state)
                full = sum(1 for u in mem if tooFull(u, maxSizes, sizes,
                                                     limit))
                sizeBased = n > len(mem) - full
            if sizeBased:
                cands = sizeFilter(mem, key, n, logged, maxSizes, sizes)
            else:
                cands = [u for u in mem
                         if hasSpace(u, key, logged, maxSizes, sizes)]
            return picks(mem, cands, key, n, uuid)

        if self.fully or rebalance:
            wanted = fully()
            return wanted, wanted
        if uuid in locations:
            return True, False
        if lacking:
            have = [u for u in locations if u not in assumeNotPresent
                    and trustLevel(state, u) != logs.UNTRUSTED]
            gate = numcopies - _copiesCount(have) >= 1
        else:
            gate = not (countCopies(self._copies, state, locations,
                                    assumeNotPresent) >= self._copies[2])
        if not gate:
            return False, False
        wanted = fully()
        return wanted, wanted


def wantsBalanced(term, value, uuid, key, state, present, sizes,
                  numcopies=None, rebalance=False,
                  assumeNotPresent=frozenset()):
    """
    Whether repository C{uuid} wants C{key} by the term C{term=value}
    (see L{BalancedTerm.evaluate}).

    @raise ValueError: if C{value} does not parse.
    @rtype: L{bool}
    """
    return BalancedTerm(term, value).evaluate(
        uuid, key, state, present, sizes, numcopies=numcopies,
        assumeNotPresent=assumeNotPresent, rebalance=rebalance)[0]
