"""Metrics of several worker processes merged into one view (the master's admin endpoint).

Prometheus: counters, histograms and summaries are summed per series; of the gauges, those
that count this process's own sessions are summed, and the rest (a backend's reported count,
health, breaker) are the same fleet-wide facts in every worker, so the master's value is
kept. JSON (`/balancer-metrics`): session counts, migrations and each backend's local figures
(its traffic too, quantiles recomputed from the summed buckets) summed, plus a `workers` list.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wsbalancer.observe.traffic import merge_traffic_views

# Gauges that count what each process holds, so the whole is the sum.
ADDITIVE_GAUGES = {"wsbalancer_sessions_active"}
# Per-backend JSON figures that are each process's own.
ADDITIVE_BACKEND_FIELDS = ("localSessions", "dialing", "picks")


def merge_prometheus(texts: list[bytes]) -> bytes:
    """One exposition from several; the first text is the master's."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[Any, ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            entry = families.setdefault(family.name, (family.type, family.documentation, {}))
            kind, _, samples = entry
            summed = kind != "gauge" or family.name in ADDITIVE_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)  # the earliest start
                elif summed:
                    samples[key] += sample.value

    class Merged(Collector):
        def collect(self) -> Iterator[Metric]:
            for name, (kind, documentation, samples) in families.items():
                metric = Metric(name, documentation, kind)
                for (sample_name, labels), value in samples.items():
                    metric.add_sample(sample_name, dict(labels), value)
                yield metric

    registry = CollectorRegistry()
    registry.register(Merged())
    return generate_latest(registry)


def add_backend_figures(own: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    """Add another process's own per-backend figures to the master's backend views."""
    by_id = {b["id"]: b for b in own}
    for backend in theirs:
        mine = by_id.get(backend.get("id"))
        if mine is None:
            continue
        for field in ADDITIVE_BACKEND_FIELDS:
            mine[field] = (mine.get(field) or 0) + (backend.get(field) or 0)
        if "traffic" in mine and "traffic" in backend:
            merge_traffic_views(mine["traffic"], backend["traffic"])


def merge_balancer_metrics(
    own: dict[str, Any], others: list[tuple[int, dict[str, Any]]]
) -> dict[str, Any]:
    """The master's JSON metrics with the workers' own figures added in."""
    workers = [{"index": 0, "pid": os.getpid(), "sessions": own["sessions"]}]
    for index, doc in others:
        workers.append({"index": index, "sessions": doc.get("sessions", 0)})
        own["sessions"] += doc.get("sessions", 0)
        for outcome, count in (doc.get("migrations") or {}).items():
            own.setdefault("migrations", {})[outcome] = own["migrations"].get(outcome, 0) + count
        add_backend_figures(own["backends"], doc.get("backends", []))
    own["workers"] = workers
    return own
