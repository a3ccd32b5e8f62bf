"""Unit tests of the admin site, driven in-process with treq's StubTreq over a Balancer built
on a MemoryReactorClock: the seed's /balancer-metrics JSON, /readyz, /healthz, /metrics."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock

from wsbalancer.admin.site import admin_site
from wsbalancer.config import ConfigError, load
from wsbalancer.relay.balancer import Balancer
from wsbalancer.upstream.pool import PodInfo

NOW = 1_700_000_000.5  # 2023-11-14T22:13:20.5Z


def make(*overrides: tuple[str, Any]) -> tuple[Balancer, StubTreq]:
    config = load(
        environ={},
        overrides=[(key, value, "test") for key, value in overrides],
        backends=["a=ws://a:1", "b=wss://b:2/ws"],
    )
    clock = MemoryReactorClock()
    clock.advance(NOW)
    balancer = Balancer(config, reactor=clock)
    return balancer, StubTreq(admin_site(balancer).resource)


def get(stub: StubTreq, path: str) -> tuple[int, Any, bytes]:
    """GET through the in-memory site: status, headers, body."""
    responses: list[Any] = []
    stub.get(f"http://admin.test{path}").addBoth(responses.append)
    stub.flush()
    assert len(responses) == 1, f"no answer for {path}"
    response = responses[0]
    bodies: list[Any] = []
    stub.content(response).addBoth(bodies.append)
    stub.flush()
    assert len(bodies) == 1 and isinstance(bodies[0], bytes)
    return response.code, response.headers, bodies[0]


def get_json(stub: StubTreq, path: str) -> tuple[int, Any]:
    code, headers, body = get(stub, path)
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert headers.getRawHeaders(b"cache-control") == [b"no-store"]
    return code, json.loads(body)


def populate(balancer: Balancer) -> None:
    """a: 3 sessions of ours within a report of 10; b: its metric endpoint fails."""
    pool = balancer.pool
    a, b = pool.backends["a"], pool.backends["b"]
    for _ in range(3):
        picked = pool.pick(exclude=["b"])
        assert picked is a
        pool.dial_started(a)
        pool.dial_succeeded(a)
    pool.poll_succeeded(a, PodInfo(10, "ws-a-1", "10.1.0.5", "node-1"))
    pool.poll_failed(b, "HTTP 503")


# --- /balancer-metrics -------------------------------------------------------------------------


def test_balancer_metrics_seed_shape() -> None:
    balancer, stub = make()
    populate(balancer)
    code, doc = get_json(stub, "/balancer-metrics")
    assert code == 200
    assert doc["timestamp"] == "2023-11-14T22:13:20Z"
    assert doc["services"] == [
        {"url": "ws://a:1", "connections": 10},
        {"url": "wss://b:2/ws", "connections": 0},
    ]
    assert doc["podMetrics"] == {
        "ws://a:1": [
            {
                "agentsConnections": 10,
                "podName": "ws-a-1",
                "podIP": "10.1.0.5",
                "nodeName": "node-1",
            }
        ]
    }
    assert doc["totalConnections"] == 10
    assert doc["agentsConnections"] == 10
    assert doc["strategy"] == "least-loaded"
    assert doc["sessions"] == 0
    assert doc["ready"] is True


def test_balancer_metrics_backend_state() -> None:
    balancer, stub = make()
    populate(balancer)
    _, doc = get_json(stub, "/balancer-metrics")
    a, b = doc["backends"]
    traffic = a.pop("traffic")  # no session carried anything yet
    assert traffic["messagesToBackend"] == traffic["bytesToClient"] == 0
    assert traffic["responseTime"]["count"] == 0 and traffic["responseTime"]["p99"] is None
    assert traffic["closeCodes"] == {"client": {}, "backend": {}}
    assert a == {
        "id": "a",
        "pool": "default",  # the pool it belongs to (the dashboard's pool column)
        "url": "ws://a:1",
        "metricUrl": "http://a:1/metric",
        "weight": 1.0,
        "connections": 10,
        "reportedConnections": 10,
        "localSessions": 3,
        "dialing": 0,
        "healthy": True,
        "health": "up",
        "stale": False,
        "breaker": "closed",
        "ejectedUntil": None,
        "enabled": True,
        "draining": False,
        "usable": True,
        "picks": 3,
        "lastPoll": "2023-11-14T22:13:20.500+00:00",
        "lastPollError": None,
        "pod": {"podName": "ws-a-1", "podIP": "10.1.0.5", "nodeName": "node-1"},
    }
    assert b["metricUrl"] == "https://b:2/metric"
    assert (b["stale"], b["health"], b["healthy"], b["usable"]) == (True, "down", False, False)
    assert (b["reportedConnections"], b["pod"], b["lastPollError"]) == (None, None, "HTTP 503")


def test_balancer_metrics_follow_the_live_state() -> None:
    balancer, stub = make()
    _, before = get_json(stub, "/balancer-metrics")
    assert before["totalConnections"] == 0 and before["podMetrics"] == {}
    populate(balancer)
    balancer.pool.dial_started(balancer.pool.backends["a"])
    balancer.pool.backends["a"].draining = True
    _, after = get_json(stub, "/balancer-metrics")
    assert after["services"][0]["connections"] == 11
    assert after["backends"][0]["dialing"] == 1
    assert after["backends"][0]["draining"] is True
    assert after["backends"][0]["usable"] is False
    assert after["ready"] is False


def test_custom_balancer_metric_path() -> None:
    _, stub = make(("admin.balancer_metric_path", "/lb-metrics"))
    code, doc = get_json(stub, "/lb-metrics")
    assert code == 200 and "services" in doc
    assert get(stub, "/balancer-metrics")[0] == 404


def test_nested_balancer_metric_path() -> None:
    # The config accepts any absolute path (the Traefik seed's balancerMetricPath), so a
    # path of several segments must be served where it says, not be a 404.
    _, stub = make(("admin.balancer_metric_path", "/lb/balancer-metrics"))
    code, doc = get_json(stub, "/lb/balancer-metrics")
    assert code == 200 and "services" in doc


def test_balancer_metric_path_cannot_shadow_another_endpoint() -> None:
    with pytest.raises(ConfigError) as raised:
        make(("admin.balancer_metric_path", "/api/balancer-metrics"))
    assert "admin.balancer_metric_path: /api is taken by the admin API" in str(raised.value)


# --- health and readiness ----------------------------------------------------------------------


def test_readyz_and_healthz() -> None:
    balancer, stub = make()
    code, doc = get_json(stub, "/readyz")
    assert (code, doc) == (200, {"ready": True, "usableBackends": ["a", "b"]})
    for b in balancer.pool.backends.values():
        balancer.pool.poll_failed(b, "connection refused")
    code, doc = get_json(stub, "/readyz")
    assert (code, doc) == (503, {"ready": False, "usableBackends": []})
    assert get_json(stub, "/healthz") == (200, {"status": "ok"})  # alive, though not ready


def test_readyz_with_every_breaker_open_then_cooled_down() -> None:
    balancer, stub = make(("breaker.threshold", 1), ("breaker.cooldown", "10s"))
    for b in balancer.pool.backends.values():
        balancer.pool.dial_started(b)
        balancer.pool.dial_failed(b, counts_against_breaker=True)
    assert get_json(stub, "/readyz")[0] == 503
    balancer.clock.advance(10)
    code, doc = get_json(stub, "/readyz")
    assert (code, doc["usableBackends"]) == (200, ["a", "b"])


def test_index_lists_the_endpoints_and_unknown_paths_are_404() -> None:
    _, stub = make()
    code, _, body = get(stub, "/")
    assert code == 200
    for path in (b"/balancer-metrics", b"/metrics", b"/healthz", b"/readyz"):
        assert path in body
    assert get(stub, "/nothing-here")[0] == 404


# --- /metrics -------------------------------------------------------------------------------------


async def get_pumped(stub: StubTreq, path: str) -> tuple[int, bytes]:
    """GET a resource that may answer from another thread: pump until it has answered."""

    async def settle(d: Deferred[Any]) -> Any:
        box: list[Any] = []
        d.addBoth(box.append)
        deadline = reactor.seconds() + 10
        while not box:
            assert reactor.seconds() < deadline, f"no answer for {path}"
            stub.flush()
            if not box:
                await deferLater(reactor, 0.005, lambda: None)
        return box[0]

    response = await settle(stub.get(f"http://admin.test{path}"))
    body = await settle(stub.content(response))
    assert isinstance(body, bytes)
    return response.code, body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_prometheus_metrics() -> None:
    balancer, stub = make()
    populate(balancer)
    balancer.cluster.reporter.poll_result(balancer.pool.backends["b"], 0.25, "HTTP 503")
    code, body = await get_pumped(stub, "/metrics")
    assert code == 200
    found = samples(body.decode())
    assert found[("wsbalancer_backend_up", (("backend", "a"),))] == 1
    assert found[("wsbalancer_backend_up", (("backend", "b"),))] == 0
    assert found[("wsbalancer_backend_stale", (("backend", "b"),))] == 1
    assert found[("wsbalancer_backend_reported_connections", (("backend", "a"),))] == 10
    assert found[("wsbalancer_backend_estimated_connections", (("backend", "a"),))] == 10
    assert found[("wsbalancer_sessions_active", (("backend", "a"),))] == 3
    assert found[("wsbalancer_picks_total", (("backend", "a"),))] == 3
    assert found[("wsbalancer_backend_breaker", (("backend", "a"),))] == 0
    assert found[("wsbalancer_poll_errors_total", (("backend", "b"),))] == 1
    assert found[("wsbalancer_poll_seconds_count", (("backend", "b"),))] == 1
    # a health transition is counted as it happens
    assert (
        found[
            (
                "wsbalancer_backend_state_changes_total",
                (("backend", "b"), ("kind", "health"), ("state", "down")),
            )
        ]
        == 1
    )
    names = {name for name, _ in found}
    assert {"wsbalancer_messages_total", "wsbalancer_message_bytes_total"} <= names


class ThreadRecorder:
    """A collector that notes which thread collects it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.threads.append(threading.current_thread())
        return iter(())


@pytest_twisted.ensureDeferred
async def test_prometheus_metrics_read_balancer_state_in_the_reactor_thread() -> None:
    # The collectors iterate the pool's and the sessions' dicts, which only the reactor
    # thread may touch; a scrape collected in a thread pool races with sessions opening
    # and closing ("dictionary changed size during iteration").
    balancer, stub = make()
    recorder = ThreadRecorder()
    balancer.metrics.registry.register(recorder)
    code, _ = await get_pumped(stub, "/metrics")
    assert code == 200
    assert recorder.threads == [threading.main_thread()]
