"""
Tests for L{annexd.annex.preferred}, L{annexd.annex.balanced} and
L{annexd.annex.sizes}: the expression grammar and every term of
shared/spec/annex-state.md section 3 on hand-made contexts, the balanced
family with the test vectors of section 3.7, and repository sizes against
a real git-annex cluster (L{tests.support.annex}).
"""

import itertools
import os

from twisted.trial import unittest

from annexd.annex import logs
from annexd.annex.balanced import (
    BalancedTerm, hasSpace, keyLocations, pick, pickerIndex, picks,
    readishInt, sizeFilter, tooFull, wantsBalanced)
from annexd.annex.branch import journalFileName
from annexd.annex.location import LocationLog, locationLogPath
from annexd.annex.preferred import (
    STANDARD_GROUPS, ExpressionError, WantContext, expressionFor,
    isSecureBackend, matcherFor, parse, parseMetaDataLog, parseUrlLog,
    readKeyLogs, standardGroup, tokenize, wants)
from annexd.annex.sizes import (
    RepoSizes, isLocationLogPath, keyFromLogPath, keySize)
from annexd.annex.state import GatewayState
from annexd.protocol.keys import Key
from tests.support.annex import cluster_for

U1 = b"11111111-1111-4111-8111-111111111111"
U2 = b"22222222-2222-4222-8222-222222222222"
U3 = b"33333333-3333-4333-8333-333333333333"
U4 = b"44444444-4444-4444-8444-444444444444"
GW = b"99999999-9999-4999-8999-999999999999"
OUT1 = b"aaaaaaaa-0000-4000-8000-00000000000a"
OUT2 = b"bbbbbbbb-0000-4000-8000-00000000000b"
OUT3 = b"cccccccc-0000-4000-8000-00000000000c"
CLUSTER = b"ac4fd4b6-7257-8c6e-999a-245400d583c3"

KEY = Key.parse(b"SHA256E-s1000--" + b"ab" * 32 + b".txt")
SIZELESS = Key.parse(b"WORM--test")

#: The test vectors of section 3.7: key, HMAC prefix, x % 4, the :1 and :2
#: picks over U1..U4, and the :1 pick with U3 filtered out.
VECTORS = [
    (b"WORM--test", "9c291ed3282e40a8", 1, [U2], [U2, U3], U4),
    (b"URL--https://example.com/a%20b&c", "ca815414892a6cbd", 1, [U2],
     [U2, U3], U2),
    (b"WORM-s0-m1700000000--dir/with:colon&amp%pct", "144cdec712b5ee85", 3,
     [U4], [U4, U1], U1),
    (b"MD5-s5--5d41402abc4b2a76b9719d911017c592", "5077f35bbbb8fe66", 0,
     [U1], [U1, U2], U2),
    (b"SHA1--a9993e364706816aba3e25717850c26c9cd0d89d", "5ce0267221569832",
     3, [U4], [U4, U1], U1),
    (b"SHA256-s1048576-S262144-C2--59fdd34a0b323f6044e147b843d8ca246a9414d2"
     b"c7a06c8e95a7e04c3cdaf395", "e85644d00447f2dd", 2, [U3], [U3, U4], U1),
    (b"BLAKE2B256E-s42--d161d71145abeec5ef15abcf0459cec60a27321e2f0ac0ef7ace"
     b"5254f5944476.tar.gz", "f5b4c20e53d64b69", 2, [U3], [U3, U4], U1),
    ("WORM-s12-m1600000000--\u00fcber-\u00fcn\u00efc\u00f6d\u00e9.txt"
     .encode("utf-8"), "cdfbe402ebb97d9e", 0, [U1], [U1, U2], U4),
    (b"SHA256E-s127904006--5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b4"
     b"6729d73a27fb57e9.mp3", "5c9d2fb42787fe7b", 3, [U4], [U4, U1], U1),
    (b"SHA256-s343043868--6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c"
     b"01e52ddb7875b4b", "8bd3fa88fae1cf71", 1, [U2], [U2, U3], U2),
]


def makeState(**kw):
    """
    A hand-made L{GatewayState} (no repository behind it; C{remote.log} is
    empty).
    """
    remoteLog = kw.pop("remoteLog", {})
    state = GatewayState("/nonexistent", "/nonexistent/.git", GW, **kw)
    state.remoteLog = remoteLog
    return state


def context(state=None, uuid=U1, key=KEY, **kw):
    """
    A L{WantContext} for C{uuid} and C{key}.
    """
    return WantContext(state if state is not None else makeState(),
                       uuid, key, **kw)


def probe(expression, **flags):
    """
    Evaluate C{expression}, whose terms are C{metadata=NAME=1}, with the
    metadata fields named in C{flags} set to 1 when true.
    """
    metadata = {name: {"1"} for name, on in flags.items() if on}
    return parse(expression).match(context(metadata=metadata))


def boolExpression(text):
    """
    Turn C{"a or b"} into C{"metadata=a=1 or metadata=b=1"} (parentheses
    become tokens of their own, which changes nothing).
    """
    return " ".join("metadata=%s=1" % (t,) if t in ("a", "b", "c") else t
                    for t, offset in tokenize(text))


class TokenizeTests(unittest.TestCase):
    """
    L{tokenize}.
    """

    def test_words(self):
        """
        Tokens are split on whitespace runs, with their offsets.
        """
        self.assertEqual(tokenize(" a\tb\n c "), [("a", 1), ("b", 3),
                                                 ("c", 6)])

    def test_parens(self):
        """
        C{(} and C{)} are tokens of their own even when touching text.
        """
        self.assertEqual([t for t, o in tokenize("(a)b(c")],
                         ["(", "a", ")", "b", "(", "c"])

    def test_noQuoting(self):
        """
        Quotes are ordinary characters.
        """
        self.assertEqual([t for t, o in tokenize('include="a b"')],
                         ['include="a', 'b"'])


class GrammarTests(unittest.TestCase):
    """
    The grammar of section 3.2: no precedence, left to right.
    """

    def truthTable(self, expression, expected):
        """
        Check C{expression} (over terms a, b, c) against the Python
        function C{expected} for every assignment.
        """
        matcher = parse(boolExpression(expression))
        for a, b, c in itertools.product([False, True], repeat=3):
            ctx = context(metadata={n: {"1"} for n, on in
                                    (("a", a), ("b", b), ("c", c)) if on})
            self.assertEqual(matcher.match(ctx), expected(a, b, c),
                             (expression, a, b, c))

    def test_implicitAnd(self):
        """
        C{a b} is C{a and b}.
        """
        self.truthTable("a b", lambda a, b, c: a and b)
        self.truthTable("a b c", lambda a, b, c: a and b and c)

    def test_orThenAnd(self):
        """
        C{a or b and c} is C{(a or b) and c}.
        """
        self.truthTable("a or b and c", lambda a, b, c: (a or b) and c)

    def test_andThenOr(self):
        """
        C{a and b or c} is C{(a and b) or c}.
        """
        self.truthTable("a and b or c", lambda a, b, c: (a and b) or c)

    def test_implicitAndNot(self):
        """
        C{a not b} is C{a and not b}; C{not} binds to the next item only.
        """
        self.truthTable("a not b", lambda a, b, c: a and not b)
        self.truthTable("not a or b", lambda a, b, c: (not a) or b)
        self.truthTable("not not a", lambda a, b, c: a)

    def test_parentheses(self):
        """
        A group is evaluated on its own and combined like one term.
        """
        self.truthTable("a and ( b or c )", lambda a, b, c: a and (b or c))
        self.truthTable("a ( b or c )", lambda a, b, c: a and (b or c))
        self.truthTable("(b or c)a", lambda a, b, c: (b or c) and a)
        self.truthTable("a or ( b and c )", lambda a, b, c: a or (b and c))
        self.truthTable("not ( a or b ) c",
                        lambda a, b, c: not (a or b) and c)
        self.truthTable("( ( a ) or ( b ) ) and c",
                        lambda a, b, c: (a or b) and c)

    def test_missingParen(self):
        """
        A missing C{)} closes at the end.
        """
        self.truthTable("a and ( b or c", lambda a, b, c: a and (b or c))
        self.truthTable("( a or ( b and c", lambda a, b, c: a or (b and c))

    def test_extraParen(self):
        """
        An extra C{)} is ignored.
        """
        self.truthTable("a or b ) and c", lambda a, b, c: (a or b) and c)
        self.truthTable(") a", lambda a, b, c: a)
        self.truthTable("( a or b ) ) c", lambda a, b, c: (a or b) and c)

    def test_danglingOperators(self):
        """
        A trailing C{or} adds an "any" (always true); a trailing C{not}
        adds "not any" (false); a trailing C{and} changes nothing.
        """
        self.truthTable("a or", lambda a, b, c: True)
        self.truthTable("a not", lambda a, b, c: False)
        self.truthTable("a and", lambda a, b, c: a)

    def test_empty(self):
        """
        Expressions without terms are empty (not configured).
        """
        for expression in ("", "  ", "( )", "and", "and and", "( ( ) )"):
            self.assertTrue(parse(expression).empty, expression)
        for expression in ("anything", "or", "not", "nothing"):
            self.assertFalse(parse(expression).empty, expression)

    def test_valueWithEquals(self):
        """
        Only the first C{=} splits a term: C{metadata=a=x=y} is field C{a}
        matching the glob C{x=y}.
        """
        matcher = parse("metadata=a=x=y")
        self.assertEqual(matcher.terms, [("metadata", "a=x=y")])
        self.assertTrue(matcher.match(context(metadata={"a": {"x=y"}})))
        self.assertFalse(matcher.match(context(metadata={"a": {"x"}})))

    def test_terms(self):
        """
        L{Matcher.terms} lists the terms left to right.
        """
        self.assertEqual(parse("anything or ( copies=2 not present )").terms,
            [("anything", None), ("copies", "2"), ("present", None)])

    def test_shortCircuit(self):
        """
        Evaluation stops at the first deciding term: a balanced term that
        is not reached does not ask for a live update.
        """
        state = makeState(groups={U1: frozenset(["g"])})
        ctx = context(state)
        self.assertTrue(parse("anything or fullybalanced=g").match(ctx))
        self.assertFalse(ctx.liveUpdate)
        self.assertTrue(parse("nothing or fullybalanced=g").match(ctx))
        self.assertTrue(ctx.liveUpdate)

    def test_longChain(self):
        """
        Long left-nested chains parse and evaluate without recursion
        limits.
        """
        expression = " ".join(["anything"] * 3000)
        self.assertTrue(parse(expression).match(context()))
        expression = " or ".join(["nothing"] * 3000)
        self.assertFalse(parse(expression).match(context()))


