"""Unit: outlier ejection (consecutive gateway failures), driven by task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from wsbalancer.config import Config, ConfigError, load
from wsbalancer.upstream.outlier import MAX_EJECTION_FACTOR, OutlierDetector, OutlierState
from wsbalancer.upstream.pool import BackendPool

from .test_pool import backend


def detector(
    clock: Clock, hosts: list[str], changes: list[Any] | None = None, **settings: Any
) -> OutlierDetector:
    def record(backend_id: str, ejected: bool, state: OutlierState) -> None:
        if changes is not None:
            changes.append((clock.seconds(), backend_id, ejected))

    return OutlierDetector(clock, hosts=lambda: hosts, on_change=record, **settings)


def fail(d: OutlierDetector, backend_id: str, times: int) -> list[bool]:
    return [d.failure(backend_id) for _ in range(times)]


def test_consecutive_failures_eject_and_the_backend_returns_after_the_base_time() -> None:
    clock = Clock()
    changes: list[Any] = []
    d = detector(clock, ["a", "b"], changes)
    assert fail(d, "a", 3) == [False, False, True]
    assert d.is_ejected("a") and not d.is_ejected("b")
    assert d.ejected_until("a") == 30.0
    assert d.ejections("a") == 1
    clock.advance(29.9)
    assert d.is_ejected("a")
    clock.advance(0.1)
    assert not d.is_ejected("a")
    assert changes == [(0.0, "a", True), (30.0, "a", False)]  # one event each way


def test_a_success_resets_the_run_of_failures() -> None:
    d = detector(Clock(), ["a", "b"])
    fail(d, "a", 2)
    d.success("a")
    assert fail(d, "a", 2) == [False, False]
    assert not d.is_ejected("a")
    assert d.failure("a")  # the third in a row


def test_failures_while_ejected_do_not_extend_or_repeat_the_ejection() -> None:
    clock = Clock()
    changes: list[Any] = []
    d = detector(clock, ["a", "b"], changes)
    fail(d, "a", 3)
    assert fail(d, "a", 5) == [False] * 5  # dials already in flight when it was ejected
    assert d.ejected_until("a") == 30.0
    assert len(changes) == 1


def test_each_ejection_lasts_longer_up_to_a_cap() -> None:
    clock = Clock()
    d = detector(clock, ["a", "b"], base_ejection=10.0)
    periods = []
    for _ in range(MAX_EJECTION_FACTOR + 2):
        fail(d, "a", 3)
        until = d.ejected_until("a")
        assert until is not None
        periods.append(until - clock.seconds())
        clock.advance(until - clock.seconds())  # returns, and fails again at once
        assert not d.is_ejected("a")
    assert periods[:4] == [10.0, 20.0, 30.0, 40.0]
    assert periods[-2:] == [10.0 * MAX_EJECTION_FACTOR] * 2


def test_time_served_well_after_a_return_shortens_the_next_ejection() -> None:
    clock = Clock()
    d = detector(clock, ["a", "b"], base_ejection=10.0)
    for _ in range(3):  # ejected three times: 10, 20, 30 s
        fail(d, "a", 3)
        clock.advance(d.ejected_until("a") - clock.seconds())  # type: ignore[operator]
    clock.advance(20.0)  # two base periods back in service
    fail(d, "a", 3)
    assert d.ejected_until("a") == clock.seconds() + 20.0  # 3 - 2 + 1


def test_the_share_of_the_pool_that_may_be_ejected_is_capped() -> None:
    d = detector(Clock(), ["a", "b", "c", "d"], max_ejection_percent=50)
    assert fail(d, "a", 3)[-1]
    assert fail(d, "b", 3)[-1]
    assert fail(d, "c", 3) == [False] * 3  # two of four is the cap
    assert not d.is_ejected("c")
    assert fail(d, "c", 1) == [False]


def test_at_least_one_backend_of_two_may_be_ejected_but_never_a_lone_one() -> None:
    pair = detector(Clock(), ["a", "b"], max_ejection_percent=10)
    assert fail(pair, "a", 3)[-1]  # 10% of two rounds down, but one may always go
    assert not fail(pair, "b", 3)[-1]
    lone = detector(Clock(), ["a"], max_ejection_percent=100)
    assert fail(lone, "a", 10) == [False] * 10  # ejecting it would only turn clients away


def test_a_backend_freed_from_ejection_makes_room_for_another() -> None:
    clock = Clock()
    d = detector(clock, ["a", "b"])
    fail(d, "a", 3)
    assert not fail(d, "b", 3)[-1]
    clock.advance(30)
    assert d.failure("b")  # b's run kept counting; a is back, so b may go now


def test_zero_turns_ejection_off_and_a_reload_to_zero_returns_the_ejected() -> None:
    for settings in (
        {"consecutive_failures": 0},
        {"base_ejection": 0.0},
        {"max_ejection_percent": 0.0},
    ):
        d = detector(Clock(), ["a", "b"], **settings)
        assert fail(d, "a", 10) == [False] * 10
    clock = Clock()
    changes: list[Any] = []
    d = detector(clock, ["a", "b"], changes)
    fail(d, "a", 3)
    d.configure(0, 30.0, 50.0)
    assert not d.is_ejected("a")
    assert changes == [(0.0, "a", True), (0.0, "a", False)]
    assert not clock.getDelayedCalls()


def test_forgetting_a_backend_cancels_its_return() -> None:
    clock = Clock()
    d = detector(clock, ["a", "b"])
    fail(d, "a", 3)
    d.forget("a")
    assert not d.is_ejected("a") and not clock.getDelayedCalls()


def test_the_pick_skips_an_ejected_backend() -> None:
    clock = Clock()
    pool = BackendPool([backend("a"), backend("b")], seconds=clock.seconds)
    pool.outliers = OutlierDetector(clock, hosts=lambda: list(pool.backends))
    for _ in range(3):
        pool.outliers.failure("a")
    assert not pool.usable(pool.backends["a"])
    assert all(pool.pick().id == "b" for _ in range(10))  # type: ignore[union-attr]
    assert pool.last_resort(["b"]) is pool.backends["a"]  # failover may still try it
    clock.advance(30)
    assert pool.usable(pool.backends["a"])
    pool.remove("a")
    assert not clock.getDelayedCalls()


def test_outlier_and_dial_budget_settings_are_read_and_checked() -> None:
    defaults = Config(backends=())
    assert defaults.outlier_consecutive_failures == 3
    assert defaults.outlier_base_ejection == 30.0
    assert defaults.outlier_max_ejection_percent == 50.0
    assert defaults.backend_total_timeout == 30.0
    config = load(
        None,
        environ={},
        overrides=[
            ("outlier.consecutive_failures", "0", "test"),
            ("outlier.base_ejection", "1m", "test"),
            ("outlier.max_ejection_percent", "25%", "test"),
            ("timeouts.backend_total", "12s", "test"),
        ],
        backends=["ws://127.0.0.1:9"],
    )
    assert config.outlier_consecutive_failures == 0
    assert config.outlier_base_ejection == 60.0
    assert config.outlier_max_ejection_percent == 25.0
    assert config.backend_total_timeout == 12.0
    for key, value in (
        ("outlier.max_ejection_percent", "150"),
        ("outlier.consecutive_failures", "-1"),
        ("timeouts.backend_total", "0"),
    ):
        try:
            load(None, environ={}, overrides=[(key, value, "test")], backends=["ws://h:1"])
        except ConfigError as e:
            assert key in str(e)
        else:
            raise AssertionError(f"{key}: {value} was accepted")
