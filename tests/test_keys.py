"""
Tests for L{annexd.protocol.keys}: parsing and serialising git-annex keys
(shared/spec/p2p-protocol.md sections 2 and 7), their on-disk file names, and
the refusal of keys that could escape a directory.
"""

import itertools

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from annexd.protocol.keys import MAX_EXTENSION, InvalidKey, Key, parseKey

HELLO_SHA256 = (b"a948904f2f0f479b8f8197694b30184b"
                b"0d2ed1c1cd2a1ec0fb85d299a192a447")
TEST_KEY_SHA256 = (b"f25b0becd99885776e8662836f428fbb"
                   b"21495eb31ab5ce23e7d29e4b699e4bb5")

# -- hypothesis strategies (also used by tests.test_messages) -------------

#: Bytes that may appear in a key: no control characters (C0, DEL).
_KEY_BYTES = [b for b in range(0x20, 0x100) if b != 0x7F]

#: Varieties known to git-annex, plus path-like ones and opaque others.
_KNOWN_VARIETIES = [
    b"SHA256", b"SHA256E", b"SHA512E", b"SHA1", b"MD5E", b"SHA3_256E",
    b"BLAKE2B256E", b"SKEIN512", b"BLAKE3_256E", b"XXH3E", b"XMYBACKENDE",
    b"WORM", b"URL", b"VURL", b"GITBUNDLE", b"GITMANIFEST", b"FOO",
]
_PATHLIKE = (b"URL", b"VURL", b"WORM")


def _variety():
    """
    A backend name: a known one, or any non-empty run of key bytes without
    C{-} and C{/}.
    """
    other = st.binary(min_size=1, max_size=12).map(
        lambda b: bytes(_KEY_BYTES[x % len(_KEY_BYTES)] for x in b)
        .replace(b"-", b"x").replace(b"/", b"x"))
    return st.one_of(st.sampled_from(_KNOWN_VARIETIES), other)


def _nameBytes(allowSlash):
    alphabet = [b for b in _KEY_BYTES if allowSlash or b != 0x2F]
    fragments = st.sampled_from(
        [b"-", b"--", b".", b" ", b"%", b"&", b":", b"\xc3\xa9", b"\xff"]
        + ([b"/", b"http://", b"a/b"] if allowSlash else []))
    plain = st.lists(st.sampled_from(alphabet), max_size=20).map(bytes)
    return st.lists(st.one_of(plain, fragments), max_size=8).map(b"".join)


@st.composite
def keyParts(draw):
    """
    The parts of a valid key: C{(variety, fields, name)} where C{fields}
    maps the field letters present (in s, m, S, C order) to their values.
    """
    variety = draw(_variety())
    fields = {}
    for letter in "smSC":
        if draw(st.booleans()):
            fields[letter] = draw(st.one_of(
                st.integers(0, 1000), st.integers(0, 2 ** 80)))
    name = draw(_nameBytes(variety in _PATHLIKE))
    if variety in _PATHLIKE:
        # No ".." path segment.
        name = b"/".join(b"x.." if seg == b".." else seg
                         for seg in name.split(b"/"))
    if variety.endswith(b"E"):
        # Keep any extension within git-annex's limit.
        dot = name.find(b".")
        if dot >= 0:
            name = name[:dot + 1 + MAX_EXTENSION]
    return variety, fields, name


def buildKey(variety, fields, name):
    """
    Serialise key parts by hand, the way the spec describes the syntax.
    """
    out = variety
    for letter in "smSC":
        if letter in fields:
            out += b"-" + letter.encode("ascii") + b"%d" % fields[letter]
    return out + b"--" + name


#: Valid serialised keys.
keys = st.builds(lambda parts: buildKey(*parts), keyParts())


# -- tests ------------------------------------------------------------------