class ErrorTests(unittest.TestCase):
    """
    Expressions that do not parse.
    """

    def assertBad(self, expression, position, reason):
        """
        Parsing C{expression} fails at token C{position} with C{reason}.
        """
        e = self.assertRaises(ExpressionError, parse, expression)
        self.assertEqual((e.position, e.reason), (position, reason))
        self.assertIn(e.token, str(e))
        return e

    def test_unknownTerm(self):
        """
        An unknown word is an error naming it, with its token index and
        character offset.
        """
        e = self.assertBad("anything or ( frobnicate )", 3,
                           'near "frobnicate"')
        self.assertEqual(e.offset, 14)
        self.assertEqual(e.token, "frobnicate")
        self.assertIsInstance(e, ValueError)

    def test_simpleTermWithValue(self):
        """
        A bare-word term given a value is unknown.
        """
        self.assertBad("present=1", 0, 'near "present=1"')
        self.assertBad("anything=", 0, 'near "anything="')

    def test_badValues(self):
        """
        Bad values of known terms give git-annex's messages.
        """
        self.assertBad("copies=x", 0, "bad number for copies")
        self.assertBad("copies=1.0", 0, "bad number for copies")
        self.assertBad("copies", 0, "bad number for copies")
        self.assertBad("copies=a:b:1", 0, "bad value for copies")
        self.assertBad("lackingcopies=x", 0,
                       "bad value for number of lacking copies")
        self.assertBad("approxlackingcopies=", 0,
                       "bad value for number of lacking copies")
        self.assertBad("largerthan=abc", 0, "bad size")
        self.assertBad("smallerthan=1zz", 0, "bad size")
        self.assertBad("metadata=_x=1", 0,
                       'Illegal metadata field name, "_x"')
        self.assertBad("metadata==1", 0, 'Illegal metadata field name, ""')
        self.assertBad("balanced=g:x", 0, "bad number for balanced")
        self.assertBad("fullysizebalanced=g:1:2", 0,
                       "bad value for sizebalanced")

    def test_allErrors(self):
        """
        Every bad token is listed; the first is reported.
        """
        e = self.assertBad("foo anything copies=x", 0, 'near "foo"')
        self.assertEqual([(p, t) for p, o, t, r in e.errors],
                         [(0, "foo"), (2, "copies=x")])

    def test_badGlob(self):
        """
        A glob regex-tdfa could not compile (an unterminated C{[}) does
        not parse.
        """
        self.assertBad("include=[abc", 0, "unterminated [ in glob")
        self.assertBad("url=a[", 0, "unterminated [ in glob")

    def test_lenientValues(self):
        """
        git-annex's C{readish} ignores what follows a number and reads hex
        and octal; C{include} without a value is the empty glob.
        """
        self.assertEqual(parse("copies=2abc").terms, [("copies", "2abc")])
        parse("copies=0x10")
        parse("copies=-1")
        self.assertFalse(parse("include").match(context(file="a")))
        self.assertTrue(parse("inallgroup").match(context()))

    def test_readishInt(self):
        """
        L{readishInt} reads like Haskell's C{reads :: Int}.
        """
        for text, value in [("2", 2), ("2abc", 2), ("0x10", 16),
                            ("0o17", 15), ("-3", -3), ("- 3", -3),
                            ("0x", 0), ("1.", 1), ("1e", 1), ("1.0", None),
                            ("1e3", None), ("x", None), ("", None),
                            ("+1", None), (str(2 ** 64 + 5), 5)]:
            self.assertEqual(readishInt(text), value, text)


