"""
Tests for L{annexd.protocol.messages}: the P2P protocol's line codec
(shared/spec/p2p-protocol.md sections 1, 7 and 8).
"""

import unicodedata

from hypothesis import example, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from annexd.protocol.keys import Key
from annexd.protocol.messages import (
    MAX_LINE_LENGTH, MESSAGES, AlreadyHave, AlreadyHavePlus, Auth,
    AuthFailure, AuthSuccess, Bypass, Changed, CheckPresent, Connect,
    ConnectDone, Data, DataPresent, Error, Failure, FailurePlus, Get,
    GetTimestamp, Invalid, LockContent, NotifyChange, Put, PutFrom, Remove,
    RemoveBefore, Success, SuccessPlus, Timestamp, UnlockContent,
    UnparseableMessage, Valid, Version, parseLine, plusReply)
from tests.test_keys import keys as rawKeys

HELLO = (b"SHA256E-s12--a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85"
         b"d299a192a447.txt")
K11 = (b"SHA256E-s11--e72b406542ea33182ad1ca541db73fd8dfacb96a6af0ae0cc2cc76"
       b"434283ad3f.txt")
TESTKEY = (b"SHA256E-s1048576--f25b0becd99885776e8662836f428fbb21495eb31ab5ce"
           b"23e7d29e4b699e4bb5.this-is-a-test-key")
K4 = (b"SHA256E-s4--b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b87"
      b"8ae4944c.txt")
BIG = (b"SHA256E-s100000--a172407a01d0e2d3329d8099cf54eaf553e3fe0b64745a6b6e"
       b"e696482049de3e.bin")
ZERO = b"SHA256E-s5--" + b"0" * 64 + b".txt"
U1 = b"4a9b7c48-a136-4c98-8181-edf47b4b12e8"
U2 = b"178daa64-e831-442e-b980-d8f26f76af5e"


def key(raw):
    return Key.parse(raw)


# -- a reference model of git-annex's associated-file codec ----------------
#
# git-annex (in a UTF-8 locale) sees the line as characters.  Sending, it
# turns "%" into "%%" and every whitespace character (Haskell isSpace: the
# ASCII blanks, U+00A0, and category Zs above U+0377) into "%".  Receiving,
# it turns "%%" into "%", a lone "%" into "_", and every control character
# (Haskell isControl, category Cc: C0, DEL and C1) into "_".  Bytes that are
# not UTF-8 are carried through unchanged.  Checked against git-annex
# 10.20261026.  Note that the codec is lossy beyond whitespace becoming
# "_": two adjacent blanks are sent as "%%" and so come back as "%".

def _isSpace(c):
    if ord(c) <= 0x377:
        return c in " \t\n\r\x0b\x0c\xa0"
    return unicodedata.category(c) == "Zs"


def _gitAnnexEncode(text):
    out = []
    for c in text:
        if c == "%":
            out.append("%%")
        elif _isSpace(c):
            out.append("%")
        else:
            out.append(c)
    return "".join(out)


def _gitAnnexDecode(text):
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%" and text[i + 1:i + 2] == "%":
            out.append("%")
            i += 2
            continue
        if c == "%" or unicodedata.category(c) == "Cc":
            c = "_"
        out.append(c)
        i += 1
    return "".join(out)


def expectedAssociatedFile(af):
    """
    What a git-annex receiver makes of C{af} after a git-annex sender
    encoded it: L{None} for no file.
    """
    if af is None:
        return None
    text = af.decode("utf-8", "surrogateescape")
    decoded = _gitAnnexDecode(_gitAnnexEncode(text))
    return decoded.encode("utf-8", "surrogateescape") or None


# -- hypothesis strategies --------------------------------------------------

_WS = b" \t\n\r\x0b\x0c"

keys = rawKeys.map(Key.parse)

#: Associated files: arbitrary bytes, UTF-8 text, and mixtures of the
#: characters that need care.
associatedFiles = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(
        [b" ", b"%", b"%%", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\x00",
         b"\x01", b"\x7f", b"a", b"b.txt", b"/", b"dir/", b"\xff",
         "\u00e9".encode(), "\u00a0".encode(), "\u2003".encode(),
         "\u3000".encode(), "\u0085".encode(), "\u009f".encode(),
         "\u200b".encode(), "\u2028".encode(), "\U0001f600".encode()]),
        max_size=10).map(b"".join),
)

