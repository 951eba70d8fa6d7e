# -*- test-case-name: tests.test_messages -*-
"""
The P2P protocol's messages and their line codec.

Every message of protocol versions 0 to 4 (shared/spec/p2p-protocol.md
section 1) is a small frozen dataclass.  L{parseLine} turns one line (without
its newline) into a message the way git-annex parses it; L{Message.toLine}
gives the exact bytes git-annex would send (without the newline).

Parsing rules, as git-annex applies them:
  - the command word runs to the first whitespace byte; the rest is the
    argument string;
  - a message with N fields splits the argument string at the first
    whitespace N-1 times, so the last field (a key, an error text) is the
    whole rest of the line;
  - a message with no fields needs an empty argument string;
  - list messages split the argument string on runs of whitespace;
  - integers are read leniently (leading blanks, C{0x}/C{0o} prefixes,
    trailing junk), but annexd refuses negative offsets, lengths and
    timestamps;
  - associated files are decoded (C{%%} to C{%}, a lone C{%} and control
    characters to C{_}) and must be relative.
"""

import re
import unicodedata
from dataclasses import dataclass, fields
from typing import ClassVar

from annexd.protocol.keys import InvalidKey, Key

#: git-annex gives up on a line after this many bytes without a newline.
MAX_LINE_LENGTH = 32768

#: The highest protocol version annexd speaks.
MAX_PROTOCOL_VERSION = 4

_WHITESPACE = b" \t\n\r\x0b\x0c"
_SPLIT = re.compile(rb"[ \t\n\r\x0b\x0c]")
_INTEGER = re.compile(rb"[ \t\n\r\x0b\x0c]*(-?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|[0-9]+)")
_AUTHTOKEN = re.compile(rb"[A-Za-z0-9]*\Z")


class UnparseableMessage(ValueError):
    """
    A line that is not a message git-annex would accept.

    @ivar line: the offending line.
    """

    def __init__(self, line, reason):
        ValueError.__init__(self, reason)
        self.line = line
        self.reason = reason


def _splitWord(data):
    """
    Split at the first whitespace byte: C{(word, rest)}.
    """
    match = _SPLIT.search(data)
    if match is None:
        return data, b""
    return data[:match.start()], data[match.end():]


# Field codecs: each has decode(bytes) -> value (raise ValueError) and
# encode(value) -> bytes.

class _Field:
    @staticmethod
    def decode(data):
        raise NotImplementedError()

    @staticmethod
    def encode(value):
        raise NotImplementedError()


class _Text(_Field):
    """Free text or an opaque token: the bytes as they are."""

    @staticmethod
    def decode(data):
        return data

    @staticmethod
    def encode(value):
        if b"\n" in value:
            raise ValueError("newline in a message field")
        return value


class _Uuid(_Field):
    @staticmethod
    def decode(data):
        return data

    @staticmethod
    def encode(value):
        if not value or any(b in _WHITESPACE for b in value):
            raise ValueError("a uuid is a non-empty token without whitespace")
        return value


class _Natural(_Field):
    """A non-negative integer, read leniently, written in plain decimal."""

    @staticmethod
    def decode(data):
        match = _INTEGER.match(data)
        if match is None:
            raise ValueError("not a number")
        sign, digits = match.groups()
        value = int(digits, 0) if digits[:2].lower() in (b"0x", b"0o") else int(digits)
        if sign and value:
            raise ValueError("negative number")
        return value

    @staticmethod
    def encode(value):
        if value < 0:
            raise ValueError("negative number")
        return b"%d" % value


class _Integer(_Natural):
    """An exit code: any integer."""

    @staticmethod
    def decode(data):
        match = _INTEGER.match(data)
        if match is None:
            raise ValueError("not a number")
        sign, digits = match.groups()
        value = int(digits, 0) if digits[:2].lower() in (b"0x", b"0o") else int(digits)
        return -value if sign else value

    @staticmethod
    def encode(value):
        return b"%d" % value


class _Key(_Field):
    @staticmethod
    def decode(data):
        try:
            return Key.parse(data)
        except InvalidKey as e:
            raise ValueError(str(e))

    @staticmethod
    def encode(value):
        return value.raw


