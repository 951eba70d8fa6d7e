# -*- test-case-name: tests.test_annexstate -*-
"""
Parsers for the log files of the git-annex branch (no I/O).

Every log is the union of its lines; the current value of each field is
resolved per field (shared/spec/annex-state.md section 1.4):

  - B{old uuid logs} (C{uuid.log}, C{trust.log}, C{group.log},
    C{preferred-content.log}, C{remote.log}, ...): C{UUID VALUE
    timestamp=T}; the newest line wins, and on a tie the B{later} line;
  - B{new uuid logs} and B{map logs} (C{proxy.log}, C{cluster.log},
    C{maxsize.log}, C{group-preferred-content.log}, ...): C{T FIELD VALUE};
    newest wins, later line on a tie;
  - B{single value logs} (C{numcopies.log}, ...): C{T VALUE}; the largest
    C{(T, VALUE)} wins;
  - B{presence logs} (location logs C{aaa/bbb/KEY.log}, C{.log.web}):
    C{T S INFO}; newest wins, and on a tie the B{first} line.

Lines are split on runs of C{\\r} and C{\\n}; a line that does not parse
is skipped on its own.  Timestamps ("vector clocks") are decimal POSIX
seconds with an optional fraction and an optional trailing C{s}; they are
read as exact L{fractions.Fraction}s, truncated to picoseconds like
git-annex's C{POSIXTime}.  An old uuid log line may lack its timestamp:
that clock is L{UNKNOWN}, which sorts before every real timestamp.

uuids, keys and log values are L{bytes}; names of remotes and groups,
trust levels and preferred content expressions are L{str}.
"""

import re
from fractions import Fraction

__all__ = [
    "UNKNOWN", "TRUSTED", "SEMITRUSTED", "UNTRUSTED", "DEAD",
    "PRESENT", "MISSING", "DEAD_KEY",
    "splitLines", "parseTimestamp", "formatTimestamp",
    "parseOldUUIDLog", "parseOldUUIDLogEntries",
    "parseNewUUIDLog", "parseNewUUIDLogEntries",
    "parseMapLog", "parseMapLogEntries",
    "parseSingleValueLog", "parseNumCopiesLog",
    "parsePresenceLog", "presentUUIDs", "buildPresenceLog",
    "isClusterUUID", "isLegalRemoteName",
    "parseProxyLog", "parseClusterLog", "parseTrustLog", "parseGroupLog",
    "parsePreferredContentLog", "parseMaxSizeLog", "parseRemoteLog",
    "inheritSameas", "parseTrustLevel",
]

#: Trust levels, as git-annex names them (C{trust.log} stores C{1}, C{?},
#: C{0} and C{X}).
TRUSTED = "trusted"
SEMITRUSTED = "semitrusted"
UNTRUSTED = "untrusted"
DEAD = "dead"

_TRUST_CHARS = {b"1": TRUSTED, b"0": UNTRUSTED, b"X": DEAD}

#: Status characters of presence logs.
PRESENT = b"1"
MISSING = b"0"
DEAD_KEY = b"X"

_STATUSES = frozenset([PRESENT, MISSING, DEAD_KEY])

_PICO = 10 ** 12


class _Unknown:
    """
    The clock of an old uuid log line that has none: it sorts before every
    timestamp and is equal only to itself.
    """

    __slots__ = ()

    def __repr__(self):
        return "UNKNOWN"

    def __eq__(self, other):
        return other is self

    def __ne__(self, other):
        return other is not self

    def __hash__(self):
        return hash("annexd.annex.logs.UNKNOWN")

    def __lt__(self, other):
        return other is not self

    def __le__(self, other):
        return True

    def __gt__(self, other):
        return False

    def __ge__(self, other):
        return other is self

    def __reduce__(self):
        return "UNKNOWN"


#: The missing timestamp of a very old uuid log line ("Unknown").
UNKNOWN = _Unknown()

_LINES = re.compile(rb"[\r\n]+")
_CLOCK = re.compile(rb"([+-]?)([0-9]+)(?:\.([0-9]+))?s?")