#: uuids: non-empty tokens without whitespace.
uuids = st.one_of(
    st.uuids().map(lambda u: str(u).encode("ascii")),
    st.binary(min_size=1, max_size=40).filter(
        lambda b: not any(c in _WS for c in b)),
)
uuidLists = st.lists(uuids, max_size=5).map(tuple)
naturals = st.one_of(st.integers(0, 2 ** 16), st.integers(0, 2 ** 100))
tokens = st.text("abcdefABCDEF0123456789xyzXYZ", max_size=130).map(
    lambda s: s.encode("ascii"))
errorTexts = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))

messages = st.one_of(
    st.builds(Auth, uuids, tokens),
    st.builds(AuthSuccess, uuids),
    st.just(AuthFailure()),
    st.builds(Version, naturals),
    st.builds(Connect, st.sampled_from([b"git-upload-pack",
                                        b"git-receive-pack"])),
    st.builds(ConnectDone, st.integers(-2 ** 40, 2 ** 40)),
    st.just(NotifyChange()),
    st.builds(Changed, uuidLists),
    st.builds(CheckPresent, keys),
    st.builds(LockContent, keys),
    st.just(UnlockContent()),
    st.builds(Remove, keys),
    st.builds(RemoveBefore, naturals, keys),
    st.just(GetTimestamp()),
    st.builds(Timestamp, naturals),
    st.builds(Get, naturals, associatedFiles, keys),
    st.builds(Put, associatedFiles, keys),
    st.builds(PutFrom, naturals),
    st.just(AlreadyHave()),
    st.builds(AlreadyHavePlus, uuidLists),
    st.just(Success()),
    st.builds(SuccessPlus, uuidLists),
    st.just(Failure()),
    st.builds(FailurePlus, uuidLists),
    st.builds(Bypass, uuidLists),
    st.builds(Data, naturals),
    st.just(DataPresent()),
    st.just(Valid()),
    st.just(Invalid()),
    st.builds(Error, errorTexts),
)


def expectedMessage(message):
    """
    What a receiver parses from C{message.toLine()}: the message itself,
    except that an associated file comes out the way git-annex decodes it,
    an auth token in lower case, and a trailing CR of an error text is taken
    for the CR of a CRLF.
    """
    if isinstance(message, (Get, Put)):
        af = expectedAssociatedFile(message.associatedFile)
        if isinstance(message, Get):
            return Get(message.offset, af, message.key)
        return Put(af, message.key)
    if isinstance(message, Auth):
        return Auth(message.uuid, message.token.lower())
    if isinstance(message, Error) and message.text.endswith(b"\r"):
        return Error(message.text[:-1])
    return message


# -- tests ------------------------------------------------------------------

