"""Per-backend traffic: messages and bytes each way, the response-time histogram, close codes
per leg. Plain numbers, because the per-message path must not take prometheus_client's locks
or allocate; they become metrics and JSON only when read (`admin.traffic_gauges`, the API).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Upper bounds (seconds) of the response-time buckets, Prometheus' `le`; one more bucket,
# +Inf, follows. From a backend answering in-process to one taking seconds.
RESPONSE_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
# RFC 6455 and IANA's registered codes get a label of their own; anything else a peer sends
# (4000-4999 are the application's) is "other", so the label set stays bounded.
KNOWN_CLOSE_CODES = frozenset(range(1000, 1016)) - {1004}
LEGS = ("client", "backend")


def close_label(code: int | None) -> str:
    """The bounded label of a close code (1005: a close frame without one)."""
    if code is None:
        return "1005"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class BackendTraffic:
    """What one backend's legs carried: `messages_in`/`bytes_in` client to backend,
    `messages_out`/`bytes_out` backend to client, response times, close codes by leg."""

    __slots__ = (
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "responses",
        "response_sum",
        "closes",
    )

    def __init__(self) -> None:
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.responses = [0] * (len(RESPONSE_BUCKETS) + 1)  # per bucket, not cumulative
        self.response_sum = 0.0
        self.closes: dict[tuple[str, str], int] = {}  # (leg, code label) -> connections

    def add(self, messages_in: int, messages_out: int, bytes_in: int, bytes_out: int) -> None:
        """Add what a leg carried."""
        self.messages_in += messages_in
        self.messages_out += messages_out
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def responded(self, seconds: float) -> None:
        """One response: the backend's first message after an unanswered client message."""
        self.responses[bisect_left(RESPONSE_BUCKETS, seconds)] += 1
        self.response_sum += seconds

    def leg_closed(self, leg: str, code: int | None) -> None:
        """A leg (`client` or `backend`) ended with `code` (1006: without a close frame)."""
        key = (leg, close_label(code))
        self.closes[key] = self.closes.get(key, 0) + 1

    def copy(self) -> BackendTraffic:
        """A snapshot, to add live sessions' shares to without changing this one."""
        other = BackendTraffic()
        other.add(self.messages_in, self.messages_out, self.bytes_in, self.bytes_out)
        other.responses = list(self.responses)
        other.response_sum = self.response_sum
        other.closes = dict(self.closes)
        return other


def quantile(counts: list[int], q: float) -> float | None:
    """The `q` quantile estimated from per-bucket counts as Prometheus' histogram_quantile
    does (linear within a bucket; the highest finite bound for the +Inf bucket)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(RESPONSE_BUCKETS):
                return RESPONSE_BUCKETS[-1]
            lower = RESPONSE_BUCKETS[i - 1] if i else 0.0
            upper = RESPONSE_BUCKETS[i]
            return round(lower + (upper - lower) * (rank - seen) / count, 6)
        seen += count
    return RESPONSE_BUCKETS[-1]


def traffic_view(t: BackendTraffic) -> dict[str, Any]:
    """The API's and dashboard's JSON of one backend's traffic."""
    closes: dict[str, dict[str, int]] = {leg: {} for leg in LEGS}
    for (leg, code), count in sorted(t.closes.items()):
        closes.setdefault(leg, {})[code] = count
    return {
        "messagesToBackend": t.messages_in,
        "messagesToClient": t.messages_out,
        "bytesToBackend": t.bytes_in,
        "bytesToClient": t.bytes_out,
        "responseTime": response_view(t.responses, t.response_sum),
        "closeCodes": closes,
    }


def response_view(counts: list[int], total_seconds: float) -> dict[str, Any]:
    """Response-time figures from per-bucket counts (seconds; None without responses)."""
    count = sum(counts)
    view: dict[str, Any] = {
        "count": count,
        "sumSeconds": round(total_seconds, 6),
        "meanSeconds": round(total_seconds / count, 6) if count else None,
    }
    for name, q in QUANTILES:
        view[name] = quantile(counts, q)
    view["bucketBounds"] = list(RESPONSE_BUCKETS)
    view["bucketCounts"] = list(counts)
    return view


def merge_traffic_views(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Add another process's traffic view to `mine` (worker processes), quantiles
    recomputed from the summed buckets."""
    for field in ("messagesToBackend", "messagesToClient", "bytesToBackend", "bytesToClient"):
        mine[field] = (mine.get(field) or 0) + (theirs.get(field) or 0)
    for leg, codes in (theirs.get("closeCodes") or {}).items():
        ours = mine.setdefault("closeCodes", {}).setdefault(leg, {})
        for code, count in codes.items():
            ours[code] = ours.get(code, 0) + count
    a, b = mine.get("responseTime") or {}, theirs.get("responseTime") or {}
    counts_a = a.get("bucketCounts") or [0] * (len(RESPONSE_BUCKETS) + 1)
    counts_b = b.get("bucketCounts") or [0] * len(counts_a)
    counts = [x + y for x, y in zip(counts_a, counts_b, strict=False)]
    seconds = (a.get("sumSeconds") or 0.0) + (b.get("sumSeconds") or 0.0)
    mine["responseTime"] = response_view(counts, seconds)
