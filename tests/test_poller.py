"""Unit tests of the count poller: treq's StubTreq in front of a twisted.web resource that
answers what each test chooses, and a Clock for the fetch timeout. No sockets, no sleeps."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsbalancer.config import BackendConfig
from wsbalancer.upstream.poller import (
    MAX_COUNT,
    MAX_METRIC_BODY,
    CountPoller,
    MetricError,
    NoCountEndpointError,
    parse_metric,
)
from wsbalancer.upstream.pool import DOWN, UP, BackendPool

TIMEOUT = 2.0
Answer = tuple[int, bytes] | Callable[[Request], Any]


def body(count: Any, **fields: Any) -> bytes:
    return json.dumps({"agentsConnections": count, **fields}).encode()


class MetricResource(Resource):
    """Answers each backend's metric request as the test set it: (status, body) or a
    function of the request (which may return NOT_DONE_YET)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Answer] = {}
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        self.requests.append(request)
        host = request.getRequestHostname().decode()
        answer = self.answers[host]
        if callable(answer):
            return answer(request)
        status, content = answer
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return content


def never_answer(request: Request) -> Any:
    return NOT_DONE_YET


class Setup:
    """A pool of backends, their metric resource, the poller and what it reported."""

    def __init__(self, names: str = "a", fall: int = 3) -> None:
        self.clock = Clock()
        self.clock.advance(5000)
        configs = [
            BackendConfig(id=n, url=f"ws://{n}:9000", metric_url=f"http://{n}:9000/metric")
            for n in names
        ]
        self.pool = BackendPool(configs, seconds=self.clock.seconds, fall=fall)
        self.resource = MetricResource()
        self.stub = StubTreq(self.resource)
        self.results: list[tuple[str, float, str | None]] = []
        self.poller = CountPoller(self.pool, self.stub, self.clock, TIMEOUT, on_result=self.record)

    def record(self, backend: Any, seconds: float, error: str | None) -> None:
        self.results.append((backend.id, seconds, error))

    def poll(self) -> list[Any]:
        """Start a poll of every backend and pump the in-memory HTTP; returns a list that
        holds poll_once's result once it has fired."""
        outcome: list[Any] = []
        self.poller.poll_once().addBoth(outcome.append)
        self.stub.flush()
        return outcome

    def backend(self, name: str = "a") -> Any:
        return self.pool.backends[name]

    def estimate(self, name: str = "a") -> int:
        return self.backend(name).estimate(self.clock.seconds(), self.pool.count_ttl)

    def open_sessions(self, name: str, n: int) -> None:
        for _ in range(n):
            self.pool.dial_started(self.backend(name))
            self.pool.dial_succeeded(self.backend(name))

    def close_sessions(self, name: str, n: int) -> None:
        for _ in range(n):
            self.pool.session_closed(self.backend(name))


# --- good answers ------------------------------------------------------------------------------


def test_valid_json_sets_the_count_and_pod_fields() -> None:
    s = Setup()
    s.resource.answers["a"] = (
        200,
        body(17, podName="ws-7f9", podIP="10.1.2.3", nodeName="node-2", extra=[1]),
    )
    assert s.poll() == [None]
    a = s.backend()
    assert a.reported == 17
    assert a.reported_at == s.clock.seconds()
    assert (a.pod.agents_connections, a.pod.pod_name, a.pod.pod_ip, a.pod.node_name) == (
        17,
        "ws-7f9",
        "10.1.2.3",
        "node-2",
    )
    assert (a.stale, a.last_poll_error, a.health) == (False, None, UP)
    assert s.estimate() == 17
    assert s.results == [("a", 0.0, None)]
    request = s.resource.requests[0]
    assert request.uri == b"/metric"
    assert request.requestHeaders.getRawHeaders(b"accept") == [b"application/json"]


def test_all_backends_are_polled_in_one_round() -> None:
    s = Setup("abc")
    for i, name in enumerate("abc"):
        s.resource.answers[name] = (200, body(i * 10))
    assert s.poll() == [None]
    assert [s.backend(n).reported for n in "abc"] == [0, 10, 20]
    assert sorted(r[0] for r in s.results) == ["a", "b", "c"]


