"""Unit tests of the backend pool: least-loaded with local accounting, reports, staleness,
weights, strategies, health and the circuit breaker. Time is a fake clock, randomness seeded."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from wsbalancer.config import BackendConfig
from wsbalancer.upstream.pool import (
    CLOSED,
    DOWN,
    HALF_OPEN,
    OPEN,
    UP,
    BackendPool,
    BackendState,
    PodInfo,
)


class FakeTime:
    """A `seconds` function the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def backend(name: str, weight: float = 1.0) -> BackendConfig:
    return BackendConfig(
        id=name, url=f"ws://{name}:9000", metric_url=f"http://{name}:9000/metric", weight=weight
    )


def make_pool(
    names: str = "abc", weights: dict[str, float] | None = None, seed: int = 1, **kwargs: Any
) -> tuple[BackendPool, FakeTime]:
    time = FakeTime()
    configs = [backend(n, (weights or {}).get(n, 1.0)) for n in names]
    pool = BackendPool(configs, seconds=time, rng=random.Random(seed), **kwargs)
    return pool, time


def pick_id(pool: BackendPool, exclude: tuple[str, ...] = ()) -> str:
    chosen = pool.pick(exclude)
    assert chosen is not None
    return chosen.id


def open_session(pool: BackendPool) -> BackendState:
    chosen = pool.pick()
    assert chosen is not None
    pool.dial_started(chosen)
    pool.dial_succeeded(chosen)
    return chosen


def report(pool: BackendPool, name: str, count: int) -> None:
    pool.poll_succeeded(pool.backends[name], PodInfo(count, f"pod-{name}"))


def estimate(pool: BackendPool, name: str) -> int:
    return pool.backends[name].estimate(pool.seconds(), pool.count_ttl)


# --- least-loaded with local accounting ----------------------------------------------------


def test_sequential_sessions_spread_evenly() -> None:
    pool, _ = make_pool()
    for _ in range(60):
        open_session(pool)
    assert {b.id: b.local_sessions for b in pool.backends.values()} == {"a": 20, "b": 20, "c": 20}
    assert {b.id: b.picks for b in pool.backends.values()} == {"a": 20, "b": 20, "c": 20}
    assert all(b.dialing == 0 for b in pool.backends.values())


def test_burst_of_dials_in_flight_spreads_evenly() -> None:
    pool, _ = make_pool()
    for _ in range(60):
        chosen = pool.pick()
        assert chosen is not None
        pool.dial_started(chosen)  # none has succeeded yet: the dials themselves count
    assert {b.id: b.dialing for b in pool.backends.values()} == {"a": 20, "b": 20, "c": 20}
    assert {n: estimate(pool, n) for n in "abc"} == {"a": 20, "b": 20, "c": 20}


def test_failed_dial_releases_its_count() -> None:
    pool, _ = make_pool("a")
    a = pool.backends["a"]
    pool.dial_started(a)
    assert estimate(pool, "a") == 1
    pool.dial_failed(a, counts_against_breaker=False)
    assert (a.dialing, a.local_sessions, estimate(pool, "a")) == (0, 0, 0)


def test_closed_sessions_free_their_backend() -> None:
    pool, _ = make_pool("ab")
    sessions = [open_session(pool) for _ in range(4)]
    for s in sessions:
        if s.id == "a":
            pool.session_closed(s)
    assert estimate(pool, "a") == 0
    assert estimate(pool, "b") == 2
    assert [open_session(pool).id for _ in range(2)] == ["a", "a"]


def test_reported_sessions_of_other_instances_count() -> None:
    pool, _ = make_pool()
    report(pool, "a", 10)
    report(pool, "b", 0)
    report(pool, "c", 0)
    picked = Counter(open_session(pool).id for _ in range(20))
    assert picked == {"b": 10, "c": 10}
    assert {n: estimate(pool, n) for n in "abc"} == {"a": 10, "b": 10, "c": 10}


