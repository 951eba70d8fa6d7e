# -*- test-case-name: tests.test_preferred -*-
"""
git-annex's preferred content expressions: parsing and evaluation for a
gateway that decides which repositories want a key
(shared/spec/annex-state.md sections 3.1 to 3.5).

L{parse} turns an expression into a L{Matcher}; L{wants} answers "does
repository U want this key" the way git-annex does: U's preferred content
OR-ed with its required content, C{standard} and C{groupwanted} expanded,
an expression that does not parse replaced by C{present}, and an
expression with a negation-unstable term (C{present}, C{balanced=},
C{sizebalanced=}) under an odd number of C{not}s always false.

The grammar has B{no precedence}: tokens are read strictly left to right
with a running matcher M (C{a or b and c} is C{(a or b) and c}); two
adjacent terms or groups are and-ed; a missing C{)} closes at the end and
an extra C{)} is ignored.  This is a transcription of git-annex's
C{Utility.Matcher.generate}.

The evaluation context is a L{WantContext}: the key, the associated file
(C{None} for a key-only context, where C{include=} is false and
C{exclude=} true), the uuids the key's location log shows present, the
repository sizes, the key's metadata and urls.  Cluster uuids are added to
the present list here (section 2.3); counts of copies leave them out.

Globs are git-annex's (C{Utility.Glob}): C{*} crosses C{/}, C{?} is one
character, C{[...]} and C{[!...]} are POSIX bracket expressions (their
C{[:class:]}es are regex-tdfa's ASCII tables), and the whole path must
match.  A glob that regex-tdfa could not compile (an unterminated C{[})
makes the expression fail to parse here; git-annex accepts it and fails
when it matches.

Not handled: C{unused} (annexd has no unused list: always false), the
private journal and unmerged sibling branches in L{readKeyLogs} (it uses
L{annexd.annex.branch.BranchReader}, which has them), and the negation
check inside C{groupwanted} expressions when L{expressionFor}'s text is
parsed again (L{wants} keeps them opaque, like git-annex).
"""

import base64
import binascii
import re
import threading
import unicodedata
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from annexd.annex import logs
from annexd.annex.balanced import (
    TERMS as BALANCED_TERMS, BalancedTerm, countCopies, keyInfo,
    keyLocations, members, parseCopies, readishInt, trustLevel)
from annexd.annex.state import parseSize

__all__ = [
    "ExpressionError", "Matcher", "WantContext", "parse", "wants",
    "expressionFor", "matcherFor", "tokenize", "STANDARD_GROUPS",
    "standardExpression", "standardGroup", "parseMetaDataLog",
    "parseUrlLog", "readKeyLogs", "SECURE_BACKENDS", "isSecureBackend",
    "DEFAULT_PREFERRED_DIR",
]

#: The C{preferreddir} of a repository without one in C{remote.log}.
DEFAULT_PREFERRED_DIR = "public"


class ExpressionError(ValueError):
    """
    A preferred content expression that does not parse.

    @ivar position: the 0-based index, in L{tokenize}'s list, of the first
        bad token.
    @ivar offset: the character offset of that token in the expression.
    @ivar token: the bad token.
    @ivar reason: git-annex's message for it (C{near "foo"}, C{bad number
        for copies}, ...).
    @ivar errors: every bad token: C{(position, offset, token, reason)}.
    """

    def __init__(self, errors, expression=""):
        position, offset, token, reason = errors[0]
        ValueError.__init__(
            self, "Parse failure: %s (token %d %r at offset %d of %r)"
            % (reason, position, token, offset, expression))
        self.position = position
        self.offset = offset
        self.token = token
        self.reason = reason
        self.errors = list(errors)
        self.expression = expression


# ---------------------------------------------------------------- tokenizer

_HS_LATIN1_SPACE = frozenset(" \t\n\r\f\v\xa0")


def _isSpace(c):
    """
    Haskell's C{isSpace}.
    """
    if c <= "\xff":
        return c in _HS_LATIN1_SPACE
    return unicodedata.category(c) == "Zs"


def tokenize(expression):
    """
    Split an expression the way git-annex does: on whitespace (Haskell's
    C{words}), with C{(} and C{)} always tokens of their own.  There is no
    quoting.

    @type expression: L{str}
    @return: C{(token, offset)} pairs.
    @rtype: L{list}
    """
    tokens = []
    start = None
    for i, c in enumerate(expression):
        if _isSpace(c):
            if start is not None:
                tokens.append((expression[start:i], start))
                start = None
        elif c in "()":
            if start is not None:
                tokens.append((expression[start:i], start))
                start = None
            tokens.append((c, i))
        elif start is None:
            start = i
    if start is not None:
        tokens.append((expression[start:], start))
    return tokens


# -------------------------------------------------------------------- globs

_CLASSES = {
    # regex-tdfa's decodeCharacterClass (ASCII only; "graph" starts at ")").
    "alnum": "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "digit": "0123456789",
    "punct": "".join(map(chr, list(range(33, 48)) + list(range(58, 65))
                         + list(range(91, 97)) + list(range(123, 127)))),
    "alpha": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "graph": "".join(map(chr, range(41, 127))),
    "space": "\t\n\v\f\r ",
    "blank": "\t ",
    "lower": "abcdefghijklmnopqrstuvwxyz",
    "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "cntrl": "".join(map(chr, range(0, 32))) + "\x7f",
    "print": "".join(map(chr, range(32, 127))),
    "xdigit": "0123456789abcdefABCDEF",
    "word": "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_",
}


