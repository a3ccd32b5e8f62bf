"""The opening handshake's HTTP heads, read and written without Autobahn's generic path.

`parse_head` reads a request or response head by exactly the rules of Autobahn's
`parseHttpHeader` (its #2034 strictness: CRLF only, no obs-fold, token names, no control
bytes) in two regular-expression passes instead of a Python loop per line, and keeps the
pairs in order as they came. The legs' fast paths (`relay/lean_handshake.py`) take a head
only when every check passes on it; anything else goes to Autobahn's own handshake code,
which answers it as it always has. Pure functions; no protocol state.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

# RFC 9110 5.1 token characters, as Autobahn's _HTTP_FIELD_NAME
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# a field value: VCHAR, obs-text, SP and HTAB (Autobahn's _HTTP_FIELD_VALUE_INVALID's complement)
_VALUE = r"[\t\x20-\x7e\x80-\xff]*"
# The whole block of header lines, each `name:value CRLF`, then the empty line. Autobahn's
# start line may hold no control character at all (HTAB included).
_HEAD = re.compile(rf"([^\x00-\x1f\x7f]*)\r\n((?:{_TOKEN}:{_VALUE}\r\n)*)\r\n")
# One line: its name and its value without the optional whitespace around it (SP / HTAB
# only: str.strip() would take obs-text such as NBSP too, as Autobahn notes).
_LINE = re.compile(rf"({_TOKEN}):[ \t]*({_VALUE}?)[ \t]*\r\n")
_WS_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Pairs = list[tuple[str, str]]


def parse_head(data: bytes) -> tuple[str, Pairs] | None:
    """The start line (stripped of spaces) and the (name, value) pairs of an HTTP head that
    ends with its empty line, or None where Autobahn's parser would refuse it."""
    match = _HEAD.fullmatch(data.decode("iso-8859-1"))
    if match is None:
        return None
    return match.group(1).strip(" "), _LINE.findall(match.group(2))


def header_map(pairs: Pairs) -> tuple[dict[str, str], dict[str, int]]:
    """Lower-cased names to their values (repeats joined with ", ", as Autobahn joins
    them) and how many times each name came."""
    headers: dict[str, str] = {}
    counts: dict[str, int] = {}
    for name, value in pairs:
        key = name.lower()
        if key in headers:
            headers[key] += ", " + value
            counts[key] += 1
        else:
            headers[key] = value
            counts[key] = 1
    return headers, counts


def has_token(value: str | None, token: str) -> bool:
    """Whether a comma-separated header value lists `token` (case-insensitive)."""
    if value is None:
        return False
    return any(part.strip().lower() == token for part in value.split(","))


def valid_key(key: str) -> bool:
    """A Sec-WebSocket-Key as Autobahn takes it: 24 base64 characters ending in '=='."""
    return _WS_KEY.fullmatch(key) is not None


def new_key() -> bytes:
    """A fresh Sec-WebSocket-Key (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16))


def accept_value(key: bytes) -> str:
    """The Sec-WebSocket-Accept a server answers `key` with (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _WS_MAGIC).digest()).decode("ascii")


def encode_head(text: str) -> bytes:
    """A head written as it was read: latin-1, one byte per character, so what a client
    sent as obs-text reaches the backend as the same bytes (RFC 7230); a configured value
    beyond latin-1 has no such byte, and the head then goes as UTF-8, as Autobahn writes."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")
