"""Per-backend traffic at scrape time: messages and bytes each way, the response-time
histogram and close codes per leg, built from the plain numbers the relay keeps
(`observe.traffic`, `relay.leg_traffic`), so the per-message path touches no metric object."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from wsbalancer.observe.traffic import RESPONSE_BUCKETS
from wsbalancer.relay.interfaces import IFleetView
from wsbalancer.relay.leg_traffic import traffic_by_backend


class BackendTrafficGauges(Collector):
    """A Prometheus collector of each backend's traffic, read from `fleet` (IFleetView)."""

    def __init__(self, fleet: IFleetView) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        backends = [b for _, b in fleet.all_backends()]
        figures = traffic_by_backend(backends, list(fleet.sessions.values()))
        messages = CounterMetricFamily(
            "wsbalancer_backend_messages",
            "Messages relayed over each backend's legs, by direction",
            labels=["backend", "direction"],
        )
        octets = CounterMetricFamily(
            "wsbalancer_backend_message_bytes",
            "Message payload bytes relayed over each backend's legs, by direction",
            labels=["backend", "direction"],
        )
        responses = HistogramMetricFamily(
            "wsbalancer_backend_response_seconds",
            "Time from a client message to the backend's next message to that client "
            "(timed when no earlier client message was waiting; not in splice mode)",
            labels=["backend"],
        )
        closes = CounterMetricFamily(
            "wsbalancer_leg_closes",
            "Legs of relayed sessions ended, by leg and the code of the close that ended "
            'them (1006: no closing handshake; "other": a code outside RFC 6455\'s)',
            labels=["backend", "leg", "code"],
        )
        bounds = [_le(bound) for bound in RESPONSE_BUCKETS] + ["+Inf"]
        for backend_id, t in figures.items():
            messages.add_metric([backend_id, "client_to_backend"], t.messages_in)
            messages.add_metric([backend_id, "backend_to_client"], t.messages_out)
            octets.add_metric([backend_id, "client_to_backend"], t.bytes_in)
            octets.add_metric([backend_id, "backend_to_client"], t.bytes_out)
            cumulative, buckets = 0, []
            for le, count in zip(bounds, t.responses, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            responses.add_metric([backend_id], buckets, sum_value=t.response_sum)
            for (leg, code), count in sorted(t.closes.items()):
                closes.add_metric([backend_id, leg, code], count)
        yield from (messages, octets, responses, closes)


def _le(bound: float) -> str:
    # As prometheus_client writes a Histogram's own bounds (0.5, 1.0, 2.5, ...)
    return repr(float(bound))
