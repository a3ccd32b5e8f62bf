"""DNS discovery: a twisted.names server started here, real demo backends, the real balancer.

Records change -> backends are added and removed; sessions on kept backends stay open and
keep relaying; a session on a removed backend drains (default) or fails over; a failed lookup
keeps the last known set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import websockets
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.names import authority, common, dns, error, server
from twisted.protocols.policies import WrappingFactory

from wsbalancer.config import ConfigError, load
from wsbalancer.config.discovery import DiscoverySource, parse_sources
from wsbalancer.devtools.demo.backend import DemoBackend
from wsbalancer.upstream.discovery import DiscoveryService, DnsSource

from .helpers import TIMEOUT, RunningBackend, aio, get_json, recv, start_backend, start_balancer
from .tlsutil import CertAuthority

ZONE = b"backends.test"
SRV_NAME = b"_ws._tcp.backends.test"


class MemoryAuthority(authority.FileAuthority):
    """An authoritative zone whose records the test changes while the server runs."""

    def __init__(self, records: dict[bytes, list[Any]]) -> None:
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns." + ZONE, rname=b"root." + ZONE, serial=1, minimum=1)
        self.soa, self.records = (ZONE, soa), records


class DnsServer:
    """UDP and TCP on one 127.0.0.1 port, as a real nameserver answers."""

    def __init__(self, records: dict[bytes, list[Any]]) -> None:
        self.records = records
        factory = server.DNSServerFactory(authorities=[MemoryAuthority(records)])
        factory.noisy = False
        self.udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.port = self.udp.getHost().port
        self.tcp = reactor.listenTCP(self.port, factory, interface="127.0.0.1")

    async def stop(self) -> None:
        await defer.maybeDeferred(self.udp.stopListening)
        await defer.maybeDeferred(self.tcp.stopListening)


def srv(port: int, target: str) -> Any:
    return dns.Record_SRV(0, 0, port, target.encode(), ttl=1)


async def changed(source: DnsSource, want: set[str]) -> None:
    """Wait (on the source's change events, with a timeout) until it knows exactly `want`."""
    while set(source.known) != want:
        await source.when_changed().addTimeout(TIMEOUT, reactor)


async def greeted(lb: Any) -> tuple[Any, str]:
    ws = await aio(websockets.connect(lb.ws_url("/chat")))
    return ws, (await recv(ws)).removeprefix("connected to ")


def only_source(lb: Any) -> DnsSource:
    (source,) = lb.service.discovery.sources.values()
    return source


@pytest_twisted.ensureDeferred
async def test_srv_records_add_and_drain_backends_and_kept_sessions_keep_relaying() -> None:
    b1, b2, b3 = (start_backend(name) for name in ("b1", "b2", "b3"))
    ports = {b.backend.name: b.port.getHost().port for b in (b1, b2, b3)}
    records = {
        SRV_NAME: [srv(ports["b1"], "b1.backends.test"), srv(ports["b2"], "b2.backends.test")],
        **{f"{n}.backends.test".encode(): [dns.Record_A("127.0.0.1", ttl=1)] for n in ports},
    }
    nameserver = DnsServer(records)
    lb = await start_balancer(
        [],
        discovery=f"srv+ws://{SRV_NAME.decode()}?nameserver=127.0.0.1:{nameserver.port}"
        "&min_interval=0.05s&max_interval=0.2s",
    )
    clients = []
    try:
        source = only_source(lb)
        await changed(source, {b1.id, b2.id})
        first, second = await greeted(lb), await greeted(lb)
        clients = [first[0], second[0]]
        on = {name: ws for ws, name in (first, second)}
        assert set(on) == {"b1", "b2"}  # the local count spreads them

        # b2's pod goes away, b3's arrives: picked up on the next TTL-driven lookup.
        records[SRV_NAME] = [
            srv(ports["b1"], "b1.backends.test"),
            srv(ports["b3"], "b3.backends.test"),
        ]
        await changed(source, {b1.id, b3.id})
        pool = lb.balancer.pool.backends
        assert pool[b3.id].extra["discovered_by"] == source.source.label
        assert pool[b3.id].config.server_name == "b3.backends.test"  # the SRV target
        assert pool[b2.id].removed and pool[b2.id].draining  # draining: its session stays
        for name, ws in on.items():
            await aio(ws.send(f"still here on {name}"))
            assert await recv(ws) == f"{name}: still here on {name}"
        new, name = await greeted(lb)
        clients.append(new)
        assert name == "b3"  # the empty newcomer, never the draining one
        code, doc = await get_json(lb.admin_url("/balancer-metrics"))
        assert code == 200 and {b1.url, b3.url} <= {s["url"] for s in doc["services"]}
        assert b2.count == 1 and b1.count == 1  # nothing was cut
        # A reload (SIGHUP) of the same file leaves discovered backends and sources alone.
        lb.service.reload_source = lambda: lb.balancer.config
        assert lb.service.reload() == []
        assert not pool[b3.id].removed and only_source(lb) is source
    finally:
        for ws in clients:
            await aio(ws.close())
        await lb.stop()
        await nameserver.stop()
        for b in (b1, b2, b3):
            await b.stop()


def _v6_twin(port: int, name: str) -> RunningBackend | None:
    """A demo backend on [::1] at the same port number as an IPv4 one, if it is free."""
    backend = DemoBackend(name)
    tracker = WrappingFactory(backend.site())
    try:
        listening = reactor.listenTCP(port, tracker, interface="::1")
    except CannotListenError:
        return None
    return RunningBackend(backend, listening, tracker)


@pytest_twisted.ensureDeferred
async def test_a_and_aaaa_records_removed_session_fails_over_and_failed_lookup_keeps_the_set() -> (
    None
):
    # A/AAAA carry no port: one IPv4 and one IPv6 loopback backend share a port number.
    for _ in range(20):
        v4 = start_backend("v4")
        port = v4.port.getHost().port
        v6 = _v6_twin(port, "v6")
        if v6 is not None:
            break
        await v4.stop()
    assert v6 is not None, "no port free on both 127.0.0.1 and ::1"
    name = b"pods.backends.test"
    records = {name: [dns.Record_A("127.0.0.1", ttl=1), dns.Record_AAAA("::1", ttl=1)]}
    nameserver = DnsServer(records)
    lb = await start_balancer(
        [],
        discovery=f"dns+ws://{name.decode()}:{port}?nameserver=127.0.0.1:{nameserver.port}"
        "&min_interval=0.05s&max_interval=0.2s",
        reload__removed_sessions="failover",
    )
    v6_id = f"[::1]:{port}"
    clients = []
    try:
        source = only_source(lb)
        await changed(source, {v4.id, v6_id})
        first, second = await greeted(lb), await greeted(lb)
        clients = [first[0], second[0]]
        on = {n: ws for ws, n in (first, second)}
        assert set(on) == {"v4", "v6"}

        records[name] = [dns.Record_A("127.0.0.1", ttl=1)]
        await changed(source, {v4.id})
        # The session on the removed backend moved at once; its client stayed connected.
        assert await recv(on["v6"]) == "connected to v4"
        await aio(on["v6"].send("moved"))
        assert await recv(on["v6"]) == "v4: moved"
        assert await recv(on["v4"]) == "v4: moved"  # the kept session relays too

        # The name vanishes (NXDOMAIN): the last known set stays, the failure is counted.
        del records[name]
        await source.refresh()
        await source.refresh()  # this one surely started after the change
        assert source.failures >= 1 and source.last_error == "no such name"
        assert set(source.known) == {v4.id} and not lb.balancer.pool.backends[v4.id].removed
        registry = lb.balancer.metrics.registry
        labels = {"source": source.source.label, "outcome": "error"}
        assert registry.get_sample_value("wsbalancer_discovery_lookups_total", labels) >= 1
        await aio(on["v4"].send("alive"))
        assert await recv(on["v4"]) == "v4: alive"
    finally:
        for ws in clients:
            await aio(ws.close())
        await lb.stop()
        await nameserver.stop()
        await v4.stop()
        await v6.stop()


@pytest_twisted.ensureDeferred
async def test_a_wss_backend_found_by_address_is_verified_against_the_dns_name(
    tmp_path: Path,
) -> None:
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue(["pods.backends.test"])  # names the service, not the pod address
    backend = DemoBackend("tls-pod")
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    listening = await endpoint.listen(backend.site())
    port = listening.getHost().port
    name = b"pods.backends.test"
    nameserver = DnsServer({name: [dns.Record_A("127.0.0.1", ttl=1)]})
    lb = await start_balancer(
        [],
        discovery=f"dns+wss://{name.decode()}:{port}?nameserver=127.0.0.1:{nameserver.port}",
        tls__ca_file=str(ca.ca_file),
    )
    try:
        await changed(only_source(lb), {f"127.0.0.1:{port}"})
        ws, greeting = await greeted(lb)
        assert greeting == "tls-pod"
        await aio(ws.close())
    finally:
        await lb.stop()
        await nameserver.stop()
        await listening.stopListening()


# --- unit tests: configuration and the TTL schedule, with a fake resolver and a Clock ------


def test_sources_from_urls_and_mappings() -> None:
    (url,) = parse_sources("dns+wss://ws.default.svc.cluster.local:8443/app?min_interval=2s")
    assert (url.type, url.scheme, url.port, url.path, url.min_interval) == (
        "a",
        "wss",
        8443,
        "/app",
        2.0,
    )
    (mapping,) = parse_sources(
        [{"name": "_ws._tcp.ws.default.svc", "type": "srv", "nameserver": "10.0.0.10"}]
    )
    assert mapping.nameserver == ("10.0.0.10", 53) and mapping.port is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("dns+ws://pods.test", "discovery: [0] port: needed for type a"),
        ("http://pods.test:80", "discovery: [0] expected dns+ws://NAME:PORT"),
        ("dns+ws://pods.test:80?nameserver=ns.test", "nameserver: expected an IP address"),
        ("dns+ws://pods.test:80?min_interval=5s&max_interval=1s", "must not be below"),
        ("dns+ws://pods.test:80?colour=red", "unknown option 'colour'"),
        ("dns+ws://pods.test:80,dns+ws://pods.test:80", "a:pods.test is listed twice"),
    ],
)
def test_bad_sources_are_one_line_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={"WSBALANCER_DISCOVERY": value})
    text = str(caught.value)
    assert message in text and text.startswith("environment WSBALANCER_DISCOVERY: ")
    assert "\n" not in text