class TermTests(unittest.TestCase):
    """
    Every term of section 3.4 on hand-made contexts.
    """

    def match(self, expression, **kw):
        """
        Whether C{expression} matches a context built from C{kw}.
        """
        return parse(expression).match(context(**kw))

    def test_anythingNothing(self):
        """
        C{anything} is true, C{nothing} false, in both contexts.
        """
        self.assertTrue(self.match("anything"))
        self.assertFalse(self.match("nothing", file="a"))

    def test_includeExclude(self):
        """
        C{include=} matches the path, C{exclude=} its negation.
        """
        self.assertTrue(self.match("include=*.txt", file="d/a.txt"))
        self.assertFalse(self.match("include=*.txt", file="d/a.jpg"))
        self.assertFalse(self.match("exclude=*.txt", file="d/a.txt"))
        self.assertTrue(self.match("exclude=*.txt", file="d/a.jpg"))

    def test_keyOnlyInclude(self):
        """
        In a key-only context C{include=} is false and C{exclude=} true,
        whatever the glob.
        """
        for glob in ("*", "nomatch"):
            self.assertFalse(self.match("include=" + glob))
            self.assertTrue(self.match("exclude=" + glob))

    def test_globStarCrossesSlash(self):
        """
        C{*} matches across C{/}; the glob must match the whole path.
        """
        self.assertTrue(self.match("include=*f002", file="k/f002"))
        self.assertFalse(self.match("include=f002", file="k/f002"))
        self.assertFalse(self.match("include=k", file="k/f002"))
        self.assertTrue(self.match("include=*/archive/*",
                                   file="a/b/archive/c/d"))
        self.assertTrue(self.match("include=a/*", file="a//b"))

    def test_globQuestionAndClasses(self):
        """
        C{?} is one character; C{[...]}, C{[!...]}, ranges and POSIX
        classes (ASCII, as regex-tdfa has them; a backslash after the
        class is a member too, as git-annex builds the regex).
        """
        self.assertTrue(self.match("include=a?b", file="aXb"))
        self.assertFalse(self.match("include=a?b", file="ab"))
        self.assertTrue(self.match("include=a[xy]b", file="ayb"))
        self.assertFalse(self.match("include=a[!xy]b", file="ayb"))
        self.assertTrue(self.match("include=a[!xy]b", file="a-b"))
        self.assertTrue(self.match("include=a[a-c]b", file="acb"))
        self.assertFalse(self.match("include=a[a-c]b", file="adb"))
        self.assertTrue(self.match("include=a[.-]b", file="a-b"))
        self.assertTrue(self.match("include=a[[:space:]]b", file="a b"))
        self.assertTrue(self.match("include=a[[:space:]]b", file="a\\b"))
        self.assertFalse(self.match("include=a[[:space:]]b", file="aXb"))
        self.assertTrue(self.match("include=a[[:punct:]]b", file="a$b"))
        self.assertTrue(self.match("include=a[[:alpha:]]b", file="aXb"))
        self.assertFalse(self.match("include=a[[:alpha:]]b",
                                    file="a\u00e9b"))
        self.assertTrue(self.match("include=a[[:space:]]]b", file="a ]b"))
        self.assertTrue(self.match("include=a[]]b", file="a]b"))

    def test_globCaseAndSpecials(self):
        """
        Path globs are case-sensitive; regex characters are literal.
        """
        self.assertFalse(self.match("include=A?B", file="aXb"))
        self.assertTrue(self.match("include=a.b+c", file="a.b+c"))
        self.assertFalse(self.match("include=a.b", file="aXb"))
        self.assertTrue(self.match("include=x|y{1}^$", file="x|y{1}^$"))
        self.assertTrue(self.match("include=*\u00fcber*", file="\u00fcber"))

    def test_globNewlines(self):
        """
        As in regex-tdfa's multiline mode, a glob may match one line of a
        value with newlines, and C{*} does not cross a newline.
        """
        matcher = parse("metadata=note=b*")
        self.assertTrue(matcher.match(context(
            metadata={"note": {"a\nbcd"}})))
        self.assertFalse(parse("metadata=note=a*d").match(context(
            metadata={"note": {"a\nbcd"}})))

    def test_copies(self):
        """
        C{copies=N} counts present uuids, not dead ones, not clusters.
        """
        state = makeState(trust={U3: logs.DEAD},
                          clusterLog={CLUSTER: [U1, U2]})
        self.assertTrue(self.match("copies=2", state=state,
                                   present={U1, U2, U3}))
        self.assertFalse(self.match("copies=3", state=state,
                                    present={U1, U2, U3}))
        self.assertTrue(self.match("copies=0", state=state))

    def test_copiesTrust(self):
        """
        C{copies=TRUST:N} counts repositories of that trust level,
        C{TRUST+:N} of that level or better; a group named like a trust
        level is read as the trust level.
        """
        state = makeState(trust={U1: logs.TRUSTED, U2: logs.UNTRUSTED},
                          groups={U3: frozenset(["trusted"])})
        present = {U1, U2, U3}
        for expression, expected in [
                ("copies=trusted:1", True), ("copies=trusted:2", False),
                ("copies=semitrusted:1", True),
                ("copies=semitrusted+:2", True),
                ("copies=semitrusted+:3", False),
                ("copies=untrusted:1", True), ("copies=untrusted+:3", True),
                ("copies=dead:1", False)]:
            self.assertEqual(self.match(expression, state=state,
                                        present=present), expected,
                             expression)

    def test_copiesGroup(self):
        """
        C{copies=GROUP:N} counts the group's members.
        """
        state = makeState(groups={U1: frozenset(["g", "h"]),
                                  U2: frozenset(["g"])},
                          trust={U2: logs.DEAD})
        self.assertTrue(self.match("copies=g:1", state=state,
                                   present={U1, U2, U3}))
        self.assertFalse(self.match("copies=g:2", state=state,
                                    present={U1, U2, U3}))
        self.assertTrue(self.match("copies=h:1", state=state, present={U1}))

    def test_lackingcopies(self):
        """
        C{lackingcopies=N}: numcopies minus the copies that are neither
        dead nor untrusted (clusters not counted) is at least N; in file
        context C{.gitattributes} numcopies (the context's) applies.
        """
        state = makeState(trust={U2: logs.UNTRUSTED, U3: logs.DEAD},
                          numCopies=3, clusterLog={CLUSTER: [U1]})
        present = {U1, U2, U3}
        self.assertTrue(self.match("lackingcopies=2", state=state,
                                   present=present))
        self.assertFalse(self.match("lackingcopies=3", state=state,
                                    present=present))
        self.assertTrue(self.match("lackingcopies=4", state=state,
                                   present=present, file="f", numcopies=5))
        self.assertFalse(self.match("lackingcopies=4", state=state,
                                    present=present, numcopies=5))
        self.assertFalse(self.match("approxlackingcopies=4", state=state,
                                    present=present, file="f", numcopies=5))
        self.assertTrue(self.match("approxlackingcopies=2", state=state,
                                   present=present, file="f", numcopies=1))

    def test_lackingcopiesDefault(self):
        """
        Without numcopies.log, numcopies is 1.
        """
        self.assertTrue(self.match("lackingcopies=1"))
        self.assertFalse(self.match("lackingcopies=1", present={U2}))

    def test_inbackend(self):
        """
        C{inbackend=} compares the key's backend.
        """
        self.assertTrue(self.match("inbackend=SHA256E"))
        self.assertFalse(self.match("inbackend=SHA256"))
        self.assertTrue(self.match("inbackend=WORM", key=SIZELESS))

    def test_securehash(self):
        """
        C{securehash} is true for the secure backends, with or without
        C{E}, and for VURL keys whose equivalent keys are all secure.
        """
        for variety in (b"SHA256", b"SHA512E", b"SHA3_256E", b"SKEIN512",
                        b"BLAKE2B256E", b"BLAKE2SP224", b"BLAKE3_256",
                        b"GITBUNDLE", b"GITMANIFEST"):
            self.assertTrue(isSecureBackend(variety), variety)
        for variety in (b"MD5", b"MD5E", b"SHA1", b"SHA1E", b"WORM", b"URL",
                        b"XXH3", b"XFOO", b"OTHER", b"VURL"):
            self.assertFalse(isSecureBackend(variety), variety)
        vurl = b"VURL--https://example.com/x"
        self.assertTrue(self.match("securehash", key=vurl))
        self.assertTrue(self.match("securehash", key=vurl,
                                   equivalentKeys=[KEY]))
        self.assertFalse(self.match("securehash", key=vurl,
                                    equivalentKeys=[KEY, b"MD5--x"]))
        self.assertFalse(self.match("securehash", key=b"MD5E-s1--x.txt"))

    def test_sizes(self):
        """
        C{largerthan=} and C{smallerthan=} compare the key's size; a key
        without a size is smaller than anything and larger than nothing.
        """
        self.assertTrue(self.match("largerthan=999"))
        self.assertFalse(self.match("largerthan=1000"))
        self.assertTrue(self.match("smallerthan=1001"))
        self.assertFalse(self.match("smallerthan=1000"))
        self.assertFalse(self.match("largerthan=0", key=SIZELESS))
        self.assertTrue(self.match("smallerthan=0", key=SIZELESS))

    def test_sizeUnits(self):
        """
        SIZE takes decimal, binary and bit units, case-insensitive.
        """
        big = Key.parse(b"SHA256-s1048576--" + b"cd" * 32)
        for expression, expected in [
                ("largerthan=1mb", True), ("largerthan=1MiB", False),
                ("smallerthan=1.1MiB", True), ("largerthan=1048575b", True),
                ("smallerthan=2megabytes", True), ("largerthan=1k", True),
                ("largerthan=8Mbit", True), ("smallerthan=9Mbit", True),
                ("largerthan=1e-3kb", True), ("smallerthan=1GB", True)]:
            self.assertEqual(self.match(expression, key=big), expected,
                             expression)

    def test_metadataGlob(self):
        """
        C{metadata=F=GLOB} matches some current value of F,
        case-insensitively; field names are case-insensitive.
        """
        metadata = {"tag": {"Holiday", "work"}, "author": {"Joey Hess"}}
        self.assertTrue(self.match("metadata=tag=holi*", metadata=metadata))
        self.assertTrue(self.match("metadata=TAG=WORK", metadata=metadata))
        self.assertFalse(self.match("metadata=tag=home",
                                    metadata=metadata))
        self.assertTrue(self.match("metadata=author=*[[:space:]]hess",
                                   metadata=metadata))
        self.assertFalse(self.match("metadata=missing=*",
                                    metadata=metadata))
        self.assertTrue(self.match("metadata=Tag=work",
                                   metadata={"Tag": {"work"}}))

    def test_metadataCompare(self):
        """
        C{<}, C{<=}, C{>}, C{>=} compare numbers when both sides are
        numbers, strings otherwise.
        """
        metadata = {"year": {"2020"}, "name": {"beta"}, "n": {"9"}}
        for expression, expected in [
                ("metadata=year<2021", True), ("metadata=year<=2020", True),
                ("metadata=year>2020", False), ("metadata=year>=2020", True),
                ("metadata=n<10", True), ("metadata=n>1e0", True),
                ("metadata=name<gamma", True), ("metadata=name>alpha", True),
                ("metadata=name<alpha", False),
                ("metadata=n<a", True)]:
            self.assertEqual(self.match(expression, metadata=metadata),
                             expected, expression)

    def test_url(self):
        """
        C{url=GLOB} matches a recorded url, downloader prefixes removed;
        C{/} is an ordinary character.
        """
        urls = ["https://example.com/a/b", "yt:https://video.example/x"]
        self.assertTrue(self.match("url=https://example.com/*", urls=urls))
        self.assertTrue(self.match("url=https://video*", urls=urls))
        self.assertFalse(self.match("url=yt:*", urls=urls))
        self.assertFalse(self.match("url=*", urls=[]))

    def test_present(self):
        """
        C{present} is U in the location list; a dead U is not present.
        """
        self.assertTrue(self.match("present", present={U1}))
        self.assertFalse(self.match("present", present={U2}))
        state = makeState(trust={U1: logs.DEAD})
        self.assertFalse(self.match("present", state=state, present={U1}))

    def test_presentCluster(self):
        """
        A cluster is present when one of its live nodes is.
        """
        state = makeState(clusterLog={CLUSTER: [U2]})
        self.assertTrue(self.match("present", state=state, uuid=CLUSTER,
                                   present={U2}))
        self.assertEqual(keyLocations(state, {U2}), {U2, CLUSTER})
        dead = makeState(clusterLog={CLUSTER: [U2]},
                         trust={U2: logs.DEAD})
        self.assertEqual(keyLocations(dead, {U2}), frozenset())

    def test_notPresentUnstable(self):
        """
        C{not present} is never true; neither is any expression with an
        unstable term under an odd number of C{not}s.
        """
        for expression in ("not present", "copies=1 or not balanced=g",
                           "not ( anything and sizebalanced=g )",
                           "not not not present"):
            matcher = parse(expression)
            self.assertTrue(matcher.unstable, expression)
            self.assertFalse(matcher.match(context(present={U2})))
        for expression in ("not not present", "not fullybalanced=g",
                           "not fullysizebalanced=g", "present"):
            self.assertFalse(parse(expression).unstable, expression)
        self.assertTrue(parse("not fullybalanced=g").match(context()))
        self.assertTrue(parse("not present").evaluate(context()))

    def test_inallgroup(self):
        """
        C{inallgroup=G}: every member present; true for an empty group.
        """
        state = makeState(groups={U1: frozenset(["g"]),
                                  U2: frozenset(["g"])})
        self.assertTrue(self.match("inallgroup=g", state=state,
                                   present={U1, U2}))
        self.assertFalse(self.match("inallgroup=g", state=state,
                                    present={U1}))
        self.assertTrue(self.match("inallgroup=empty", state=state))

    def test_onlyingroup(self):
        """
        C{onlyingroup=G}: some copy in G and none outside; false for an
        empty group; the cluster uuid counts as outside unless in G.
        """
        state = makeState(groups={U1: frozenset(["g"]),
                                  U2: frozenset(["g"])},
                          clusterLog={CLUSTER: [U1]})
        self.assertTrue(self.match("onlyingroup=g", state=state,
                                   present={U2}))
        self.assertFalse(self.match("onlyingroup=g", state=state,
                                    present={U2, U3}))
        self.assertFalse(self.match("onlyingroup=g", state=state))
        self.assertFalse(self.match("onlyingroup=empty", state=state,
                                    present={U2}))
        self.assertFalse(self.match("onlyingroup=g", state=state,
                                    present={U1}))

    def test_inpreferreddir(self):
        """
        C{inpreferreddir}: the immediate parent directory is the
        preferreddir (default C{public}); false in key-only context.
        """
        for path, expected in [("public/a", True), ("x/public/b", True),
                               ("public/sub/c", False), ("public", False),
                               ("a", False)]:
            self.assertEqual(self.match("inpreferreddir", file=path),
                             expected, path)
        self.assertFalse(self.match("inpreferreddir"))
        self.assertTrue(self.match("inpreferreddir", file="x/pub/a",
                                   remoteConfig={"preferreddir": "pub"}))
        state = makeState()
        state.remoteLog = {U1: {"preferreddir": "www"}}
        self.assertTrue(self.match("inpreferreddir", state=state,
                                   file="www/a"))
        self.assertFalse(self.match("inpreferreddir", state=state,
                                    file="public/a"))

    def test_unused(self):
        """
        C{unused} is never true (annexd has no unused list).
        """
        self.assertFalse(self.match("unused"))
        self.assertFalse(self.match("unused", file="a"))

    def test_assumeNotPresent(self):
        """
        For drop checks, copies and lackingcopies leave out the assumed
        not present uuids; C{present} does not.
        """
        state = makeState(groups={U1: frozenset(["g"])}, numCopies=2)
        ctx = dict(state=state, present={U1, U2},
                   assumeNotPresent=frozenset([U1]))
        self.assertFalse(self.match("copies=2", **ctx))
        self.assertTrue(self.match("lackingcopies=1", **ctx))
        self.assertTrue(self.match("present", **ctx))
        self.assertFalse(self.match("inallgroup=g", **ctx))

    def test_keyAsBytes(self):
        """
        The context's key may be given as its serialization.
        """
        self.assertTrue(self.match("largerthan=999 inbackend=SHA256E",
                                   key=KEY.raw))