class ParseVectorTests(SynchronousTestCase):
    """
    The parsing vectors of spec section 7 and the pitfalls of section 8.
    """

    def assertParses(self, line, message):
        self.assertEqual(parseLine(line), message)

    def assertUnparseable(self, line):
        exc = self.assertRaises(UnparseableMessage, parseLine, line)
        self.assertIsInstance(exc, ValueError)
        return exc

    def test_authSuccess(self):
        """
        C{AUTH-SUCCESS} carries a uuid.
        """
        self.assertParses(b"AUTH-SUCCESS cde702c5-ebce-4e30-bbf7-8501553a0d7a",
                          AuthSuccess(b"cde702c5-ebce-4e30-bbf7-8501553a0d7a"))

    def test_version(self):
        """
        C{VERSION} carries a number; trailing junk and a CR are tolerated.
        """
        self.assertParses(b"VERSION 4", Version(4))
        self.assertParses(b"VERSION 3 trailing junk\r", Version(3))

    def test_lenientIntegers(self):
        """
        Integers are read the lenient git-annex way (leading blanks, hex
        and octal prefixes), but negative ones are refused.
        """
        self.assertParses(b"GET 0x10 f " + HELLO, Get(16, b"f", key(HELLO)))
        self.assertParses(b"PUT-FROM 0o17", PutFrom(15))
        self.assertParses(b"TIMESTAMP 12abc", Timestamp(12))
        self.assertParses(b"VERSION  7", Version(7))
        self.assertUnparseable(b"VERSION -1")
        self.assertUnparseable(b"DATA -5")
        self.assertUnparseable(b"VERSION x")
        self.assertUnparseable(b"VERSION")

    def test_checkPresent(self):
        """
        C{CHECKPRESENT} carries a key.
        """
        self.assertParses(b"CHECKPRESENT " + HELLO, CheckPresent(key(HELLO)))

    def test_putWithSpace(self):
        """
        A C{%} standing for a space in an associated file is decoded to
        C{_}.
        """
        self.assertParses(b"PUT with%space.txt " + K11,
                          Put(b"with_space.txt", key(K11)))

    def test_putNoFile(self):
        """
        An empty associated file (two spaces) means no file.
        """
        self.assertParses(b"PUT  " + TESTKEY, Put(None, key(TESTKEY)))

    def test_putPercent(self):
        """
        C{%%} is a percent sign, and a lone C{%} becomes C{_}.
        """
        self.assertParses(b"PUT 100%%%done.txt " + K4,
                          Put(b"100%_done.txt", key(K4)))

    def test_putControl(self):
        """
        Control characters in an associated file become C{_}.
        """
        self.assertParses(b"PUT a\x01b\x7f " + K4, Put(b"a_b_", key(K4)))

    def test_putAbsolute(self):
        """
        An absolute associated file makes the message unparseable.
        """
        self.assertUnparseable(b"PUT /abs/path " + HELLO)
        self.assertUnparseable(b"GET 0 /abs " + HELLO)

    def test_get(self):
        """
        C{GET} carries an offset, an associated file and a key; an empty
        associated file means none.
        """
        self.assertParses(b"GET 30000 big.bin " + BIG,
                          Get(30000, b"big.bin", key(BIG)))
        self.assertParses(b"GET 0  " + ZERO, Get(0, None, key(ZERO)))

    def test_removeBefore(self):
        """
        C{REMOVE-BEFORE} carries a timestamp and a key.
        """
        self.assertParses(b"REMOVE-BEFORE 1042 " + BIG,
                          RemoveBefore(1042, key(BIG)))

    def test_plusLists(self):
        """
        The C{-PLUS} replies and C{BYPASS} carry lists of uuids, which may
        be empty.
        """
        self.assertParses(b"ALREADY-HAVE-PLUS " + U1 + b" " + U2,
                          AlreadyHavePlus((U1, U2)))
        self.assertParses(b"SUCCESS-PLUS " + U1 + b" " + U2,
                          SuccessPlus((U1, U2)))
        self.assertParses(b"FAILURE-PLUS", FailurePlus(()))
        self.assertParses(b"FAILURE-PLUS ", FailurePlus(()))
        self.assertParses(
            b"BYPASS 87a32bef-c124-4d37-bce9-ac33eb567d53 "
            b"e2ab15c7-9439-4063-b924-c6789ba37c58",
            Bypass((b"87a32bef-c124-4d37-bce9-ac33eb567d53",
                    b"e2ab15c7-9439-4063-b924-c6789ba37c58")))

    def test_listWhitespaceRuns(self):
        """
        Lists are split on runs of any whitespace.
        """
        self.assertParses(b"SUCCESS-PLUS " + U1 + b" \t " + U2 + b"  ",
                          SuccessPlus((U1, U2)))

    def test_numbers(self):
        """
        C{TIMESTAMP}, C{DATA} and C{CONNECTDONE} carry numbers; an exit
        code may be non-zero.
        """
        self.assertParses(b"TIMESTAMP 505", Timestamp(505))
        self.assertParses(b"DATA 0", Data(0))
        self.assertParses(b"CONNECTDONE 0", ConnectDone(0))
        self.assertParses(b"CONNECTDONE 1", ConnectDone(1))

    def test_changed(self):
        """
        C{CHANGED} carries git SHAs; an empty list may be sent with or
        without the trailing space.
        """
        sha = b"c976d29daf7e7f15ba9281c32aac1f5e79b6102f"
        self.assertParses(b"CHANGED " + sha, Changed((sha,)))
        self.assertParses(b"CHANGED ", Changed(()))
        self.assertParses(b"CHANGED", Changed(()))

    def test_error(self):
        """
        C{ERROR}'s text is the rest of the line, spaces included; it may be
        empty.
        """
        self.assertParses(
            b"ERROR this repository is read-only; write access denied",
            Error(b"this repository is read-only; write access denied"))
        self.assertParses(b"ERROR ", Error(b""))
        self.assertParses(b"ERROR", Error(b""))

    def test_unlockContent(self):
        """
        C{UNLOCKCONTENT} has no key; with one it is unparseable.
        """
        self.assertParses(b"UNLOCKCONTENT", UnlockContent())
        self.assertUnparseable(b"UNLOCKCONTENT " + HELLO)

    def test_zeroFieldMessages(self):
        """
        A message without fields needs an empty argument string: one
        trailing space is the separator, two make it unparseable, as does a
        stray word.
        """
        self.assertParses(b"SUCCESS", Success())
        self.assertParses(b"SUCCESS ", Success())
        self.assertUnparseable(b"SUCCESS  ")
        self.assertUnparseable(b"GETTIMESTAMP extra")
        self.assertParses(b"GETTIMESTAMP", GetTimestamp())
        for cls in (AuthFailure, NotifyChange, UnlockContent, GetTimestamp,
                    AlreadyHave, Success, Failure, DataPresent, Valid,
                    Invalid):
            self.assertParses(cls.WORD, cls())
            self.assertUnparseable(cls.WORD + b" x")

    def test_unknown(self):
        """
        Unknown and wrongly-cased command words, bad keys and empty lines
        are unparseable.
        """
        for line in [b"getTimestamp", b"CHECKPRESENT notakey", b"",
                     b"BYE", b"success", b" SUCCESS", b"CHECKPRESENT",
                     b"CHECKPRESENT " + HELLO + b"\x00"]:
            self.assertUnparseable(line)

    def test_unparseableCarriesLine(self):
        """
        L{UnparseableMessage} records the line and a reason.
        """
        exc = self.assertUnparseable(b"CHECKPRESENT notakey")
        self.assertEqual(exc.line, b"CHECKPRESENT notakey")
        self.assertTrue(exc.reason)

    def test_crlf(self):
        """
        One CR before the (already stripped) LF is dropped.
        """
        self.assertParses(b"SUCCESS\r", Success())
        self.assertParses(b"CHECKPRESENT " + HELLO + b"\r",
                          CheckPresent(key(HELLO)))

    def test_keyIsRestOfLine(self):
        """
        The key is the whole rest of the line, so a trailing word belongs
        to it (here: making it a key named C{<hash> junk}).
        """
        message = parseLine(b"CHECKPRESENT " + HELLO + b" junk")
        self.assertEqual(message.key.raw, HELLO + b" junk")

    def test_tabSeparates(self):
        """
        A tab separates fields like a space: C{PUT a<TAB>b <key>} is a
        C{PUT} of file C{a} with the key C{b <key>} (spec 8.5).
        """
        message = parseLine(b"PUT a\tb " + K4)
        self.assertEqual(message, Put(b"a", key(b"b " + K4)))
        self.assertEqual(message.key.variety, b"b SHA256E")

    def test_auth(self):
        """
        C{AUTH} carries a uuid and a token of letters and digits, lower
        cased; the token may be missing; any other character in it makes
        the message unparseable.
        """
        self.assertParses(b"AUTH " + U1 + b" AbC123", Auth(U1, b"abc123"))
        self.assertParses(b"AUTH " + U1, Auth(U1, b""))
        self.assertParses(b"AUTH " + U1 + b" ", Auth(U1, b""))
        self.assertUnparseable(b"AUTH " + U1 + b" a-b")
        self.assertUnparseable(b"AUTH " + U1 + b" a b")

    def test_connect(self):
        """
        C{CONNECT} takes one of the two git services.
        """
        self.assertParses(b"CONNECT git-upload-pack",
                          Connect(b"git-upload-pack"))
        self.assertParses(b"CONNECT git-receive-pack",
                          Connect(b"git-receive-pack"))
        self.assertUnparseable(b"CONNECT git-shell")

    def test_messageTable(self):
        """
        L{MESSAGES} maps every command word to its class, and each class
        knows the first protocol version that has it.
        """
        self.assertEqual(len(MESSAGES), 30)
        for word, cls in MESSAGES.items():
            self.assertEqual(cls.WORD, word)
        self.assertEqual(
            {cls.WORD: cls.SINCE for cls in MESSAGES.values() if cls.SINCE},
            {b"VALID": 1, b"INVALID": 1, b"ALREADY-HAVE-PLUS": 2,
             b"SUCCESS-PLUS": 2, b"FAILURE-PLUS": 2, b"BYPASS": 2,
             b"REMOVE-BEFORE": 3, b"GETTIMESTAMP": 3, b"TIMESTAMP": 3,
             b"DATA-PRESENT": 4})