def test_a_report_replaces_the_estimate_without_counting_our_sessions_twice() -> None:
    pool, _ = make_pool("a")
    for _ in range(5):
        open_session(pool)
    report(pool, "a", 12)  # our 5 plus 7 of other instances
    assert estimate(pool, "a") == 12
    report(pool, "a", 9)  # other instances closed 3
    assert estimate(pool, "a") == 9


def test_sessions_opened_while_a_poll_was_in_flight_are_kept() -> None:
    pool, _ = make_pool("a")
    for _ in range(5):
        open_session(pool)
    # The backend answered when only 5 were open; 3 more opened before the answer arrived.
    for _ in range(3):
        open_session(pool)
    report(pool, "a", 5)
    assert estimate(pool, "a") == 8  # never below what this instance itself has open
    # and each later session still adds one
    open_session(pool)
    assert estimate(pool, "a") == 9


def test_dials_in_flight_add_to_a_report() -> None:
    pool, _ = make_pool("a")
    report(pool, "a", 4)
    pool.dial_started(pool.backends["a"])
    pool.dial_started(pool.backends["a"])
    assert estimate(pool, "a") == 6


# --- failed polls are never a zero ----------------------------------------------------------


def test_failed_poll_keeps_the_estimate_and_flags_stale() -> None:
    pool, time = make_pool("ab", count_ttl=30.0)
    report(pool, "a", 50)
    report(pool, "b", 10)
    time.now += 5
    pool.poll_failed(pool.backends["a"], "HTTP 500")
    a = pool.backends["a"]
    assert a.stale is True
    assert a.last_poll_error == "HTTP 500"
    assert estimate(pool, "a") == 50
    assert open_session(pool).id == "b"  # the failing backend does not look empty


def test_stale_estimate_falls_back_to_local_sessions_after_count_ttl() -> None:
    pool, time = make_pool("a", count_ttl=30.0)
    for _ in range(3):
        open_session(pool)
    report(pool, "a", 40)
    pool.poll_failed(pool.backends["a"], "timeout")
    time.now += 30
    assert estimate(pool, "a") == 40  # still within the TTL
    time.now += 0.5
    assert estimate(pool, "a") == 3  # only what this instance knows for sure
    assert pool.backends["a"].stale is True


def test_successful_poll_clears_stale() -> None:
    pool, _ = make_pool("a")
    report(pool, "a", 1)
    pool.poll_failed(pool.backends["a"], "HTTP 502")
    report(pool, "a", 2)
    a = pool.backends["a"]
    assert (a.stale, a.last_poll_error, a.reported) == (False, None, 2)
    assert a.pod is not None and a.pod.pod_name == "pod-a"


def test_no_count_answer_is_alive_and_stale_and_balanced_on_our_own_sessions() -> None:
    pool, time = make_pool("ab", count_ttl=30.0)
    report(pool, "b", 4)
    a = pool.backends["a"]
    pool.poll_no_count(a, "no count endpoint (HTTP 404)")
    assert (a.health, a.health_confirmed, a.stale) == (UP, True, True)
    assert (a.last_poll_error, a.poll_failures, a.reported) == (
        "no count endpoint (HTTP 404)",
        0,
        None,
    )
    picked = Counter(open_session(pool).id for _ in range(6))
    assert picked == {"a": 5, "b": 1}  # a's own 5 against b's 4 + 1
    time.now += 31  # b's report fades too: both on our own sessions
    assert (estimate(pool, "a"), estimate(pool, "b")) == (5, 1)


def test_no_count_answers_reset_the_fall_count_and_count_towards_rise() -> None:
    pool, _ = make_pool("a", fall=2, rise=2)
    a = pool.backends["a"]
    report(pool, "a", 1)
    pool.poll_failed(a, "HTTP 503")
    pool.poll_no_count(a, "no count endpoint (HTTP 404)")
    pool.poll_failed(a, "HTTP 503")
    assert a.health == UP  # the answer in between showed it alive
    pool.poll_failed(a, "HTTP 503")
    assert a.health == DOWN
    pool.poll_no_count(a, "no count endpoint (HTTP 404)")
    assert a.health == DOWN
    pool.poll_no_count(a, "no count endpoint (HTTP 404)")
    assert a.health == UP and pool.pick() is a