class StandardGroupTests(unittest.TestCase):
    """
    Standard groups (section 3.5) and C{groupwanted}.
    """

    def test_expressions(self):
        """
        The standard expressions are exactly git-annex's.
        """
        client = ("(include=* and ((exclude=*/archive/* and "
                  "exclude=archive/*) or (not (copies=archive:1 or "
                  "copies=smallarchive:1)))) or approxlackingcopies=1")
        archive = ("(not (copies=archive:1 or copies=smallarchive:1)) or "
                   "approxlackingcopies=1")
        self.assertEqual(STANDARD_GROUPS, {
            "client": client,
            "transfer": "(not (inallgroup=client and copies=client:2) and ("
                        + client + ")) or approxlackingcopies=1",
            "backup": "anything",
            "incrementalbackup": "((not copies=backup:1) and (not "
                                 "copies=incrementalbackup:1)) or "
                                 "approxlackingcopies=1",
            "smallarchive": "((include=*/archive/* or include=archive/*) and"
                            " (" + archive + ")) or approxlackingcopies=1",
            "archive": archive,
            "source": "not (copies=1)",
            "manual": "present and (" + client + ")",
            "public": "inpreferreddir",
            "unwanted": "not anything",
        })
        for group, expression in STANDARD_GROUPS.items():
            self.assertEqual(parse(expression).unstable,
                             False, group)

    def wantsStandard(self, group, uuid=U1, **kw):
        """
        Whether C{uuid}, in C{group} with preferred content C{standard},
        wants the key.
        """
        groups = dict(kw.pop("groups", {}))
        groups.setdefault(uuid, frozenset([group]))
        state = makeState(groups=groups, preferredContent={uuid: "standard"},
                          numCopies=kw.pop("numCopies", None),
                          trust=kw.pop("trust", {}))
        return wants(context(state, uuid=uuid, **kw), default=False)

    def test_client(self):
        """
        A client wants files outside archive directories, and archived
        files nobody archived; key-only, only when copies are lacking.
        """
        self.assertTrue(self.wantsStandard("client", file="a/b"))
        self.assertTrue(self.wantsStandard("client", file="archive/b"))
        archived = {U2: frozenset(["archive"])}
        self.assertFalse(self.wantsStandard("client", file="x/archive/b",
                                            groups=archived, present={U2}))
        self.assertTrue(self.wantsStandard("client", file="x/b",
                                           groups=archived, present={U2}))
        self.assertTrue(self.wantsStandard("client"))
        self.assertFalse(self.wantsStandard("client", present={U2}))

    def test_transfer(self):
        """
        A transfer repository stops wanting once every client has it and
        there are two client copies.
        """
        clients = {U2: frozenset(["client"]), U3: frozenset(["client"])}
        self.assertTrue(self.wantsStandard("transfer", file="f",
                                           groups=clients, present={U2}))
        self.assertFalse(self.wantsStandard("transfer", file="f",
                                            groups=clients,
                                            present={U2, U3}))

    def test_backup(self):
        """
        A backup wants everything.
        """
        self.assertTrue(self.wantsStandard("backup"))

    def test_incrementalbackup(self):
        """
        An incremental backup wants what no backup has.
        """
        backups = {U2: frozenset(["backup"])}
        self.assertTrue(self.wantsStandard("incrementalbackup", file="f",
                                           groups=backups, present={U3}))
        self.assertFalse(self.wantsStandard("incrementalbackup", file="f",
                                            groups=backups, present={U2}))
        self.assertFalse(self.wantsStandard("incrementalbackup", file="f",
                                            present={U1}))

    def test_archives(self):
        """
        An archive wants what no archive has; a small archive only in
        archive directories.
        """
        self.assertTrue(self.wantsStandard("archive", file="f",
                                           present={U2}))
        others = {U2: frozenset(["smallarchive"])}
        self.assertFalse(self.wantsStandard("archive", file="f",
                                            groups=others, present={U2}))
        self.assertTrue(self.wantsStandard("smallarchive",
                                           file="d/archive/f",
                                           present={U3}))
        self.assertFalse(self.wantsStandard("smallarchive", file="d/f",
                                            present={U3}))

    def test_source(self):
        """
        A source wants a file only while there is no copy at all.
        """
        self.assertTrue(self.wantsStandard("source", file="f"))
        self.assertFalse(self.wantsStandard("source", file="f",
                                            present={U1}))

    def test_manual(self):
        """
        A manual repository keeps what it has (as a client would).
        """
        self.assertTrue(self.wantsStandard("manual", file="f",
                                           present={U1}))
        self.assertFalse(self.wantsStandard("manual", file="f",
                                            present={U2}))

    def test_public(self):
        """
        A public repository wants its preferreddir.
        """
        self.assertTrue(self.wantsStandard("public", file="public/f"))
        self.assertFalse(self.wantsStandard("public", file="f"))

    def test_unwanted(self):
        """
        An unwanted repository wants nothing.
        """
        self.assertFalse(self.wantsStandard("unwanted", file="f",
                                            present={U1}))

    def test_notExactlyOneStandardGroup(self):
        """
        C{standard} acts as C{present} unless U is in exactly one
        standard group.
        """
        self.assertEqual(standardGroup(["backup", "mine"]), "backup")
        self.assertIsNone(standardGroup(["backup", "client"]))
        self.assertIsNone(standardGroup([]))
        for groups in (frozenset(["backup", "client"]), frozenset(["g"])):
            state = makeState(groups={U1: groups},
                              preferredContent={U1: "standard"})
            self.assertTrue(wants(context(state, present={U1}), False))
            self.assertFalse(wants(context(state, present={U2}), True))

    def test_notStandardUnstable(self):
        """
        C{not standard} is unstable for a manual repository (its
        expression has C{present}) and when standard acts as present.
        """
        for groups, unstable in [(["manual"], True), (["g"], True),
                                 (["backup"], False)]:
            state = makeState(groups={U1: frozenset(groups)})
            matcher = parse("not standard", state, U1)
            self.assertEqual(matcher.unstable, unstable, groups)

    def test_groupwanted(self):
        """
        C{groupwanted} is the expression of U's one group that has one.
        """
        state = makeState(groups={U1: frozenset(["g", "h"])},
                          groupPreferredContent={"g": "include=*.txt"},
                          preferredContent={U1: "groupwanted"})
        self.assertTrue(wants(context(state, file="a.txt"), False))
        self.assertFalse(wants(context(state, file="a.jpg"), True))
        self.assertEqual(expressionFor(state, U1), "( include=*.txt )")

    def test_groupwantedAmbiguous(self):
        """
        With zero or two groups having an expression, C{groupwanted} is
        C{present}.
        """
        state = makeState(groups={U1: frozenset(["g", "h"])},
                          groupPreferredContent={"g": "anything",
                                                 "h": "anything"},
                          preferredContent={U1: "groupwanted"})
        self.assertFalse(wants(context(state), True))
        self.assertTrue(wants(context(state, present={U1}), False))
        self.assertEqual(expressionFor(state, U1), "present")

    def test_groupwantedExpandsStandard(self):
        """
        Inside a groupwanted expression C{standard} is expanded and
        C{groupwanted} is C{present}.
        """
        state = makeState(groups={U1: frozenset(["g", "backup"])},
                          groupPreferredContent={
                              "g": "standard and ( groupwanted or "
                                   "include=*.txt )"},
                          preferredContent={U1: "groupwanted"})
        self.assertTrue(wants(context(state, file="a.txt"), False))
        self.assertFalse(wants(context(state, file="a.jpg"), False))
        self.assertTrue(wants(context(state, file="a.jpg", present={U1}),
                              False))
        self.assertEqual(
            expressionFor(state, U1),
            "( ( anything ) and ( present or include=*.txt ) )")

    def test_standardInsideStandard(self):
        """
        Inside a standard expression nothing is expanded (there is no
        C{standard} in them; C{parse} with a state expands at once).
        """
        state = makeState(groups={U1: frozenset(["backup"])})
        matcher = parse("standard", state, U1)
        self.assertTrue(matcher.match(context(state)))
        self.assertTrue(parse("standard").match(context(state)))

    def test_groupwantedParseFailure(self):
        """
        A groupwanted expression that does not parse makes the whole
        expression C{present}; parsing it directly names the token.
        """
        state = makeState(groups={U1: frozenset(["g"])},
                          groupPreferredContent={"g": "bogus"},
                          preferredContent={U1: "anything or groupwanted"})
        self.assertFalse(wants(context(state), True))
        self.assertEqual(expressionFor(state, U1), "present")
        e = self.assertRaises(ExpressionError, parse,
                              "anything or groupwanted", state, U1)
        self.assertEqual((e.position, e.reason), (2, 'near "bogus"'))