def _wildToRegex(glob, filePath):
    """
    git-annex's C{wildToRegex}, producing the same POSIX regex text.
    """
    out = ["^"]
    inpat = False
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if inpat:
            if c == "]":
                out.append("]")
                inpat = False
            elif c == "\\":
                out.append("\\\\")
            else:
                out.append(c)
        elif c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and glob[i + 1:i + 2] == "!":
            out.append("[^")
            inpat = True
            i += 1
        elif c == "[":
            out.append("[")
            inpat = True
        elif c == "/" and filePath:
            out.append("[/]+")
        elif c == "\\" and filePath:
            out.append("[\\]+")
        elif "0" <= c <= "9" or c.isalpha():
            out.append(c)
        else:
            out.append("\\" + c)
        i += 1
    out.append("$")
    return "".join(out)


class _CharSet:
    """
    A POSIX bracket expression.
    """

    __slots__ = ("negated", "chars", "ranges")

    def __init__(self, negated, chars, ranges):
        self.negated = negated
        self.chars = frozenset(chars)
        self.ranges = tuple(ranges)

    def has(self, c):
        found = c in self.chars or any(lo <= c <= hi
                                       for lo, hi in self.ranges)
        if self.negated:
            # regex-tdfa's multiline mode: [^...] never matches a newline.
            return not found and c != "\n"
        return found


def _parseBracket(regex, i):
    """
    Parse a bracket expression of C{regex} starting after its C{[}; return
    the L{_CharSet} and the index after its closing C{]}.
    """
    n = len(regex)
    negated = False
    if i < n and regex[i] == "^":
        negated = True
        i += 1
    chars, ranges = [], []
    first = True
    while True:
        if i >= n:
            raise ValueError("unterminated [ in glob")
        c = regex[i]
        if c == "]" and not first:
            return _CharSet(negated, chars, ranges), i + 1
        first = False
        if c == "[" and regex[i + 1:i + 2] in (":", "=", "."):
            kind = regex[i + 1]
            end = regex.find(kind + "]", i + 2)
            if end < 0:
                raise ValueError("unterminated [%s in glob" % (kind,))
            name = regex[i + 2:end]
            i = end + 2
            if kind == ":":
                chars.extend(_CLASSES.get(name, ""))
            else:
                chars.extend(name)
            continue
        i += 1
        if regex[i:i + 1] == "-" and i + 1 < n and regex[i + 1] != "]":
            hi = regex[i + 1]
            if hi < c:
                raise ValueError("bad range %s-%s in glob" % (c, hi))
            ranges.append((c, hi))
            i += 2
        else:
            chars.append(c)


def _compileRegex(regex):
    """
    The atoms of the regex L{_wildToRegex} makes: C{(atom, repeat)} with
    atom C{None} (any character but a newline), a character, or a
    L{_CharSet}, and repeat C{""}, C{"*"} or C{"?"} (C{X+} is C{X X*}).
    """
    atoms = []
    i, n = 1, len(regex)  # regex[0] is "^"
    while i < n:
        c = regex[i]
        if c == "$" and i == n - 1:
            break
        if c == ".":
            atom = None
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing \\ in glob")
            atom = regex[i + 1]
            i += 2
        elif c == "[":
            atom, i = _parseBracket(regex, i + 1)
        elif c in "*+?{}()|^$":
            raise ValueError("unexpected %r in glob" % (c,))
        else:
            atom = c
            i += 1
        repeat = ""
        if i < n and regex[i] in "*+?":
            repeat = regex[i]
            i += 1
        if repeat == "+":
            atoms.append((atom, ""))
            repeat = "*"
        atoms.append((atom, repeat))
    return tuple(atoms)


class _Glob:
    """
    A compiled git-annex glob.

    @ivar glob: its text.
    """

    __slots__ = ("glob", "_atoms", "_caseSensitive")

    def __init__(self, glob, caseSensitive=True, filePath=True):
        """
        @param caseSensitive: C{False} for metadata values.
        @param filePath: whether C{/} in the glob matches a run of C{/}
            (C{include=} and C{exclude=}; not C{url=} and metadata).
        @raise ValueError: if regex-tdfa would not compile it.
        """
        self.glob = glob
        self._caseSensitive = caseSensitive
        self._atoms = _compileRegex(_wildToRegex(glob, filePath))

    def _accepts(self, atom, c):
        if atom is None:
            return c != "\n"
        if isinstance(atom, str):
            if c == atom:
                return True
            return (not self._caseSensitive
                    and (c.lower() == atom.lower()
                         or c.upper() == atom.upper()))
        if atom.has(c):
            return True
        return (not self._caseSensitive
                and (atom.has(c.lower()) or atom.has(c.upper())))

    def _closure(self, states):
        atoms = self._atoms
        todo = list(states)
        while todo:
            s = todo.pop()
            if s < len(atoms) and atoms[s][1] and s + 1 not in states:
                states.add(s + 1)
                todo.append(s + 1)
        return states

    def match(self, text):
        """
        Whether C{text} matches, with regex-tdfa's multiline anchors: the
        glob must match from a line start to a line end (for text without
        newlines, the whole text).

        @type text: L{str}
        @rtype: L{bool}
        """
        atoms = self._atoms
        final = len(atoms)
        states = self._closure({0})
        for i, c in enumerate(text):
            if c == "\n" and final in states:
                return True
            following = set()
            for s in states:
                if s < final:
                    atom, repeat = atoms[s]
                    if self._accepts(atom, c):
                        following.add(s if repeat == "*" else s + 1)
            if c == "\n":
                following.add(0)
            states = self._closure(following)
            if not states:
                if "\n" not in text[i + 1:]:
                    return False
        return final in states

    def __repr__(self):
        return "<glob %r>" % (self.glob,)


