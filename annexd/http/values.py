# -*- test-case-name: tests.test_httpvalues -*-
"""
Values on the wire of the HTTP P2P API (shared/spec/p2phttp.md section 1.3).

The client sends a value as it is when it is valid UTF-8 and does not look
like C{[...]}; otherwise as base64url (RFC 4648 section 5, padded) between
square brackets.  Every parser here takes the percent-decoded bytes of one
query value or path segment and raises L{BadValue} with a one-line reason
fit for a 400 answer.
"""

import base64
import binascii
import json
import re

from annexd.protocol.keys import InvalidKey, Key


_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*={0,2}")


class BadValue(ValueError):
    """
    A query parameter, path segment or header value that does not parse.
    """


def decodeValue(raw):
    """
    Undo the C{[base64url]} wrapping of a value, if it has one.

    @type raw: L{bytes}
    @rtype: L{bytes}
    @raise BadValue: for a wrapped value that is not base64url.
    """
    if len(raw) >= 2 and raw.startswith(b"[") and raw.endswith(b"]"):
        body = raw[1:-1]
        if _BASE64URL.fullmatch(body) is None or len(body.rstrip(b"=")) % 4 == 1:
            raise BadValue("unable to base64 decode [] wrapped value")
        try:
            # Padding is optional on the way in (the reference requires it;
            # accepting both is harmless).
            return base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise BadValue("unable to base64 decode [] wrapped value")
    return raw


def encodeValue(value):
    """
    The wire form of C{value} (L{bytes}), as the git-annex client makes it.

    @rtype: L{str}
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or (text.startswith("[") and text.endswith("]")):
        return "[%s]" % (base64.urlsafe_b64encode(value).decode("ascii"),)
    return text


def parseKey(raw):
    """
    @rtype: L{Key}
    """
    try:
        return Key.parse(decodeValue(raw))
    except InvalidKey:
        raise BadValue("key parse error")


def parseUUID(raw):
    """
    A repository uuid: any non-empty byte string (git-annex checks no
    format), but no control characters, which could never be a real one.

    @rtype: L{bytes}
    """
    value = decodeValue(raw)
    if not value:
        raise BadValue("empty UUID")
    if any(c < 0x20 or c == 0x7f for c in value):
        raise BadValue("invalid UUID")
    return value


def parseOffset(raw):
    """
    A non-negative decimal integer (the reference accepts negative offsets
    and then answers nonsense; annexd refuses them).

    @rtype: L{int}
    """
    if not raw.isdigit() or len(raw) > 20:
        raise BadValue("could not parse number")
    return int(raw)


def parseTimestamp(raw):
    """
    A decimal integer (a monotonic clock reading; may be anything a client
    computed, including a negative number).

    @rtype: L{int}
    """
    text = raw[1:] if raw.startswith(b"-") else raw
    if not text.isdigit() or len(text) > 20:
        raise BadValue("could not parse number")
    return int(raw)


def parseBool(raw):
    """
    Haskell's Bool as text: C{true} / C{false}, any case.

    @rtype: L{bool}
    """
    lowered = raw.lower()
    if lowered == b"true":
        return True
    if lowered == b"false":
        return False
    raise BadValue("could not parse value")


def uuidList(uuids):
    """
    The JSON form of a list of uuids (C{plusuuids}).
    """
    return [encodeValue(u) for u in uuids]


def jsonBody(**fields):
    """
    A compact JSON answer, keys sorted as the reference sends them.

    @rtype: L{bytes}
    """
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")