def splitLines(data):
    """
    Split a log file into its lines: any run of C{\\r} and C{\\n} ends a
    line, and empty lines are dropped.

    @type data: L{bytes}
    @rtype: L{list} of L{bytes}
    """
    return [line for line in _LINES.split(data) if line]


def parseTimestamp(text):
    """
    Parse a vector clock: C{1795539866s}, C{1795540000.25s}, C{-3},
    C{1431286201.113452} ...

    The value is exact; digits beyond the twelfth decimal are dropped (as
    git-annex's picosecond C{POSIXTime} does).  Like git-annex, the
    fraction is added to the integer part unless that part is negative, so
    C{-0.5} reads as C{0.5}.

    @type text: L{bytes}
    @return: the time, or L{None} if C{text} is not a timestamp.
    @rtype: L{Fraction} or L{None}
    """
    match = _CLOCK.fullmatch(text)
    if match is None:
        return None
    sign, whole, frac = match.groups()
    n = int(whole)
    if sign == b"-":
        n = -n
    if not frac:
        return Fraction(n)
    picos = int(frac) * _PICO // (10 ** len(frac))
    r = Fraction(picos, _PICO)
    return n - r if n < 0 else n + r


def formatTimestamp(clock):
    """
    Format a clock the way git-annex writes it: C{1795539866s},
    C{1795539866.000000000001s}, C{-1.5s}; L{UNKNOWN} is C{0}.

    @type clock: L{Fraction}, L{int} or L{UNKNOWN}
    @rtype: L{bytes}
    """
    if clock is UNKNOWN:
        return b"0"
    clock = Fraction(clock)
    sign = b"-" if clock < 0 else b""
    picos = abs(clock.numerator) * _PICO // clock.denominator
    whole, frac = divmod(picos, _PICO)
    if frac:
        return b"%s%d.%ss" % (sign, whole, (b"%012d" % frac).rstrip(b"0"))
    return b"%s%ds" % (sign, whole)


def _newer(clock, old):
    return old is None or clock > old


def _notOlder(clock, old):
    return old is None or clock >= old


# ---------------------------------------------------------------- old format

def _parseOldLine(line):
    """
    C{(uuid, clock, value)} of an old-format line, or L{None}.
    """
    space = line.find(b" ")
    if space == 0:
        return None
    if space < 0:
        return line, UNKNOWN, b""
    uuid, rest = line[:space], line[space:]
    clock = UNKNOWN
    value = rest[1:]
    idx = rest.rfind(b" timestamp=")
    if idx >= 0:
        parsed = parseTimestamp(rest[idx + 11:])
        if parsed is not None:
            clock = parsed
            value = rest[1:idx] if idx >= 1 else b""
    return uuid, clock, value


def _parseOld(data, parser=None):
    result = {}
    for line in splitLines(data):
        parsed = _parseOldLine(line)
        if parsed is None:
            continue
        uuid, clock, value = parsed
        if parser is not None:
            try:
                value = parser(value)
            except ValueError:
                continue
        old = result.get(uuid)
        if _notOlder(clock, None if old is None else old[0]):
            result[uuid] = (clock, value)
    return result


def parseOldUUIDLogEntries(data):
    """
    Parse an old-format uuid log (C{UUID VALUE timestamp=T}), keeping the
    clocks.

    The value is the exact text between the space after the uuid and the
    C{" timestamp=T"} suffix (empty for C{UUID  timestamp=T}); a line
    without a valid suffix has the clock L{UNKNOWN} and the rest of the
    line as its value.  The newest line per uuid wins; on a tie, the later
    line.

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to C{(clock, value bytes)}
    """
    return _parseOld(data)


def parseOldUUIDLog(data):
    """
    Parse an old-format uuid log; see L{parseOldUUIDLogEntries}.

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to value L{bytes}
    """
    return {uuid: value for uuid, (clock, value) in _parseOld(data).items()}


# ---------------------------------------------------------------- new format