class SerializeVectorTests(SynchronousTestCase):
    """
    The serialisation vectors of spec sections 1.3 and 7.
    """

    def test_associatedFileEscaping(self):
        """
        A space becomes C{%}, a C{%} becomes C{%%}, a tab becomes C{%}, and
        no file leaves the field empty (two spaces).
        """
        k = key(K4)
        self.assertEqual(Put(b"with space.txt", k).toLine(),
                         b"PUT with%space.txt " + K4)
        self.assertEqual(Put(b"100% done", k).toLine(),
                         b"PUT 100%%%done " + K4)
        self.assertEqual(Put(b"a\tb", k).toLine(), b"PUT a%b " + K4)
        self.assertEqual(Put(None, k).toLine(), b"PUT  " + K4)
        self.assertEqual(Get(0, None, k).toLine(), b"GET 0  " + K4)
        self.assertEqual(Get(5, b"a b", k).toLine(), b"GET 5 a%b " + K4)

    def test_unicodeSpaceEscaped(self):
        """
        A Unicode space (which git-annex in a UTF-8 locale splits fields
        on) is sent as C{%} too, so no git-annex peer can read it as a field
        separator.
        """
        k = key(K4)
        self.assertEqual(Put("a\u00a0b\u2003c".encode(), k).toLine(),
                         b"PUT a%b%c " + K4)

    def test_emptyLists(self):
        """
        An empty C{-PLUS} list or C{BYPASS} is sent as the bare word;
        C{CHANGED} with one trailing space.
        """
        self.assertEqual(SuccessPlus(()).toLine(), b"SUCCESS-PLUS")
        self.assertEqual(FailurePlus(()).toLine(), b"FAILURE-PLUS")
        self.assertEqual(AlreadyHavePlus(()).toLine(), b"ALREADY-HAVE-PLUS")
        self.assertEqual(Bypass(()).toLine(), b"BYPASS")
        self.assertEqual(Changed(()).toLine(), b"CHANGED ")
        self.assertEqual(SuccessPlus((U1, U2)).toLine(),
                         b"SUCCESS-PLUS " + U1 + b" " + U2)

    def test_emptyError(self):
        """
        C{ERROR} with empty text is sent with one trailing space.
        """
        self.assertEqual(Error(b"").toLine(), b"ERROR ")
        self.assertEqual(Error().toLine(), b"ERROR ")

    def test_simple(self):
        """
        Other messages are the word and their fields in plain decimal.
        """
        k = key(HELLO)
        for message, line in [
                (Version(4), b"VERSION 4"), (Success(), b"SUCCESS"),
                (Data(11), b"DATA 11"), (PutFrom(0), b"PUT-FROM 0"),
                (RemoveBefore(1042, k), b"REMOVE-BEFORE 1042 " + HELLO),
                (CheckPresent(k), b"CHECKPRESENT " + HELLO),
                (ConnectDone(-1), b"CONNECTDONE -1"),
                (Auth(U1, b"abc"), b"AUTH " + U1 + b" abc"),
                (AuthSuccess(U1), b"AUTH-SUCCESS " + U1),
                (UnlockContent(), b"UNLOCKCONTENT"),
                (Version(2 ** 70), b"VERSION %d" % 2 ** 70)]:
            self.assertEqual(message.toLine(), line)
            self.assertEqual(bytes(message), line)

    def test_rawKeySent(self):
        """
        A key is sent as the exact bytes it was received as.
        """
        self.assertEqual(CheckPresent(key(b"MD5-s01--x")).toLine(),
                         b"CHECKPRESENT MD5-s01--x")

    def test_errorOf(self):
        """
        L{Error.of} folds line breaks to spaces and accepts L{str}.
        """
        self.assertEqual(Error.of("a\nb\r\nc").text, b"a b  c")
        self.assertEqual(Error.of(b"x\ny").toLine(), b"ERROR x y")
        self.assertEqual(Error.of("caf\xe9").text, b"caf\xc3\xa9")

    def test_unsendable(self):
        """
        Fields that cannot be sent raise L{ValueError}: a newline in an
        error text, an empty uuid or one with whitespace, a negative number,
        a bad auth token or service, a uuid list entry with a newline.
        """
        for message in [
                Error(b"a\nb"), AuthSuccess(b""), AuthSuccess(b"a b"),
                Version(-1), Data(-1), PutFrom(-3), Timestamp(-1),
                Auth(U1, b"a\nSUCCESS"), Auth(U1, b"a b"),
                Connect(b"git-upload-pack\nSUCCESS"),
                SuccessPlus((b"a\nb",)), FailurePlus((b"",)),
                Bypass((b"a b",)), AlreadyHavePlus((U1, b"x\ny")),
                Changed((b"a\nb",))]:
            self.assertRaises(ValueError, message.toLine)

    def test_tooLong(self):
        """
        A line of 32768 bytes or more is refused with L{ValueError}, for
        every kind of message that can grow; a shorter one is fine.
        """
        self.assertEqual(MAX_LINE_LENGTH, 32768)
        big = b"x" * MAX_LINE_LENGTH
        for message in [
                Error(big), CheckPresent(key(b"WORM--" + big)),
                Put(big, key(K4)), Get(0, b"%" * 20000, key(K4)),
                AuthSuccess(big), SuccessPlus((big,)),
                FailurePlus((U1,) * 1000), AlreadyHavePlus((big,)),
                Bypass((U1,) * 1000), Changed((big,)),
                Changed((b"c976d29daf7e7f15ba9281c32aac1f5e79b6102f",) * 900)]:
            self.assertRaises(ValueError, message.toLine)
        self.assertEqual(len(Error(b"x" * 32761).toLine()), 32767)
        self.assertEqual(len(SuccessPlus((b"x" * 32754,)).toLine()), 32767)

    def test_plusReply(self):
        """
        L{plusReply} gives C{-PLUS} replies from version 2 on, when there
        are uuids, and plain ones otherwise.
        """
        self.assertEqual(plusReply(True, [U1], 2), SuccessPlus((U1,)))
        self.assertEqual(plusReply(False, [U1], 4), FailurePlus((U1,)))
        self.assertEqual(plusReply(True, [U1], 1), Success())
        self.assertEqual(plusReply(False, [U1], 0), Failure())
        self.assertEqual(plusReply(True, [], 4), Success())
        self.assertEqual(plusReply(False, (), 3), Failure())