# --- weights, ties and strategies -----------------------------------------------------------


def test_weight_two_gets_twice_the_sessions() -> None:
    pool, _ = make_pool("ab", weights={"a": 2.0})
    picked = Counter(open_session(pool).id for _ in range(30))
    assert picked == {"a": 20, "b": 10}


def test_weights_divide_reported_load() -> None:
    pool, _ = make_pool("ab", weights={"a": 4.0})
    report(pool, "a", 13)  # 3.25 per unit of weight
    report(pool, "b", 2)
    order = [open_session(pool).id for _ in range(5)]
    # b: 2 -> 3 -> 4; then a's 3.25 -> 3.5 -> 3.75 -> 4.0 stays below b's 4 until the end
    assert order == ["b", "b", "a", "a", "a"]


def test_ties_are_broken_randomly() -> None:
    pool, _ = make_pool("abcd", seed=7)
    # Nothing is counted, so every pick sees the same four-way tie.
    first = [pick_id(pool) for _ in range(40)]
    assert set(first) == set("abcd")
    other, _ = make_pool("abcd", seed=8)
    second = [pick_id(other) for _ in range(40)]
    assert first != second
    same, _ = make_pool("abcd", seed=7)
    assert [pick_id(same) for _ in range(40)] == first


def test_power_of_two_never_picks_the_most_loaded_and_sometimes_the_middle() -> None:
    pool, _ = make_pool(strategy="power-of-two", seed=3)
    report(pool, "a", 100)
    report(pool, "b", 102)  # within the catch-up slack of a
    report(pool, "c", 110)
    picked = Counter(pick_id(pool) for _ in range(300))
    assert picked["c"] == 0
    assert picked["b"] > 0  # unlike least-loaded, which would only ever pick a
    assert picked["a"] > picked["b"]


def test_power_of_two_fills_a_backend_far_behind_first() -> None:
    # An empty newcomer beside three full backends: sampling alone would offer it half the
    # time; every pick goes to it until it is within the slack.
    pool, _ = make_pool("abcd", strategy="power-of-two", seed=5)
    for backend_id in "abc":
        report(pool, backend_id, 100)
    report(pool, "d", 0)
    picks = []
    for _ in range(97):
        chosen = pool.pick()
        assert chosen is not None
        pool.dial_started(chosen)
        picks.append(chosen.id)
    assert picks.count("d") >= 95 and pool.load(pool.backends["d"]) >= 95


def test_power_of_two_with_two_backends_is_least_loaded() -> None:
    pool, _ = make_pool("ab", strategy="power-of-two")
    report(pool, "a", 3)
    report(pool, "b", 1)
    assert {pick_id(pool) for _ in range(20)} == {"b"}


def test_smooth_weighted_round_robin_order() -> None:
    pool, _ = make_pool("abc", weights={"a": 5.0}, strategy="round-robin")
    report(pool, "a", 1000)  # round robin ignores load
    order = "".join(pick_id(pool) for _ in range(14))
    assert order == "aabacaa" * 2


def test_round_robin_skips_unusable_backends() -> None:
    pool, _ = make_pool("abc", strategy="round-robin")
    pool.backends["b"].draining = True
    order = [pick_id(pool) for _ in range(6)]
    assert order == ["a", "c", "a", "c", "a", "c"]


# --- enabled, draining, exclusion ------------------------------------------------------------


def test_draining_and_disabled_backends_are_not_picked() -> None:
    pool, _ = make_pool()
    pool.backends["a"].draining = True
    pool.backends["b"].enabled = False
    assert {open_session(pool).id for _ in range(10)} == {"c"}
    pool.backends["c"].draining = True
    assert pool.pick() is None
    assert pool.any_usable() is False


