"""Which handshake headers cross the balancer, in each direction. Pure functions."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable

from wsbalancer.config import HANDSHAKE_HEADERS, PoolConfig

# The backend leg's client writes these itself on every request.
_WRITTEN_BY_BACKEND_LEG = frozenset({"pragma", "cache-control"})

# RFC 3986 3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ) (an IPv4 address is
# one too); IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ).
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_IP_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")


_OWS = " \t"


def parse_raw_headers(head: bytes) -> list[tuple[str, str]]:
    """(name, value) pairs in order, duplicates kept, from a raw HTTP head."""
    lines = head.decode("iso-8859-1").split("\r\n")[1:]
    pairs: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        if line[0] in " \t" and pairs:  # obsolete line folding
            name, value = pairs[-1]
            pairs[-1] = (name, f"{value} {line.strip(_OWS)}")
            continue
        name, sep, value = line.partition(":")
        if sep:
            # Only SP and HTAB are whitespace around a value (RFC 9110 5.6.3, OWS): obs-text
            # such as NBSP is the value's own and is forwarded as it came.
            pairs.append((name.strip(_OWS), value.strip(_OWS)))
    return pairs


def valid_host(value: str) -> bool:
    """Whether a Host header value is RFC 3986 `host [":" port]`: a non-empty reg-name or
    IPv4 address, or an IPv6 (or IPvFuture) literal in brackets, and a port of 0-65535.
    Every Host a browser sends passes (IDNs arrive as punycode); spaces, bytes beyond
    ASCII, '/', '@' and other delimiters do not."""
    if value.startswith("["):
        end = value.find("]")
        literal, rest = value[1:end], value[end + 1 :]
        if end < 0 or not (_ipv6(literal) or _IP_FUTURE.fullmatch(literal)):
            return False
        if not rest:
            return True
        if rest[0] != ":":
            return False
        port = rest[1:]
    else:
        name, colon, port = value.partition(":")
        if not _REG_NAME.fullmatch(name):
            return False
        if not colon:
            return True
    return port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535


def _ipv6(text: str) -> bool:
    if "%" in text:  # a zone (RFC 6874): browsers do not send one, and Python's is looser
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def canonical(name: str) -> str:
    """`x-request-id` -> `X-Request-Id`."""
    return "-".join(part.capitalize() for part in name.split("-"))


def backend_request_headers(
    client_headers: Iterable[tuple[str, str]],
    config: PoolConfig,
    peer_host: str,
    client_is_tls: bool,
    dropped: Collection[str] = HANDSHAKE_HEADERS | _WRITTEN_BY_BACKEND_LEG,
    always: Collection[str] = (),
) -> dict[str, str]:
    """The extra headers of the backend leg's handshake request (or, with another `dropped`
    set, of a proxied plain-HTTP request).

    The client's own headers pass unless they are `dropped`, blocked or not in the forward
    list (those in `always` need not be in it); X-Forwarded-For gets the client's address
    (appended to the incoming chain only when that chain is trusted), X-Forwarded-Proto and
    -Host are set.
    """
    forward_all = "*" in config.forward_headers
    allowed = set(config.forward_headers)
    blocked = set(config.block_headers) | {config.reconnect_header.lower()}
    merged: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    incoming: dict[str, str] = {}
    for name, value in client_headers:
        lname = name.lower()
        if lname.startswith("x-forwarded-") or lname == "host":
            # A chain split over several header lines is one chain.
            incoming[lname] = f"{incoming[lname]}, {value}" if lname in incoming else value
        if lname in dropped or lname in blocked:
            continue
        if not forward_all and lname not in allowed and lname not in always:
            continue
        names.setdefault(lname, canonical(name))
        merged.setdefault(lname, []).append(value)
    out = {names[k]: ("; " if k == "cookie" else ", ").join(v) for k, v in merged.items()}
    chain = incoming.get("x-forwarded-for") if config.trust_x_forwarded_for else None
    out["X-Forwarded-For"] = f"{chain}, {peer_host}" if chain else peer_host
    proto = incoming.get("x-forwarded-proto") if config.trust_x_forwarded_for else None
    out["X-Forwarded-Proto"] = proto or ("https" if client_is_tls else "http")
    host = incoming.get("x-forwarded-host") if config.trust_x_forwarded_for else None
    if not host and valid_host(incoming.get("host", "")):
        host = incoming["host"]  # (a malformed one was refused 400 at the WebSocket port)
    if host:
        out["X-Forwarded-Host"] = host
    return out


def pass_back_headers(
    backend_headers: Iterable[tuple[str, str]], config: PoolConfig
) -> dict[str, list[str]]:
    """Headers of the backend's 101 that go back to the client (e.g. Set-Cookie)."""
    wanted = set(config.pass_back_headers)
    out: dict[str, list[str]] = {}
    for name, value in backend_headers:
        lname = name.lower()
        if lname in wanted and lname not in HANDSHAKE_HEADERS:
            out.setdefault(canonical(name), []).append(value)
    return out
