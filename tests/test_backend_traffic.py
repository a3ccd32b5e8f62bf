"""Unit: per-backend traffic (messages and bytes each way, response times, close codes per
leg), kept as plain numbers by the relay and read as Prometheus metrics and API views.

The session tests drive `tests/test_session_unit.py`'s `Rig` (a real balancer, real legs,
Autobahn peers joined in memory, the memory reactor as clock), so time only moves when a
test advances it and each response time is known exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from wsbalancer.admin.api import backend_view
from wsbalancer.admin.traffic_gauges import BackendTrafficGauges
from wsbalancer.observe.traffic import (
    RESPONSE_BUCKETS,
    BackendTraffic,
    close_label,
    merge_traffic_views,
    quantile,
    traffic_view,
)
from wsbalancer.observe.worker_metrics import merge_prometheus
from wsbalancer.relay.leg_traffic import traffic_by_backend

from .rig import Rig

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def rig(reactor: MemoryReactorClock) -> Any:
    """`rig(names, **settings)`: a `Rig` whose registry also has the traffic collector."""

    def make(names: tuple[str, ...] = ("b1", "b2"), **settings: str) -> Rig:
        r = Rig(reactor, names, **settings)
        r.balancer.metrics.registry.register(BackendTrafficGauges(r.balancer))
        return r

    return make


def figures(r: Rig) -> dict[str, BackendTraffic]:
    return traffic_by_backend(r.pool.backends.values(), r.balancer.sessions.values())


def counts(t: BackendTraffic) -> tuple[int, int, int, int]:
    return t.messages_in, t.messages_out, t.bytes_in, t.bytes_out


# --- the plain numbers --------------------------------------------------------------------


def test_a_response_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    t = BackendTraffic()
    for seconds in (0.0001, 0.001, 0.0011, 20.0):
        t.responded(seconds)
    assert t.responses[0] == 1  # ≤ 0.25 ms
    assert t.responses[RESPONSE_BUCKETS.index(0.001)] == 1  # le is inclusive
    assert t.responses[RESPONSE_BUCKETS.index(0.0025)] == 1
    assert t.responses[-1] == 1  # +Inf
    assert t.response_sum == pytest.approx(20.0022)


def test_quantiles_interpolate_within_a_bucket_as_histogram_quantile_does() -> None:
    counts_ = [0] * (len(RESPONSE_BUCKETS) + 1)
    assert quantile(counts_, 0.5) is None
    i = RESPONSE_BUCKETS.index(0.1)  # the bucket (0.05, 0.1]
    counts_[i] = 10
    assert quantile(counts_, 0.5) == pytest.approx(0.075)
    assert quantile(counts_, 0.99) == pytest.approx(0.0995)
    counts_[-1] = 90  # most are past the last bound: that bound is the estimate
    assert quantile(counts_, 0.5) == RESPONSE_BUCKETS[-1]


def test_close_codes_outside_rfc_6455_share_one_label() -> None:
    assert [close_label(c) for c in (1000, 1006, 1014, None, 1004, 4000, 3000)] == [
        "1000",
        "1006",
        "1014",
        "1005",
        "other",
        "other",
        "other",
    ]


def test_worker_views_merge_by_summing_and_recomputing_quantiles() -> None:
    fast, slow = BackendTraffic(), BackendTraffic()
    fast.add(3, 3, 30, 30)
    fast.responded(0.002)
    fast.leg_closed("client", 1000)
    slow.add(1, 2, 10, 20)
    slow.responded(2.0)
    slow.leg_closed("client", 1000)
    slow.leg_closed("backend", 1006)
    merged = traffic_view(fast)
    merge_traffic_views(merged, traffic_view(slow))
    assert merged["messagesToBackend"] == 4 and merged["bytesToClient"] == 50
    assert merged["closeCodes"] == {"client": {"1000": 2}, "backend": {"1006": 1}}
    response = merged["responseTime"]
    assert response["count"] == 2 and response["sumSeconds"] == pytest.approx(2.002)
    assert response["p50"] <= 0.0025 and 1.0 < response["p99"] <= 2.5


# --- what a session's legs carry ------------------------------------------------------------


def test_each_direction_is_counted_for_the_backend_it_went_over(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    r.send(client, b"hello", b"there")  # echoed as "hello:b1", "there:b1"
    r.backends["b1"].peer.sendMessage(b"push")
    r.net.pump()
    live = figures(r)
    assert counts(live["b1"]) == (2, 3, 10, 20)  # the live session's share, read now
    assert counts(live["b2"]) == (0, 0, 0, 0)
    assert counts(r.state("b1").traffic) == (0, 0, 0, 0)  # nothing settled yet
    client.sendClose(1000)
    r.net.pump()
    assert counts(r.state("b1").traffic) == (2, 3, 10, 20)  # settled once, at the end
    assert counts(figures(r)["b1"]) == (2, 3, 10, 20)  # and not counted twice
    assert r.balancer.traffic_totals() == (2, 3, 10, 20)


def test_a_failover_splits_the_traffic_and_held_messages_go_to_the_new_backend(
    rig: Any,
) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    r.send(client, b"one")
    r.backends["b2"].gated = True
    r.kill("b1")
    r.send(client, b"held")  # held while b2 is dialled, delivered to it
    r.backends["b2"].release()
    r.net.pump()
    assert client.messages == [b"one:b1", b"held:b2"]
    live = figures(r)
    assert counts(live["b1"]) == (1, 1, 3, 6)
    assert counts(live["b2"]) == (1, 1, 4, 7)
    assert (
        r.metric("wsbalancer_backend_messages_total", backend="b2", direction="client_to_backend")
        == 1
    )
    assert r.metric("wsbalancer_leg_closes_total", backend="b1", leg="backend", code="1006") == 1


def test_a_migrations_old_leg_is_charged_for_what_it_still_sends(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    old_peer = r.backends["b1"].peer
    r.send(client, b"m1")
    session = r.session
    session.migrate("rebalance")
    r.net.pump()
    assert session.backend_id == "b2"
    r.backends["b2"].echo = False
    r.send(client, b"m2")  # to b2, which does not answer yet
    r.net.advance(0.01)
    old_peer.sendMessage(b"late", False)  # b1's, not an answer to m2
    r.net.pump()
    assert client.messages == [b"m1:b1", b"late"]
    live = figures(r)
    assert counts(live["b1"]) == (1, 2, 2, 9)
    assert counts(live["b2"]) == (1, 0, 2, 0)
    assert sum(live["b2"].responses) == 0  # b1's message did not answer b2's question
    r.net.advance(0.04)
    r.backends["b2"].peer.sendMessage(b"answer")
    r.net.pump()
    b2 = figures(r)["b2"]
    assert sum(b2.responses) == 1 and b2.response_sum == pytest.approx(0.05)
    assert counts(b2) == (1, 1, 2, 6)


# --- response times -----------------------------------------------------------------------


def test_a_response_is_timed_from_the_oldest_unanswered_client_message(rig: Any) -> None:
    r = rig(("b1",))
    r.backends["b1"].echo = False
    client = r.connect()
    peer = r.backends["b1"].peer
    r.send(client, b"q1")
    r.net.advance(0.2)
    r.send(client, b"q2")  # one is already waiting: the clock keeps running from q1
    r.net.advance(0.1)
    peer.sendMessage(b"a1")
    r.net.pump()
    peer.sendMessage(b"a2")  # nothing waits for it: not timed
    r.net.pump()
    t = figures(r)["b1"]
    assert sum(t.responses) == 1 and t.response_sum == pytest.approx(0.3)
    assert t.responses[RESPONSE_BUCKETS.index(0.5)] == 1  # (0.25, 0.5]
    assert r.metric("wsbalancer_backend_response_seconds_count", backend="b1") == 1
    assert r.metric("wsbalancer_backend_response_seconds_bucket", backend="b1", le="0.25") == 0
    assert r.metric("wsbalancer_backend_response_seconds_bucket", backend="b1", le="0.5") == 1
    assert r.metric("wsbalancer_backend_response_seconds_sum", backend="b1") == pytest.approx(0.3)


def test_a_slow_backend_shows_in_its_own_quantiles(rig: Any) -> None:
    r = rig(("b1", "b2"))
    fast, slow = r.connect(), r.connect()  # round-robin: b1, then b2
    r.backends["b2"].echo = False
    for _ in range(20):
        r.send(fast, b"ping")  # b1 echoes within the same pump: 0 s on this clock
        r.send(slow, b"ping")
        r.net.advance(0.08)
        r.backends["b2"].peer.sendMessage(b"pong")
        r.net.pump()
    views = {b: backend_view(r.balancer, r.state(b))["traffic"] for b in ("b1", "b2")}
    assert views["b1"]["responseTime"]["count"] == views["b2"]["responseTime"]["count"] == 20
    assert views["b1"]["responseTime"]["p99"] <= 0.00025
    assert 0.05 < views["b2"]["responseTime"]["p50"] <= 0.1
    assert views["b2"]["responseTime"]["meanSeconds"] == pytest.approx(0.08)


def test_a_failover_does_not_time_the_dead_backends_question(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.backends["b1"].echo = False
    client = r.connect()
    r.send(client, b"never answered")
    r.backends["b2"].gated = True
    r.kill("b1")
    r.net.advance(5.0)  # the re-dial takes a while
    r.backends["b2"].release()
    r.net.pump()
    r.backends["b2"].peer.sendMessage(b"hello from b2")
    r.net.pump()
    live = figures(r)
    assert sum(live["b1"].responses) == sum(live["b2"].responses) == 0


# --- close codes per leg ------------------------------------------------------------------


def test_each_legs_close_code_is_counted_on_its_backend(rig: Any) -> None:
    r = rig(("b1",))
    client = r.connect()
    client.sendClose(4001, "bye")  # an application code: "other"
    r.net.pump()
    second = r.connect()
    r.backends["b1"].peer.sendClose(1000)
    r.net.pump()
    assert second.closed_with is not None
    third = r.connect()
    third.pipe.drop()
    r.net.pump()
    closes = r.state("b1").traffic.closes
    assert closes == {
        ("client", "other"): 1,
        ("backend", "other"): 1,
        ("client", "1000"): 1,
        ("backend", "1000"): 1,
        ("client", "1006"): 1,  # dropped: no closing handshake
        ("backend", "1001"): 1,  # the balancer closed that one's backend leg
    }
    assert r.metric("wsbalancer_leg_closes_total", backend="b1", leg="client", code="1006") == 1
    view = backend_view(r.balancer, r.state("b1"))["traffic"]["closeCodes"]
    assert view == {
        "client": {"1000": 1, "1006": 1, "other": 1},
        "backend": {"1000": 1, "1001": 1, "other": 1},
    }


def test_worker_expositions_sum_the_histograms(rig: Any) -> None:
    from prometheus_client import generate_latest

    r = rig(("b1",))
    r.backends["b1"].echo = False
    client = r.connect()
    r.send(client, b"q")
    r.net.advance(0.003)
    r.backends["b1"].peer.sendMessage(b"a")
    r.net.pump()
    own = generate_latest(r.balancer.metrics.registry)
    merged = merge_prometheus([own, own]).decode()
    assert 'wsbalancer_backend_response_seconds_bucket{backend="b1",le="0.005"} 2.0' in merged
    assert 'wsbalancer_backend_response_seconds_count{backend="b1"} 2.0' in merged


def test_a_spliced_session_is_counted_per_backend_and_never_timed(rig: Any) -> None:
    r = rig(("b1",), relay__mode="splice")
    client = r.connect()
    assert r.session.spliced
    r.net.advance(0.5)
    r.send(client, b"framed")  # echoed as "framed:b1", frames passed as they are
    assert client.messages == [b"framed:b1"]
    t = figures(r)["b1"]
    assert counts(t) == (1, 1, 6, 9)
    assert sum(t.responses) == 0 and r.session.asked_at is None


def test_the_masters_json_sums_the_workers_traffic_and_migrations() -> None:
    from wsbalancer.observe.worker_metrics import merge_balancer_metrics

    def doc(messages: int, seconds: float, migrated: int) -> dict[str, Any]:
        t = BackendTraffic()
        t.add(messages, messages, 0, 0)
        t.responded(seconds)
        backend = {"id": "b1", "localSessions": 1, "traffic": traffic_view(t)}
        migrations = {"migrated": migrated, "skipped": 0, "failed": 0}
        return {"sessions": 1, "backends": [backend], "migrations": migrations}

    merged = merge_balancer_metrics(doc(2, 0.001, 1), [(1, doc(3, 0.2, 2))])
    (b1,) = merged["backends"]
    assert b1["localSessions"] == 2 and b1["traffic"]["messagesToBackend"] == 5
    assert b1["traffic"]["responseTime"]["count"] == 2
    assert merged["migrations"] == {"migrated": 3, "skipped": 0, "failed": 0}