class VectorTests(SynchronousTestCase):
    """
    The key vectors of spec section 7 and the real examples of section 2.1.
    """

    def assertKey(self, raw, variety, name, size=None, mtime=None,
                  chunkSize=None, chunkNumber=None):
        key = Key.parse(raw)
        self.assertEqual(
            (key.raw, key.variety, key.size, key.mtime, key.chunkSize,
             key.chunkNumber, key.name),
            (raw, variety, size, mtime, chunkSize, chunkNumber, name))
        return key

    def test_sha256e(self):
        """
        A SHA256E key has its size and a name made of the hash and the
        extension.
        """
        self.assertKey(b"SHA256E-s12--" + HELLO_SHA256 + b".txt",
                       b"SHA256E", HELLO_SHA256 + b".txt", size=12)

    def test_sha256(self):
        """
        A SHA256 key (no extension) has the bare hash as its name.
        """
        self.assertKey(b"SHA256-s12--" + HELLO_SHA256, b"SHA256",
                       HELLO_SHA256, size=12)

    def test_worm(self):
        """
        A WORM key carries a size and an mtime.
        """
        self.assertKey(b"WORM-s5-m1700000000--foo.txt", b"WORM", b"foo.txt",
                       size=5, mtime=1700000000)

    def test_chunk(self):
        """
        A chunk key carries the parent's size, the chunk size and the chunk
        number.
        """
        self.assertKey(
            b"SHA256E-s1048576-S262144-C2--" + TEST_KEY_SHA256 + b".bin",
            b"SHA256E", TEST_KEY_SHA256 + b".bin", size=1048576,
            chunkSize=262144, chunkNumber=2)

    def test_noFields(self):
        """
        Fields are optional: C{MD5--x} has none.
        """
        self.assertKey(b"MD5--x", b"MD5", b"x")

    def test_unknownVariety(self):
        """
        An unknown variety is accepted as an opaque one.
        """
        self.assertKey(b"FOO-s1--bar", b"FOO", b"bar", size=1)

    def test_externalBackend(self):
        """
        An external backend's key (C{X<name>E}) is accepted.
        """
        self.assertKey(b"XMYBACKENDE-s1--bar.baz", b"XMYBACKENDE", b"bar.baz",
                       size=1)

    def test_dashesInName(self):
        """
        The name is everything after the first C{--} that follows the
        fields, so it may contain C{-} and C{--}.
        """
        self.assertKey(b"SHA256E--name-with--dashes.txt", b"SHA256E",
                       b"name-with--dashes.txt")

    def test_emptyName(self):
        """
        The name may be empty.
        """
        self.assertKey(b"SHA256--", b"SHA256", b"")

    def test_realExamples(self):
        """
        The keys real git-annex generated for C{hello world\\n} (spec 2.1)
        all parse, with size 12.
        """
        for raw in [
            b"SHA1-s12--22596363b3de40b06f981fb85d82312e8c0ed511",
            b"MD5E-s12--6f5902ac237024bdd0c176cb93063dc4.txt",
            b"BLAKE2B256E-s12--c71b05fd1d1c7bf7e928ff18e58db5193e9316416cc26"
            b"ba9cc9094da80d7011e.txt",
            b"XXH3E-s12--d42f7ed4b73c6bde.txt",
            b"WORM-s12-m1795540346--hw.txt",
            b"SHA256E-s1048576--" + TEST_KEY_SHA256 + b".this-is-a-test-key",
        ]:
            key = Key.parse(raw)
            self.assertEqual(key.raw, raw)
            self.assertEqual(key.serialize(), raw)
        self.assertEqual(
            Key.parse(b"WORM-s12-m1795540346--hw.txt").mtime, 1795540346)

    def test_invalidVectors(self):
        """
        The invalid key vectors of spec section 7 are refused: fields out of
        order, a non-digit in a field, a sign, no C{--} at all.
        """
        for raw in [b"SHA256-m5-s3--abc", b"SHA256E-s12x--abc",
                    b"SHA256E-s-1--x", b"notakey"]:
            self.assertRaises(InvalidKey, Key.parse, raw)

    def test_longExtension(self):
        """
        An E key whose extension (after the first C{.}) is longer than 64
        bytes is invalid; one of 64 bytes is fine.
        """
        self.assertRaises(InvalidKey, Key.parse,
                          b"SHA256E-s3--abc." + b"x" * 66)
        self.assertRaises(InvalidKey, Key.parse,
                          b"SHA256E-s3--abc." + b"x" * 100)
        key = Key.parse(b"SHA256E-s3--abc." + b"x" * 64)
        self.assertEqual(key.name, b"abc." + b"x" * 64)

    def test_otherInvalid(self):
        """
        Other malformed keys are refused: an empty variety, an unknown
        field letter, a field without digits, a plus sign, non-ASCII digits,
        and something that is not bytes.
        """
        for raw in [b"--x", b"-s1--x", b"SHA256-q1--x", b"SHA256-s--x",
                    b"SHA256-s+1--x", b"SHA256-s\xd9\xa1--x", b"SHA256-s 1--x",
                    b"SHA256-s1-C--x", b"", b"SHA256"]:
            self.assertRaises(InvalidKey, Key.parse, raw)
        self.assertRaises(InvalidKey, Key.parse, "SHA256--x")

    def test_hugeField(self):
        """
        A field with more digits than Python converts by default is refused
        with L{InvalidKey} (not some other exception).
        """
        raw = b"SHA256-s" + b"1" * 5000 + b"--x"
        self.assertRaises(InvalidKey, Key.parse, raw)

    def test_parseKey(self):
        """
        L{parseKey} is L{Key.parse}.
        """
        self.assertEqual(parseKey(b"MD5--x"), Key.parse(b"MD5--x"))

    def test_str(self):
        """
        C{str()} of a key is its raw bytes, non-UTF-8 bytes escaped with
        surrogates.
        """
        self.assertEqual(str(Key.parse(b"WORM--caf\xc3\xa9\xff")),
                         "WORM--caf\xe9\udcff")