# ----------------------------------------------------------------- numbers

_DOUBLE = re.compile(
    r"\s*(-\s*)?(?:([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|0[xX]([0-9a-fA-F]+)|0[oO]([0-7]+)|(Infinity)|(NaN))\s*")


def _readDouble(text):
    """
    Haskell's C{readMaybe :: Maybe Double}: the whole text must be a
    number.
    """
    match = _DOUBLE.fullmatch(text)
    if match is None:
        return None
    neg, dec, hexa, octal, inf, nan = match.groups()
    if dec is not None:
        value = float(dec)
    elif hexa is not None:
        value = float(int(hexa, 16))
    elif octal is not None:
        value = float(int(octal, 8))
    elif inf is not None:
        value = float("inf")
    else:
        value = float("nan")
    return -value if neg else value


# ------------------------------------------------------------------- terms

class _Term:
    """
    One term of an expression.

    @ivar name: its name (C{copies}, C{include}, ...).
    @ivar value: its value, or L{None} for a bare word.
    @ivar evaluate: C{evaluate(evaluation) -> bool}.
    @ivar unstable: whether it is negation-unstable (contains C{present}).
    @ivar sub: the expanded expression of C{standard} / C{groupwanted}.
    """

    __slots__ = ("name", "value", "evaluate", "unstable", "sub")

    def __init__(self, name, value, evaluate, unstable=False, sub=None):
        self.name = name
        self.value = value
        self.evaluate = evaluate
        self.unstable = unstable
        self.sub = sub

    def __repr__(self):
        if self.value is None:
            return "<term %s>" % (self.name,)
        return "<term %s=%s>" % (self.name, self.value)


def _anything(ev):
    return True


def _nothing(ev):
    return False


def _present(ev):
    return ev.ctx.uuid in ev.locations


def _unused(ev):
    return False


def _securehash(ev):
    if ev.variety == b"VURL":
        return all(isSecureBackend(keyInfo(k)[1])
                   for k in (ev.ctx.equivalentKeys or ()))
    return isSecureBackend(ev.variety)


def _inpreferreddir(ev):
    path = ev.ctx.file
    if path is None:
        return False
    return _preferredDir(ev.ctx) in _splitPath(_takeDirectory(path))


def _takeDirectory(path):
    """
    Haskell's C{takeDirectory} (POSIX).
    """
    slash = path.rfind("/")
    if slash < 0:
        return "."
    directory = path[:slash + 1].rstrip("/")
    return directory if directory else "/"


def _splitPath(path):
    """
    Haskell's C{splitPath} (POSIX): components keep their trailing
    slashes.
    """
    return re.findall(r"/+|[^/]+/*", path)


#: Backends whose keys are cryptographically secure (git-annex's
#: C{securehash}); the C{E} variants too.
SECURE_BACKENDS = frozenset(
    ["SHA224", "SHA256", "SHA384", "SHA512",
     "SHA3_224", "SHA3_256", "SHA3_384", "SHA3_512",
     "SKEIN256", "SKEIN512",
     "BLAKE2B160", "BLAKE2B224", "BLAKE2B256", "BLAKE2B384", "BLAKE2B512",
     "BLAKE2BP512", "BLAKE2S160", "BLAKE2S224", "BLAKE2S256",
     "BLAKE2SP224", "BLAKE2SP256", "BLAKE3_256"])


def isSecureBackend(variety):
    """
    Whether a key variety is a secure hash: L{SECURE_BACKENDS} with or
    without C{E}, C{GITBUNDLE} and C{GITMANIFEST}.  C{VURL} keys depend on
    their equivalent keys (see L{WantContext.equivalentKeys}).

    @type variety: L{bytes}
    @rtype: L{bool}
    """
    name = variety.decode("ascii", "replace")
    if name in ("GITBUNDLE", "GITMANIFEST"):
        return True
    if name in SECURE_BACKENDS:
        return True
    return name.endswith("E") and name[:-1] in SECURE_BACKENDS


def _copiesTerm(value):
    spec = parseCopies(value)

    def evaluate(ev):
        return countCopies(spec, ev.state, ev.locations,
                           ev.ctx.assumeNotPresent) >= spec[2]
    return evaluate


def _lackingTerm(approx, value):
    needed = readishInt(value)
    if needed is None:
        raise ValueError("bad value for number of lacking copies")

    def evaluate(ev):
        return ev.numcopies(approx) - ev.trustedCopies >= needed
    return evaluate


def _sizeTerm(larger, value):
    size = parseSize(value)
    if size is None:
        raise ValueError("bad size")

    def evaluate(ev):
        if ev.keySize is None:
            return not larger  # Nothing < Just n, Nothing > Just n
        return ev.keySize > size if larger else ev.keySize < size
    return evaluate


def _includeTerm(exclude, value):
    glob = _Glob(value, caseSensitive=True, filePath=True)

    def evaluate(ev):
        path = ev.ctx.file
        if path is None:
            return exclude
        return glob.match(path) != exclude
    return evaluate


def _legalField(name):
    if not name or not name[0].isalnum():
        return False
    return all(c.isalnum() or c in "_-." for c in name[1:])