class WantsTests(unittest.TestCase):
    """
    L{wants} and L{expressionFor}: which expression applies (section 3.1).
    """

    def test_notConfigured(self):
        """
        No expression, or one without terms, gives the default.
        """
        for preferred in ({}, {U1: ""}, {U1: " ( ) "}):
            state = makeState(preferredContent=preferred)
            self.assertTrue(wants(context(state), True))
            self.assertFalse(wants(context(state), False))
            self.assertIsNone(expressionFor(state, U1))

    def test_preferred(self):
        """
        The preferred expression decides.
        """
        state = makeState(preferredContent={U1: "include=*.txt",
                                            U2: "nothing"})
        self.assertTrue(wants(context(state, file="a.txt"), False))
        self.assertFalse(wants(context(state, uuid=U2, file="a.txt"),
                               True))

    def test_requiredOred(self):
        """
        Required content is OR-ed with preferred content.
        """
        state = makeState(preferredContent={U1: "include=*.txt"},
                          requiredContent={U1: "largerthan=500"})
        self.assertTrue(wants(context(state, file="a.jpg"), False))
        self.assertTrue(wants(context(state, file="a.txt",
                                      key=SIZELESS), False))
        self.assertFalse(wants(context(state, file="a.jpg",
                                       key=SIZELESS), True))
        self.assertEqual(expressionFor(state, U1),
                         "( include=*.txt ) or ( largerthan=500 )")
        self.assertEqual(matcherFor(state, U1).terms,
                         [("include", "*.txt"), ("largerthan", "500")])

    def test_requiredOnly(self):
        """
        Required content alone is the preferred content; an empty
        preferred expression leaves it alone.
        """
        for preferred in ({}, {U1: ""}):
            state = makeState(preferredContent=preferred,
                              requiredContent={U1: "include=*.txt"})
            self.assertTrue(wants(context(state, file="a.txt"), False))
            self.assertFalse(wants(context(state, file="a.jpg"), True))
            self.assertEqual(expressionFor(state, U1), "include=*.txt")

    def test_unparseable(self):
        """
        An expression that does not parse is C{present}; so is the
        combination when required content does not parse.
        """
        for preferred, required in [("frob", None), ("anything", "frob"),
                                    ("copies=x", "anything")]:
            state = makeState(preferredContent={U1: preferred},
                              requiredContent={} if required is None
                              else {U1: required})
            self.assertTrue(wants(context(state, present={U1}), False))
            self.assertFalse(wants(context(state, present={U2}), True))
            self.assertEqual(expressionFor(state, U1), "present")

    def test_unstable(self):
        """
        An unstable expression never wants, whatever the default.
        """
        state = makeState(preferredContent={U1: "not present"})
        self.assertFalse(wants(context(state), True))
        self.assertEqual(expressionFor(state, U1), "not present")

    def test_unstableAcrossRequired(self):
        """
        The combined expression is checked as a whole.
        """
        state = makeState(preferredContent={U1: "anything"},
                          requiredContent={U1: "not present"})
        self.assertFalse(wants(context(state), True))

    def test_expressionForRoundTrip(self):
        """
        L{expressionFor}'s text parses to the same answers.
        """
        state = makeState(groups={U1: frozenset(["client"])},
                          preferredContent={U1: "standard or ( copies=3"},
                          requiredContent={U1: "include=*.iso )"})
        text = expressionFor(state, U1)
        for kw in ({"file": "a.iso"}, {"file": "archive/x"}, {},
                   {"present": {U2}}, {"file": "x", "present": {U2}}):
            self.assertEqual(parse(text).match(context(state, **kw)),
                             wants(context(state, **kw), False), kw)

    def test_cache(self):
        """
        A changed expression or group is seen by the next call.
        """
        state = makeState(preferredContent={U1: "anything"})
        self.assertTrue(wants(context(state), False))
        state.preferredContent[U1] = "nothing"
        self.assertFalse(wants(context(state), True))
        state.preferredContent[U1] = "standard"
        state.groups[U1] = frozenset(["backup"])
        self.assertTrue(wants(context(state), False))
        state.groups[U1] = frozenset(["unwanted"])
        self.assertFalse(wants(context(state), True))