class AssociatedFileModelTests(SynchronousTestCase):
    """
    Associated files go through the codec the way git-annex decodes them
    (checked against git-annex 10.20261026 in a UTF-8 locale).
    """

    def test_observed(self):
        """
        The name git-annex recorded for an observed C{PUT} line is what
        annexd decodes from it: C{%%} to C{%}, lone C{%} and C0, DEL and C1
        controls (U+0085, U+009F) to C{_}; other non-ASCII bytes, valid
        UTF-8 or not, stay.
        """
        line = (b"PUT a%%b%cX\x01y\xc2\x85z\xc2\x9fw\x7fv\xc3\xa9\xffu"
                b"\xe2\x80\x8bt\xe2\x80\xa8s.txt " + K4)
        observed = (b"a%b_cX_y_z_w_v\xc3\xa9\xffu\xe2\x80\x8bt\xe2\x80\xa8"
                    b"s.txt")
        self.assertEqual(parseLine(line).associatedFile, observed)

    def test_model(self):
        """
        The reference model used below agrees with the spec's examples.
        """
        self.assertEqual(expectedAssociatedFile(b"with space.txt"),
                         b"with_space.txt")
        self.assertEqual(expectedAssociatedFile(b"100% done"), b"100%_done")
        self.assertEqual(expectedAssociatedFile(b""), None)
        self.assertEqual(expectedAssociatedFile("a\u00a0\u0085".encode()),
                         b"a__")
        self.assertEqual(expectedAssociatedFile(b"a  b"), b"a%b")
        self.assertEqual(expectedAssociatedFile(b"%\t"), b"%_")

    def test_adjacentBlanks(self):
        """
        Two adjacent blanks are sent as C{%%}, which git-annex (and annexd)
        read back as a percent sign: the codec is lossy.
        """
        k = key(K4)
        line = Put(b"a  b", k).toLine()
        self.assertEqual(line, b"PUT a%%b " + K4)
        self.assertEqual(parseLine(line), Put(b"a%b", k))