def _metadataTerm(value):
    op = re.search(r"[=<>]", value)
    fieldName = value if op is None else value[:op.start()]
    if not _legalField(fieldName):
        raise ValueError('Illegal metadata field name, "%s"' % (fieldName,))
    rest = "" if op is None else value[op.start():]
    fieldName = fieldName.lower()
    if rest.startswith("="):
        check = _globCheck(rest[1:])
    elif rest.startswith("<="):
        check = _compareCheck(rest[2:], lambda a, b: a <= b)
    elif rest.startswith("<"):
        check = _compareCheck(rest[1:], lambda a, b: a < b)
    elif rest.startswith(">="):
        check = _compareCheck(rest[2:], lambda a, b: a >= b)
    elif rest.startswith(">"):
        check = _compareCheck(rest[1:], lambda a, b: a > b)
    else:
        check = _globCheck("")

    def evaluate(ev):
        return any(check(v) for v in ev.metadataValues(fieldName))
    return evaluate


def _globCheck(text):
    glob = _Glob(text, caseSensitive=False, filePath=False)
    return glob.match


def _compareCheck(text, cmp):
    number = _readDouble(text)

    def check(current):
        if number is not None:
            have = _readDouble(current)
            if have is not None:
                return cmp(have, number)
        return cmp(current, text)
    return check


_DOWNLOADER_PREFIXES = ("yt", "quvi", "")


def _urlTerm(value):
    glob = _Glob(value, caseSensitive=True, filePath=False)

    def evaluate(ev):
        for url in ev.ctx.urls or ():
            prefix, colon, rest = url.partition(":")
            if colon and prefix in _DOWNLOADER_PREFIXES:
                url = rest
            if glob.match(url):
                return True
        return False
    return evaluate


def _inbackendTerm(value):
    variety = value.encode("utf-8", "surrogateescape")

    def evaluate(ev):
        return ev.variety == variety
    return evaluate


def _inallgroupTerm(value):
    def evaluate(ev):
        want = ev.members(value)
        if not want:
            return True
        if not want.isdisjoint(ev.ctx.assumeNotPresent):
            return False
        return want <= ev.locations
    return evaluate


def _onlyingroupTerm(value):
    def evaluate(ev):
        want = ev.members(value)
        if not want:
            return False
        present = ev.locations - frozenset(ev.ctx.assumeNotPresent)
        return not present.isdisjoint(want) and present <= want
    return evaluate


def _balancedTerm(name, value):
    term = BalancedTerm(name, value)

    def evaluate(ev):
        ctx = ev.ctx
        wanted, live = term.evaluate(
            ctx.uuid, ev.key, ev.state, ev.logged, ctx.sizes,
            numcopies=ev.numcopies(False),
            assumeNotPresent=ctx.assumeNotPresent, rebalance=ctx.rebalance)
        if live:
            ctx.liveUpdate = True
        return wanted
    return evaluate, term.unstable


_SIMPLE = {
    "anything": _anything,
    "nothing": _nothing,
    "present": _present,
    "securehash": _securehash,
    "inpreferreddir": _inpreferreddir,
    "unused": _unused,
}

_VALUED = {
    "include": lambda v: _includeTerm(False, v),
    "exclude": lambda v: _includeTerm(True, v),
    "largerthan": lambda v: _sizeTerm(True, v),
    "smallerthan": lambda v: _sizeTerm(False, v),
    "copies": _copiesTerm,
    "lackingcopies": lambda v: _lackingTerm(False, v),
    "approxlackingcopies": lambda v: _lackingTerm(True, v),
    "inbackend": _inbackendTerm,
    "metadata": _metadataTerm,
    "url": _urlTerm,
    "inallgroup": _inallgroupTerm,
    "onlyingroup": _onlyingroupTerm,
}

_SYNTAX = ("and", "or", "not", "(", ")")


def _presentTerm():
    return _Term("present", None, _present, unstable=True)


# ---------------------------------------------------------------- matchers

_ANY = ("any",)
_AND, _OR, _NOT, _OP = "and", "or", "not", "op"


def _generate(items):
    """
    git-annex's C{Utility.Matcher.generate} (without its C{simplify},
    which changes no answer; see L{_isEmpty}): syntax words are
    L{str}s, terms are L{_Term}s.
    """
    # tokenGroups + implicitAnd: groups become lists; stray ")" vanish;
    # unclosed groups close at the end.
    top = []
    stack = [top]

    def append(item):
        current = stack[-1]
        if (current and not isinstance(item, str)
                and not isinstance(current[-1], str)):
            current.append(_AND)
        current.append(item)

    for item in items:
        if item == "(":
            stack.append([])
        elif item == ")":
            if len(stack) > 1:
                group = stack.pop()
                append(group)
        else:
            append(item)
    while len(stack) > 1:
        group = stack.pop()
        append(group)
    return _process(_ANY, top)


def _process(m, items):
    i = 0
    while i < len(items):
        m, i = _consume(m, items, i)
    return m


def _consume(m, items, i):
    while i < len(items):
        item = items[i]
        if isinstance(item, list):
            return _process(m, item), i + 1
        if isinstance(item, _Term):
            return (_AND, m, (_OP, item)), i + 1
        if item == _AND:
            p, j = _consume(_ANY, items, i + 1)
            return (_AND, m, p), j
        if item == _OR:
            p, j = _consume(_ANY, items, i + 1)
            return (_OR, m, p), j
        if item == _NOT:
            p, j = _consume(_ANY, items, i + 1)
            return (_AND, m, (_NOT, p)), j
        i += 1
    return m, i


def _isEmpty(node):
    """
    Whether git-annex's C{simplify} would reduce C{node} to "any" (an
    expression without terms: not configured).
    """
    while True:
        if node is _ANY:
            return True
        if node[0] != _AND:
            return False
        left, right = node[1], node[2]
        if left is _ANY:
            node = right
        elif right is _ANY:
            node = left
        else:
            return False


