"""Unit: the handshakes' fast path (wire/handshake.py, relay/lean_handshake.py) side by side
with the slow path: Autobahn's `parseHttpHeader` over hostile heads, and the real legs in the
rig run on the fast path and with it off (requests, backend 101s). Same input, same outcome."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer
from autobahn.websocket.protocol import WebSocketServerProtocol as Autobahn
from autobahn.websocket.protocol import parseHttpHeader
from autobahn.websocket.types import ConnectingRequest
from twisted.internet.protocol import Protocol

import wsbalancer.relay.protocols as protocols
from wsbalancer.relay.lean_handshake import LeanClientHandshake, LeanServerHandshake
from wsbalancer.relay.protocols import BackendProtocol
from wsbalancer.upstream.dialer import BackendDial
from wsbalancer.wire.handshake import accept_value, header_map, parse_head
from wsbalancer.wire.lean import bake_options

from .helpers import frame
from .rig import LISTEN

pytestmark = pytest.mark.timeout(20)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
START = b"GET /chat HTTP/1.1\r\n"
H = START + b"Host: example.com\r\n"  # a head's start, more lines follow

# --- 1. parse_head + header_map against parseHttpHeader ------------------------------------


def family(name: str, make: Any, values: list[Any]) -> dict[str, bytes]:
    """One case per value, each named by the value's repr."""
    return {f"{name} {value!r}": make(value) for value in values}


# fmt: off
HEADS = {
    "no headers": b"GET / HTTP/1.1\r\n\r\n",
    "empty start line": b"\r\n\r\n",
    "spaces around start line": b"  GET / HTTP/1.1   \r\n\r\n",
    "response": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "NEL ends status line": b"HTTP/1.1 101\x85\r\n\r\n",
    "HTAB in start line": b"GET\t/ HTTP/1.1\r\n\r\n",
    "bare LF ends start line": b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    "bare LF between lines": H + b"X-A: 1\nX-B: 2\r\n\r\n",
    "CR CR LF": H + b"X-A: 1\r\r\n\r\n",
    "LF CR LF": H + b"X-A: 1\n\r\n\r\n",
    "empty line inside": H + b"\r\nX-A: b\r\n\r\n",
    "obs-fold SP": H + b"X-A: 1\r\n 2\r\n\r\n",
    "obs-fold HTAB": H + b"X-A: 1\r\n\t2\r\n\r\n",
    "obs-fold first line": START + b" Host: x\r\n\r\n",
    "SP before colon": START + b"Host : x\r\n\r\n",
    "HTAB before colon": START + b"Host\t: x\r\n\r\n",
    "no colon": H + b"X-A b\r\n\r\n",
    "empty name": H + b": b\r\n\r\n",
    "every token character": H + b"!#$%&'*+-.^_`|~09azAZ: x\r\n\r\n",
    "Host twice": H + b"Host: other.example\r\n\r\n",
    "key twice, two cases": H + b"Sec-WebSocket-Key: " + KEY + b"\r\nSEC-WEBSOCKET-KEY: x\r\n\r\n",
    "one name thrice": H + b"X-A: 1\r\nx-a: 2\r\nX-a: 3\r\n\r\n",
    "repeat of an empty value": H + b"X-A:\r\nX-A: b\r\n\r\n",
    "long value": H + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    "long name": H + b"X" * 20000 + b": v\r\n\r\n",
    "long start line": b"GET /" + b"p" * 50000 + b" HTTP/1.1\r\n\r\n",
    "many headers": H + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(500)) + b"\r\n",
    **family("start line", lambda c: b"GET /" + c + b" HTTP/1.1\r\n\r\n", [
        b"\x00", b"\r", b"\n", b"\x0c", b"\x1f", b"\x7f", b"caf\xe9", b"a\x85b", b"\xa0x", b"\xff",
    ]),
    **family("name", lambda c: H + b"X" + c + b"A: b\r\n\r\n", [
        b"\x00", b"\x7f", b"(", b" ", b'"', b"{", b"/", b"@", b"\xe9", b"\xa0", b"\t",
    ]),
    **family("value", lambda v: H + b"X-A:" + v + b"\r\n\r\n", [
        b" a\x00b", b" \x01", b" a\x0bb", b" a\x1f", b" a\x7f", b" a\rb", b" a\nb", b" a\tb",
        b" b", b"v", b" caf\xe9 \x80\xff", b" a\x85b", b" a\xa0b", b" v \t ", b"\t \tv",
        b" v\xa0", b"\xa0v", b" \xa0 v \xa0 ", b" v\x85", b"\x85", b"", b" \t ", b" a:b::c:",
    ]),
}
# fmt: on