def test_discovery_alone_is_a_valid_configuration() -> None:
    config = load(None, environ={"WSBALANCER_DISCOVERY": "srv+ws://_ws._tcp.pods.test"})
    assert config.backends == () and config.discovery[0].type == "srv"


class FakeResolver:
    """Answers A lookups from a list the test sets; an exception to raise instead."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.ttl = 30
        self.error: Exception | None = None

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        if self.error is not None:
            return defer.fail(self.error)
        answers = [
            dns.RRHeader(name, dns.A, ttl=self.ttl, payload=dns.Record_A(a)) for a in self.addresses
        ]
        return defer.succeed((answers, [], []))

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return defer.succeed(([], [], []))


class FakeTarget:
    metric_path = "/metric"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def add_discovered(self, config: Any, source: str) -> bool:
        self.calls.append(("add", config.id))
        return True

    def remove_discovered(self, backend_id: str, source: str) -> None:
        self.calls.append(("remove", backend_id))


def test_ttl_is_bounded_and_a_failure_keeps_the_set() -> None:
    clock, resolver, target = Clock(), FakeResolver(), FakeTarget()
    source = DiscoverySource("pods.test", port=80, min_interval=2.0, max_interval=10.0)
    running = DnsSource(source, target, resolver, clock)
    resolver.addresses = ["10.0.0.1", "10.0.0.2"]
    running.startService()
    clock.advance(0)
    assert target.calls == [("add", "10.0.0.1:80"), ("add", "10.0.0.2:80")]
    assert running.next_at == 10.0  # a TTL of 30 s is capped by max_interval

    resolver.addresses, resolver.ttl = ["10.0.0.2", "10.0.0.3"], 0
    clock.advance(10)
    assert target.calls[2:] == [("add", "10.0.0.3:80"), ("remove", "10.0.0.1:80")]
    assert running.next_at == 12.0  # a TTL of 0 is raised to min_interval

    resolver.error = error.DNSServerError()
    clock.advance(2)
    resolver.error, resolver.addresses = None, []
    clock.advance(2)  # an empty answer is not "no backends" either
    assert len(target.calls) == 4 and set(running.known) == {"10.0.0.2:80", "10.0.0.3:80"}
    assert running.failures == 2 and running.last_error == "no records"
    running.stopService()
    assert not clock.getDelayedCalls()


def test_sources_from_the_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "wsbalancer.yaml"
    path.write_text(
        "discovery:\n"
        "  - {name: ws-backend.default.svc.cluster.local, port: 9001, path: /app}\n"
        "  - {name: _ws._tcp.ws-backend.default.svc.cluster.local, type: srv, scheme: wss,\n"
        "     tls_name: ws-backend.default.svc, min_interval: 2s, max_interval: 30s}\n"
    )
    a, srv_source = load(str(path), environ={}).discovery
    assert (a.type, a.port, a.path, a.nameserver) == ("a", 9001, "/app", None)
    assert (srv_source.type, srv_source.tls_name, srv_source.max_interval) == (
        "srv",
        "ws-backend.default.svc",
        30.0,
    )
    path.write_text("discovery:\n  - {name: pods.test, port: 9001, ttl: 5}\n")
    with pytest.raises(ConfigError, match=rf"^file {path}: discovery: \[0\] unknown key ttl$"):
        load(str(path), environ={})


def test_a_source_whose_options_change_keeps_its_backends() -> None:
    clock, resolver, target = Clock(), FakeResolver(), FakeTarget()
    resolver.addresses = ["10.0.0.1"]
    service = DiscoveryService(target, clock, lambda source: resolver)
    old = DiscoverySource("pods.test", port=80, min_interval=2.0)
    service.apply([old])
    service.startService()
    clock.advance(0)
    assert target.calls == [("add", "10.0.0.1:80")]

    new = DiscoverySource("pods.test", port=80, min_interval=2.0, weight=2.0)
    assert service.apply([new]) == ["discovery a:pods.test changed"]
    clock.advance(0)  # the same record, a new weight: re-applied, never removed
    assert target.calls == [("add", "10.0.0.1:80"), ("add", "10.0.0.1:80")]
    assert service.sources[new].known["10.0.0.1:80"].weight == 2.0

    assert service.apply([]) == ["discovery a:pods.test stopped"]
    assert target.calls[-1] == ("remove", "10.0.0.1:80")
    service.stopService()
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_a_named_pool_has_its_own_discovery_and_a_reload_hands_it_back_to_the_file(
    tmp_path: Path,
) -> None:
    main, b1, b2, b3 = (start_backend(name) for name in ("main", "b1", "b2", "b3"))
    ports = {b.backend.name: b.port.getHost().port for b in (b1, b2)}
    records = {
        SRV_NAME: [srv(ports["b1"], "b1.backends.test")],
        **{f"{n}.backends.test".encode(): [dns.Record_A("127.0.0.1", ttl=1)] for n in ports},
    }
    nameserver = DnsServer(records)
    path = tmp_path / "wsbalancer.yaml"
    source = (
        f"{{name: {SRV_NAME.decode()}, type: srv, nameserver: '127.0.0.1:{nameserver.port}', "
        "min_interval: 0.05s, max_interval: 0.2s}"
    )
    path.write_text(
        f"backends: [{{id: main, url: '{main.url}'}}]\n"
        f"pools:\n  live:\n    discovery:\n      - {source}\n"
        "routes:\n  - {path: /chat/live, pool: live}\n"
    )
    lb = await start_balancer([], config_file=str(path))
    clients = []
    try:
        (found,) = lb.service.discovery.pools["live"].sources.values()
        assert "default" not in lb.service.discovery.pools  # the top level has no source
        await changed(found, {b1.id})
        live = lb.balancer.lanes["live"].pool.backends
        assert set(live) == {b1.id} and set(lb.balancer.pool.backends) == {"main"}
        ws = await aio(websockets.connect(lb.ws_url("/chat/live")))
        clients.append(ws)
        assert await recv(ws) == "connected to b1"
        ws = await aio(websockets.connect(lb.ws_url("/chat")))
        clients.append(ws)
        assert await recv(ws) == "connected to main"
        code, doc = await get_json(lb.admin_url("/api/backends"))
        assert code == 200
        assert {b["id"]: b["pool"] for b in doc["backends"]} == {"main": "default", b1.id: "live"}

        # The pod moves: the pool's own source follows it, the default pool is untouched.
        records[SRV_NAME] = [srv(ports["b2"], "b2.backends.test")]
        await changed(found, {b2.id})
        assert live[b1.id].removed and live[b1.id].draining  # its session stays
        ws = await aio(websockets.connect(lb.ws_url("/chat/live")))
        clients.append(ws)
        assert await recv(ws) == "connected to b2"
        await aio(clients[0].send("still here"))
        assert await recv(clients[0]) == "b1: still here"

        # A reload that lists the pool's backends instead, one of them the discovered b2:
        # discovery stops, and b2 stays (the file's now), the other one joins.
        path.write_text(
            f"backends: [{{id: main, url: '{main.url}'}}]\n"
            f"pools:\n  live:\n    backends: [{{id: listed, url: '{b3.url}'}}, '{b2.url}']\n"
            "routes:\n  - {path: /chat/live, pool: live}\n"
        )
        overrides = [  # the addresses it listens on, as a restart-free reload keeps them
            ("listen", ",".join(lb.balancer.config.listen), "test"),
            ("admin.listen", lb.balancer.config.admin_listen, "test"),
        ]
        config = load(str(path), environ={}, overrides=overrides)
        lb.service.reload_source = lambda: config
        changes = lb.service.reload()
        assert "pool live: added listed" in changes
        assert f"pool live: discovery srv:{SRV_NAME.decode()} stopped" in changes
        assert not live[b2.id].removed and "discovered_by" not in live[b2.id].extra
        assert not live["listed"].removed
        assert not lb.service.discovery.sources
        ws = await aio(websockets.connect(lb.ws_url("/chat/live")))
        clients.append(ws)
        assert await recv(ws) == "connected to b3"
    finally:
        for ws in clients:
            await aio(ws.close())
        await lb.stop()
        await nameserver.stop()
        for b in (main, b1, b2, b3):
            await b.stop()


def test_a_pool_feeds_from_its_own_sources_only() -> None:
    text = (
        "discovery: ['srv+ws://_ws._tcp.top.test']\n"
        "pools:\n"
        "  live: {discovery: ['srv+ws://_ws._tcp.live.test']}\n"
        "  listed: {backends: ['ws://127.0.0.1:9001']}\n"
    )
    config = _load_text(text)
    pools = {p.pool_name: [s.label for s in p.discovery] for p in config.all_pools()}
    assert pools == {
        "default": ["srv:_ws._tcp.top.test"],
        "live": ["srv:_ws._tcp.live.test"],
        "listed": [],  # not the top level's
    }
    for body in ("{}", "{discovery: []}"):
        with pytest.raises(ConfigError, match=r"pools.empty: backends: at least one backend"):
            _load_text(f"pools:\n  empty: {body}\n")
    with pytest.raises(ConfigError, match=r"feeds pools 'default' and 'live'; a source feeds one"):
        _load_text(
            "discovery: ['srv+ws://_ws._tcp.same.test']\n"
            "pools:\n  live: {discovery: ['srv+ws://_ws._tcp.same.test']}\n"
        )


def _load_text(text: str) -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load(f.name, environ={})
    finally:
        Path(f.name).unlink()


def test_an_address_serving_in_another_pool_is_refused_once_per_lookup_series() -> None:
    from wsbalancer.config.discovery import backend_for
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.upstream.discovery import BalancerTarget

    config = _load_text(
        "pools:\n"
        "  live: {discovery: ['dns+ws://pods.test:80/']}\n"
        "  other: {backends: ['ws://10.0.0.1:80']}\n"
    )
    balancer = Balancer(config, reactor, clock=Clock())
    target = BalancerTarget(balancer, "live")
    lines: list[dict[str, Any]] = []
    target.log = type("Recorder", (), {"warn": lambda self, f, **kw: lines.append(kw)})()
    (source,) = config.pools[0].discovery
    taken = backend_for(source, "10.0.0.1", 80, target.metric_path, "pods.test")
    free = backend_for(source, "10.0.0.2", 80, target.metric_path, "pods.test")
    for _ in range(3):  # three lookups find the same two records
        assert not target.add_discovered(taken, source.label)
        assert target.add_discovered(free, source.label)
    assert [line["reason"] for line in lines] == ["it is a backend of pool other"]
    assert set(balancer.lanes["live"].pool.backends) == {"10.0.0.2:80"}
    assert set(balancer.lanes["other"].pool.backends) == {"10.0.0.1:80"}