def _negatedUnstable(node):
    """
    Whether a negation-unstable term is under an odd number of C{not}s
    (git-annex's C{findNegated}; C{standard}/C{groupwanted} count as one
    term, unstable if anything in them is).
    """
    stack = [(node, False)]
    while stack:
        node, negated = stack.pop()
        kind = node[0]
        if kind == _OP:
            if negated and node[1].unstable:
                return True
        elif kind == _NOT:
            stack.append((node[1], not negated))
        elif kind != "any":
            stack.append((node[1], negated))
            stack.append((node[2], negated))
    return False


def _terms(node):
    stack = [node]
    while stack:
        node = stack.pop()
        kind = node[0]
        if kind == _OP:
            yield node[1]
        elif kind == _NOT:
            stack.append(node[1])
        elif kind != "any":
            stack.append(node[2])
            stack.append(node[1])


def _evaluate(node, ev):
    """
    Evaluate with short-circuits, left to right; left-nested chains are
    walked without recursion.
    """
    spine = []
    while node[0] in (_AND, _OR):
        spine.append(node)
        node = node[1]
    kind = node[0]
    if kind == _OP:
        value = bool(node[1].evaluate(ev))
    elif kind == _NOT:
        value = not _evaluate(node[1], ev)
    else:
        value = True
    for parent in reversed(spine):
        if parent[0] == _AND:
            if value:
                value = _evaluate(parent[2], ev)
        elif not value:
            value = _evaluate(parent[2], ev)
    return value


class Matcher:
    """
    A parsed preferred content expression.

    @ivar expression: the text it was parsed from.
    @ivar unstable: whether a negation-unstable term (C{present},
        C{balanced=}, C{sizebalanced=}, or a C{standard}/C{groupwanted}
        containing one) is under an odd number of C{not}s: git-annex then
        never uses the expression (L{match} is false).
    @ivar empty: whether it has no terms at all (C{""}, C{"( )"},
        C{"and"}): git-annex treats it as not configured.
    """

    def __init__(self, root, expression="", lazy=False):
        self._root = root
        self.expression = expression
        self._lazy = lazy
        self.unstable = _negatedUnstable(root)
        self.empty = _isEmpty(root)

    @property
    def terms(self):
        """
        The terms, left to right (C{standard}/C{groupwanted} as one).

        @rtype: L{list} of C{(name, value)}
        """
        return [(t.name, t.value) for t in _terms(self._root)]

    def _resolved(self, ctx):
        if not self._lazy:
            return self
        return _resolve(self.expression, ctx.state, ctx.uuid)

    def evaluate(self, ctx):
        """
        The value of the expression for C{ctx}, ignoring L{unstable}.  An
        L{empty} expression is true.

        @type ctx: L{WantContext}
        @rtype: L{bool}
        """
        matcher = self._resolved(ctx)
        return _evaluate(matcher._root, _Evaluation(ctx))

    def match(self, ctx):
        """
        Whether the expression matches C{ctx}, as git-annex decides it for
        a configured expression: false if it is L{unstable}, else its
        value (L{evaluate}).  A match by a balanced term sets
        C{ctx.liveUpdate}.

        C{standard} and C{groupwanted} in an expression parsed without a
        state are expanded here for C{ctx.state} and C{ctx.uuid}.

        @type ctx: L{WantContext}
        @rtype: L{bool}
        """
        matcher = self._resolved(ctx)
        if matcher.unstable:
            return False
        return _evaluate(matcher._root, _Evaluation(ctx))

    def __repr__(self):
        return "<Matcher %r>" % (self.expression,)


def _parseTokens(expression, makeCall):
    items = []
    errors = []
    lazy = False
    for position, (token, offset) in enumerate(tokenize(expression)):
        if token in _SYNTAX:
            items.append(token)
            continue
        try:
            if token in ("standard", "groupwanted"):
                term = makeCall(token)
                lazy = lazy or term.sub is None
            elif token in _SIMPLE:
                term = _Term(token, None, _SIMPLE[token],
                             unstable=token == "present")
            else:
                name, equals, value = token.partition("=")
                if name in _VALUED:
                    term = _Term(name, value, _VALUED[name](value))
                elif name in BALANCED_TERMS:
                    evaluate, unstable = _balancedTerm(name, value)
                    term = _Term(name, value, evaluate, unstable=unstable)
                else:
                    raise ValueError('near "%s"' % (token,))
        except ExpressionError as e:
            errors.append((position, offset, token, e.reason))
            continue
        except ValueError as e:
            errors.append((position, offset, token, str(e)))
            continue
        items.append(term)
    if errors:
        raise ExpressionError(errors, expression)
    try:
        root = _generate(items)
    except RecursionError:
        raise ExpressionError([(0, 0, "(", "nested too deeply")],
                              expression)
    return Matcher(root, expression, lazy=lazy)


def parse(expression, state=None, uuid=None):
    """
    Parse a preferred content expression.

    With C{state} and C{uuid}, C{standard} and C{groupwanted} are
    expanded now for that repository (see L{wants}); without, they are
    expanded when the matcher is used, for the context's state and uuid.

    @type expression: L{str}
    @rtype: L{Matcher}
    @raise ExpressionError: naming the first bad token (its index in
        L{tokenize}'s list is C{position}): an unknown term (C{near
        "foo"}) or a bad value (C{bad number for copies}, C{bad size},
        ...).  A C{groupwanted} whose expression does not parse is a bad
        token too, as in git-annex.
    """
    if state is None:
        return _parseTokens(expression, _lazyCall)
    return _compile(expression, state, uuid, True, True)


