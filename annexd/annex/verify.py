# -*- test-case-name: tests.test_verify -*-
"""
Checking content against its key, as it streams.

git-annex's gateway hash-checks uploads before storing them on a special
remote (shared/spec/p2p-protocol.md section 2.3): a special remote cannot
verify what it is given, so the gateway must.  L{Verifier} hashes content
incrementally, chunk by chunk, and says at the end whether it matches the
key: its size (C{-s}) and, for hash backends, its digest.

Backends: SHA1, SHA224, SHA256, SHA384, SHA512, SHA3_224 ... SHA3_512, MD5,
BLAKE2B<bits>, BLAKE2S<bits> (and their C{E} variants, whose digest is the
part of the name before the first C{.}).  Keys of other backends (WORM,
URL, SKEIN, BLAKE3, XXH3, external ones) are checked by size only, and
L{Verifier.checkable} says so.
"""

import hashlib
import re

_SIMPLE = {
    b"SHA1": "sha1", b"SHA224": "sha224", b"SHA256": "sha256",
    b"SHA384": "sha384", b"SHA512": "sha512", b"MD5": "md5",
    b"SHA3_224": "sha3_224", b"SHA3_256": "sha3_256",
    b"SHA3_384": "sha3_384", b"SHA3_512": "sha3_512",
}

_BLAKE2 = re.compile(rb"^BLAKE2(B|S)(\d+)$")


def _hashFor(variety):
    """
    A new hash object for a backend name (without its C{E}), or L{None}.
    """
    name = _SIMPLE.get(variety)
    if name is not None:
        return hashlib.new(name)
    match = _BLAKE2.match(variety)
    if match:
        bits = int(match.group(2))
        if bits % 8 or bits <= 0:
            return None
        try:
            if match.group(1) == b"B":
                return hashlib.blake2b(digest_size=bits // 8)
            return hashlib.blake2s(digest_size=bits // 8)
        except ValueError:
            return None
    return None


def _split(variety):
    """
    C{(hash variety, whether the name carries an extension)}.
    """
    for base in (variety, variety[:-1] if variety.endswith(b"E") else None):
        if base is not None and _hashFor(base) is not None:
            return base, base != variety
    return None, False


class Verifier:
    """
    @ivar key: the L{annexd.protocol.keys.Key}.
    @ivar length: bytes seen so far.
    @ivar checkable: whether the content's digest can be checked (else only
        its size, when the key has one).
    """

    def __init__(self, key, offset=0):
        """
        @param offset: where the content fed starts (a resumed transfer):
            the digest cannot be checked unless the first bytes are fed too
            (see L{feedPrefix}).
        """
        self.key = key
        self.length = offset
        base, extension = _split(key.variety)
        self._hash = _hashFor(base) if base is not None else None
        self._extension = extension
        self._prefixMissing = offset > 0
        self.checkable = self._hash is not None

    def feedPrefix(self, data):
        """
        Feed the first bytes of a resumed transfer (what is already there);
        call before any L{update}, with exactly C{offset} bytes in total.
        """
        if self._hash is not None:
            self._hash.update(data)

    def prefixFed(self):
        """
        Say the whole prefix was fed with L{feedPrefix}.
        """
        self._prefixMissing = False

    def update(self, data):
        self.length += len(data)
        if self._hash is not None:
            self._hash.update(data)

    def expectedDigest(self):
        name = self.key.name
        if self._extension:
            name = name.split(b".", 1)[0]
        return name.decode("ascii", "replace").lower()

    def verdict(self):
        """
        @return: L{True} if the content matches the key, L{False} if it does
            not, L{None} if it cannot be told (no hash backend and no size,
            or a resumed transfer whose prefix was not fed).
        """
        if self.key.size is not None and self.length != self.key.size:
            return False
        if self._hash is None or self._prefixMissing:
            return None if self.key.size is None else True
        return self._hash.hexdigest() == self.expectedDigest()