def _parseNew(data, parser=None):
    result = {}
    for line in splitLines(data):
        first = line.find(b" ")
        if first <= 0:
            continue
        clock = parseTimestamp(line[:first])
        if clock is None:
            continue
        second = line.find(b" ", first + 1)
        if second < 0:
            continue
        field = line[first + 1:second]
        if not field:
            continue
        value = line[second + 1:]
        if parser is not None:
            try:
                value = parser(value)
            except ValueError:
                continue
        old = result.get(field)
        if _notOlder(clock, None if old is None else old[0]):
            result[field] = (clock, value)
    return result


def parseNewUUIDLogEntries(data):
    """
    Parse a new-format uuid log (C{T UUID VALUE}), keeping the clocks.  The
    newest line per uuid wins; on a tie, the later line.  A line needs the
    space after the uuid even when the value is empty.

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to C{(Fraction, value bytes)}
    """
    return _parseNew(data)


def parseNewUUIDLog(data):
    """
    Parse a new-format uuid log; see L{parseNewUUIDLogEntries}.

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to value L{bytes}
    """
    return {uuid: value for uuid, (clock, value) in _parseNew(data).items()}


def parseMapLogEntries(data):
    """
    Parse a map log (C{T FIELD VALUE}, FIELD without spaces), keeping the
    clocks: the same format and rules as a new-format uuid log.

    @type data: L{bytes}
    @rtype: L{dict} mapping field L{bytes} to C{(Fraction, value bytes)}
    """
    return _parseNew(data)


def parseMapLog(data):
    """
    Parse a map log (C{group-preferred-content.log}, C{config.log}); see
    L{parseMapLogEntries}.

    @type data: L{bytes}
    @rtype: L{dict} mapping field L{bytes} to value L{bytes}
    """
    return parseNewUUIDLog(data)


# -------------------------------------------------------------- single value

def parseSingleValueLog(data, deserialize=None):
    """
    Parse a single value log (C{T VALUE}): the value of the largest
    C{(T, VALUE)}.

    @type data: L{bytes}
    @param deserialize: turns a value's bytes into the value compared and
        returned; it raises L{ValueError} for a line to be skipped.  The
        default keeps the bytes.
    @return: the value, or L{None} if there is no valid line.
    """
    best = None
    for line in splitLines(data):
        space = line.find(b" ")
        if space <= 0:
            continue
        clock = parseTimestamp(line[:space])
        if clock is None:
            continue
        value = line[space + 1:]
        if deserialize is not None:
            try:
                value = deserialize(value)
            except ValueError:
                continue
        if best is None or (clock, value) > best:
            best = (clock, value)
    return None if best is None else best[1]


_LEADING_INT = re.compile(rb"\s*(-?[0-9]+)")


def _readishInt(value):
    match = _LEADING_INT.match(value)
    if match is None:
        raise ValueError(value)
    return int(match.group(1))


def parseNumCopiesLog(data):
    """
    Parse C{numcopies.log} or C{mincopies.log}: the newest integer, with
    values below 1 read as 1.

    @type data: L{bytes}
    @return: the number, or L{None} when the log has no entry (git-annex's
        default is then 1).
    @rtype: L{int} or L{None}
    """
    value = parseSingleValueLog(data, _readishInt)
    return None if value is None else max(1, value)


# ------------------------------------------------------------ presence logs

def parsePresenceLog(data):
    """
    Parse a presence log (a location log, C{.log.web}): lines C{T S INFO},
    where S is C{1} (present), C{0} (missing) or C{X} (dead).  For each
    INFO (a uuid, for location logs) the line with the largest T wins; on a
    tie the B{first} line in the data wins.

    @type data: L{bytes}
    @rtype: L{dict} mapping INFO L{bytes} to C{(Fraction, status bytes)}
    """
    result = {}
    for line in splitLines(data):
        space = line.find(b" ")
        if space <= 0:
            continue
        clock = parseTimestamp(line[:space])
        if clock is None:
            continue
        status = line[space + 1:space + 2]
        if status not in _STATUSES or line[space + 2:space + 3] != b" ":
            continue
        info = line[space + 3:]
        old = result.get(info)
        if _newer(clock, None if old is None else old[0]):
            result[info] = (clock, status)
    return result