class MetaDataLogTests(unittest.TestCase):
    """
    L{parseMetaDataLog}, L{parseUrlLog}.
    """

    def test_current(self):
        """
        Later changes win; unset values go; field names are lowercased;
        C{!}+base64 values are decoded; lastchanged fields are derived.
        """
        data = (b"1700000000s Tag +a +b Year +2020\n"
                b"1700000100s tag -a +!aGVsbG8gd29ybGQ=\n"
                b"1600000000s old +x\n")
        self.assertEqual(parseMetaDataLog(data), {
            "tag": {"b", "hello world"},
            "year": {"2020"},
            "old": {"x"},
            "tag-lastchanged": {"2023-11-14@22-15-00"},
            "year-lastchanged": {"2023-11-14@22-13-20"},
            "old-lastchanged": {"2020-09-13@12-26-40"},
            "lastchanged": {"2023-11-14@22-15-00"},
        })

    def test_withinLine(self):
        """
        Within a line the later word wins; a word that is not a value
        starts a new field.
        """
        self.assertEqual(
            parseMetaDataLog(b"1s f +v -v g +w\n2s h +x -x +x\n"),
            {"g": {"w"}, "h": {"x"}, "g-lastchanged": {"1970-01-01@00-00-01"},
             "h-lastchanged": {"1970-01-01@00-00-02"},
             "lastchanged": {"1970-01-01@00-00-02"}})

    def test_empty(self):
        """
        No log, no metadata.
        """
        self.assertEqual(parseMetaDataLog(b""), {})

    def test_urls(self):
        """
        The url log is a presence log of urls.
        """
        self.assertEqual(parseUrlLog(
            b"1s 1 https://a/x\n2s 1 https://b/y\n3s 0 https://a/x\n"),
            ["https://b/y"])


class BalancedTests(unittest.TestCase):
    """
    The balanced family (section 3.7).
    """

    def test_checkValue(self):
        """
        git-annex's own property: members "1".."500", key WORM--test pick
        "332", and n=3 picks 332, 333, 334.  ("332" is at index 259 of the
        members in byte order, which is x mod 500.)
        """
        members = [str(i).encode() for i in range(1, 501)]
        self.assertEqual(pick(members, members, SIZELESS, 1), [b"332"])
        self.assertEqual(pick(members, members, SIZELESS, 3),
                         [b"332", b"333", b"334"])
        self.assertEqual(pickerIndex(members, SIZELESS) % 500,
                         sorted(members).index(b"332"))

    def test_vectors(self):
        """
        The test vectors table: HMAC prefix, x mod 4, the :1 and :2 picks
        and the :1 pick without 3333.
        """
        group = [U1, U2, U3, U4]
        for raw, prefix, mod, one, two, subset in VECTORS:
            x = pickerIndex(group, raw)
            self.assertEqual(("%064x" % (x,))[:16], prefix, raw)
            self.assertEqual(x % 4, mod, raw)
            self.assertEqual(pick(group, group, raw, 1), one, raw)
            self.assertEqual(pick(group, group, raw, 2), two, raw)
            self.assertEqual(pick(group, [U1, U2, U4], raw, 1), [subset],
                             raw)

    def test_vectorsThroughWants(self):
        """
        C{balanced=backup} and C{balanced=backup:2} evaluated for each
        member give the table's picks.
        """
        state = makeState(groups={u: frozenset(["backup"])
                                  for u in (U1, U2, U3, U4)})
        for raw, prefix, mod, one, two, subset in VECTORS:
            for value, expected in (("backup", one), ("backup:2", two)):
                matcher = parse("balanced=" + value)
                chosen = [u for u in (U1, U2, U3, U4)
                          if matcher.match(context(state, uuid=u, key=raw))]
                self.assertEqual(chosen, sorted(expected), (raw, value))

    def test_pickWraps(self):
        """
        More picks than candidates wrap around; no candidates or n <= 0
        picks nobody.
        """
        group = [U1, U2, U3, U4]
        self.assertEqual(pick(group, [U2, U1], SIZELESS, 3), [U2, U1, U2])
        self.assertEqual(pick(group, [], SIZELESS, 3), [])
        self.assertEqual(pick(group, group, SIZELESS, 0), [])
        self.assertTrue(picks(group, [U2, U1], SIZELESS, 10 ** 9, U1))
        self.assertFalse(picks(group, [U2, U1], SIZELESS, 10 ** 9, U3))
        for n in range(0, 6):
            for u in group:
                self.assertEqual(picks(group, group, KEY, n, u),
                                 u in pick(group, group, KEY, n), (n, u))

    def test_hasSpace(self):
        """
        Members without a maxsize or a known size always pass; otherwise
        R + keysize <= M (R <= M when the key is already there).
        """
        maxSizes = {U1: 5000, U2: 1500, U3: 0, U4: 1000}
        sizes = {U1: 4000, U2: 1000, U3: 0}
        self.assertTrue(hasSpace(U1, KEY, set(), maxSizes, sizes))
        self.assertFalse(hasSpace(U2, KEY, set(), maxSizes, sizes))
        self.assertTrue(hasSpace(U2, KEY, {U2}, maxSizes, sizes))
        self.assertTrue(hasSpace(U4, KEY, set(), maxSizes, sizes))
        self.assertTrue(hasSpace(OUT1, KEY, set(), maxSizes, sizes))
        self.assertTrue(hasSpace(U1, KEY, set(), maxSizes, None))

    def test_maxsizeZero(self):
        """
        maxsize 0 is "full" for keys with a size; sizeless keys pass.
        """
        maxSizes, sizes = {U3: 0}, {U3: 0}
        self.assertFalse(hasSpace(U3, KEY, set(), maxSizes, sizes))
        self.assertTrue(hasSpace(U3, SIZELESS, set(), maxSizes, sizes))
        self.assertTrue(hasSpace(
            U3, Key.parse(b"SHA256-s0--" + b"ab" * 32), set(), maxSizes,
            sizes))
        self.assertFalse(tooFull(U3, {U3: 0}, {U3: 10 ** 9}))

    def test_fullMemberFiltered(self):
        """
        A full member is not a candidate: the pick moves to the subset
        (the table's last column).
        """
        state = makeState(groups={u: frozenset(["backup"])
                                  for u in (U1, U2, U3, U4)},
                          maxSize={U3: 0})
        sizes = {U3: 0}
        for raw, prefix, mod, one, two, subset in VECTORS:
            chosen = [u for u in (U1, U2, U3, U4)
                      if wantsBalanced("fullybalanced", "backup", u, raw,
                                       state, set(), sizes)]
            if keySize(raw):
                self.assertEqual(chosen, [subset], raw)
            else:
                self.assertEqual(chosen, one, raw)

    def test_sizeFilter(self):
        """
        Only members with a maxsize > 0 and room, best proportion of free
        space first, ties to the larger uuid; an unknown size is 0.
        """
        maxSizes = {U1: 10000, U2: 20000, U3: 10000, U4: 0, OUT1: 10000}
        sizes = {U1: 5000, U2: 10000, U3: 9500}
        members = [U1, U2, U3, U4, OUT1]
        self.assertEqual(sizeFilter(members, KEY, 5, set(), maxSizes,
                                    sizes), [OUT1, U2, U1])
        self.assertEqual(sizeFilter(members, KEY, 2, set(), maxSizes,
                                    sizes), [OUT1, U2])
        self.assertEqual(sizeFilter(members, KEY, 5, {U3}, maxSizes,
                                    sizes), [OUT1, U2, U1, U3])
        self.assertEqual(sizeFilter(members, KEY, 0, set(), maxSizes,
                                    sizes), [])
        self.assertEqual(sizeFilter([U1, U2], SIZELESS, 2, set(),
                                    {U1: 100, U2: 100}, {}), [U2, U1])

    def test_sizebalanced(self):
        """
        C{fullysizebalanced=G:N} picks among the N emptiest members.
        """
        group = (U1, U2, U3, U4)
        state = makeState(groups={u: frozenset(["g"]) for u in group},
                          maxSize={u: 10000 for u in group})
        sizes = {U1: 9000, U2: 100, U3: 5000, U4: 200}
        chosen = [u for u in group
                  if wantsBalanced("fullysizebalanced", "g", u, KEY, state,
                                   set(), sizes)]
        self.assertEqual(chosen, [U2])
        chosen = [u for u in group
                  if wantsBalanced("fullysizebalanced", "g:2", u, KEY,
                                   state, set(), sizes)]
        self.assertEqual(chosen, [U2, U4])
        nomax = makeState(groups={u: frozenset(["g"]) for u in group})
        self.assertFalse(any(wantsBalanced("fullysizebalanced", "g", u,
                                           KEY, nomax, set(), sizes)
                             for u in group))

    def test_balancedPresentOrGate(self):
        """
        C{balanced=G:N} is present or (fewer than N copies in G and
        picked); C{fullybalanced} is only picked.
        """
        group = (U1, U2, U3, U4)
        state = makeState(groups={u: frozenset(["g"]) for u in group})
        picked = pick(group, group, KEY, 1)[0]
        other = [u for u in group if u != picked][0]
        self.assertTrue(wantsBalanced("balanced", "g", picked, KEY, state,
                                      set(), None))
        self.assertFalse(wantsBalanced("balanced", "g", other, KEY, state,
                                       set(), None))
        self.assertTrue(wantsBalanced("balanced", "g", other, KEY, state,
                                      {other}, None))
        self.assertFalse(wantsBalanced("fullybalanced", "g", other, KEY,
                                       state, {other}, None))
        # One copy in the group already: balanced=g no longer picks.
        self.assertFalse(wantsBalanced("balanced", "g", picked, KEY, state,
                                       {other}, None))
        self.assertTrue(wantsBalanced("balanced", "g:2", picked, KEY,
                                      state, {other}, None))
        # Copies outside the group do not count.
        self.assertTrue(wantsBalanced("balanced", "g", picked, KEY, state,
                                      {OUT1}, None))

    def test_lackingcopies(self):
        """
        C{G:lackingcopies} picks numcopies minus the copies outside G that
        are neither dead nor untrusted, as the binary does: copies inside
        the group do not change N.
        """
        group = (U1, U2, U3, U4)
        state = makeState(
            groups={u: frozenset(["g"]) for u in group},
            trust={OUT2: logs.UNTRUSTED, OUT3: logs.DEAD}, numCopies=3)

        def chosen(present, term="fullybalanced", **kw):
            return [u for u in group
                    if wantsBalanced(term, "g:lackingcopies", u, KEY, state,
                                     present, None, **kw)]

        full = sorted(set(pick(group, group, KEY, 3)))
        self.assertEqual(chosen(set()), full)
        self.assertEqual(chosen({U1}), full)
        self.assertEqual(chosen({U1, U2}), full)
        self.assertEqual(chosen({OUT2, OUT3}), full)
        self.assertEqual(chosen({OUT1}), sorted(set(pick(group, group, KEY,
                                                         2))))
        self.assertEqual(chosen({OUT1}, numcopies=1), [])
        # balanced: present, or lacking copies overall and picked.
        self.assertEqual(chosen({U1, U2}, "balanced"),
                         sorted(set(full) | {U1, U2}))
        self.assertEqual(chosen({U1, U2, U3}, "balanced"), [U1, U2, U3])

    def test_clusterAndDead(self):
        """
        The copies check of balanced leaves out cluster uuids and dead
        repositories, even when they are in the group.
        """
        members = [U1, U2, CLUSTER]
        state = makeState(groups={u: frozenset(["g"]) for u in members},
                          trust={U2: logs.DEAD},
                          clusterLog={CLUSTER: [U1]})
        # U1 present makes the cluster present: one copy in the group, not
        # two, so balanced=g:2 still picks; dead U2 is not a copy.
        for uuid in (U2, CLUSTER):
            self.assertEqual(
                wantsBalanced("balanced", "g:2", uuid, KEY, state,
                              {U1, U2}, None),
                uuid in pick(members, members, KEY, 2), uuid)
        self.assertTrue(wantsBalanced("balanced", "g:2", CLUSTER, KEY,
                                      state, {U1}, None)
                        or CLUSTER not in pick(members, members, KEY, 2))
        # A dead member is not present for balanced either.
        self.assertEqual(
            wantsBalanced("balanced", "g", U2, KEY, state, {U2}, None),
            U2 in pick(members, members, KEY, 1))
        self.assertFalse(parse("copies=g:2").match(
            context(state, present={U1, U2})))

    def test_liveUpdate(self):
        """
        A match through the picker asks for a live size update; a match
        because the key is present does not.
        """
        state = makeState(groups={U1: frozenset(["g"])})
        ctx = context(state)
        self.assertTrue(parse("balanced=g").match(ctx))
        self.assertTrue(ctx.liveUpdate)
        ctx = context(state, present={U1})
        self.assertTrue(parse("balanced=g").match(ctx))
        self.assertFalse(ctx.liveUpdate)

    def test_rebalance(self):
        """
        With C{rebalance}, balanced acts as fullybalanced, and turns size
        based when there are not enough members below the threshold.
        """
        group = (U1, U2, U3)
        state = makeState(groups={u: frozenset(["g"]) for u in group},
                          maxSize={U1: 1000, U2: 10000, U3: 10000})
        sizes = {U1: 950, U2: 100, U3: 5000}
        present = set()
        self.assertEqual(
            [u for u in group if wantsBalanced("balanced", "g", u, KEY,
                                               state, {U1}, sizes,
                                               rebalance=True)],
            [u for u in group if wantsBalanced("fullybalanced", "g", u, KEY,
                                               state, {U1}, sizes)])
        chosen = [u for u in group if wantsBalanced(
            "balanced", "g:3", u, KEY, state, present, sizes,
            rebalance=True)]
        self.assertEqual(chosen, [U2, U3])
        self.assertTrue(parse("balanced=g:3").match(
            context(state, uuid=U2, sizes=sizes, rebalance=True)))

    def test_unstable(self):
        """
        balanced and sizebalanced are negation-unstable; the fully ones
        are not.
        """
        self.assertTrue(BalancedTerm("balanced", "g").unstable)
        self.assertTrue(BalancedTerm("sizebalanced", "g:2").unstable)
        self.assertFalse(BalancedTerm("fullybalanced", "g").unstable)
        self.assertFalse(BalancedTerm("fullysizebalanced",
                                      "g:lackingcopies").unstable)

    def test_trustLevelGroup(self):
        """
        As in git-annex, the copies check of C{balanced=trusted:N} counts
        trusted repositories (the value goes through C{copies=}).
        """
        state = makeState(groups={U1: frozenset(["trusted"])},
                          trust={OUT1: logs.TRUSTED})
        self.assertFalse(wantsBalanced("balanced", "trusted:1", U1, KEY,
                                       state, {OUT1}, None))
        self.assertTrue(wantsBalanced("balanced", "trusted:1", U1, KEY,
                                      state, {OUT2}, None))


