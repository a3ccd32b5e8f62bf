"""Outlier ejection (Envoy's `consecutive_gateway_failure`): plain Python, time injected.

A backend whose handshakes fail `consecutive_failures` times in a row (connect refused or
timed out, handshake timed out, a 5xx or garbled answer) is ejected: new sessions skip it for
`base_ejection` times the number of times it has been ejected (up to `MAX_EJECTION_FACTOR`
times), then it returns by itself. A success resets the run of failures; each full
`base_ejection` period it then stays in service takes one off the multiplier again.

At most `max_ejection_percent` of a pool's backends are ejected at once, and at least one
when the pool has two or more; a lone backend is never ejected, since that would only turn
its clients away. Any of the three settings at 0 turns ejection off.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

# Ejections grow by `base_ejection` each time, up to this many (Envoy: 300 s at 30 s).
MAX_EJECTION_FACTOR = 10


@dataclass
class OutlierState:
    """What the detector knows of one backend."""

    failures: int = 0  # gateway failures in a row
    ejections: int = 0  # times ejected, for the metrics
    multiplier: int = 0  # the next ejection lasts (multiplier + 1) x base_ejection
    ejected_until: float | None = None
    returned_at: float | None = None
    timer: Any = None


class OutlierDetector:
    """Counts gateway failures per backend and ejects the ones that keep failing.

    `hosts` gives the ids of the pool's backends now (the share is of those);
    `on_change(backend_id, ejected, state)` is called once per ejection and per return."""

    def __init__(
        self,
        clock: Any,
        hosts: Callable[[], Collection[str]],
        consecutive_failures: int = 3,
        base_ejection: float = 30.0,
        max_ejection_percent: float = 50.0,
        on_change: Callable[[str, bool, OutlierState], None] | None = None,
    ) -> None:
        self.clock = clock
        self.hosts = hosts
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection_percent = max_ejection_percent
        self.on_change = on_change
        self.states: dict[str, OutlierState] = {}

    @property
    def enabled(self) -> bool:
        """Whether any backend can be ejected with these settings."""
        return (
            self.consecutive_failures > 0
            and self.base_ejection > 0
            and self.max_ejection_percent > 0
        )

    def configure(
        self, consecutive_failures: int, base_ejection: float, max_ejection_percent: float
    ) -> None:
        """New settings (a reload); turned off, every ejected backend returns now."""
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection_percent = max_ejection_percent
        if not self.enabled:
            for backend_id, state in list(self.states.items()):
                state.failures = 0
                if state.ejected_until is not None:
                    self._return(backend_id)

    def is_ejected(self, backend_id: str) -> bool:
        """Whether new sessions skip this backend now."""
        state = self.states.get(backend_id)
        return state is not None and state.ejected_until is not None

    def ejected_until(self, backend_id: str) -> float | None:
        """When an ejected backend returns (clock seconds), or None."""
        state = self.states.get(backend_id)
        return state.ejected_until if state is not None else None

    def ejections(self, backend_id: str) -> int:
        """How many times this backend has been ejected."""
        state = self.states.get(backend_id)
        return state.ejections if state is not None else 0

    def success(self, backend_id: str) -> None:
        """The backend answered a handshake (101, or a status its application meant)."""
        state = self.states.get(backend_id)
        if state is not None:
            state.failures = 0

    def failure(self, backend_id: str) -> bool:
        """A gateway failure of this backend; True when it ejected the backend."""
        if not self.enabled:
            return False
        state = self.states.setdefault(backend_id, OutlierState())
        state.failures += 1
        if state.ejected_until is not None or state.failures < self.consecutive_failures:
            return False
        if not self._room_for_one_more():
            return False
        self._eject(backend_id, state)
        return True

    def forget(self, backend_id: str) -> None:
        """The backend left the pool."""
        state = self.states.pop(backend_id, None)
        if state is not None and state.timer is not None and state.timer.active():
            state.timer.cancel()

    def stop(self) -> None:
        """Cancel the return timers (the balancer is stopping)."""
        for state in self.states.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None

    def _room_for_one_more(self) -> bool:
        hosts = set(self.hosts())
        if len(hosts) < 2:
            return False
        allowed = max(1, int(len(hosts) * self.max_ejection_percent / 100))
        ejected = sum(1 for backend_id in hosts if self.is_ejected(backend_id))
        return ejected < allowed

    def _eject(self, backend_id: str, state: OutlierState) -> None:
        now = self.clock.seconds()
        if state.returned_at is not None:
            # Time served well since the last return earns the multiplier back, step by step.
            earned = int((now - state.returned_at) / self.base_ejection)
            state.multiplier = max(0, state.multiplier - earned)
        state.multiplier = min(state.multiplier + 1, MAX_EJECTION_FACTOR)
        period = self.base_ejection * state.multiplier
        state.ejections += 1
        state.ejected_until = now + period
        state.timer = self.clock.callLater(period, self._return, backend_id)
        if self.on_change is not None:
            self.on_change(backend_id, True, state)

    def _return(self, backend_id: str) -> None:
        state = self.states.get(backend_id)
        if state is None or state.ejected_until is None:
            return
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None
        state.ejected_until = None
        state.failures = 0
        state.returned_at = self.clock.seconds()
        if self.on_change is not None:
            self.on_change(backend_id, False, state)