class FieldOrderTests(SynchronousTestCase):
    """
    Fields may appear in the order s, m, S, C only, each at most once.
    """

    def test_everyArrangement(self):
        """
        Every arrangement of up to four fields is valid exactly when the
        letters are in s, m, S, C order without repeats.
        """
        values = {"s": 1, "m": 2, "S": 3, "C": 4}
        for n in range(1, 5):
            for letters in itertools.product("smSC", repeat=n):
                raw = (b"SHA256" + b"".join(
                    b"-%s%d" % (l.encode(), values[l]) for l in letters)
                    + b"--abc")
                valid = list(letters) == sorted(set(letters),
                                                key="smSC".index)
                if valid:
                    key = Key.parse(raw)
                    self.assertEqual(
                        (key.size, key.mtime, key.chunkSize,
                         key.chunkNumber),
                        tuple(values[l] if l in letters else None
                              for l in "smSC"), raw)
                else:
                    self.assertRaises(InvalidKey, Key.parse, raw)


class SerializeTests(SynchronousTestCase):
    """
    Tests for L{Key.serialize} and L{Key.raw}.
    """

    def test_canonical(self):
        """
        L{Key.serialize} re-emits the fields in plain decimal, while
        L{Key.raw} keeps the exact bytes received.
        """
        key = Key.parse(b"WORM-s0005-m01--foo")
        self.assertEqual(key.serialize(), b"WORM-s5-m1--foo")
        self.assertEqual(key.raw, b"WORM-s0005-m01--foo")
        self.assertEqual((key.size, key.mtime), (5, 1))

    def test_serializeChunk(self):
        """
        A key with all four fields serialises them in s, m, S, C order.
        """
        raw = b"SHA256E-s10-m20-S30-C40--x.bin"
        self.assertEqual(Key.parse(raw).serialize(), raw)

    def test_equalityIncludesRaw(self):
        """
        Two spellings of the same key are different L{Key} values (the raw
        bytes are what is forwarded), but serialise alike.
        """
        a, b = Key.parse(b"MD5-s1--x"), Key.parse(b"MD5-s01--x")
        self.assertNotEqual(a, b)
        self.assertEqual(a.serialize(), b.serialize())

    @settings(max_examples=200, deadline=None)
    @given(keyParts())
    def test_roundTrip(self, parts):
        """
        A key built from valid parts parses to those parts, keeps its raw
        bytes, serialises back to the same bytes, and parses again equal.
        """
        variety, fields, name = parts
        raw = buildKey(variety, fields, name)
        key = Key.parse(raw)
        self.assertEqual(key.raw, raw)
        self.assertEqual(
            (key.variety, key.size, key.mtime, key.chunkSize,
             key.chunkNumber, key.name),
            (variety, fields.get("s"), fields.get("m"), fields.get("S"),
             fields.get("C"), name))
        self.assertEqual(key.serialize(), raw)
        self.assertEqual(Key.parse(key.serialize()), key)