class RoundTripTests(SynchronousTestCase):
    """
    Property tests: what annexd sends, annexd (and git-annex) parse back.
    """

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_roundTrip(self, message):
        """
        Every message type, with random field values, survives C{toLine}
        then C{parseLine}; associated files come back as git-annex would
        decode them, and an absolute one is refused by the parser.
        """
        line = message.toLine()
        self.assertNotIn(b"\n", line)
        af = getattr(message, "associatedFile", None)
        expected = expectedMessage(message)
        decoded = expectedAssociatedFile(af)
        if decoded is not None and decoded.startswith(b"/"):
            self.assertRaises(UnparseableMessage, parseLine, line)
        else:
            self.assertEqual(parseLine(line), expected)
            self.assertEqual(parseLine(line + b"\r"), expected)

    @settings(max_examples=200, deadline=None)
    @given(associatedFiles, keys)
    def test_associatedFileNeverSplits(self, af, k):
        """
        An encoded associated file never contains a field separator, ASCII
        or Unicode, so the key in C{PUT} is always the one sent.
        """
        line = Put(af, k).toLine()
        encoded = line[len(b"PUT "):-len(k.raw) - 1]
        text = encoded.decode("utf-8", "surrogateescape")
        self.assertFalse(any(_isSpace(c) for c in text), encoded)
        self.assertEqual(line, b"PUT " + encoded + b" " + k.raw)

    @settings(max_examples=200, deadline=None)
    @given(st.one_of(
        st.builds(Error, st.binary(max_size=100)),
        st.builds(Auth, uuids, st.binary(max_size=20)),
        st.builds(Connect, st.binary(max_size=20)),
        st.builds(AuthSuccess, st.binary(max_size=20)),
        st.builds(SuccessPlus, st.lists(st.binary(max_size=10),
                                        max_size=3).map(tuple)),
        st.builds(Bypass, st.lists(st.binary(max_size=10),
                                   max_size=3).map(tuple)),
        st.builds(Changed, st.lists(st.binary(max_size=10),
                                    max_size=3).map(tuple)),
        st.builds(Put, st.binary(max_size=20), keys),
    ))
    @example(Auth(U1, b"a\nb"))
    @example(Connect(b"\n"))
    @example(SuccessPlus((b"a\nb",)))
    @example(Put(b"\n", key(K4)))
    def test_neverNewline(self, message):
        """
        Whatever the field values, C{toLine} either refuses them with
        L{ValueError} or returns a line without a newline: a field can
        never smuggle in a second message.
        """
        try:
            line = message.toLine()
        except ValueError:
            return
        self.assertNotIn(b"\n", line)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(
        st.binary(max_size=80),
        st.builds(lambda w, sep, rest: w + sep + rest,
                  st.sampled_from(sorted(MESSAGES)),
                  st.sampled_from([b"", b" ", b"\t", b"  "]),
                  st.binary(max_size=80)),
        st.builds(lambda w, k: w + b" " + k,
                  st.sampled_from([b"GET 0 ", b"PUT ", b"REMOVE-BEFORE 1 ",
                                   b"CHECKPRESENT"]),
                  rawKeys)))
    def test_parseOnlyRaisesUnparseable(self, line):
        """
        C{parseLine} on arbitrary bytes returns a message or raises
        L{UnparseableMessage}, nothing else; what it returns can be sent
        back and parsed again to the same message.
        """
        try:
            message = parseLine(line)
        except UnparseableMessage:
            return
        self.assertIn(type(message), set(MESSAGES.values()))
        try:
            again = message.toLine()
        except ValueError:
            # e.g. a uuid field that held whitespace or was empty.
            return
        self.assertEqual(parseLine(again), expectedMessage(message))