def _autobahn(data: bytes) -> Any:
    try:
        return parseHttpHeader(data)
    except ValueError:
        return None


def _lean(data: bytes) -> Any:
    parsed = parse_head(data)
    return None if parsed is None else (parsed[0], *header_map(parsed[1]))


@pytest.mark.parametrize("head", list(HEADS.values()), ids=list(HEADS))
def test_parse_head_accepts_and_reads_exactly_what_autobahn_does(head: bytes) -> None:
    assert _lean(head) == _autobahn(head)
    parsed = parse_head(head)
    if parsed is not None:  # the pairs are the lines, in order, names as sent
        lines = head.decode("latin-1").split("\r\n")[1:-2]
        assert [name for name, _ in parsed[1]] == [line.partition(":")[0] for line in lines]


def test_parse_head_keeps_order_case_and_repeats() -> None:
    verdicts = [_autobahn(head) is None for head in HEADS.values()]
    assert verdicts.count(True) >= 35 and verdicts.count(False) >= 25  # the corpus has both
    head = START + b"X-B: 2\r\nhost: h\r\nX-a:\t1 \r\nX-B: 3\xa0\r\n\r\n"
    pairs = [("X-B", "2"), ("host", "h"), ("X-a", "1"), ("X-B", "3\xa0")]
    assert parse_head(head) == ("GET /chat HTTP/1.1", pairs)
    counts = {"x-b": 2, "host": 1, "x-a": 1}
    assert header_map(pairs) == ({"x-b": "2, 3\xa0", "host": "h", "x-a": "1"}, counts)


