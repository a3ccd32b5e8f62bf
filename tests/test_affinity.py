"""Unit tests: affinity (signed cookies, bounded-load hashing, pins), routes and pool config.

Plain Python with a `Clock`; no sockets."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from wsbalancer.config import BackendConfig, ConfigError, Route, load
from wsbalancer.upstream.affinity import Affinity, cookie_value, strip_cookie
from wsbalancer.upstream.pool import BackendPool
from wsbalancer.upstream.routing import Router


def _config(tmp_path: Path, text: str) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load(str(path), environ={})


def _pool(clock: Clock, n: int = 3) -> BackendPool:
    backends = [BackendConfig(f"b{i}", f"ws://h{i}:1", None) for i in range(1, n + 1)]
    return BackendPool(backends, seconds=clock.seconds, rng=random.Random(7))


def _affinity(clock: Clock, **settings: str) -> Affinity:
    overrides = [(f"affinity.{k}", v, "test") for k, v in {"mode": "cookie", **settings}.items()]
    config = load(None, environ={}, overrides=overrides, backends=["ws://h1:1"])
    return Affinity(config, b"secret", clock.seconds)


def test_cookie_signature_holds_only_for_what_was_signed() -> None:
    clock = Clock()
    affinity = _affinity(clock)
    value = affinity.sign("b2", "nonce1")
    assert affinity.verify(value) == ("b2", "nonce1")
    name, nonce, mac = value.split(".")
    other = affinity.sign("b1", "nonce1").split(".")[0]
    assert affinity.verify(f"{other}.{nonce}.{mac}") is None  # pointed at another backend
    assert affinity.verify(f"{name}.nonce2.{mac}") is None
    assert affinity.verify(f"{name}.{nonce}.{mac[:-1]}x") is None
    assert affinity.verify("") is None and affinity.verify("a.b") is None
    assert Affinity(affinity_config(), b"other-key", clock.seconds).verify(value) is None


def affinity_config() -> object:
    return load(
        None, environ={}, overrides=[("affinity.mode", "cookie", "t")], backends=["ws://x:1"]
    )


def test_cookie_attributes() -> None:
    clock = Clock()
    plain = _affinity(clock).set_cookie("b1", "n", secure=False)
    assert plain.startswith("wsb_backend=") and "; Path=/; HttpOnly; SameSite=Lax" in plain
    assert "Secure" not in plain and "Max-Age" not in plain
    assert _affinity(clock).set_cookie("b1", "n", secure=True).endswith("; Secure")
    strict = _affinity(clock, samesite="strict", max_age="1h", cookie="SRV")
    text = strict.set_cookie("b1", "n", secure=False)
    assert text.startswith("SRV=") and "SameSite=Strict" in text and "Max-Age=3600" in text
    # browsers drop SameSite=None cookies without Secure
    assert "Secure" in _affinity(clock, samesite="none").set_cookie("b1", "n", secure=False)


def test_cookie_placement_honours_only_usable_backends() -> None:
    clock = Clock()
    pool = _pool(clock)
    affinity = _affinity(clock)
    cookie = f"other=1; wsb_backend={affinity.sign('b2', 'n1')}"
    placed = affinity.place(pool, {"cookie": cookie}, "/", "10.0.0.1")
    assert placed.backend is pool.backends["b2"] and placed.nonce == "n1"
    pool.backends["b2"].draining = True
    placed = affinity.place(pool, {"cookie": cookie}, "/", "10.0.0.1")
    assert placed.backend is None and placed.pinned_id == "b2" and not placed.forged
    pool.backends["b2"].draining = False
    pool.backends["b2"].health = "down"
    assert affinity.place(pool, {"cookie": cookie}, "/", "p").backend is None
    gone = f"wsb_backend={affinity.sign('b9', 'n1')}"
    assert affinity.place(pool, {"cookie": gone}, "/", "p").backend is None
    forged = affinity.place(pool, {"cookie": "wsb_backend=YjI.n1.AAAA"}, "/", "p")
    assert forged.backend is None and forged.forged
    assert affinity.place(pool, {}, "/", "p").backend is None


def test_pins_count_until_the_websocket_opens_or_they_go_idle() -> None:
    clock = Clock()
    pool = _pool(clock)
    affinity = _affinity(clock, pin_idle="30s")
    b1, b2 = pool.backends["b1"], pool.backends["b2"]
    affinity.touch("n1", b1)
    affinity.touch("n1", b1)  # the same session polling again: still one
    affinity.touch("n2", b1)
    assert b1.pinned == 2 and pool.load(b1) == 2
    assert pool.pick() is not b1  # pinned sessions count in least-loaded
    affinity.release("n1")
    assert b1.pinned == 1
    affinity.touch("n2", b2)  # re-pinned elsewhere: moves
    assert (b1.pinned, b2.pinned) == (0, 1)
    clock.advance(29)
    affinity.touch("n3", b1)
    clock.advance(2)
    affinity.expire(clock.seconds())
    assert (b1.pinned, b2.pinned) == (1, 0)  # n2 idle for 31s is gone, n3 is not
    affinity.release_all()
    assert b1.pinned == 0


def test_hashing_is_stable_spreads_and_respects_the_load_bound() -> None:
    clock = Clock()
    pool = _pool(clock)
    config = load(
        None,
        environ={},
        overrides=[("affinity.mode", "header", "t"), ("affinity.key", "X-User", "t")],
        backends=["ws://x:1"],
    )
    affinity = Affinity(config, b"", clock.seconds)
    picks = {
        f"user{i}": affinity.place(pool, {"x-user": f"user{i}"}, "/", "p").backend
        for i in range(300)
    }
    assert all(b is not None for b in picks.values())
    assert picks["user1"] is affinity.place(pool, {"x-user": "user1"}, "/", "p").backend
    spread = Counter(b.id for b in picks.values() if b is not None)
    assert min(spread.values()) > 60, spread  # roughly a third each
    home = picks["user1"]
    assert home is not None
    home.local_sessions = 10  # far over 1.25 x the mean: the next one round the ring
    moved = affinity.place(pool, {"x-user": "user1"}, "/", "p").backend
    assert moved is not None and moved is not home
    home.local_sessions = 0
    home.enabled = False
    assert affinity.place(pool, {"x-user": "user1"}, "/", "p").backend is not home
    assert affinity.place(pool, {}, "/", "p").backend is None  # no key: least-loaded


def test_query_and_client_address_keys() -> None:
    clock = Clock()
    pool = _pool(clock)
    query = Affinity(
        load(
            None,
            environ={},
            overrides=[("affinity.mode", "query", "t"), ("affinity.key", "room", "t")],
            backends=["ws://x:1"],
        ),
        b"",
        clock.seconds,
    )
    one = query.place(pool, {}, "/chat?room=42&x=1", "p").backend
    assert one is not None and one is query.place(pool, {}, "/other?room=42", "q").backend
    ip = Affinity(
        load(None, environ={}, overrides=[("affinity.mode", "ip", "t")], backends=["ws://x:1"]),
        b"",
        clock.seconds,
    )
    assert (
        ip.place(pool, {}, "/", "10.1.2.3").backend is ip.place(pool, {}, "/x", "10.1.2.3").backend
    )


def test_cookie_header_helpers() -> None:
    assert cookie_value("a=1; wsb_backend=xyz; b=2", "wsb_backend") == "xyz"
    assert cookie_value("a=1; xwsb_backend=1", "wsb_backend") is None
    assert strip_cookie("a=1; wsb_backend=xyz; b=2", "wsb_backend") == "a=1; b=2"
    assert strip_cookie("wsb_backend=xyz", "wsb_backend") == ""


def test_router_longest_prefix_host_and_default() -> None:
    lanes = {"default": "D", "chat": "C", "api": "A", "admin": "H"}
    routes = [
        Route("/chat", "chat"),
        Route("/chat/admin", "admin"),
        Route("/", "api", host="api.example"),
    ]
    router = Router(routes, lanes, "default")  # type: ignore[arg-type]
    assert router.route("/chat", None) == "C"
    assert router.route("/chat/room?x=1", None) == "C"
    assert router.route("/chat/admin/x", None) == "H"
    assert router.route("/chatter", None) == "D"  # a prefix matches whole segments
    assert router.route("/anything", "API.example:443") == "A"
    assert router.route("/chat", "api.example") == "C"  # the longer path wins
    assert Router(routes, lanes, None).route("/x", None) is None  # type: ignore[arg-type]


def test_pools_inherit_top_level_settings_and_keep_their_own(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """
backends: [ws://127.0.0.1:9001]
failover: {attempts: 5}
affinity: {mode: cookie, secret: s}
pools:
  chat:
    backends: [{id: c1, url: "ws://127.0.0.1:9002"}]
    balancing: {strategy: round-robin}
    failover: {enabled: false}
    http: {enabled: true, timeout: 5s, max_body: 64KiB}
routes: [{path: /chat, pool: chat}]
""",
    )
    default, chat = config.all_pools()  # type: ignore[attr-defined]
    assert default.pool_name == "default" and chat.pool_name == "chat"
    assert (default.strategy, chat.strategy) == ("least-loaded", "round-robin")
    assert (default.failover, chat.failover) == (True, False)
    assert chat.failover_attempts == 5 and chat.affinity == "cookie"
    assert (chat.http, chat.http_timeout, chat.http_max_body) == (True, 5.0, 65536)
    assert default.http is False
    assert config.routes == (Route("/chat", "chat"),)  # type: ignore[attr-defined]
    assert config.default_pool == "default"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "backends: [ws://a:1]\npools: {p: {backends: [ws://b:1], listen: tcp:1}}",
            "pools.p: listen: set for the whole balancer, not per pool",
        ),
        (
            "backends: [ws://a:1]\npools: {p: {backends: [ws://b:1], balancing: {nope: 1}}}",
            "pools.p: balancing.nope: unknown key",
        ),
        ("backends: [ws://a:1]\npools: {p: {}}", "pools.p: backends: at least one backend (or"),
        ("backends: [ws://a:1]\npools: {p: {backends: []}}", "pools.p: backends: at least one"),
        ("backends: [ws://a:1]\npools: {default: {backends: [ws://b:1]}}", "pool names"),
        (
            "backends: [ws://a:1]\nroutes: [{path: /x, pool: nope}]",
            "routes[0]: pool: no pool named 'nope' (pools: default)",
        ),
        ("backends: [ws://a:1]\nroutes: [{path: x, pool: default}]", "routes[0]: path:"),
        (
            "backends: [ws://a:1]\npools: {p: {backends: [ws://a:1]}}",
            "backend id 'a:1' is also in pool 'default'",
        ),
        ("backends: [ws://a:1]\naffinity: {mode: header}", "affinity.key: the header name"),
        ("backends: [ws://a:1]\naffinity: {mode: sticky}", "affinity.mode: expected one of"),
        ("backends: [ws://a:1]\nrouting: {default: nope}", "routing.default: no pool named"),
        ("backends: [ws://a:1]\naffinity: {load_factor: 1}", "expected a number above 1"),
    ],
)
def test_pool_and_route_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_only_named_pools_means_no_default(tmp_path: Path) -> None:
    config = _config(tmp_path, "pools: {p: {backends: [ws://b:1]}}\nroutes: [{path: /p, pool: p}]")
    assert config.default_pool is None and config.backends == ()  # type: ignore[attr-defined]
    none = _config(tmp_path, "backends: [ws://a:1]\nrouting: {default: none}")
    assert none.default_pool is None  # type: ignore[attr-defined]


def test_single_pool_and_seed_environment_are_unchanged() -> None:
    config = load(None, environ={"BE_URLS": "ws:127.0.0.1:9001,ws:127.0.0.1:9002"})
    assert [p.pool_name for p in config.all_pools()] == ["default"]
    assert config.routes == () and config.default_pool == "default"
    assert config.affinity == "off" and config.http is False
    env = load(
        None,
        environ={
            "BE_URLS": "ws:127.0.0.1:9001",
            "WSBALANCER_AFFINITY__MODE": "cookie",
            "WSBALANCER_HTTP__ENABLED": "true",
        },
    )
    assert env.affinity == "cookie" and env.http is True
