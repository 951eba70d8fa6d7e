# -*- test-case-name: tests.test_keys -*-
"""
git-annex keys: parsing, serialising, and file names.

A key is C{VARIETY[-sSIZE][-mMTIME][-SCHUNKSIZE][-CCHUNKNUM]--NAME}
(shared/spec/p2p-protocol.md section 2).  Fields must come in that order;
the name is everything after the first C{--} that follows the fields.

annexd routes keys as opaque byte strings (it keeps the exact bytes it
received), but it refuses keys that could be used to reach outside a
directory: a key is a single path component wherever it is used, so it may
not contain NUL or other control characters, and a C{/} is only accepted in
the names of the varieties that legitimately carry one (URL, VURL and WORM
keys made from URLs and paths), and then never around a C{..} segment.  L{Key.fileName} gives the escaped, single-component form to use on
disk.
"""

from dataclasses import dataclass

#: Varieties whose names are not hashes but are made from URLs or paths, and
#: so may contain "/" (git-annex escapes it when it makes a file name).
PATHLIKE_VARIETIES = frozenset([b"URL", b"VURL", b"WORM"])

#: The longest extension git-annex accepts on an E variety.
MAX_EXTENSION = 64

_FIELD_ORDER = b"smSC"


class InvalidKey(ValueError):
    """
    A byte string that is not an acceptable git-annex key.
    """


@dataclass(frozen=True, slots=True)
class Key:
    """
    A parsed git-annex key.

    @ivar raw: the exact bytes received; this is what is forwarded and logged.
    @ivar variety: the backend name, e.g. C{b"SHA256E"}.
    @ivar size: the C{-s} field, or L{None}.
    @ivar mtime: the C{-m} field, or L{None}.
    @ivar chunkSize: the C{-S} field, or L{None}.
    @ivar chunkNumber: the C{-C} field, or L{None}.
    @ivar name: the part after C{--}.
    """

    raw: bytes
    variety: bytes
    size: int | None
    mtime: int | None
    chunkSize: int | None
    chunkNumber: int | None
    name: bytes

    @classmethod
    def parse(cls, raw):
        """
        Parse a serialised key.

        @type raw: L{bytes}
        @rtype: L{Key}
        @raise InvalidKey: if C{raw} is not a valid key, or is unsafe.
        """
        if not isinstance(raw, bytes):
            raise InvalidKey("a key is bytes")
        sep = raw.find(b"--")
        if sep < 0:
            raise InvalidKey("no -- separator")
        head, name = raw[:sep], raw[sep + 2:]
        dash = head.find(b"-")
        variety, fields = (head, b"") if dash < 0 else (head[:dash], head[dash:])
        if not variety:
            raise InvalidKey("empty backend name")
        values = {}
        order = 0
        for part in fields.split(b"-")[1:] if fields else ():
            if len(part) < 2 or not part[1:].isdigit():
                raise InvalidKey("bad field %r" % (part,))
            letter = part[:1]
            pos = _FIELD_ORDER.find(letter)
            if pos < order or letter in values:
                raise InvalidKey("field %r out of order" % (part,))
            order = pos + 1
            try:
                values[letter] = int(part[1:])
            except ValueError:  # more digits than int() converts
                raise InvalidKey("field %r too long" % (part[:20],))
        _checkSafe(variety, name)
        if variety.endswith(b"E") and _isHashVariety(variety):
            dot = name.find(b".")
            if dot >= 0 and len(name) - dot > MAX_EXTENSION + 1:
                raise InvalidKey("extension longer than %d bytes" % MAX_EXTENSION)
        return cls(raw, variety, values.get(b"s"), values.get(b"m"),
                   values.get(b"S"), values.get(b"C"), name)

    def serialize(self):
        """
        The canonical serialisation (fields in s, m, S, C order).  Use
        L{raw} to forward a key unchanged.

        @rtype: L{bytes}
        """
        out = [self.variety]
        for letter, value in ((b"s", self.size), (b"m", self.mtime),
                              (b"S", self.chunkSize), (b"C", self.chunkNumber)):
            if value is not None:
                out.append(b"-" + letter + b"%d" % value)
        out.append(b"--" + self.name)
        return b"".join(out)

    def fileName(self):
        """
        The key as one file-name component, escaped the way git-annex's
        C{keyFile} does it (C{&} -> C{&a}, C{%} -> C{&s}, C{:} -> C{&c},
        C{/} -> C{%}), so that annexd and git-annex agree on object paths.

        @rtype: L{bytes}
        """
        return (self.raw.replace(b"&", b"&a").replace(b"%", b"&s")
                .replace(b":", b"&c").replace(b"/", b"%"))

    def __str__(self):
        return self.raw.decode("utf-8", "surrogateescape")


_HASH_PREFIXES = (b"SHA", b"MD5", b"SKEIN", b"BLAKE", b"XXH")


def _isHashVariety(variety):
    return variety.startswith(_HASH_PREFIXES) or variety.startswith(b"X")


def _checkSafe(variety, name):
    for part, what in ((variety, "backend name"), (name, "key name")):
        for byte in part:
            if byte < 0x20 or byte == 0x7F:
                raise InvalidKey("control character in %s" % (what,))
    if b"/" in variety:
        raise InvalidKey("/ in backend name")
    if b"/" in name:
        if variety not in PATHLIKE_VARIETIES:
            raise InvalidKey("/ in the name of a %s key" % (
                variety.decode("ascii", "replace"),))
        if b".." in name.split(b"/"):
            raise InvalidKey("a .. segment in a path-like key name")


def parseKey(raw):
    """
    Parse C{raw} into a L{Key}; see L{Key.parse}.
    """
    return Key.parse(raw)