class RepoSizesUnitTests(unittest.TestCase):
    """
    L{RepoSizes} without a repository.
    """

    def test_paths(self):
        """
        Location log paths have two C{/} and end in C{.log}; the key file
        escaping is reversed.
        """
        self.assertTrue(isLocationLogPath("39f/be7/WORM--test.log"))
        self.assertFalse(isLocationLogPath(b"39f/be7/WORM--test.log.met"))
        self.assertFalse(isLocationLogPath("uuid.log"))
        for raw in (b"WORM--test", b"URL--https://example.com/a%20b&c",
                    b"WORM-s0-m1700000000--dir/with:colon&amp%pct"):
            self.assertEqual(keyFromLogPath(locationLogPath(raw)), raw)
        self.assertEqual(keySize(b"SHA256-s12-S4-C1--x"), 12)
        self.assertEqual(keySize(KEY), 1000)
        self.assertIsNone(keySize(b"WORM--s5"))

    def test_apply(self):
        """
        Applying a presence changes the size once per (key, uuid);
        clusters are ignored.
        """
        sizes = RepoSizes({U1: 0}, holders={KEY.raw: [U2]})
        self.assertEqual(sizes.apply(KEY, U1, True), 1000)
        self.assertEqual(sizes.apply(KEY, U1, True), 0)
        self.assertEqual(sizes[U1], 1000)
        self.assertEqual(sizes.apply(KEY, U2, True), 0)
        self.assertEqual(sizes.apply(KEY.raw, U2, False), -1000)
        self.assertEqual(sizes.apply(KEY, U2, False), 0)
        self.assertEqual(sizes.apply(KEY, CLUSTER, True), 0)
        self.assertEqual(sizes.holders(KEY), {U1})
        self.assertEqual(sizes.get(U3), 0)
        self.assertNotIn(U3, sizes)
        self.assertRaises(KeyError, sizes.__getitem__, U3)

    def test_untracked(self):
        """
        Without key tracking, every apply counts.
        """
        sizes = RepoSizes(trackKeys=False)
        sizes.apply(KEY, U1, True)
        sizes.apply(KEY, U1, True)
        self.assertEqual(sizes[U1], 2000)

    def test_reserve(self):
        """
        Reservations add to the size until released; a key reserved twice
        counts once; a holder is not grown; a confirmed apply ends the
        reservation.
        """
        sizes = RepoSizes({U1: 100}, holders={KEY.raw: [U2]})
        self.assertTrue(sizes.reserve(KEY, U1))
        self.assertFalse(sizes.reserve(KEY, U1))
        self.assertEqual((sizes[U1], sizes.committed(U1),
                          sizes.reserved(U1)), (1100, 100, 1000))
        self.assertFalse(sizes.release(KEY, U1))
        self.assertEqual(sizes[U1], 1100)
        self.assertTrue(sizes.release(KEY, U1))
        self.assertEqual(sizes[U1], 100)
        self.assertFalse(sizes.reserve(KEY, U2))
        self.assertTrue(sizes.reserve(KEY, U3))
        self.assertIn(U3, sizes)
        self.assertEqual(sizes.apply(KEY, U3, True), 1000)
        self.assertEqual((sizes[U3], sizes.reserved(U3)), (1000, 0))
        self.assertFalse(sizes.release(KEY, U3))
        self.assertTrue(sizes.reserve(SIZELESS, U4))
        self.assertEqual(sizes[U4], 0)
        self.assertTrue(sizes.release(SIZELESS, U4))
        self.assertNotIn(U4, sizes)

    def test_reservationsInBalanced(self):
        """
        A reservation can make a member too full for the next key.
        """
        state = makeState(groups={U1: frozenset(["g"])},
                          maxSize={U1: 1500})
        sizes = RepoSizes({U1: 0})
        other = Key.parse(b"SHA256E-s1000--" + b"cd" * 32 + b".txt")
        self.assertTrue(parse("fullybalanced=g").match(
            context(state, sizes=sizes)))
        sizes.reserve(KEY, U1)
        self.assertFalse(parse("fullybalanced=g").match(
            context(state, key=other, sizes=sizes)))


