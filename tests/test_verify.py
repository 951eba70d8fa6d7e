"""
Tests for L{annexd.annex.verify}.
"""

import hashlib

from hypothesis import given, strategies as st
from twisted.trial import unittest

from annexd.annex.verify import Verifier
from annexd.protocol.keys import Key


def keyOf(variety, data, ext=b"", size=True):
    digest = {
        b"SHA256": hashlib.sha256, b"SHA1": hashlib.sha1,
        b"MD5": hashlib.md5, b"SHA512": hashlib.sha512,
        b"SHA3_256": hashlib.sha3_256,
        b"BLAKE2B256": lambda d: hashlib.blake2b(d, digest_size=32),
        b"BLAKE2S160": lambda d: hashlib.blake2s(d, digest_size=20),
    }[variety.rstrip(b"E")](data).hexdigest().encode()
    s = b"-s%d" % len(data) if size else b""
    return Key.parse(variety + s + b"--" + digest + ext)


class VerifierTests(unittest.SynchronousTestCase):

    def check(self, key, *chunks):
        v = Verifier(key)
        for chunk in chunks:
            v.update(chunk)
        return v.verdict()

    def test_backends(self):
        """
        Every hash backend, plain and with an extension, accepts its own
        content fed in pieces and refuses a changed byte.
        """
        data = b"some content\n" * 100
        bad = data[:-1] + b"X"
        for variety in (b"SHA256", b"SHA1", b"MD5", b"SHA512", b"SHA3_256",
                        b"BLAKE2B256", b"BLAKE2S160"):
            for e, ext in ((b"", b""), (b"E", b".tar.gz")):
                key = keyOf(variety + e, data, ext)
                self.assertIs(self.check(key, data[:7], data[7:]), True, key)
                self.assertIs(self.check(key, bad), False, key)

    def test_size(self):
        """
        A wrong length fails even a key whose digest cannot be checked.
        """
        key = Key.parse(b"WORM-s5-m1--x")
        self.assertIs(self.check(key, b"12345"), True)
        self.assertIs(self.check(key, b"1234"), False)
        self.assertFalse(Verifier(key).checkable)
        self.assertIsNone(self.check(Key.parse(b"URL--http&c%%x"), b"a"))

    def test_resumed(self):
        """
        A resumed transfer is checked only once its prefix was fed.
        """
        data = b"0123456789"
        key = keyOf(b"SHA256E", data)
        v = Verifier(key, offset=4)
        v.update(data[4:])
        self.assertIs(v.verdict(), True)  # size only
        v = Verifier(key, offset=4)
        v.feedPrefix(b"XXXX")
        v.prefixFed()
        v.update(data[4:])
        self.assertIs(v.verdict(), False)

    @given(st.binary(max_size=2000), st.lists(st.integers(0, 2000)))
    def test_anySplit(self, data, cuts):
        """
        However the content is cut into pieces, the verdict is the same.
        """
        key = keyOf(b"SHA256E", data, b".bin")
        points = sorted(set(c for c in cuts if c <= len(data)))
        pieces, last = [], 0
        for p in points + [len(data)]:
            pieces.append(data[last:p])
            last = p
        self.assertIs(self.check(key, *pieces), True)
