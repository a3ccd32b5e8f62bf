"""Evacuating a backend: every session on it migrated elsewhere (make-before-break),
paced, while it takes no new sessions — a rolling restart without a client reconnecting.
A session that cannot migrate safely stays where it is (skipped) and drains as before."""

from __future__ import annotations

from typing import Any

DEFAULT_PACE = 20.0  # migrations started per second, per process


class Evacuation:
    """One backend's evacuation and its progress (what the admin API shows)."""

    def __init__(self, state: Any, sessions: list[Any], clock: Any, pace: float) -> None:
        self.state = state
        self.sessions = sessions
        self.clock = clock
        self.period = 1.0 / pace
        self.counts = {"migrated": 0, "skipped": 0, "failed": 0}
        self.started = 0
        self.call: Any = None

    def start(self) -> None:
        """Take no new sessions on the backend, and begin moving its sessions off it."""
        self.state.draining = True
        self._next()

    def _next(self) -> None:
        self.call = None
        while self.started < len(self.sessions):
            session = self.sessions[self.started]
            self.started += 1
            if session.ended or session.backend_state is not self.state:
                continue  # ended, or already moved by a failover: nothing to do
            session.migrate("backend evacuated").addCallback(self._tally)
            if self.started < len(self.sessions):
                self.call = self.clock.callLater(self.period, self._next)
            return

    def _tally(self, outcome: str) -> None:
        self.counts[outcome.split(":", 1)[0]] += 1

    def stop(self) -> None:
        """Stop starting migrations (the ones under way finish)."""
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None

    @property
    def done(self) -> bool:
        return self.call is None and self.started >= len(self.sessions)

    def view(self) -> dict[str, Any]:
        """Progress, for the API: how many sessions, how many moved, skipped, failed."""
        return {"sessions": len(self.sessions), **self.counts, "done": self.done}