class FileNameTests(SynchronousTestCase):
    """
    Tests for L{Key.fileName}, git-annex's C{keyFile} escaping.
    """

    def test_plain(self):
        """
        A key with nothing to escape is its own file name.
        """
        raw = b"SHA256E-s12--" + HELLO_SHA256 + b".txt"
        self.assertEqual(Key.parse(raw).fileName(), raw)

    def test_escapes(self):
        """
        C{&} becomes C{&a}, C{%} becomes C{&s}, C{:} becomes C{&c} and
        C{/} becomes C{%}, with no double escaping.
        """
        self.assertEqual(Key.parse(b"FOO--a&b%c:d").fileName(),
                         b"FOO--a&ab&sc&cd")
        self.assertEqual(
            Key.parse(b"VURL--http://127.0.0.1:1/foo/bar.txt").fileName(),
            b"VURL--http&c%%127.0.0.1&c1%foo%bar.txt")
        self.assertEqual(Key.parse(b"URL--&s&a%/").fileName(),
                         b"URL--&as&aa&s%")

    def test_usesRaw(self):
        """
        The file name is made from the raw bytes, as received.
        """
        self.assertEqual(Key.parse(b"MD5-s01--x").fileName(), b"MD5-s01--x")

    @settings(max_examples=200, deadline=None)
    @given(keys, keys)
    def test_singleComponentAndInjective(self, a, b):
        """
        A file name is one path component (no C{/}, not C{.} or C{..}, no
        NUL), and different keys get different file names.
        """
        for raw in (a, b):
            name = Key.parse(raw).fileName()
            self.assertNotIn(b"/", name)
            self.assertNotIn(b"\0", name)
            self.assertNotIn(name, (b"", b".", b".."))
        if a != b:
            self.assertNotEqual(Key.parse(a).fileName(),
                                Key.parse(b).fileName())


class SafetyTests(SynchronousTestCase):
    """
    Keys that could reach outside a directory are refused.
    """

    def test_controlCharacters(self):
        """
        NUL, newline, carriage return, tab, other C0 controls and DEL are
        refused in the name and in the variety.
        """
        for c in [b"\0", b"\n", b"\r", b"\t", b"\x01", b"\x1b", b"\x1f",
                  b"\x7f"]:
            self.assertRaises(InvalidKey, Key.parse, b"WORM-s1--a" + c + b"b")
            self.assertRaises(InvalidKey, Key.parse,
                              b"SHA256-s1--" + HELLO_SHA256 + c)
            self.assertRaises(InvalidKey, Key.parse, b"FO" + c + b"O--x")

    def test_slashInHashKeys(self):
        """
        A C{/} is refused in the name of hash and other non-path varieties,
        and in any variety.
        """
        for raw in [b"SHA256E-s1--a/b.txt", b"SHA256-s1--/etc/passwd",
                    b"MD5--../x", b"FOO--a/b", b"GITBUNDLE--a/b",
                    b"XMYBACKENDE-s1--a/b", b"a/b--x", b"URL/--x"]:
            self.assertRaises(InvalidKey, Key.parse, raw)

    def test_dotDotSegments(self):
        """
        In URL, VURL and WORM keys a C{/} is fine but a C{..} segment is
        refused.
        """
        for raw in [b"URL--http://x/../etc", b"URL--../x", b"WORM--a/..",
                    b"VURL--http://example.com/a/../../b", b"WORM-s1--..//x",
                    b"URL--/../"]:
            self.assertRaises(InvalidKey, Key.parse, raw)

    def test_pathLikeAccepted(self):
        """
        Real URL, VURL and WORM keys with C{/} are accepted, including
        names with C{..} inside a segment.
        """
        for raw, name in [
                (b"VURL--http://127.0.0.1:1/foo/bar.txt",
                 b"http://127.0.0.1:1/foo/bar.txt"),
                (b"URL-s100--https://example.com/a..b/c...d",
                 b"https://example.com/a..b/c...d"),
                (b"WORM-s5-m1700000000--dir/sub dir/file.txt",
                 b"dir/sub dir/file.txt"),
                (b"URL--http://x/./y", b"http://x/./y")]:
            key = Key.parse(raw)
            self.assertEqual((key.raw, key.name), (raw, name))

    def test_spacesAndHighBytes(self):
        """
        Spaces and non-UTF-8 bytes are not unsafe: old WORM keys have
        spaces, and names need not be UTF-8.
        """
        key = Key.parse(b"WORM-s1--old file \xff\xc3\xa9.txt")
        self.assertEqual(key.name, b"old file \xff\xc3\xa9.txt")
