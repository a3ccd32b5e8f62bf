"""Session ids: unique across a master and its workers, so one id names one session fleet-wide
(the admin API routes a request for session N to the process that owns it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

SESSION_ID_BLOCK = 10**12  # worker i numbers its sessions from i * SESSION_ID_BLOCK + 1


def session_ids(worker_index: int = 0) -> Iterator[int]:
    """The ids a process numbers its sessions with (the master is worker 0)."""
    return itertools.count(worker_index * SESSION_ID_BLOCK + 1)


def session_owner(session_id: int) -> int:
    """The worker whose session this is."""
    return session_id // SESSION_ID_BLOCK
