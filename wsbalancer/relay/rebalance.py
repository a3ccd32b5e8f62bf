"""Active rebalancing: when a pool's spread drifts past `rebalance.tolerance` (a backend
added, one back from a restart, sessions ending unevenly), live sessions are migrated
make-before-break from the most loaded backends to the least, paced, oldest first, until
every backend is within the tolerance of its share.

Several balancer instances (or worker processes) in front of the same backends converge
without oscillating because each one moves only its own sessions, and of a backend's excess
only its own share: the excess times the part of that backend's sessions that are its own.
The backend-reported counts are the fleet-wide truth every instance reads; whatever one
instance has moved, the others see at their next poll, so the shares they act on next are
of what is left. No session is moved twice by rebalancing.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

from wsbalancer.observe.logs import logger

log = logger("wsbalancer.rebalance")


class Rebalancer:
    """Plans rounds of moves per pool and starts them at the process's pace."""

    def __init__(self, balancer: Any, rng: random.Random | None = None) -> None:
        self.balancer = balancer
        self.rng = rng or random.Random()
        self.moved: set[int] = set()  # sessions rebalancing moved: none moves twice
        self.queue: deque[tuple[Any, Any, Any]] = deque()  # (lane, session, destination)
        self.in_flight: dict[str, int] = {}  # migrations under way, by pool
        self.next_round: dict[str, float] = {}  # a pool's next round may start then
        self.tokens = 0.0
        self.last_tick: float | None = None
        self.outcomes = {"migrated": 0, "skipped": 0, "failed": 0}

    def tick(self) -> None:
        """Once a second: refill the pace, start what it allows, plan the pools due."""
        now = self.balancer.clock.seconds()
        rate = self.balancer.config.rebalance_max_moves
        elapsed = 1.0 if self.last_tick is None else now - self.last_tick
        self.last_tick = now
        self.tokens = min(max(rate, 1.0), self.tokens + rate * elapsed)
        if self.moved:
            self.moved &= self.balancer.sessions.keys()
        for lane in list(self.balancer.lanes.values()):
            if lane.config.rebalance and not lane.retired:
                self._maybe_plan(lane, now)
        self._start_moves()

    # --- planning -------------------------------------------------------------------

    def _maybe_plan(self, lane: Any, now: float) -> None:
        name = lane.name
        if self.in_flight.get(name) or any(item[0] is lane for item in self.queue):
            return  # the last round is still under way
        if now < self.next_round.get(name, 0.0):
            return  # let the counts catch up with the last round (other instances' too)
        plan = self.plan(lane, now)
        if plan:
            self.queue.extend((lane, session, to) for session, to in plan)
            # The next round waits until the counts show this round's moves, and those of
            # the other instances, with the old legs closed (they stay counted on their
            # old backend until quiet): two polls, plus the drain's quiet periods.
            self.next_round[name] = now + 2 * self.balancer.config.poll_interval + 3.0

    def plan(self, lane: Any, now: float) -> list[tuple[Any, Any]]:
        """This instance's moves for `lane` now: (session, destination) pairs, or none
        when every backend is within the tolerance."""
        pool = lane.pool
        usable = [b for b in pool.backends.values() if pool.usable(b)]
        if len(usable) < 2:
            return []
        # Old legs of sessions already migrated are about to close: they count as gone.
        loads = {b.id: float(b.estimate(now, pool.count_ttl) - b.leaving) for b in usable}
        total = sum(loads.values())
        weights = sum(b.config.weight for b in usable)
        targets = {b.id: total * b.config.weight / weights for b in usable}
        slack = max(1.0, lane.config.rebalance_tolerance / 100.0 * total / len(usable))
        if all(abs(loads[b.id] - targets[b.id]) <= slack for b in usable):
            return []
        mine = self._movable(lane, usable, now)
        before = ", ".join(f"{b.id} {loads[b.id]:g}" for b in usable)
        moves: list[tuple[Any, Any]] = []
        # Sessions go from backends over their share to backends under it, never sideways.
        short = [b for b in usable if loads[b.id] < targets[b.id]]
        for source in sorted(usable, key=lambda b: targets[b.id] - loads[b.id]):
            excess = loads[source.id] - targets[source.id]
            if excess < 0.5 or not short:
                break
            own = mine.get(source.id, [])
            # Only this instance's part of the excess: the others move theirs.
            share = excess * (source.local_sessions - source.leaving) / loads[source.id]
            for session in own[: _round_randomly(share, self.rng)]:
                to = min(short, key=lambda b: loads[b.id] - targets[b.id])
                if loads[to.id] + 1 > targets[to.id] + 0.5:
                    break  # no backend is short of its share any more
                moves.append((session, to))
                loads[to.id] += 1
                loads[source.id] -= 1
        if moves:
            text = (
                f"rebalancing pool {lane.name}: moving {len(moves)} sessions "
                f"(sessions by backend: {before}; {total / weights:.1f} per unit of weight)"
            )
            self.balancer.event(text)
            log.info("{text}", text=text)
        return moves

    def _movable(self, lane: Any, usable: list[Any], now: float) -> dict[str, list[Any]]:
        """This instance's sessions on each usable backend that may be moved, oldest first."""
        on = {b.id: b for b in usable}
        min_age = lane.config.rebalance_min_age
        found: dict[str, list[Any]] = {}
        for session in self.balancer.sessions.values():
            state = session.backend_state
            if state is None:
                continue
            key = state.id
            if (
                on.get(key) is not state
                or session.lane is not lane
                or session.id in self.moved
                or now - session.leg_opened < min_age
                or session.migrating
                or session.reconnecting
            ):
                continue
            found.setdefault(key, []).append(session)
        for sessions in found.values():
            sessions.sort(key=lambda s: s.started)
        return found

    # --- moving ---------------------------------------------------------------------

    def _start_moves(self) -> None:
        """Start as many queued moves as the pace allows; the rest wait for the next tick."""
        while self.queue and self.tokens >= 1.0:
            lane, session, to = self.queue.popleft()
            if session.ended or session.id in self.moved or not lane.pool.usable(to):
                continue
            self.tokens -= 1.0
            self.moved.add(session.id)
            self.in_flight[lane.name] = self.in_flight.get(lane.name, 0) + 1
            session.migrate("rebalancing", prefer=to).addBoth(self._done, lane.name)

    def _done(self, outcome: Any, pool: str) -> None:
        self.in_flight[pool] -= 1
        kind = str(outcome).split(":", 1)[0]
        self.outcomes[kind if kind in self.outcomes else "failed"] += 1

    def view(self) -> dict[str, Any]:
        """What rebalancing does in this process, and each pool's spread, for the API."""
        now = self.balancer.clock.seconds()
        pools = {}
        for lane in self.balancer.lanes.values():
            config, pool = lane.config, lane.pool
            pools[lane.name] = {
                "enabled": config.rebalance,
                "tolerancePercent": config.rebalance_tolerance,
                "minAge": config.rebalance_min_age,
                "sessions": {
                    b.id: b.estimate(now, pool.count_ttl)
                    for b in pool.backends.values()
                    if pool.usable(b)
                },
                "inFlight": self.in_flight.get(lane.name, 0),
            }
        return {
            "maxMovesPerSecond": self.balancer.config.rebalance_max_moves,
            "queued": len(self.queue),
            "moves": dict(self.outcomes),
            "pools": pools,
        }


def _round_randomly(share: float, rng: random.Random) -> int:
    """`share` rounded down or up at random, so that it is right on average: instances whose
    shares are each below one still move what they hold between them."""
    whole = math.floor(share)
    return whole + (1 if rng.random() < share - whole else 0)
