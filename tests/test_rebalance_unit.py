"""Unit: active rebalancing, `migrate.replay_first` and `reload.removed_sessions: migrate`,
on the in-memory rig of test_session_unit (real balancer and legs, no sockets, the memory
reactor's clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from wsbalancer.config import BackendConfig
from wsbalancer.relay.rebalance import Rebalancer

from .rig import FakeBackend, outcome_of

pytestmark = pytest.mark.timeout(20)

REBALANCE = {"rebalance__enabled": "true", "rebalance__min_age": "0"}


def _add(r: Any, name: str) -> Any:
    """A new backend on the rig's network, added at run time (what the admin API does)."""
    backend = FakeBackend(name, f"10.0.1.{len(r.backends) + 1}")
    r.backends[name] = backend
    r.net.listen(backend.host, backend.port, backend.build)
    return r.balancer.add_backend(BackendConfig(name, backend.url, None))


def _spread(r: Any) -> dict[str, int]:
    return {b.id: b.local_sessions for b in r.pool.backends.values()}


def _run(r: Any, seconds: int) -> None:
    """Tick the rebalancer once a second for `seconds`, the network pumped in between."""
    for _ in range(seconds):
        r.balancer.rebalancer.tick()
        r.net.pump()
        r.net.advance(1.0)


def test_a_backend_added_gets_its_share_and_no_client_notices(rig: Any) -> None:
    r = rig(("b1", "b2", "b3"), **REBALANCE)
    clients = [r.connect() for _ in range(30)]
    assert _spread(r) == {"b1": 10, "b2": 10, "b3": 10}
    _add(r, "b4")
    _run(r, 8)
    spread = _spread(r)
    assert sorted(spread.values()) == [7, 7, 8, 8] and spread["b4"] in (7, 8)
    # Each client still talks to whichever backend it is on now, and was never closed.
    for i, client in enumerate(clients):
        r.send(client, b"n%d" % i)
    assert all(c.closed_with is None and c.messages[-1].startswith(b"n") for c in clients)
    assert r.metric("wsbalancer_migrations_total", outcome="migrated") == spread["b4"]
    assert r.events.of("closed") == []
    # Within the tolerance: nothing more moves.
    _run(r, 5)
    assert _spread(r) == spread


def test_moves_are_paced_by_max_moves_per_second(rig: Any) -> None:
    r = rig(("b1", "b2"), rebalance__max_moves_per_second="2", **REBALANCE)
    for _ in range(10):
        r.connect()
    r.balancer.remove_backend(r.state("b2"), "failover")
    r.net.pump()
    assert _spread(r) == {"b1": 10}
    _add(r, "b2")
    r.balancer.rebalancer.tick()
    r.net.pump()
    assert _spread(r)["b2"] == 2  # two this second ...
    r.net.advance(1.0)
    r.balancer.rebalancer.tick()
    r.net.pump()
    assert _spread(r)["b2"] == 4  # ... and two the next


def test_young_sessions_stay_and_no_session_is_moved_twice(rig: Any) -> None:
    r = rig(("b1", "b2"), rebalance__enabled="true", rebalance__min_age="30")
    for _ in range(6):
        r.connect()
    r.balancer.remove_backend(r.state("b2"), "failover")
    r.net.pump()
    _add(r, "b2")
    _run(r, 5)
    assert _spread(r) == {"b1": 6, "b2": 0}  # all younger than min_age
    r.net.advance(30.0)
    _run(r, 8)
    assert _spread(r) == {"b1": 3, "b2": 3}
    moved = {s.id for s in r.balancer.sessions.values() if s.backend_id == "b2"}
    assert r.balancer.rebalancer.moved == moved
    # b2 now loses its sessions: the ones rebalancing moved are not moved back.
    r.balancer.remove_backend(r.state("b2"), "failover")
    r.net.pump()
    _add(r, "b2")
    r.net.advance(30.0)
    _run(r, 8)
    assert _spread(r) == {"b1": 3, "b2": 3}
    assert not moved & {s.id for s in r.balancer.sessions.values() if s.backend_id == "b2"}


def test_an_instance_moves_only_its_share_of_a_backends_excess(rig: Any) -> None:
    r = rig(("b1", "b2"), **REBALANCE)
    for _ in range(10):
        r.connect()
    r.balancer.remove_backend(r.state("b2"), "failover")
    r.net.pump()
    _add(r, "b2")
    # b1 reports 40: 10 of ours, 30 of three other instances. The fleet's mean is 20 a
    # backend, so b1 is 20 over; our share of that is a quarter (our 10 of its 40).
    now = r.net.reactor.seconds()
    b1 = r.state("b1")
    b1.others, b1.reported_at = 30, now
    plan = Rebalancer(r.balancer, random.Random(1)).plan(r.balancer.lanes["default"], now)
    assert len(plan) == 5 and {to.id for _, to in plan} == {"b2"}