class _AssociatedFile(_Field):
    """
    An associated file: L{None} for no file, else the decoded relative path.
    """

    # git-annex works on characters (UTF-8, undecodable bytes kept):
    # Haskell's isSpace and isControl, not just their ASCII subsets.

    @staticmethod
    def decode(data):
        parts = data.decode("utf-8", "surrogateescape").split("%%")
        out = "%".join(
            "".join("_" if c == "%" or unicodedata.category(c) == "Cc" else c
                    for c in part) for part in parts)
        if not out:
            return None
        if out.startswith("/"):
            raise ValueError("associated file is an absolute path")
        return out.encode("utf-8", "surrogateescape")

    @staticmethod
    def encode(value):
        if value is None:
            return b""
        return "".join(
            "%%" if c == "%" else "%" if _isSpace(c) else c
            for c in value.decode("utf-8", "surrogateescape")
        ).encode("utf-8", "surrogateescape")


def _isSpace(c):
    """
    Haskell's C{isSpace}: ASCII blanks, U+00A0, and Unicode spaces (Zs).
    """
    if c <= "\u0377":
        return c in " \t\n\r\x0b\x0c\xa0"
    return unicodedata.category(c) == "Zs"


class _AuthToken(_Field):
    @staticmethod
    def decode(data):
        if not _AUTHTOKEN.match(data):
            raise ValueError("bad characters in auth token")
        return data.lower()

    @staticmethod
    def encode(value):
        if not _AUTHTOKEN.match(value):
            raise ValueError("bad characters in auth token")
        return value


class _Service(_Field):
    SERVICES = (b"git-upload-pack", b"git-receive-pack")

    @staticmethod
    def decode(data):
        if data not in _Service.SERVICES:
            raise ValueError("unknown service")
        return data

    @staticmethod
    def encode(value):
        return _Service.decode(value)


class _List(_Field):
    """A whitespace-separated list of tokens (uuids, shas)."""

    @staticmethod
    def decode(data):
        return tuple(data.split())

    @staticmethod
    def encode(value):
        return b" ".join(_Uuid.encode(v) for v in value)


@dataclass(frozen=True)
class Message:
    """
    Base class of all messages.

    @cvar WORD: the command word.
    @cvar FIELDS: the codecs of the fields, in wire order.
    @cvar SINCE: the first protocol version that has this message.
    """

    WORD: ClassVar[bytes] = b""
    FIELDS: ClassVar[tuple] = ()
    SINCE: ClassVar[int] = 0

    def _values(self):
        return [getattr(self, f.name) for f in fields(self)]

    def toLine(self):
        """
        Serialise to the bytes git-annex sends, without the newline.

        @rtype: L{bytes}
        @raise ValueError: if a field cannot be sent (a newline in a text,
            an empty uuid, a negative number...).
        """
        parts = [self.WORD]
        parts.extend(codec.encode(value)
                     for codec, value in zip(self.FIELDS, self._values()))
        return _checkLength(b" ".join(parts))

    @classmethod
    def fromArguments(cls, rest):
        """
        Parse the argument string of this message type.

        @raise ValueError: if it does not fit.
        """
        codecs = cls.FIELDS
        if not codecs:
            if rest:
                raise ValueError("no arguments expected")
            return cls()
        if codecs[0] is _List:
            return cls(_List.decode(rest))
        values = []
        for codec in codecs[:-1]:
            word, rest = _splitWord(rest)
            values.append(codec.decode(word))
        values.append(codecs[-1].decode(rest))
        return cls(*values)

    def __bytes__(self):
        return self.toLine()


def _checkLength(line):
    if len(line) >= MAX_LINE_LENGTH:
        raise ValueError("message longer than %d bytes" % MAX_LINE_LENGTH)
    return line


def _message(word, *fields, since=0):
    def decorate(cls):
        cls.WORD = word
        cls.FIELDS = fields
        cls.SINCE = since
        return dataclass(frozen=True)(cls)
    return decorate


@_message(b"AUTH", _Uuid, _AuthToken)
class Auth(Message):
    uuid: bytes
    token: bytes


@_message(b"AUTH-SUCCESS", _Uuid)
class AuthSuccess(Message):
    uuid: bytes


@_message(b"AUTH-FAILURE")
class AuthFailure(Message):
    pass


@_message(b"VERSION", _Natural)
class Version(Message):
    version: int


@_message(b"CONNECT", _Service)
class Connect(Message):
    service: bytes


@_message(b"CONNECTDONE", _Integer)
class ConnectDone(Message):
    exitCode: int


@_message(b"NOTIFYCHANGE")
class NotifyChange(Message):
    pass


@_message(b"CHANGED", _List)
class Changed(Message):
    refs: tuple = ()

    def toLine(self):
        # git-annex sends an empty list with a trailing space.
        return _checkLength(b"CHANGED " + _List.encode(self.refs))


@_message(b"CHECKPRESENT", _Key)
class CheckPresent(Message):
    key: Key