def test_exclude_skips_backends_already_tried() -> None:
    pool, _ = make_pool()
    report(pool, "a", 0)
    report(pool, "b", 1)
    report(pool, "c", 2)
    assert pick_id(pool, exclude=("a",)) == "b"
    assert pick_id(pool, exclude=("a", "b")) == "c"
    assert pool.pick(exclude=["a", "b", "c"]) is None


def test_removed_backend_is_not_picked_and_re_adding_keeps_counts() -> None:
    pool, _ = make_pool("ab")
    open_session(pool)
    open_session(pool)
    kept = pool.add(backend("a", weight=3.0))
    assert kept is pool.backends["a"] and kept.local_sessions == 1 and kept.config.weight == 3.0
    pool.remove("b")
    assert {pick_id(pool) for _ in range(5)} == {"a"}


# --- health ------------------------------------------------------------------------------------


def test_unconfirmed_backend_goes_down_on_the_first_failed_poll() -> None:
    pool, _ = make_pool("ab", fall=3)
    changes: list[tuple[str, str, str]] = []
    pool.on_state_change = lambda b, kind, state: changes.append((b.id, kind, state))
    pool.poll_failed(pool.backends["a"], "connection refused")
    assert pool.backends["a"].health == DOWN
    assert changes == [("a", "health", DOWN)]
    assert {pick_id(pool) for _ in range(5)} == {"b"}


def test_confirmed_backend_goes_down_after_fall_failures_and_up_after_rise() -> None:
    pool, _ = make_pool("a", fall=3, rise=2)
    a = pool.backends["a"]
    report(pool, "a", 0)
    pool.poll_failed(a, "x")
    pool.poll_failed(a, "x")
    assert a.health == UP and pool.pick() is a
    pool.poll_failed(a, "x")
    assert a.health == DOWN
    assert pool.pick() is None
    assert pool.any_usable() is False
    report(pool, "a", 0)
    assert a.health == DOWN
    report(pool, "a", 0)
    assert a.health == UP
    assert pool.pick() is a


def test_last_resort_offers_backends_marked_down_but_not_those_an_operator_took_out() -> None:
    pool, _ = make_pool("abcd", fall=1)
    for name in "abcd":
        report(pool, name, 0)
    a, b, c, d = (pool.backends[n] for n in "abcd")
    pool.poll_failed(a, "x")  # down by the health checks
    for _ in range(10):
        pool.dial_failed(b, counts_against_breaker=True)  # its breaker opens
    c.enabled = False
    d.draining = True
    assert pool.breaker_state(b) == OPEN
    assert pool.pick() is None
    offered = {pool.last_resort(exclude=tried).id for tried in ((), ("a",), ("b",))}  # type: ignore[union-attr]
    assert offered == {"a", "b"}
    assert pool.last_resort(exclude=("a", "b")) is None
    assert pool.breaker_state(b) == OPEN  # offering it changed nothing


def test_a_success_between_failures_resets_the_fall_count() -> None:
    pool, _ = make_pool("a", fall=2)
    a = pool.backends["a"]
    report(pool, "a", 0)
    pool.poll_failed(a, "x")
    report(pool, "a", 0)
    pool.poll_failed(a, "x")
    assert a.health == UP


def test_a_failure_while_rising_restarts_the_rise_count() -> None:
    pool, _ = make_pool("a", rise=2)
    a = pool.backends["a"]
    pool.poll_failed(a, "x")
    report(pool, "a", 0)
    pool.poll_failed(a, "x")
    report(pool, "a", 0)
    assert a.health == DOWN
    report(pool, "a", 0)
    assert a.health == UP


# --- circuit breaker ------------------------------------------------------------------------