def presentUUIDs(data):
    """
    The uuids that a location log currently shows as present.

    @type data: L{bytes}
    @rtype: L{set} of L{bytes}
    """
    return {info for info, (clock, status) in parsePresenceLog(data).items()
            if status == PRESENT}


def buildPresenceLog(entries):
    """
    Write a compacted presence log: one line per INFO, sorted by INFO,
    C{"%ds %c %s\\n"} (fractional clocks keep their fraction).

    @param entries: L{dict} mapping INFO L{bytes} to C{(clock, status)},
        as L{parsePresenceLog} returns.
    @rtype: L{bytes}
    """
    return b"".join(
        b"%s %s %s\n" % (formatTimestamp(clock), status, info)
        for info, (clock, status) in sorted(entries.items()))


# ------------------------------------------------------ clusters and proxies

def isClusterUUID(uuid):
    """
    Whether C{uuid} is a cluster uuid: it starts with C{ac} and its byte at
    index 14 is C{8} (shared/spec/annex-state.md section 2.1).  No other
    uuid can pose as a cluster.

    @type uuid: L{bytes}
    @rtype: L{bool}
    """
    return (isinstance(uuid, bytes) and uuid[:2] == b"ac"
            and uuid[14:15] == b"8")


def isLegalRemoteName(name):
    """
    Whether C{name} is a legal git remote name for git-annex
    (C{Git.Remote.isLegalName}): not empty, only alphanumerics, C{_}, C{-}
    and C{.}, and not starting with C{.} or C{-}.

    @type name: L{str}
    @rtype: L{bool}
    """
    if not name or name[0] in ".-":
        return False
    return all(c.isalnum() or c in "_-." for c in name)


def _parseProxyList(value):
    proxies = []
    pos, end = 0, len(value)
    while pos < end:
        colon = value.find(b":", pos)
        if colon <= pos:
            raise ValueError(value)
        space = value.find(b" ", colon + 1)
        if space < 0:
            space = end
        if space == colon + 1:
            raise ValueError(value)
        proxies.append((value[pos:colon], value[colon + 1:space]))
        pos = space + 1
    return proxies


def parseProxyLog(data):
    """
    Parse C{proxy.log} (C{T PROXYUUID U1:name1 U2:name2 ...}): for each
    proxy repository, the repositories it proxies and their remote names.
    Names that are not legal git remote names (L{isLegalRemoteName}) are
    dropped; a line with a malformed word is skipped whole.

    @type data: L{bytes}
    @return: L{dict} mapping a proxy uuid to a sorted L{tuple} of
        C{(uuid bytes, name str)}
    """
    result = {}
    for proxy, (clock, pairs) in _parseNew(data, _parseProxyList).items():
        kept = set()
        for uuid, name in pairs:
            text = name.decode("utf-8", "surrogateescape")
            if isLegalRemoteName(text):
                kept.add((uuid, text))
        result[proxy] = tuple(sorted(kept))
    return result


def _parseNodeList(value):
    if len(value) > 1 and value.endswith(b" "):
        value = value[:-1]  # one trailing space is accepted
    if not value:
        return frozenset()
    words = value.split(b" ")
    if not all(words):
        raise ValueError(value)
    return frozenset(words)


def parseClusterLog(data):
    """
    Parse C{cluster.log} (C{T CLUSTERUUID NODE1 NODE2 ...}): the current
    node uuids of each cluster.  Lines whose key is not a cluster uuid
    (L{isClusterUUID}) are ignored.  Dead nodes are not removed here.

    @type data: L{bytes}
    @rtype: L{dict} mapping cluster uuid L{bytes} to a L{frozenset} of node
        uuid L{bytes}
    """
    return {cluster: nodes
            for cluster, (clock, nodes) in _parseNew(
                data, _parseNodeList).items()
            if isClusterUUID(cluster)}


# ----------------------------------------------------------- other uuid logs

def _trustValue(value):
    if not value:
        return TRUSTED  # very old logs listed only trusted repositories
    if len(value) != 1:
        raise ValueError(value)
    return _TRUST_CHARS.get(value, SEMITRUSTED)