def _lazyCall(name):
    def evaluate(ev):
        raise AssertionError("unresolved %s" % (name,))
    return _Term(name, None, evaluate, sub=None)


# ------------------------------------------------- standard and groupwanted

_NOT_ARCHIVED = "not (copies=archive:1 or copies=smallarchive:1)"


def _lastResort(s):
    return "(" + s + ") or approxlackingcopies=1"


_CLIENT = _lastResort(
    "include=* and ((exclude=*/archive/* and exclude=archive/*) or ("
    + _NOT_ARCHIVED + "))")
_ARCHIVE = _lastResort(_NOT_ARCHIVED)

#: The standard groups and their expressions, exactly as git-annex builds
#: them (C{Types.StandardGroups}).
STANDARD_GROUPS = {
    "client": _CLIENT,
    "transfer": _lastResort(
        "not (inallgroup=client and copies=client:2) and (" + _CLIENT
        + ")"),
    "backup": "anything",
    "incrementalbackup": _lastResort(
        "(not copies=backup:1) and (not copies=incrementalbackup:1)"),
    "smallarchive": _lastResort(
        "(include=*/archive/* or include=archive/*) and (" + _ARCHIVE
        + ")"),
    "archive": _ARCHIVE,
    "source": "not (copies=1)",
    "manual": "present and (" + _CLIENT + ")",
    "public": "inpreferreddir",
    "unwanted": "not anything",
}


def standardGroup(groups):
    """
    The standard group among C{groups}, if there is exactly one.

    @rtype: L{str} or L{None}
    """
    found = [g for g in groups if g in STANDARD_GROUPS]
    return found[0] if len(found) == 1 else None


def standardExpression(group):
    """
    The expression of a standard group, or L{None}.

    @rtype: L{str} or L{None}
    """
    return STANDARD_GROUPS.get(group)


def _groupwantedExpression(state, uuid):
    gpc = state.groupPreferredContent
    found = [gpc[g] for g in state.groups.get(uuid, ()) if g in gpc]
    return found[0] if len(found) == 1 else None


def _compile(expression, state, uuid, expandStandard, expandGroupwanted):
    def makeCall(name):
        sub = None
        if name == "standard" and expandStandard:
            group = standardGroup(state.groups.get(uuid, ()))
            if group is not None:
                sub = _compile(STANDARD_GROUPS[group], state, uuid,
                               False, False)
        elif name == "groupwanted" and expandGroupwanted:
            text = _groupwantedExpression(state, uuid)
            if text is not None:
                sub = _compile(text, state, uuid, True, False)
        if sub is None:
            sub = _UNKNOWN
        root = sub._root

        def evaluate(ev):
            return _evaluate(root, ev)
        return _Term(name, None, evaluate,
                     unstable=any(t.unstable for t in _terms(root)),
                     sub=sub)
    return _parseTokens(expression, makeCall)


#: git-annex's C{unknownMatcher}: C{present}.
_UNKNOWN = Matcher((_OP, _presentTerm()), "present")


class _Cache:
    """
    A small LRU of compiled matchers (their keys hold everything they
    depend on).
    """

    def __init__(self, size=512):
        self._size = size
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
                return value
        value = make()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self._size:
                self._data.popitem(last=False)
        return value


_cache = _Cache()


def _expansionKey(state, uuid):
    groups = frozenset(state.groups.get(uuid, ()))
    gpc = state.groupPreferredContent
    return groups, tuple(sorted((g, gpc[g]) for g in groups if g in gpc))


def _resolve(expression, state, uuid):
    """
    C{expression} compiled for C{uuid} in C{state}; C{present} if it (or
    the groupwanted expression it uses) does not parse.
    """
    def make():
        try:
            return _compile(expression, state, uuid, True, True)
        except ExpressionError:
            return _UNKNOWN
    return _cache.get(("resolve", expression, uuid,
                       _expansionKey(state, uuid)), make)


_NOT_CONFIGURED = object()


def matcherFor(state, uuid):
    """
    The L{Matcher} that git-annex uses for repository C{uuid}'s preferred
    content: its preferred content expression OR-ed with its required
    content expression (one alone when the other is missing or empty),
    C{standard}/C{groupwanted} expanded, and C{present} when either does
    not parse.

    @return: the matcher, or L{None} when neither expression is set.  A
        matcher that is L{Matcher.empty} means "not configured" too.
    @rtype: L{Matcher} or L{None}
    """
    preferred = state.preferredContent.get(uuid)
    required = state.requiredContent.get(uuid)
    if preferred is None and required is None:
        return None

    def make():
        compiled = []
        for text in (preferred, required):
            if text is None:
                compiled.append(None)
                continue
            try:
                compiled.append(_compile(text, state, uuid, True, True))
            except ExpressionError:
                return _UNKNOWN
        a, b = compiled
        if a is None:
            return b
        if b is None or b.empty:
            return a
        if a.empty:
            return b
        return Matcher((_OR, a._root, b._root),
                       "(%s) or (%s)" % (preferred, required))
    return _cache.get(("for", uuid, preferred, required,
                       _expansionKey(state, uuid)), make)


def wants(ctx, default):
    """
    Whether repository C{ctx.uuid} wants C{ctx.key} (section 3.1): its
    preferred content OR-ed with its required content; C{default} when
    neither is set or the expression has no terms (git-annex's cluster PUT
    uses C{True}, C{--want-get-by} C{False}); C{present} for an expression
    that does not parse; C{False} for an unstable one.

    @type ctx: L{WantContext}
    @type default: L{bool}
    @rtype: L{bool}
    """
    matcher = matcherFor(ctx.state, ctx.uuid)
    if matcher is None or matcher.empty:
        return default
    return matcher.match(ctx)