def test_breaker_opens_after_threshold_connect_failures() -> None:
    pool, _ = make_pool("ab", breaker_threshold=3)
    a = pool.backends["a"]
    for _ in range(2):
        pool.dial_started(a)
        pool.dial_failed(a, counts_against_breaker=True)
    assert a.breaker == CLOSED
    pool.dial_started(a)
    pool.dial_failed(a, counts_against_breaker=True)
    assert a.breaker == OPEN
    assert {pick_id(pool) for _ in range(5)} == {"b"}


def test_a_success_resets_the_consecutive_failure_count() -> None:
    pool, _ = make_pool("a", breaker_threshold=3)
    a = pool.backends["a"]
    for outcome in (False, False, True, False, False):
        pool.dial_started(a)
        if outcome:
            pool.dial_succeeded(a)
        else:
            pool.dial_failed(a, counts_against_breaker=True)
    assert a.breaker == CLOSED


def test_rejections_that_do_not_count_never_open_the_breaker() -> None:
    pool, _ = make_pool("a", breaker_threshold=2)
    a = pool.backends["a"]
    for _ in range(10):  # e.g. the backend answered 403
        pool.dial_started(a)
        pool.dial_failed(a, counts_against_breaker=False)
    assert (a.breaker, a.connect_failures, a.dialing) == (CLOSED, 0, 0)
    assert pool.pick() is a


def open_breaker(pool: BackendPool, name: str) -> BackendState:
    b = pool.backends[name]
    for _ in range(pool.breaker_threshold):
        pool.dial_started(b)
        pool.dial_failed(b, counts_against_breaker=True)
    assert b.breaker == OPEN
    return b


def test_half_open_after_cooldown_allows_exactly_one_trial_and_closes_on_success() -> None:
    pool, time = make_pool("a", breaker_threshold=2, breaker_cooldown=10.0)
    a = open_breaker(pool, "a")
    time.now += 9.9
    assert pool.pick() is None
    assert pool.any_usable() is False
    time.now += 0.1
    assert pool.any_usable() is True
    trial = pool.pick()
    assert trial is a and a.breaker == HALF_OPEN
    pool.dial_started(a)
    assert pool.pick() is None  # the trial is in flight: no second one
    pool.dial_succeeded(a)
    assert a.breaker == CLOSED
    assert pool.pick() is a
    pool.dial_started(a)
    assert pool.pick() is a  # closed again: any number of dials


def test_failed_trial_reopens_with_doubled_cooldown() -> None:
    pool, time = make_pool("a", breaker_threshold=2, breaker_cooldown=10.0)
    changes: list[str] = []
    pool.on_state_change = lambda b, kind, state: changes.append(f"{kind}:{state}")
    a = open_breaker(pool, "a")
    time.now += 10
    assert pool.pick() is a
    pool.dial_started(a)
    pool.dial_failed(a, counts_against_breaker=True)  # the trial failed
    assert a.breaker == OPEN
    time.now += 19.9
    assert pool.pick() is None
    time.now += 0.1
    assert pool.pick() is a
    pool.dial_started(a)
    pool.dial_failed(a, counts_against_breaker=True)
    time.now += 39.9  # doubled again
    assert pool.pick() is None
    time.now += 0.1
    assert pool.pick() is a
    pool.dial_started(a)
    pool.dial_succeeded(a)
    assert changes == [
        "breaker:open",
        "breaker:half-open",
        "breaker:open",
        "breaker:half-open",
        "breaker:open",
        "breaker:half-open",
        "breaker:closed",
    ]
    # after a success the back-off starts again from one cool-down
    open_breaker(pool, "a")
    time.now += 10
    assert pool.pick() is a


def test_any_usable() -> None:
    pool, _ = make_pool("ab", breaker_threshold=1)
    assert pool.any_usable() is True
    pool.poll_failed(pool.backends["a"], "x")  # never confirmed: down
    assert pool.any_usable() is True
    open_breaker(pool, "b")
    assert pool.any_usable() is False
    assert pool.pick() is None


def test_empty_pool_picks_nothing() -> None:
    pool, _ = make_pool("")
    assert pool.pick() is None
    assert pool.any_usable() is False