def parseTrustLog(data):
    """
    Parse C{trust.log}: C{1} trusted, C{0} untrusted, C{X} dead, anything
    else (C{?}) semitrusted, and an empty value (very old logs) trusted.
    Repositories that are not listed are semitrusted.

    @type data: L{bytes}
    @return: L{dict} mapping uuid L{bytes} to one of L{TRUSTED},
        L{SEMITRUSTED}, L{UNTRUSTED}, L{DEAD}
    """
    return {uuid: value for uuid, (clock, value) in _parseOld(
        data, _trustValue).items()}


def parseTrustLevel(text):
    """
    Read a trust level as written in git config
    (C{remote.NAME.annex-trustlevel}): C{trusted}, C{semitrusted},
    C{untrusted} or C{dead}.

    @type text: L{str}
    @return: the level, or L{None} if C{text} is none of those.
    """
    return text if text in (TRUSTED, SEMITRUSTED, UNTRUSTED, DEAD) else None


def parseGroupLog(data):
    """
    Parse C{group.log}: each repository's groups (names separated by runs
    of spaces; possibly none).

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to a L{frozenset} of L{str}
    """
    return {uuid: frozenset(g.decode("utf-8", "surrogateescape")
                            for g in value.split(b" ") if g)
            for uuid, value in parseOldUUIDLog(data).items()}


def parsePreferredContentLog(data):
    """
    Parse C{preferred-content.log} or C{required-content.log}: each
    repository's expression (the rest of its line).

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to L{str}
    """
    return {uuid: value.decode("utf-8", "surrogateescape")
            for uuid, value in parseOldUUIDLog(data).items()}


def parseMaxSizeLog(data):
    """
    Parse C{maxsize.log} (C{T UUID BYTES}).

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to L{int}
    """
    def integer(value):
        if not value.isdigit():
            raise ValueError(value)
        return int(value)

    return {uuid: value
            for uuid, (clock, value) in _parseNew(data, integer).items()}


_ENTITY = re.compile(r"&([0-9]+);")


def _configUnescape(text):
    def entity(match):
        code = int(match.group(1))
        if code > 0x10FFFF:
            return match.group(0)
        return chr(code)

    return _ENTITY.sub(entity, text)


def _remoteConfig(value):
    config = {}
    for word in value.decode("utf-8", "surrogateescape").split():
        key, _, rest = word.partition("=")
        config[key] = _configUnescape(rest)
    return config


def parseRemoteLog(data):
    """
    Parse C{remote.log}: each special remote's configuration, from
    space-separated C{key=value} words whose values have whitespace and
    C{&} written as C{&<decimal codepoint>;} (C{&32;} is a space).

    Use L{inheritSameas} to give C{sameas} remotes their parent's
    inherited fields, as git-annex does.

    @type data: L{bytes}
    @rtype: L{dict} mapping uuid L{bytes} to a L{dict} of L{str} to L{str}
    """
    return {uuid: value for uuid, (clock, value) in _parseOld(
        data, _remoteConfig).items()}


#: Fields a C{sameas-uuid} remote takes from its parent's configuration.
SAMEAS_INHERITED = frozenset([
    "encryption", "mac", "cipher", "cipherkeys", "pubkeys", "chunksize",
    "chunk"])


def inheritSameas(configs):
    """
    Give every remote configuration that has C{sameas-uuid} its parent's
    values of the inherited fields (L{SAMEAS_INHERITED}), which it can not
    set itself.

    @param configs: as L{parseRemoteLog} returns.
    @return: a new L{dict} of the same shape.
    """
    result = {}
    for uuid, config in configs.items():
        parent = configs.get(config.get("sameas-uuid", "").encode(
            "utf-8", "surrogateescape"))
        if "sameas-uuid" in config and parent is not None:
            config = {k: v for k, v in config.items()
                      if k not in SAMEAS_INHERITED}
            config.update((k, v) for k, v in parent.items()
                          if k in SAMEAS_INHERITED)
        else:
            config = dict(config)
        result[uuid] = config
    return result
