"""Unit tests of which handshake headers cross the balancer, each way."""

from __future__ import annotations

from typing import Any

from wsbalancer.config import Config
from wsbalancer.wire.headers import (
    backend_request_headers,
    canonical,
    parse_raw_headers,
    pass_back_headers,
    valid_host,
)


def config(**settings: Any) -> Config:
    return Config(backends=(), **settings)


HANDSHAKE = [
    ("Host", "chat.example:8080"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ("Sec-WebSocket-Protocol", "chat.v1, chat.v2"),
    ("Origin", "https://chat.example"),
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    ("Content-Length", "0"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authorization", "Basic c2VjcmV0"),
]


# --- parse_raw_headers ----------------------------------------------------------------------


def test_parse_raw_headers_keeps_order_and_duplicates() -> None:
    head = (
        b"GET /chat?room=1 HTTP/1.1\r\n"
        b"Host: example\r\n"
        b"Cookie: a=1\r\n"
        b"X-Trace:  abc  \r\n"
        b"Cookie: b=2\r\n"
        b"\r\n"
    )
    assert parse_raw_headers(head) == [
        ("Host", "example"),
        ("Cookie", "a=1"),
        ("X-Trace", "abc"),
        ("Cookie", "b=2"),
    ]


def test_parse_raw_headers_unfolds_continuation_lines() -> None:
    head = b"GET / HTTP/1.1\r\nX-Long: first\r\n  second\r\n\tthird\r\nX-Next: n\r\n\r\n"
    assert parse_raw_headers(head) == [("X-Long", "first second third"), ("X-Next", "n")]


def test_parse_raw_headers_skips_lines_without_a_colon_and_keeps_latin1() -> None:
    head = b"GET / HTTP/1.1\r\ngarbage line\r\nX-Name: caf\xe9\r\nX-Url: http://a:1/b\r\n\r\n"
    assert parse_raw_headers(head) == [("X-Name", "caf\u00e9"), ("X-Url", "http://a:1/b")]


def test_parse_raw_headers_ignores_the_request_line() -> None:
    assert parse_raw_headers(b"GET /x:y HTTP/1.1\r\n\r\n") == []


def test_canonical() -> None:
    assert canonical("x-request-id") == "X-Request-Id"
    assert canonical("COOKIE") == "Cookie"


# --- backend_request_headers -------------------------------------------------------------------


def test_handshake_and_hop_by_hop_headers_are_dropped() -> None:
    out = backend_request_headers(
        HANDSHAKE + [("Authorization", "Bearer t"), ("X-Request-Id", "r1")],
        config(),
        peer_host="203.0.113.9",
        client_is_tls=False,
    )
    assert out == {
        "Authorization": "Bearer t",
        "X-Request-Id": "r1",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "chat.example:8080",
    }


def test_block_list_and_reconnect_header_are_dropped() -> None:
    out = backend_request_headers(
        [
            ("X-Debug", "1"),
            ("x-internal-token", "s3cret"),
            ("X-Balancer-Reconnect", "spoofed"),
            ("X-Keep", "yes"),
        ],
        config(block_headers=("x-debug", "x-internal-token")),
        peer_host="10.0.0.1",
        client_is_tls=False,
    )
    assert "X-Debug" not in out and "X-Internal-Token" not in out
    assert "X-Balancer-Reconnect" not in out  # only the balancer may say it is reconnecting
    assert out["X-Keep"] == "yes"


def test_custom_reconnect_header_is_blocked_from_clients() -> None:
    out = backend_request_headers(
        [("X-Again", "1"), ("X-Balancer-Reconnect", "1")],
        config(reconnect_header="X-Again"),
        peer_host="10.0.0.1",
        client_is_tls=False,
    )
    assert "X-Again" not in out
    assert out["X-Balancer-Reconnect"] == "1"


def test_forward_list_limits_what_passes() -> None:
    headers = [("Cookie", "a=1"), ("Authorization", "Bearer t"), ("X-Other", "o")]
    limited = backend_request_headers(
        headers, config(forward_headers=("cookie",)), peer_host="1.2.3.4", client_is_tls=True
    )
    assert limited == {
        "Cookie": "a=1",
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "https",
    }
    everything = backend_request_headers(
        headers, config(forward_headers=("*",)), peer_host="1.2.3.4", client_is_tls=True
    )
    assert {"Cookie", "Authorization", "X-Other"} <= set(everything)


def test_forward_list_never_lets_handshake_headers_through() -> None:
    out = backend_request_headers(
        HANDSHAKE,
        config(forward_headers=("sec-websocket-key", "upgrade", "origin")),
        peer_host="1.2.3.4",
        client_is_tls=False,
    )
    assert set(out) == {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}


def test_duplicate_cookies_join_with_semicolons_and_others_with_commas() -> None:
    out = backend_request_headers(
        [
            ("Cookie", "a=1"),
            ("cookie", "b=2"),
            ("Accept-Language", "en"),
            ("accept-language", "fr"),
        ],
        config(),
        peer_host="1.2.3.4",
        client_is_tls=False,
    )
    assert out["Cookie"] == "a=1; b=2"
    assert out["Accept-Language"] == "en, fr"
    assert "cookie" not in out


def test_untrusted_client_forwarded_headers_are_replaced() -> None:
    out = backend_request_headers(
        [
            ("Host", "public.example"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
        ],
        config(trust_x_forwarded_for=False),
        peer_host="198.51.100.7",
        client_is_tls=False,
    )
    assert out["X-Forwarded-For"] == "198.51.100.7"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "public.example"


def test_trusted_chain_is_appended_to() -> None:
    out = backend_request_headers(
        [
            ("Host", "internal:8080"),
            ("X-Forwarded-For", "203.0.113.1, 10.0.0.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "public.example"),
        ],
        config(trust_x_forwarded_for=True),
        peer_host="10.0.0.3",
        client_is_tls=False,
    )
    assert out["X-Forwarded-For"] == "203.0.113.1, 10.0.0.2, 10.0.0.3"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "public.example"


def test_trusted_chain_split_over_several_header_lines_is_kept_whole() -> None:
    # Repeated header lines are one comma-separated list (RFC 9110 5.3); dropping the first
    # line would lose the original client's address.
    out = backend_request_headers(
        [("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "10.0.0.2")],
        config(trust_x_forwarded_for=True),
        peer_host="10.0.0.3",
        client_is_tls=False,
    )
    assert out["X-Forwarded-For"] == "203.0.113.1, 10.0.0.2, 10.0.0.3"


def test_trusted_without_incoming_chain_starts_one() -> None:
    out = backend_request_headers(
        [], config(trust_x_forwarded_for=True), peer_host="10.0.0.3", client_is_tls=True
    )
    assert out == {"X-Forwarded-For": "10.0.0.3", "X-Forwarded-Proto": "https"}


def test_other_x_forwarded_headers_pass_as_ordinary_headers() -> None:
    out = backend_request_headers(
        [("X-Forwarded-Port", "443")], config(), peer_host="1.2.3.4", client_is_tls=False
    )
    assert out["X-Forwarded-Port"] == "443"


# --- pass_back_headers ------------------------------------------------------------------------


# --- valid_host ---------------------------------------------------------------------------

GOOD_HOSTS = [
    "example.com",
    "Example.COM:8080",
    "127.0.0.1:80",
    "localhost",
    "localhost.",
    "under_score.local:0",
    "xn--bcher-kva.example:65535",
    "a%2Db.example",
    "[::1]",
    "[::1]:8080",
    "[2001:db8::7]:443",
    "[::ffff:192.0.2.1]",
    "[v1.fe80::a+en1]",
]
BAD_HOSTS = [
    "",
    ":80",
    "a b",
    "h\xe9.example",
    "bücher.example",
    "a\tb",
    "a/b",
    "a@b",
    "a?b",
    "a#b",
    "a%2",
    "example.com:",
    "example.com:abc",
    "example.com:65536",
    "example.com:080080",
    "example.com:80:80",
    "example.com:\u0663",
    "::1",
    "[::1",
    "[::1]x",
    "[::1]:",
    "[zz::1]",
    "[fe80::1%eth0]",
    "[]",
]


def test_valid_host_is_rfc_3986_host_and_port() -> None:
    for host in GOOD_HOSTS:
        assert valid_host(host), host
    for host in BAD_HOSTS:
        assert not valid_host(host), host


def test_a_malformed_host_is_not_forwarded_in_x_forwarded_host() -> None:
    out = backend_request_headers([("Host", "a b")], config(), "1.2.3.4", False)
    assert "X-Forwarded-Host" not in out
    out = backend_request_headers([("Host", "[::1]:80")], config(), "1.2.3.4", False)
    assert out["X-Forwarded-Host"] == "[::1]:80"


def test_pass_back_keeps_listed_headers_and_every_set_cookie() -> None:
    out = pass_back_headers(
        [
            ("Set-Cookie", "a=1; Path=/"),
            ("X-Pod", "pod-1"),
            ("set-cookie", "b=2; Path=/"),
            ("X-Internal", "no"),
            ("Server", "backend/1.0"),
        ],
        config(pass_back_headers=("set-cookie", "x-pod")),
    )
    assert out == {"Set-Cookie": ["a=1; Path=/", "b=2; Path=/"], "X-Pod": ["pod-1"]}


def test_pass_back_default_is_set_cookie_only() -> None:
    out = pass_back_headers([("Set-Cookie", "s=1"), ("X-Pod", "p")], config())
    assert out == {"Set-Cookie": ["s=1"]}


def test_pass_back_never_copies_handshake_headers() -> None:
    out = pass_back_headers(
        [
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("Sec-WebSocket-Protocol", "chat.v1"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
        ],
        config(
            pass_back_headers=(
                "sec-websocket-accept",
                "sec-websocket-protocol",
                "upgrade",
                "connection",
            )
        ),
    )
    assert out == {}