@_message(b"LOCKCONTENT", _Key)
class LockContent(Message):
    key: Key


@_message(b"UNLOCKCONTENT")
class UnlockContent(Message):
    pass


@_message(b"REMOVE", _Key)
class Remove(Message):
    key: Key


@_message(b"REMOVE-BEFORE", _Natural, _Key, since=3)
class RemoveBefore(Message):
    timestamp: int
    key: Key


@_message(b"GETTIMESTAMP", since=3)
class GetTimestamp(Message):
    pass


@_message(b"TIMESTAMP", _Natural, since=3)
class Timestamp(Message):
    timestamp: int


@_message(b"GET", _Natural, _AssociatedFile, _Key)
class Get(Message):
    offset: int
    associatedFile: bytes | None
    key: Key


@_message(b"PUT", _AssociatedFile, _Key)
class Put(Message):
    associatedFile: bytes | None
    key: Key


@_message(b"PUT-FROM", _Natural)
class PutFrom(Message):
    offset: int


@_message(b"ALREADY-HAVE")
class AlreadyHave(Message):
    pass


@_message(b"ALREADY-HAVE-PLUS", _List, since=2)
class AlreadyHavePlus(Message):
    uuids: tuple = ()


@_message(b"SUCCESS")
class Success(Message):
    pass


@_message(b"SUCCESS-PLUS", _List, since=2)
class SuccessPlus(Message):
    uuids: tuple = ()


@_message(b"FAILURE")
class Failure(Message):
    pass


@_message(b"FAILURE-PLUS", _List, since=2)
class FailurePlus(Message):
    uuids: tuple = ()


@_message(b"BYPASS", _List, since=2)
class Bypass(Message):
    uuids: tuple = ()


@_message(b"DATA", _Natural)
class Data(Message):
    length: int


@_message(b"DATA-PRESENT", since=4)
class DataPresent(Message):
    pass


@_message(b"VALID", since=1)
class Valid(Message):
    pass


@_message(b"INVALID", since=1)
class Invalid(Message):
    pass


@_message(b"ERROR", _Text)
class Error(Message):
    text: bytes = b""

    @classmethod
    def of(cls, text):
        """
        An ERROR carrying C{text} (L{str} or L{bytes}), with line breaks
        folded to spaces so it is always sendable.
        """
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        return cls(text.replace(b"\r", b" ").replace(b"\n", b" ")[:4096])


def _listMessageToLine(self):
    # git-annex sends an empty list as the bare word.
    return _checkLength(b" ".join((self.WORD,) + tuple(
        _Uuid.encode(u) for u in self.uuids)))


for _cls in (AlreadyHavePlus, SuccessPlus, FailurePlus, Bypass):
    _cls.toLine = _listMessageToLine
del _cls

#: Every message type, by command word.
MESSAGES = {cls.WORD: cls for cls in (
    Auth, AuthSuccess, AuthFailure, Version, Connect, ConnectDone,
    NotifyChange, Changed, CheckPresent, LockContent, UnlockContent, Remove,
    RemoveBefore, GetTimestamp, Timestamp, Get, Put, PutFrom, AlreadyHave,
    AlreadyHavePlus, Success, SuccessPlus, Failure, FailurePlus, Bypass, Data,
    DataPresent, Valid, Invalid, Error)}

#: Messages a client may send to start an exchange with a server.
REQUESTS = (CheckPresent, LockContent, Remove, RemoveBefore, GetTimestamp,
            Get, Put, Connect, NotifyChange)


def parseLine(line):
    """
    Parse one protocol line (without its trailing newline; one trailing
    carriage return is dropped).

    @type line: L{bytes}
    @rtype: L{Message}
    @raise UnparseableMessage: when git-annex would not parse it.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    word, rest = _splitWord(line)
    cls = MESSAGES.get(word)
    if cls is None:
        raise UnparseableMessage(line, "unknown command")
    try:
        return cls.fromArguments(rest)
    except ValueError as e:
        raise UnparseableMessage(line, "bad %s message: %s" % (
            word.decode("ascii"), e))


def plusReply(success, uuids, version):
    """
    The reply that reports an outcome to a peer of protocol C{version}:
    C{SUCCESS-PLUS}/C{FAILURE-PLUS} with C{uuids} from version 2 on when
    there are any, plain C{SUCCESS}/C{FAILURE} otherwise.
    """
    if version >= 2 and uuids:
        return SuccessPlus(tuple(uuids)) if success else FailurePlus(tuple(uuids))
    return Success() if success else Failure()