def _serialize(tokens):
    """
    The tokens of an expression as text with balanced parentheses (stray
    C{)} dropped, missing ones added), which parses the same.
    """
    out = []
    depth = 0
    for token in tokens:
        if token == ")":
            if depth == 0:
                continue
            depth -= 1
        elif token == "(":
            depth += 1
        out.append(token)
    out.extend([")"] * depth)
    return " ".join(out)


def _expandText(expression, state, uuid, expandStandard, expandGroupwanted):
    tokens = [t for t, offset in tokenize(expression)]
    out = []
    for token in tokens:
        text = None
        if token == "standard":
            group = standardGroup(state.groups.get(uuid, ()))
            if expandStandard and group is not None:
                text = _expandText(STANDARD_GROUPS[group], state, uuid,
                                   False, False)
        elif token == "groupwanted":
            wanted = _groupwantedExpression(state, uuid)
            if expandGroupwanted and wanted is not None:
                text = _expandText(wanted, state, uuid, True, False)
        else:
            out.append(token)
            continue
        if text is None:
            out.append("present")
        else:
            out.extend(["("] + text.split(" ") + [")"])
    return _serialize(out)


def expressionFor(state, uuid):
    """
    The text of the expression L{wants} evaluates for C{uuid}: preferred
    content with C{standard} and C{groupwanted} expanded in parentheses
    (C{present} where they do not apply), OR-ed with required content;
    C{"present"} when either does not parse.  Parsing it again gives the
    same answers (except that a C{not present} inside a groupwanted
    expression then makes the whole expression unstable).

    @return: the text, or L{None} when nothing is configured (no
        expression, or only empty ones).
    @rtype: L{str} or L{None}
    """
    matcher = matcherFor(state, uuid)
    if matcher is None or matcher.empty:
        return None
    if matcher is _UNKNOWN:
        return "present"
    texts = []
    for text in (state.preferredContent.get(uuid),
                 state.requiredContent.get(uuid)):
        if text is None or _parseTokens(text, _lazyCall).empty:
            continue
        texts.append(_expandText(text, state, uuid, True, True))
    if len(texts) == 1:
        return texts[0]
    return "( %s ) or ( %s )" % tuple(texts)


# -------------------------------------------------------------- evaluation

@dataclass
class WantContext:
    """
    What a preferred content expression is evaluated against.

    @ivar state: the L{annexd.annex.state.GatewayState}.
    @ivar uuid: the repository U being asked about.
    @ivar key: the key (an L{annexd.protocol.keys.Key}, or its
        serialization as L{bytes}).
    @ivar file: the associated file, relative to the repository top with
        C{/} separators; L{None} for a key-only context.
    @ivar present: the uuids whose location log (branch + journal) says
        present, B{without} cluster uuids (they are added here).
    @ivar sizes: uuid -> repository size (for example a
        L{annexd.annex.sizes.RepoSizes}); a uuid not in it has no known
        size.  L{None}: no sizes known.
    @ivar metadata: the key's current metadata: lowercase field name ->
        set of values (see L{parseMetaDataLog}).
    @ivar urls: the key's urls (see L{parseUrlLog}).
    @ivar numcopies: numcopies for the file (C{.gitattributes}
        C{annex.numcopies}), overriding C{numcopies.log} in file context;
        L{None}: C{numcopies.log}, or 1.  A key-only context always uses
        C{numcopies.log}, as git-annex does.
    @ivar equivalentKeys: the equivalent keys of a C{VURL} key (its
        C{.log.ek}), for C{securehash}.
    @ivar assumeNotPresent: uuids to count as not having the key, for
        drop checks (section 3.6).
    @ivar rebalance: git-annex's C{--rebalance} for the balanced terms.
    @ivar remoteConfig: U's C{remote.log} configuration (for
        C{inpreferreddir}); L{None}: look it up from the state.
    @ivar liveUpdate: set by the evaluation when a balanced term picked U
        (git-annex then counts the key in U's size while it is sent: the
        caller should L{annexd.annex.sizes.RepoSizes.reserve} it).
    """

    state: Any
    uuid: bytes
    key: Any
    file: str | None = None
    present: Any = field(default_factory=set)
    sizes: Any = None
    metadata: dict = field(default_factory=dict)
    urls: list = field(default_factory=list)
    numcopies: int | None = None
    equivalentKeys: list = field(default_factory=list)
    assumeNotPresent: frozenset = frozenset()
    rebalance: bool = False
    remoteConfig: dict | None = None
    liveUpdate: bool = field(default=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.present, (set, frozenset)):
            self.present = set(self.present)
        if not isinstance(self.assumeNotPresent, frozenset):
            self.assumeNotPresent = frozenset(self.assumeNotPresent)