def test_old_legs_still_draining_do_not_count_as_load(rig: Any) -> None:
    r = rig(("b1", "b2"), **REBALANCE)
    for _ in range(4):
        r.connect()
    r.balancer.remove_backend(r.state("b2"), "failover")
    r.net.pump()
    _add(r, "b2")
    r.balancer.rebalancer.tick()
    r.net.pump()
    # Two moved; their old legs on b1 stay open until quiet, and are not load any more.
    b1 = r.state("b1")
    assert (b1.local_sessions, b1.leaving, r.state("b2").local_sessions) == (4, 2, 2)
    lane = r.balancer.lanes["default"]
    assert r.balancer.rebalancer.plan(lane, r.net.reactor.seconds()) == []
    r.net.advance(1.0)
    r.net.pump()
    r.net.advance(1.0)
    assert (b1.local_sessions, b1.leaving) == (2, 0)


def test_a_balanced_pool_is_left_alone(rig: Any) -> None:
    r = rig(("b1", "b2", "b3"), **REBALANCE)
    for _ in range(31):
        r.connect()
    assert Rebalancer(r.balancer).plan(r.balancer.lanes["default"], 0.0) == []


def test_rebalancing_off_moves_nothing(rig: Any) -> None:
    r = rig(("b1", "b2"))
    for _ in range(6):
        r.connect()
    r.balancer.remove_backend(r.state("b2"), "failover")
    r.net.pump()
    _add(r, "b2")
    _run(r, 5)
    assert _spread(r) == {"b1": 6, "b2": 0}


# --- migrate.replay_first -----------------------------------------------------------------


def test_a_migrated_session_replays_its_first_messages_to_the_new_backend(rig: Any) -> None:
    r = rig(("b1", "b2"), migrate__replay_first="2")
    client = r.connect()
    r.send(client, b"auth", b"subscribe", b"m1")
    assert r.backends["b1"].received == [b"auth", b"subscribe", b"m1"]
    assert outcome_of(r.session.migrate("rebalance")) == []
    r.net.pump()
    r.send(client, b"m2")
    # The new backend hears the first two again, then only what came after the move.
    assert r.backends["b2"].received == [b"auth", b"subscribe", b"m2"]
    assert client.messages[-1] == b"m2:b2" and client.closed_with is None


def test_a_failed_over_session_replays_its_first_messages_before_what_was_held(
    rig: Any,
) -> None:
    r = rig(("b1", "b2"), migrate__replay_first="1")
    client = r.connect()
    r.send(client, b"auth", b"m1")
    r.backends["b2"].gated = True
    r.kill("b1")
    r.send(client, b"held")
    r.backends["b2"].release()
    r.net.pump()
    assert r.backends["b2"].received == [b"auth", b"held"]


def test_held_messages_count_among_the_first_ones_and_are_sent_once(rig: Any) -> None:
    r = rig(("b1", "b2", "b3"), migrate__replay_first="2")
    client = r.connect()
    r.send(client, b"auth")
    r.backends["b2"].gated = True
    r.kill("b1")
    r.send(client, b"subscribe")  # held while b2 is dialled
    r.backends["b2"].release()
    r.net.pump()
    assert r.backends["b2"].received == [b"auth", b"subscribe"]
    r.send(client, b"m1")
    outcome = outcome_of(r.session.migrate("rebalance"))
    r.net.pump()
    assert outcome == ["migrated"] and r.session.backend_id == "b3"
    assert r.backends["b3"].received == [b"auth", b"subscribe"]


def test_without_replay_first_the_fast_path_is_kept(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    assert "forward" not in vars(r.session.client) and r.session.replay is None
    r.send(client, b"m1")
    assert r.backends["b1"].received == [b"m1"]


def test_after_its_first_messages_the_client_leg_takes_the_fast_path_again(rig: Any) -> None:
    r = rig(("b1", "b2"), migrate__replay_first="1")
    client = r.connect()
    leg = r.session.client
    assert "forward" in vars(leg) and leg.forwards_as_is is False
    r.send(client, b"auth")
    assert "forward" not in vars(leg) and leg.forwards_as_is is True
    r.send(client, b"m1")
    assert r.session.replay == [(b"auth", False)]


# --- reload.removed_sessions: migrate -----------------------------------------------------


def test_a_removed_backends_sessions_migrate_and_it_is_then_forgotten(rig: Any) -> None:
    r = rig(("b1", "b2"), reload__removed_sessions="migrate")
    clients = [r.connect() for _ in range(4)]
    assert r.balancer.remove_backend(r.state("b1"), "migrate") == 2
    r.net.pump()
    r.net.advance(1.0)
    r.net.pump()
    r.net.advance(1.0)  # the old legs quiet for a period: closed with 1001
    r.net.pump()
    assert "b1" not in r.pool.backends
    for i, client in enumerate(clients):
        r.send(client, b"n%d" % i)
    assert [c.messages[-1] for c in clients] == [b"n%d:b2" % i for i in range(4)]
    assert all(c.closed_with is None for c in clients)