def test_parse_head_matches_autobahn_on_random_mutations() -> None:
    rng = random.Random(2034)
    pieces = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"a", b"K", b"-", b"(", b"\x00"]
    pieces += [b"\x0b", b"\x1f", b"\x7f", b"\x85", b"\xa0", b"\xff", b"/"]
    for _ in range(4000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        head = rng.choice([START, H, b"", b"HTTP/1.1 101 x\r\n"]) + body + b"\r\n\r\n"
        assert _lean(head) == _autobahn(head), head


# --- 2. client requests: fast path and slow path, the same answers ------------------------


def upgrade(*extra: bytes, target: bytes = b"/echo", start: bytes | None = None, **h: Any) -> bytes:
    """A client's upgrade request; a header given as None is left out."""
    fields = {"Host": b"example.com", "Upgrade": b"websocket", "Connection": b"Upgrade"}
    fields |= {"Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": b"13"}
    fields |= {name.replace("_", "-"): value for name, value in h.items()}
    lines = [start or b"GET " + target + b" HTTP/1.1"]
    lines += [f"{n}: ".encode() + v for n, v in fields.items() if v is not None]
    return b"\r\n".join([*lines, *extra]) + b"\r\n\r\n"


DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate"
GOOD = {  # each must be opened on the fast path
    "minimal": upgrade(),
    "subprotocols": upgrade(b"Sec-WebSocket-Protocol: v2, v1"),
    "query": upgrade(target=b"/echo?x=1&y=%20z&x=2"),
    "percent path": upgrade(target=b"/echo/%7Euser/a:b"),
    "origin": upgrade(b"Origin: https://app.example"),
    "deflate offer": upgrade(DEFLATE + b"; client_max_window_bits"),
    "token lists": upgrade(Upgrade=b"h2c, WebSocket", Connection=b"keep-alive, UPGRADE"),
    "latin-1 value": upgrade(b"X-Custom: caf\xe9 \xff"),
    "NBSP inside value": upgrade(b"X-Custom: a\xa0b"),
    "trailing NBSP value": upgrade(b"X-Custom: v\xa0"),
    "leading NEL value": upgrade(b"X-Custom: \x85v"),
    "OWS around values": upgrade(b"X-Custom:\t v \t", Sec_WebSocket_Key=b" " + KEY + b"\t"),
    "host with port": upgrade(Host=b"Example.COM:8080"),
    "IPv6 host with port": upgrade(Host=b"[::1]:8080"),
    "IPv6 host": upgrade(Host=b"[2001:db8::7]"),
    "repeated headers": upgrade(b"X-A: 1", b"x-a: 2", b"Cookie: a=1", b"Cookie: b=2"),
    "user agent and xff": upgrade(b"User-Agent: t/1", b"X-Forwarded-For: 6.6.6.6"),
    "lower-case names": upgrade().replace(b"Sec-WebSocket-", b"sec-websocket-"),
    "frame in the same read": upgrade() + frame(0x1, b"hi"),
}
# fmt: off
BAD = {  # each is the slow path's to answer
    **family("start line", lambda v: upgrade(start=v), [
        b"POST /echo HTTP/1.1", b"GET /echo HTTP/1.0", b"GET /echo HTTP/2.0",
        b"GET  /echo HTTP/1.1", b"get /echo HTTP/1.1", b"GET /echo HTTP/1.1 x",
    ]),
    **family("target", lambda v: upgrade(target=v), [
        b"/echo#frag", b"/echo;p=1", b"http://example.com/echo", b"//evil.example/echo", b"*",
        b"/echo\xa0x", b"/caf\xe9", b"/echo\x85",
    ]),
    **family("Host", lambda v: upgrade(Host=v), [
        None, b"a b", b"h\xe9.example", b"example.com:abc", b"example.com:99999", b"",
        b"example.com\xa0", b"::1", b"[::1", b"example.com:+80", b"a@b",
    ]),
    **family("Upgrade", lambda v: upgrade(Upgrade=v), [None, b"h2c", b"websocket2", b"web socket"]),
    **family("Connection", lambda v: upgrade(Connection=v), [None, b"keep-alive", b"upgradex"]),
    **family("version", lambda v: upgrade(Sec_WebSocket_Version=v), [
        None, b"8", b"13\xa0", b"013", b"13, 8", b"+13",
    ]),
    **family("key", lambda v: upgrade(Sec_WebSocket_Key=v), [
        None, KEY[1:], b"A" + KEY, KEY[:-2] + b"AA", b"!" + KEY[1:], b"-_" + KEY[2:],
        KEY + b"\xa0", KEY[:-1] + b" =",
    ]),
    **family("lines", lambda v: upgrade(*v), [
        (b"Host: example.com",), (b"Sec-WebSocket-Version: 13",), (b"Sec-WebSocket-Key: " + KEY,),
        (b"Sec-WebSocket-Protocol: v1, v2, v1",), (DEFLATE, DEFLATE), (b"Origin: not a url",),
        (b"Origin: http://a.example:99999",), (b"Origin: null",), (b"Origin: x:",),
        (b"Origin: http://a.example", b"Origin: http://a.example"), (b"X-A: 1", b" 2"),
        (b"X-A: 1\nX-B: 2",), (b"X-A: \x00",), (b"X-A : 1",),
    ]),
}
ODD = {  # either path may take these, only the outcome must agree (offers: refused at the 101)
    **family("offer", lambda v: upgrade(DEFLATE + v), [
        b"; server_max_window_bits=7", b"; foo=1", b"; client_max_window_bits=16",
        b"; server_max_window_bits", b"; x=1, permessage-deflate", b", x-webkit-deflate-frame",
    ]),
    "empty subprotocol": upgrade(b"Sec-WebSocket-Protocol: v1,,v2"),
    "Upgrade twice": upgrade(b"Upgrade: h2c"),
}
# fmt: on
_KEY_LINE = re.compile(rb"(Sec-WebSocket-Key: )[A-Za-z0-9+/]{22}==")


class Raw(Protocol):
    """A peer that writes `data` when connected and keeps all it gets."""

    def __init__(self, data: bytes = b"") -> None:
        self.data, self.got = data, bytearray()

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.got += data


def spy(mp: pytest.MonkeyPatch, owner: Any, name: str, log: list) -> None:
    """Patch `owner.name` to note in `log` what each call returns."""
    real = getattr(owner, name)

    def noted(*args: Any) -> Any:
        log.append(real(*args))
        return log[-1]

    mp.setattr(owner, name, noted)


def serve(rig: Any, request: bytes, fast: bool, **settings: str) -> tuple[dict[str, Any], list]:
    """What client and backend saw of `request`, and what open_request returned."""
    taken: list[bool] = []
    with pytest.MonkeyPatch.context() as mp:
        spy(mp, LeanServerHandshake, "open_request", taken)
        if not fast:  # Autobahn's own reading of the request, and its own 101
            mp.setattr(protocols, "read_request", lambda leg, head: None)
            mp.setattr(LeanServerHandshake, "succeedHandshake", Autobahn.succeedHandshake, False)
        r = rig(("b1",), **settings)
        pipe = r.net.connect(Raw(request), r.factory.buildProtocol(None), LISTEN)
        r.net.pump()
    backend = r.backends["b1"]
    seen = {
        "answer": bytes(pipe.sent_to_client),
        "requests": [  # what the backend's Autobahn read (its random key aside)
            (q.path, q.params, q.protocols, q.extensions, q.origin, q.host)
            + tuple((k, v) for k, v in q.headers.items() if k != "sec-websocket-key")
            for q in backend.handshakes
        ],
        "raw": [_KEY_LINE.sub(rb"\1<key>", p.http_request_data) for p in backend.peers],
        "received": backend.received,
        "sessions": len(r.balancer.sessions),
        "dropped": pipe.server.disconnecting,
    }
    return seen, taken


CASES = {f"{kind}: {k}": (kind, v) for kind, d in [("good", GOOD), ("bad", BAD), ("odd", ODD)]
         for k, v in d.items()}  # fmt: skip


@pytest.mark.parametrize(("kind", "data"), CASES.values(), ids=list(CASES))
def test_a_client_request_gets_the_same_answer_on_both_paths(
    rig: Any, kind: str, data: bytes
) -> None:
    fast, taken = serve(rig, data, fast=True)
    slow, none = serve(rig, data, fast=False)
    assert none == []
    assert fast == slow
    if kind == "good":
        assert taken == [True] and fast["answer"].startswith(b"HTTP/1.1 101 ")
        assert fast["sessions"] == 1 and len(fast["raw"]) == 1
        framed = data is GOOD["frame in the same read"]  # relayed, and its answer came back
        assert fast["received"] == ([b"hi"] if framed else [])
        assert fast["answer"].endswith(b"\x81\x05hi:b1") == framed
        for value in re.findall(rb"\r\nX-Custom:[ \t]*(.*?)[ \t]*\r\n", data):  # as they came,
            assert b"\r\nX-Custom: " + value + b"\r\n" in fast["raw"][0]  # obs-text and all
    elif kind == "bad":
        assert True not in taken  # the fast path opened none of them


APP = ["*://app.example:*"]
OPTS = {  # leg options, factory attributes, the Origin sent, the statuses by Host
    "allowed origin": ({"allowedOrigins": APP}, {}, b"https://app.example", [101, 101, 101]),
    "refused origin": ({"allowedOrigins": APP}, {}, b"https://evil.example", [400] * 3),
    "null allowed": ({"allowNullOrigin": True}, {}, b"null", [101, 101, 101]),
    "file origin allowed": ({"allowNullOrigin": True}, {}, b"file:///x", [101, 101, 101]),
    "external port": ({}, {"externalPort": 443}, b"https://app.example", [101, 101, 400]),
}


HOSTS = (b"example.com", b"example.com:443", b"example.com:80")


@pytest.mark.parametrize("at", range(3), ids=[host.decode() for host in HOSTS])
@pytest.mark.parametrize(("opts", "attrs", "origin", "codes"), OPTS.values(), ids=list(OPTS))
def test_origin_options_give_the_same_answer_on_both_paths(
    rig: Any, opts: dict, attrs: dict, origin: bytes, codes: list[int], at: int
) -> None:
    def with_options(names: tuple[str, ...]) -> Any:
        r = rig(names)
        r.factory.setProtocolOptions(**opts)
        r.factory.__dict__.update(attrs)
        r.factory.protocol = bake_options(protocols.FrontendProtocol, r.factory)
        return r

    request = upgrade(b"Origin: " + origin, Host=HOSTS[at])
    fast, taken = serve(with_options, request, True)
    assert fast == serve(with_options, request, False)[0]
    assert fast["answer"].startswith(b"HTTP/1.1 %d " % codes[at])
    assert taken == [codes[at] == 101 and not attrs]  # the fast path opened what it could


def test_two_upgrade_lines_with_plain_http_on_get_the_same_answer(rig: Any) -> None:
    fast, _ = serve(rig, ODD["Upgrade twice"], fast=True, http__enabled="true")
    assert fast == serve(rig, ODD["Upgrade twice"], fast=False, http__enabled="true")[0]


# --- 3. the backend's 101: fast path and slow path, the same verdicts ---------------------


class RawBackend(Raw):
    """A backend answering the upgrade request with `answer` ({accept}: the right value)."""

    def __init__(self, answer: bytes, requests: list[bytes]) -> None:
        super().__init__()
        self.answer, self.requests = answer, requests

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        head, end, _ = bytes(self.got).partition(b"\r\n\r\n")
        if end and self.answer:  # once, the request's head all here
            self.requests.append(head + end)
            accept = accept_value(re.findall(rb"\r\nSec-WebSocket-Key: (\S+)", head)[0])
            answer, self.answer = self.answer.replace(b"{accept}", accept.encode()), b""
            self.transport.write(answer)  # type: ignore[union-attr]


def switching(*extra: bytes, status: bytes = b"101 OK", eol: bytes = b"\r\n", **h: Any) -> bytes:
    """A backend's answer; a header given as None is left out ({accept}: the right value)."""
    fields = dict(Upgrade=b"websocket", Connection=b"Upgrade", Sec_WebSocket_Accept=b"{accept}")
    pairs = [(n.replace("_", "-"), v) for n, v in (fields | h).items() if v]
    lines = [b"HTTP/1.1 " + status, *(f"{n}: ".encode() + v for n, v in pairs)]
    return eol.join([*lines, *extra]) + b"\r\n\r\n"


PMD = b"Sec-WebSocket-Extensions: permessage-deflate"
# fmt: off
ANSWERS = {
    "wrong accept": switching(Sec_WebSocket_Accept=b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    "no accept": switching(Sec_WebSocket_Accept=None),
    "two accepts": switching(b"Sec-WebSocket-Accept: {accept}"),
    "no Upgrade": switching(Upgrade=None),
    "Upgrade h2c": switching(Upgrade=b"h2c"),
    "Upgrade list": switching(Upgrade=b"websocket, x"),
    "no Connection": switching(Connection=None),
    "Connection close": switching(Connection=b"close"),
    "unoffered subprotocol": switching(b"Sec-WebSocket-Protocol: v9"),
    "two subprotocols": switching(b"Sec-WebSocket-Protocol: v1", b"Sec-WebSocket-Protocol: v1"),
    "unoffered extension": switching(b"Sec-WebSocket-Extensions: x-foo"),
    "deflate bad bits": switching(PMD + b"; server_max_window_bits=7"),
    "deflate unknown param": switching(PMD + b"; foo=1"),
    "deflate twice": switching(PMD + b", permessage-deflate"),
    "two Extensions": switching(PMD, PMD),
    "HTTP/1.0 101": switching().replace(b"HTTP/1.1", b"HTTP/1.0"),
    "101 with NBSP": switching(status=b"101\xa0Switching"),
    **family("status", lambda v: b"HTTP/1.1 " + v + b"\r\n\r\n", [
        b"200 OK\r\nContent-Length: 0", b"302 Found\r\nLocation: /x", b"403 Forbidden",
        b"500 Internal Server Error", b"503 Service Unavailable\r\nRetry-After: 1",
    ]),
    "bare LF": switching(eol=b"\n"),
    "obs-fold": switching(b"X-A: 1", b" 2"),
    "subprotocol, none offered": switching(b"Sec-WebSocket-Protocol: v1"),  # to upgrade()
}
GOOD_ANSWERS = {
    "plain": (switching(), None),
    "subprotocol": (switching(b"Sec-WebSocket-Protocol: v1"), "v1"),
    "empty subprotocol": (switching(b"Sec-WebSocket-Protocol: "), None),
    "deflate": (switching(PMD + b"; client_max_window_bits=12"), None),
    "cookies": (switching(b"Set-Cookie: a=1", b"set-cookie: b=2"), None),
    "latin-1 cookie": (switching(b"Set-Cookie: b=caf\xe9"), None),
    "UTF-8 NBSP cookie": (switching(b"Set-Cookie: b=2\xc2\xa0"), None),
    "frame in the same read": (switching() + b"\x81\x05hello", None),
}
# fmt: on


def dial(rig: Any, answer: bytes, fast: bool, client: bytes) -> tuple[dict[str, Any], list]:
    """The client's view and the dial's errors when the backend answers `answer`."""
    taken: list[bool] = []
    errors: list[tuple[str, Any, str]] = []
    failed = BackendDial.failed
    with pytest.MonkeyPatch.context() as mp:
        if fast:
            spy(mp, LeanClientHandshake, "_take_response", taken)
        else:
            mp.setattr(LeanClientHandshake, "_take_response", lambda leg, head, end: False)

        def record(d: Any, error: Exception) -> None:
            reason = getattr(error, "reason", str(error))
            errors.append((type(error).__name__, getattr(error, "status", None), reason))
            failed(d, error)

        mp.setattr(BackendDial, "failed", record)
        r = rig(("b1",), compression__backend="mirror")
        requests: list[bytes] = []
        r.net.listen("10.0.0.1", 9000, lambda: RawBackend(answer, requests))
        pipe = r.net.connect(Raw(client), r.factory.buildProtocol(None), LISTEN)
        crash = None
        try:
            r.net.pump()
        except Exception as e:  # what Twisted would log before dropping the connection
            crash = f"{type(e).__name__}: {e}"
    seen = {
        "crash": crash,
        "answer": bytes(pipe.sent_to_client),
        "errors": [
            (n, s, re.sub(r"[A-Za-z0-9+/]{27}=", "<accept>", reason)) for n, s, reason in errors
        ],
        "dials": len(requests),
        "sessions": [
            (s.subprotocol, s.backend_id, s.msgs_out) for s in r.balancer.sessions.values()
        ],
    }
    return seen, taken


CLIENT = upgrade(b"Sec-WebSocket-Protocol: v1, v2", DEFLATE)


@pytest.mark.parametrize(("name", "answer"), ANSWERS.items(), ids=list(ANSWERS))
def test_a_bad_101_fails_the_dial_alike_on_both_paths(rig: Any, name: str, answer: bytes) -> None:
    client = upgrade() if name.endswith("none offered") else CLIENT
    fast, taken = dial(rig, answer, True, client)
    slow, _ = dial(rig, answer, False, client)
    assert fast == slow
    assert taken and True not in taken  # the fast path left every one to Autobahn
    assert fast["sessions"] == [] and (fast["errors"] or fast["crash"])
    assert not fast["answer"].startswith(b"HTTP/1.1 101")


NOT_UTF8 = "handshake response with bytes that are not UTF-8"


@pytest.mark.parametrize(("answer", "subprotocol"), GOOD_ANSWERS.values(), ids=list(GOOD_ANSWERS))
def test_a_good_101_opens_the_session_on_the_fast_path(
    rig: Any, answer: bytes, subprotocol: str | None
) -> None:
    fast, taken = dial(rig, answer, True, CLIENT)
    slow, _ = dial(rig, answer, False, CLIENT)
    if b"\xe9" in answer:
        # Autobahn cannot read a head that is not UTF-8 (it decodes it for a debug line
        # first): the slow path refuses it as a bad handshake; the fast path passes the
        # latin-1 byte on as it came.
        assert slow["errors"] == [("BackendHandshakeError", None, NOT_UTF8)]
        assert b"Set-Cookie: b=caf\xe9\r\n" in fast["answer"]
    else:
        assert fast == slow
    assert taken == [True] and fast["errors"] == [] and fast["crash"] is None
    framed = answer.endswith(b"hello")  # a first frame in the 101's read is relayed
    assert fast["sessions"] == [(subprotocol, "b1", int(framed))]
    head, _, rest = fast["answer"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and bool(rest) == framed  # (deflated for it)


# --- 4. the backend request, as Autobahn writes it ----------------------------------------


# fmt: off
REQUEST_FIELDS = {  # the dial's factory fields, and bytes the request must hold
    "bare": ({"useragent": None, "headers": {}, "origin": None, "protocols": []}, [b"GET / "]),
    "everything": ({
        "resource": "/app/echo?x=1", "useragent": "client/1.0", "origin": "https://app.example",
        "headers": {"X-Forwarded-For": "203.0.113.7", "Cookie": "a=1; b=2"},
        "protocols": ["v1", "v2"],
        "offers": [PerMessageDeflateOffer(), PerMessageDeflateOffer(request_max_window_bits=12)],
    }, [b"Origin: https://app.example\r\nSec-WebSocket-Protocol: v1,v2\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; "
        b"client_max_window_bits,permessage-deflate; "]),
    "latin-1": ({"resource": "/caf\xe9", "headers": {"X-L": "caf\xe9 \x85\xff"}},
                [b"GET /caf\xe9 HTTP/1.1\r\n", b"X-L: caf\xe9 \x85\xff"]),
    "beyond latin-1": ({"headers": {"X-C": "\u20ac", "X-L": "\xe9"}},
                       [b"X-C: \xe2\x82\xac\r\nX-L: \xc3\xa9"]),
}
# fmt: on


@pytest.mark.parametrize(("fields", "holds"), REQUEST_FIELDS.values(), ids=list(REQUEST_FIELDS))
def test_write_request_writes_what_autobahn_writes(fields: dict[str, Any], holds: list) -> None:
    factory: Any = WebSocketClientFactory("ws://10.0.0.1:9000")
    factory.protocol = BackendProtocol
    factory.__dict__.update(fields)
    leg: Any = factory.buildProtocol(None)
    sent: list[bytes] = []
    leg.sendData = lambda data, sync=False, chopsize=None: sent.append(data)
    leg.version, leg.perMessageCompressionOffers = factory.version, fields.get("offers", [])
    leg.write_request()
    (ours,) = sent
    key = leg.websocket_key
    assert leg.http_request_data == ours and re.fullmatch(rb"[A-Za-z0-9+/]{22}==", key)
    names = ("host", "port", "resource", "headers", "useragent", "origin", "protocols")
    options = ConnectingRequest(*(getattr(factory, name) for name in names))
    WebSocketClientProtocol._actuallyStartHandshake(leg, options)  # Autobahn's own, as UTF-8
    theirs = sent[1].replace(leg.websocket_key, key)
    try:  # what the backend leg always sent: latin-1 where it can, else all of it as UTF-8
        theirs = theirs.decode("utf-8").encode("latin-1")
    except UnicodeEncodeError:
        pass
    assert ours == theirs and all(part in ours for part in holds)