class _Evaluation:
    """
    One evaluation of an expression: the context and what is derived from
    it, computed once when first needed.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.state = ctx.state
        self.key = ctx.key
        raw, self.variety, self.keySize = keyInfo(ctx.key)
        self._members = {}

    @cached_property
    def logged(self):
        return frozenset(self.ctx.present)

    @cached_property
    def locations(self):
        return keyLocations(self.state, self.logged)

    @cached_property
    def trustedCopies(self):
        notPresent = self.ctx.assumeNotPresent
        return sum(1 for u in self.locations
                   if u not in notPresent and not logs.isClusterUUID(u)
                   and trustLevel(self.state, u) != logs.UNTRUSTED)

    def numcopies(self, approx):
        if not approx and self.ctx.file is not None \
                and self.ctx.numcopies is not None:
            return max(1, self.ctx.numcopies)
        return self.state.numCopies or 1

    def members(self, group):
        found = self._members.get(group)
        if found is None:
            found = self._members[group] = members(self.state, group)
        return found

    def metadataValues(self, fieldName):
        metadata = self.ctx.metadata or {}
        values = metadata.get(fieldName)
        if values is None:
            for name, found in metadata.items():
                if name.lower() == fieldName:
                    return found
            return ()
        return values


# ---------------------------------------------------------- remote config

_remoteLogs = weakref.WeakKeyDictionary()
_remoteLogsLock = threading.Lock()


def _remoteLogOf(state):
    for name in ("remoteLog", "remoteConfigs", "remoteConfig"):
        value = getattr(state, name, None)
        if isinstance(value, dict):
            return value
    with _remoteLogsLock:
        try:
            found = _remoteLogs.get(state)
        except TypeError:
            return {}
    if found is not None:
        return found
    found = {}
    gitDir = getattr(state, "gitDir", None)
    if gitDir:
        try:
            from annexd.annex.branch import BranchReader
            reader = BranchReader(gitDir)
            try:
                found = logs.parseRemoteLog(reader.readSync("remote.log"))
            finally:
                reader.close()
        except Exception:
            found = {}
    with _remoteLogsLock:
        try:
            _remoteLogs[state] = found
        except TypeError:
            pass
    return found


def _preferredDir(ctx):
    config = ctx.remoteConfig
    if config is None:
        config = _remoteLogOf(ctx.state).get(ctx.uuid) or {}
    return config.get("preferreddir", DEFAULT_PREFERRED_DIR)


# ------------------------------------------------- metadata and url logs

def _decode(value):
    return value.decode("utf-8", "surrogateescape")


def _metaValue(word):
    """
    C{(isSet, value bytes)} of a serialized metadata value, or L{None}.
    """
    if word[:1] == b"+":
        isSet = True
    elif word[:1] == b"-":
        isSet = False
    else:
        return None
    value = word[1:]
    if value[:1] == b"!":
        try:
            value = base64.b64decode(value[1:], validate=True)
        except (binascii.Error, ValueError):
            return None
    return isSet, value


def _parseMetaLine(value):
    """
    The changes of one metadata log line: C{[(field, isSet, value)]} in
    order (git-annex's C{MetaData} deserialization).
    """
    changes = []
    words = value.split(b" ")
    i = 0
    while i < len(words):
        try:
            fieldName = words[i].decode("utf-8").lower()
        except UnicodeDecodeError:
            break
        i += 1
        while i < len(words):
            parsed = _metaValue(words[i])
            if parsed is None:
                break
            changes.append((fieldName, parsed[0], parsed[1]))
            i += 1
    return changes


def _formatClock(clock):
    seconds = int(clock) if clock is not logs.UNKNOWN else 0
    try:
        moment = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%d@%H-%M-%S")


def parseMetaDataLog(data):
    """
    The current metadata of a key from its C{.log.met} (section 3.4):
    lines C{T field +val -val field2 +val ...} applied in ascending
    C{(T, text)} order, a later change of the same field and value winning
    (within a line, the later word); values C{!}+base64 decoded.  Also the
    derived C{F-lastchanged} of each set field and C{lastchanged}
    (C{YYYY-MM-DD@HH-MM-SS}, UTC).

    @type data: L{bytes}
    @return: lowercase field name -> L{set} of values (L{str}).
    @rtype: L{dict}
    """
    entries = set()
    for line in logs.splitLines(data):
        space = line.find(b" ")
        if space <= 0:
            continue
        clock = logs.parseTimestamp(line[:space])
        if clock is None:
            continue
        entries.add((clock, line[space + 1:]))
    ordered = sorted(entries)
    state = {}
    changedAt = {}
    for clock, value in ordered:
        for fieldName, isSet, item in _parseMetaLine(value):
            state.setdefault(fieldName, {})[item] = isSet
            changedAt[fieldName] = clock
    current = {}
    for fieldName, values in state.items():
        found = {_decode(v) for v, isSet in values.items() if isSet}
        if found:
            current[fieldName] = found
    for fieldName in list(current):
        current[fieldName + "-lastchanged"] = {
            _formatClock(changedAt[fieldName])}
    if ordered:
        current["lastchanged"] = {_formatClock(ordered[-1][0])}
    return current


def parseUrlLog(data):
    """
    The urls a C{.log.web} currently records (a presence log whose INFO is
    the url), in the order their lines come.

    @type data: L{bytes}
    @rtype: L{list} of L{str}
    """
    return [_decode(url) for url, (clock, status)
            in logs.parsePresenceLog(data).items()
            if status == logs.PRESENT]


def readKeyLogs(reader, key):
    """
    Read a key's metadata and urls from the git-annex branch (with the
    journal), blocking.

    @param reader: an L{annexd.annex.branch.BranchReader}.
    @param key: an L{annexd.protocol.keys.Key} or its serialization.
    @return: C{(metadata, urls)} for L{WantContext}.
    """
    from annexd.annex.location import hashDirLower, keyFileName
    raw = keyInfo(key)[0]
    base = hashDirLower(raw) + _decode(keyFileName(raw)) + ".log"
    return (parseMetaDataLog(reader.readSync(base + ".met")),
            parseUrlLog(reader.readSync(base + ".web")))