def test_slow_answer_within_the_timeout_is_accepted_and_timed() -> None:
    s = Setup()
    pending: list[Request] = []
    s.resource.answers["a"] = lambda request: pending.append(request) or NOT_DONE_YET
    outcome = s.poll()
    assert outcome == [] and len(pending) == 1
    s.clock.advance(0.75)
    pending[0].setResponseCode(200)
    pending[0].write(body(4))
    pending[0].finish()
    s.stub.flush()
    assert outcome == [None]
    assert s.backend().reported == 4
    assert s.results == [("a", 0.75, None)]
    s.clock.advance(TIMEOUT * 2)  # the timeout was cancelled with the answer
    assert s.backend().stale is False
    assert len(s.results) == 1


def test_recovery_clears_stale() -> None:
    s = Setup()
    s.resource.answers["a"] = (200, body(3))
    s.poll()
    s.resource.answers["a"] = (503, b"")
    s.poll()
    assert s.backend().stale is True
    s.resource.answers["a"] = (200, body(5))
    s.poll()
    assert (s.backend().stale, s.backend().last_poll_error, s.backend().reported) == (
        False,
        None,
        5,
    )


# --- bad answers are errors, never a zero --------------------------------------------------


BAD_ANSWERS = {
    "http-500": ((500, body(0)), "HTTP 500"),
    "http-503": ((503, b"overloaded"), "HTTP 503"),
    "http-429": ((429, b"slow down"), "HTTP 429"),
    "http-408": ((408, b""), "HTTP 408"),
    "json-array": ((200, b"[1, 2]"), "not an object"),
    "no-count": ((200, json.dumps({"podName": "x"}).encode()), "agentsConnections"),
    "null-count": ((200, body(None)), "agentsConnections"),
    "negative": ((200, body(-1)), "negative (-1)"),
    "negative-401-digits": ((200, b'{"agentsConnections": -1' + b"0" * 400 + b"}"), "negative"),
    "over-2^53": ((200, body(MAX_COUNT + 1)), "out of range"),
    "401-digits": ((200, b'{"agentsConnections": 1' + b"0" * 400 + b"}"), "out of range"),
    "5000-digits": ((200, b'{"agentsConnections": 1' + b"0" * 5000 + b"}"), "too long"),
    "nan": ((200, b'{"agentsConnections": NaN}'), "agentsConnections"),
    "infinity": ((200, b'{"agentsConnections": Infinity}'), "agentsConnections"),
    "minus-infinity": ((200, b'{"agentsConnections": -Infinity}'), "agentsConnections"),
    "1e400": ((200, b'{"agentsConnections": 1e400}'), "agentsConnections"),
    "boolean-true": ((200, body(True)), "agentsConnections"),
    "float": ((200, body(3.0)), "agentsConnections"),
    "string": ((200, body("5")), "agentsConnections"),
    "nested-too-deep": ((200, b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"), "nested"),
    "huge-body": ((200, b" " * (MAX_METRIC_BODY + 1) + body(1)), "too large"),
    "huge-json-body": ((200, b"{" + b" " * (MAX_METRIC_BODY + 1) + b"}"), "too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answer_is_an_error_and_keeps_the_last_count(case: str) -> None:
    answer, fragment = BAD_ANSWERS[case]
    s = Setup()
    s.resource.answers["a"] = (200, body(7))
    s.poll()
    s.resource.answers["a"] = answer
    assert s.poll() == [None]
    a = s.backend()
    assert a.stale is True
    assert a.last_poll_error is not None and fragment in a.last_poll_error
    assert a.reported == 7  # the previous count, not zero
    assert s.estimate() == 7
    assert a.health == UP  # one failure of a confirmed backend is not enough
    assert a.poll_failures == 1
    assert s.results[-1] == ("a", 0.0, a.last_poll_error)


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_first_answer_never_reads_as_an_empty_backend(case: str) -> None:
    answer, _ = BAD_ANSWERS[case]
    s = Setup("ab")
    s.resource.answers["a"] = answer
    s.resource.answers["b"] = (200, body(25))
    s.poll()
    a = s.backend("a")
    assert a.reported is None and a.stale is True
    assert a.health == DOWN  # never confirmed, so one failure takes it out
    assert s.pool.pick() is s.backend("b")


# --- an answer without a count endpoint: alive, stale, balanced on our own count --------------

NO_COUNT_ANSWERS = {
    "http-404": (404, b"not found"),
    "http-405": (405, b"method not allowed"),
    "http-410": (410, b"gone"),
    "http-426-ws-and-autobahn": (426, b"Upgrade Required"),
    "http-400-gorilla": (400, b"websocket: the client is not using the websocket protocol"),
    "http-403": (403, b"forbidden"),
    "http-204": (204, b""),
    "empty-200": (200, b""),
    "html-200": (200, b"<html>This is an Autobahn WebSocket server</html>"),
    "not-utf8": (200, b"\xff\xfe\x00"),
    "huge-html-page": (200, b"<!doctype html>" + b"x" * (MAX_METRIC_BODY * 2)),
    "huge-404-page": (404, b"x" * (MAX_METRIC_BODY * 2)),
}


@pytest.mark.parametrize("case", sorted(NO_COUNT_ANSWERS))
def test_a_first_answer_without_a_count_endpoint_is_alive_on_our_own_count(case: str) -> None:
    s = Setup("ab")
    s.resource.answers["a"] = NO_COUNT_ANSWERS[case]
    s.resource.answers["b"] = (200, body(25))
    assert s.poll() == [None]
    a = s.backend("a")
    assert (a.health, a.health_confirmed, a.stale, a.reported) == (UP, True, True, None)
    assert a.last_poll_error is not None and a.last_poll_error.startswith("no count endpoint")
    assert ("a", 0.0, None) in s.results  # not an error: nothing for poll_errors to count
    s.open_sessions("a", 3)
    assert s.estimate("a") == 3  # only what this instance knows
    assert s.pool.pick() is a  # 3 of ours against b's reported 25


def test_no_count_endpoint_after_counts_keeps_the_last_count_until_the_ttl() -> None:
    s = Setup(fall=1)
    s.open_sessions("a", 2)
    s.resource.answers["a"] = (200, body(12))
    s.poll()
    s.resource.answers["a"] = (404, b"not found")  # redeployed without /metric
    for _ in range(3):
        s.clock.advance(2)
        s.poll()
    a = s.backend()
    assert (a.health, a.stale, a.poll_failures, a.reported) == (UP, True, 0, 12)
    assert s.estimate() == 12
    s.clock.advance(s.pool.count_ttl)
    assert s.estimate() == 2  # the report faded: our own sessions only


def test_no_count_endpoint_is_warned_about_once_not_on_every_poll() -> None:
    s = Setup()
    events: list[dict[str, Any]] = []
    s.poller.log = Logger(namespace="test", observer=events.append)
    s.resource.answers["a"] = (404, b"not found")
    for _ in range(5):
        s.clock.advance(2)
        s.poll()
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    text = formatEvent(warnings[0])
    assert "no count endpoint (HTTP 404)" in text and "own sessions" in text
    s.resource.answers["a"] = (200, body(1))
    s.poll()
    assert s.backend().stale is False


def test_a_down_backend_rises_on_answers_without_a_count_endpoint() -> None:
    s = Setup(fall=1)
    s.resource.answers["a"] = (200, body(1))
    s.poll()
    s.poller.http = RaisingClient(s.stub, raise_for="-", refuse_for="a")
    s.poll()
    assert s.backend().health == DOWN  # its port refused: that is what shows it is dead
    s.poller.http = s.stub
    s.resource.answers["a"] = (426, b"Upgrade Required")
    s.poll()
    assert s.backend().health == DOWN  # one answer is not `rise`
    s.poll()
    assert s.backend().health == UP


def test_a_backend_without_a_count_endpoint_goes_down_when_its_port_refuses() -> None:
    s = Setup(fall=2)
    s.resource.answers["a"] = (404, b"not found")
    s.poll()
    s.poller.http = RaisingClient(s.stub, raise_for="-", refuse_for="a")
    s.poll()
    assert s.backend().health == UP
    s.poll()
    assert s.backend().health == DOWN
    assert s.backend().last_poll_error.startswith("ConnectionRefusedError")


def test_chunked_body_over_the_limit_is_refused() -> None:
    s = Setup()

    def chunked(request: Request) -> Any:
        request.setResponseCode(200)
        request.write(b" " * (MAX_METRIC_BODY // 2))
        request.write(b" " * (MAX_METRIC_BODY // 2) + body(1))
        request.finish()
        return NOT_DONE_YET

    s.resource.answers["a"] = chunked
    s.poll()
    assert s.backend().last_poll_error is not None
    assert "too large" in s.backend().last_poll_error


def test_endless_body_is_refused_once_over_the_limit_without_waiting_for_the_end() -> None:
    s = Setup()

    def endless(request: Request) -> Any:
        request.setResponseCode(200)
        request.write(b" " * (MAX_METRIC_BODY * 4))  # and never finishes
        return NOT_DONE_YET

    s.resource.answers["a"] = endless
    outcome = s.poll()
    # The limit bounds memory only if reading stops when it is passed.
    assert outcome == [None]
    assert s.backend().last_poll_error is not None
    assert "too large" in s.backend().last_poll_error


def test_declared_huge_body_is_refused_without_reading_it() -> None:
    s = Setup()

    def declared(request: Request) -> Any:
        request.setResponseCode(200)
        request.setHeader(b"content-length", b"%d" % (100 * MAX_METRIC_BODY))
        request.write(b" " * 1000)  # the rest would follow
        return NOT_DONE_YET

    s.resource.answers["a"] = declared
    outcome = s.poll()
    assert outcome == [None]
    assert s.backend().last_poll_error is not None
    assert "too large" in s.backend().last_poll_error


# --- timeouts and failures ---------------------------------------------------------------------


def test_no_answer_fails_after_the_timeout() -> None:
    s = Setup("ab")
    s.resource.answers["a"] = never_answer
    s.resource.answers["b"] = (200, body(2))
    outcome = s.poll()
    assert outcome == []
    assert s.results == [("b", 0.0, None)]  # b does not wait for a
    s.clock.advance(TIMEOUT - 0.001)
    s.stub.flush()
    assert outcome == [] and s.backend("a").stale is False
    s.clock.advance(0.001)
    s.stub.flush()
    assert outcome == [None]
    a = s.backend("a")
    assert a.stale is True and a.last_poll_error is not None
    assert a.reported is None
    assert s.results[-1][:2] == ("a", TIMEOUT)
    assert s.results[-1][2] == a.last_poll_error


def test_timeout_error_says_it_was_a_timeout() -> None:
    s = Setup()
    s.resource.answers["a"] = never_answer
    s.poll()
    s.clock.advance(TIMEOUT)
    s.stub.flush()
    assert s.backend().last_poll_error == "no answer within 2s"
    assert s.results == [("a", TIMEOUT, "no answer within 2s")]


class RaisingClient:
    """Wraps the stub client; fails for some hosts, synchronously or with a failed Deferred."""

    def __init__(self, stub: StubTreq, raise_for: str, refuse_for: str) -> None:
        self.stub = stub
        self.raise_for = raise_for
        self.refuse_for = refuse_for

    def get(self, url: str, **kwargs: Any) -> Any:
        if f"//{self.raise_for}:" in url:
            raise RuntimeError("boom")
        if f"//{self.refuse_for}:" in url:
            return defer.fail(ConnectionRefusedError("nobody home"))
        return self.stub.get(url, **kwargs)


def test_poll_once_never_fails_when_a_backend_raises() -> None:
    s = Setup("abc")
    s.poller.http = RaisingClient(s.stub, raise_for="b", refuse_for="c")
    s.resource.answers["a"] = (200, body(9))
    assert s.poll() == [None]
    assert s.backend("a").reported == 9
    b, c = s.backend("b"), s.backend("c")
    assert b.stale and b.last_poll_error == "RuntimeError: boom"
    assert c.stale and c.last_poll_error is not None
    assert c.last_poll_error.startswith("ConnectionRefusedError")
    assert {r[0]: r[2] for r in s.results} == {
        "a": None,
        "b": b.last_poll_error,
        "c": c.last_poll_error,
    }


def test_poll_once_survives_a_failing_result_callback() -> None:
    s = Setup("ab")
    s.resource.answers["a"] = (200, body(1))
    s.resource.answers["b"] = (200, body(2))

    def explode(backend: Any, seconds: float, error: str | None) -> None:
        if backend.id == "a":
            raise ValueError("callback bug")

    s.poller.on_result = explode
    assert s.poll() == [None]
    assert (s.backend("a").reported, s.backend("b").reported) == (1, 2)


def test_repeated_failures_take_a_confirmed_backend_down_and_successes_bring_it_back() -> None:
    s = Setup(fall=2)
    s.resource.answers["a"] = (200, body(1))
    s.poll()
    s.resource.answers["a"] = (500, b"")
    s.poll()
    assert s.backend().health == UP
    s.poll()
    assert s.backend().health == DOWN
    assert s.pool.pick() is None  # down: no new session goes there
    s.resource.answers["a"] = (200, body(1))
    s.poll()
    assert s.backend().health == DOWN  # one success is not `rise`
    s.poll()
    assert s.backend().health == UP
    assert s.pool.pick() is s.backend()


def test_result_for_a_backend_removed_meanwhile_is_dropped() -> None:
    s = Setup("ab")
    pending: list[Request] = []
    s.resource.answers["a"] = lambda request: pending.append(request) or NOT_DONE_YET
    s.resource.answers["b"] = (200, body(1))
    outcome = s.poll()
    removed = s.pool.remove("a")
    pending[0].setResponseCode(200)
    pending[0].write(body(99))
    pending[0].finish()
    s.stub.flush()
    assert outcome == [None]
    assert removed.reported is None
    assert [r[0] for r in s.results] == ["b"]


def test_backend_without_a_metric_endpoint_is_not_polled() -> None:
    s = Setup("a")
    s.pool.add(BackendConfig(id="quiet", url="ws://quiet:1", metric_url=None))
    s.resource.answers["a"] = (200, body(1))
    assert s.poll() == [None]
    assert [r.getRequestHostname() for r in s.resource.requests] == [b"a"]
    assert s.backend("quiet").stale is False


# --- what a report means for the estimate ------------------------------------------------------


def test_report_replaces_the_estimate_when_nothing_changed_during_the_fetch() -> None:
    s = Setup()
    s.open_sessions("a", 10)
    s.resource.answers["a"] = (200, body(30))  # ours 10 + 20 of other instances
    s.poll()
    assert s.estimate() == 30
    # Between two polls this instance closes 5 sessions and opens 5 new ones; the backend
    # has seen all of it by the time the next poll is sent.
    s.close_sessions("a", 5)
    s.open_sessions("a", 5)
    s.clock.advance(2)
    s.poll()
    assert s.backend().reported == 30
    assert s.estimate() == 30


def test_sessions_closed_during_a_metric_outage_do_not_hide_other_instances() -> None:
    s = Setup(fall=10)
    s.resource.answers["a"] = (200, body(20))  # 20 sessions of other instances
    s.poll()
    s.resource.answers["a"] = (500, b"")
    for _ in range(5):  # a minute of failed polls, while this instance's sessions churn
        s.open_sessions("a", 6)
        s.close_sessions("a", 6)
        s.clock.advance(2)
        s.poll()
    s.resource.answers["a"] = (200, body(20))  # other instances still have their 20
    s.poll()
    assert s.backend().stale is False
    assert s.estimate() == 20


# --- parse_metric --------------------------------------------------------------------------------


def test_parse_metric_pod_fields_are_optional_and_bounded() -> None:
    pod = parse_metric(body(0))
    assert (pod.agents_connections, pod.pod_name, pod.pod_ip, pod.node_name) == (
        0,
        None,
        None,
        None,
    )
    pod = parse_metric(body(3, podName="p" * 1000, podIP="", nodeName=42))
    assert pod.pod_name == "p" * 256
    assert pod.pod_ip is None
    assert pod.node_name == "42"


@pytest.mark.parametrize(
    "content", [b"", b"null", b"17", b'{"agentsConnections": 1e3}', b'{"agentsConnections": {}}']
)
def test_parse_metric_rejects(content: bytes) -> None:
    with pytest.raises(MetricError):
        parse_metric(content)


def test_parse_metric_counts_are_bounded_at_2_to_the_53() -> None:
    assert parse_metric(body(MAX_COUNT)).agents_connections == MAX_COUNT
    for count in (MAX_COUNT + 1, 10**400, -(10**400), -1):
        with pytest.raises(MetricError) as raised:
            parse_metric(body(count))
        assert not isinstance(raised.value, NoCountEndpointError)
        assert len(str(raised.value)) < 100


def test_parse_metric_keeps_only_bounded_names_from_the_pod_fields() -> None:
    pod = parse_metric(
        body(
            1,
            podName=["x"] * 5000,
            podIP={"v4": "10.0.0.1"},
            nodeName=float("nan"),
            podMetrics={"http://x": [{"agentsConnections": 10**400, "podName": "y" * 10**4}]},
        )
    )
    fields = (pod.agents_connections, pod.pod_name, pod.pod_ip, pod.node_name)
    assert fields == (1, None, None, None)
    pod = parse_metric(b'{"agentsConnections": 2, "podName": "a\\ud800b", "nodeName": true}')
    assert pod.pod_name is not None and pod.pod_name.encode("utf-8") == b"a?b"
    assert pod.node_name is None
    pod = parse_metric(body(2, podIP=10**300))
    assert pod.pod_ip == "1" + "0" * 255


@pytest.mark.parametrize("content", [b"", b"<html></html>", b"\xff\xfe\x00", b"{", b"not found"])
def test_parse_metric_says_a_body_that_is_not_json_is_no_count_endpoint(content: bytes) -> None:
    with pytest.raises(NoCountEndpointError):
        parse_metric(content)