class RepoSizesRepositoryTests(unittest.TestCase):
    """
    L{RepoSizes.fromLocationLogs} on a real cluster, against
    C{git annex maxsize --bytes}.
    """

    def setUp(self):
        self.cluster = cluster_for(self, nodes=3)
        self.gw = self.cluster.gateway.path
        self.env = self.cluster.env.env
        self.nodes = [n.uuid.encode() for n in self.cluster.nodes]

    def annexSizes(self):
        """
        The sizes C{git annex maxsize --bytes} prints in the gateway.
        """
        out = self.cluster.env.annex(self.gw, "maxsize", "--bytes")
        sizes = {}
        for line in out.splitlines():
            words = line.split()
            uuids = [w for w in words if w.count("-") == 4]
            if uuids and words[0].isdigit():
                sizes[uuids[0].encode()] = int(words[0])
        return sizes

    def sweep(self):
        """
        Sweep the gateway's location logs.
        """
        return RepoSizes.fromLocationLogs(self.gw, env=self.env)

    def test_matchesGitAnnex(self):
        """
        After copies through the gateway and a journal-only
        C{setpresentkey}, the sums equal git-annex's (every uuid.log
        uuid starting at 0, clusters not counted).
        """
        c = self.cluster
        c.add_file("a.txt", b"x" * 1000)
        c.add_file("b.txt", b"y" * 2500)
        c.client_annex("copy", "--quiet", "--to", c.remote_name("node1"),
                       "a.txt", "b.txt")
        c.client_annex("copy", "--quiet", "--to", c.remote_name("node2"),
                       "a.txt")
        c.env.annex(self.gw, "setpresentkey", "SHA256E-s77--feed",
                    self.nodes[2].decode(), "1")
        c.env.annex(self.gw, "setpresentkey", "WORM--sizeless",
                    self.nodes[2].decode(), "1")
        journal = os.listdir(os.path.join(self.gw, "annex", "journal"))
        self.assertEqual(len(journal), 2)
        sizes = self.sweep()
        expected = {self.nodes[0]: 3500, self.nodes[1]: 1000,
                    self.nodes[2]: 77, c.cluster_uuid.encode(): 0,
                    c.gateway.uuid.encode(): 0}
        self.assertEqual(dict(sizes), expected)
        self.assertEqual(self.annexSizes(), expected)
        # git annex maxsize committed the journal: same sums from the
        # branch alone.
        self.assertFalse(os.listdir(os.path.join(self.gw, "annex",
                                                 "journal")))
        self.assertEqual(dict(self.sweep()), expected)

    def test_journalChanges(self):
        """
        Journal files written by annexd's L{LocationLog} (presence and
        absence) are seen, and dead keys are not counted.
        """
        log = LocationLog(self.gw)
        self.addCleanup(log.close)
        key = b"SHA256E-s500--beef.bin"
        log.record(key, self.nodes[0], True)
        log.record(key, self.nodes[1], True)
        self.assertEqual((self.sweep()[self.nodes[0]],
                          self.sweep()[self.nodes[1]]), (500, 500))
        log.record(key, self.nodes[1], False)
        sizes = self.sweep()
        self.assertEqual((sizes[self.nodes[0]], sizes[self.nodes[1]]),
                         (500, 0))
        self.assertEqual(sizes.holders(key), {self.nodes[0]})
        dead = b"SHA256E-s900--dead.bin"
        path = os.path.join(self.gw, "annex", "journal",
                            journalFileName(locationLogPath(dead)))
        with open(path, "wb") as f:
            f.write(b"1700000000s X " + self.nodes[2] + b"\n")
        self.assertEqual(self.sweep()[self.nodes[2]], 0)
        self.assertEqual(self.annexSizes()[self.nodes[0]], 500)

    def test_liveAfterSweep(self):
        """
        Live updates after a sweep are idempotent with what the sweep saw.
        """
        c = self.cluster
        key = c.add_file("f.txt", b"z" * 300).encode()
        c.client_annex("copy", "--quiet", "--to", c.remote_name("node3"),
                       "f.txt")
        sizes = self.sweep()
        self.assertEqual(sizes[self.nodes[2]], 300)
        self.assertEqual(sizes.apply(key, self.nodes[2], True), 0)
        self.assertEqual(sizes.apply(key, self.nodes[0], True), 300)
        self.assertFalse(sizes.reserve(key, self.nodes[2]))
        self.assertTrue(sizes.reserve(key, self.nodes[1]))
        self.assertEqual(sizes[self.nodes[1]], 300)

    def test_readKeyLogs(self):
        """
        A key's metadata and urls are read from the branch and journal.
        """
        from annexd.annex.branch import BranchReader
        c = self.cluster
        key = c.add_file("m.txt", b"meta\n")
        c.client_annex("metadata", "--quiet", "-s", "tag=Hello", "m.txt")
        c.client_annex("registerurl", "--quiet", key,
                       "https://example.com/m.txt")
        reader = BranchReader(os.path.join(c.client.path, ".git"),
                              env=self.env)
        self.addCleanup(reader.close)
        metadata, urls = readKeyLogs(reader, key.encode())
        self.assertEqual(metadata["tag"], {"Hello"})
        self.assertIn("tag-lastchanged", metadata)
        self.assertEqual(urls, ["https://example.com/m.txt"])
        state = makeState()
        ctx = WantContext(state, U1, key.encode(), metadata=metadata,
                          urls=urls)
        self.assertTrue(parse("metadata=tag=hello and url=*/m.txt").match(
            ctx))

    def test_emptyRepository(self):
        """
        A repository without a git-annex branch has no sizes.
        """
        path = os.path.abspath(self.mktemp())
        self.cluster.env.git(self.cluster.base_dir, "init", "-q", "--bare",
                             path)
        self.assertEqual(dict(RepoSizes.fromLocationLogs(path,
                                                         env=self.env)), {})


class RepoSizesReloadTests(unittest.TestCase):
    """
    L{RepoSizes.reload} follows branch changes made by real git-annex,
    reading only what changed.
    """

    def test_reloadAfterCommits(self):
        """
        After content moves (copies to nodes, a drop) and git-annex
        commits, a reload gives exactly what a fresh sweep gives.
        """
        from annexd.annex.sizes import RepoSizes
        from tests.support.annex import cluster_for
        cluster = cluster_for(self, nodes=2)
        gw = cluster.gateway.path
        cluster.add_file("a.bin", b"a" * 1000)
        cluster.add_file("b.bin", b"b" * 300)
        cluster.client_annex("copy", "--to", "gw-node1", "a.bin", "b.bin")
        cluster.env.annex(gw, "merge")
        sizes = RepoSizes.fromLocationLogs(gw)
        node1, node2 = (n.uuid.encode() for n in cluster.nodes)
        self.assertEqual(sizes.get(node1), 1300)
        cluster.client_annex("copy", "--to", "gw-node2", "a.bin")
        cluster.client_annex("drop", "--from", "gw-node1", "b.bin")
        cluster.env.annex(gw, "merge")
        self.assertEqual(sizes.reload(), 2)
        fresh = RepoSizes.fromLocationLogs(gw)
        self.assertEqual((sizes.get(node1), sizes.get(node2)), (1000, 1000))
        self.assertEqual((fresh.get(node1), fresh.get(node2)), (1000, 1000))
        self.assertEqual(sizes.reload(), 0)
