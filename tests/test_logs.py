"""Logs: levels per namespace (ours, libraries'), NDJSON records that log shippers read, and
the admin site's access lines."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from datetime import datetime
from typing import Any

import pytest_twisted
import treq
from twisted.logger import LogLevel, PredicateResult, globalLogPublisher
from twisted.python.failure import Failure

from wsbalancer.devtools.processes import (
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)
from wsbalancer.observe import logs

from .helpers import start_balancer


def test_a_worker_process_filter_follows_a_reloaded_level() -> None:
    # A worker filters all its output at the level it started with; a reload that lowers
    # log.level must let the lines it asks for through there too, not only in our loggers.
    predicate = logs.process_predicate("warn")
    info = {"log_level": LogLevel.info, "log_namespace": "wsbalancer.session"}
    try:
        assert predicate(info) == PredicateResult.no
        logs.set_level("info")
        assert predicate(info) == PredicateResult.maybe
        logs.set_level("error")
        assert predicate({**info, "log_level": LogLevel.warn}) == PredicateResult.no
    finally:
        logs.set_level("info")
        logs._process_predicates.remove(predicate)


def test_debug_shows_our_decisions_and_libraries_only_what_library_level_asks() -> None:
    predicate = logs.process_predicate("debug")

    def passes(namespace: str, level: Any) -> bool:
        event = {"log_level": level, "log_namespace": namespace}
        return predicate(event) == PredicateResult.maybe

    autobahn = "autobahn.websocket.protocol.WebSocketServerProtocol"
    try:
        logs.set_level("debug", "warn")
        assert passes("wsbalancer.balancer.Balancer", LogLevel.debug)
        assert not passes(autobahn, LogLevel.debug)
        assert not passes("twisted.python.log", LogLevel.info)
        assert passes(autobahn, LogLevel.warn)
        logs.set_level("info", "debug")
        assert passes(autobahn, LogLevel.debug)
        assert not passes("wsbalancer.balancer.Balancer", LogLevel.debug)
    finally:
        logs.set_level("info", "warn")
        logs._process_predicates.remove(predicate)


class _Odd:
    def __repr__(self) -> str:
        return "<odd thing>"


class _BrokenRepr:
    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_a_json_record_carries_the_rendered_message_and_json_safe_fields() -> None:
    event = {
        "log_format": "backend {backend} said {what!r} ({thing})",
        "log_level": LogLevel.warn,
        "log_namespace": "wsbalancer.poller",
        "log_time": 1767225600.25,
        "log_logger": object(),
        "log_source": object(),
        "backend": "b1",
        "what": b"\xff\x00",
        "thing": _Odd(),
        "nan": float("nan"),
        "keys": {1: {2, 3}, "deep": [[[[["x"]]]]]},
        "broken": _BrokenRepr(),
        "colour": "\x1b[33mfactory\x1b[0m",
        "lazy": logs.Lazy(lambda: {"b1": 2.0}),
        "logger": "an event field with a record key's name",
    }
    line = logs.event_as_json(event)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["time"] == "2026-01-01T00:00:00.250Z"
    assert datetime.fromisoformat(record["time"])  # ISO-8601
    assert (record["level"], record["logger"]) == ("warn", "wsbalancer.poller")
    assert record["message"] == "backend b1 said b'\\xff\\x00' (<odd thing>)"
    assert record["backend"] == "b1" and record["thing"] == "<odd thing>"
    assert record["what"] == "b'\\xff\\x00'" and record["nan"] == "nan"
    assert record["keys"]["1"] == [2, 3] and isinstance(record["keys"]["deep"][0][0][0], str)
    assert record["broken"].startswith("<unrepresentable _BrokenRepr")
    assert record["colour"] == "factory" and record["lazy"] == {"b1": 2.0}
    assert record["logger_"] == "an event field with a record key's name"
    assert not any(key.startswith("log_") for key in record)


def test_a_failure_goes_into_a_traceback_field() -> None:
    try:
        ratio = 1 / 0
        assert ratio is None
    except ZeroDivisionError:
        failure = Failure()
    event = {
        "log_format": "applying a poll result failed",
        "log_level": LogLevel.critical,
        "log_namespace": "wsbalancer.poller",
        "log_time": 0.0,
        "log_failure": failure,
        "log_system": "worker-1",
    }
    record = json.loads(logs.event_as_json(event))
    assert record["message"] == "applying a poll result failed"
    assert record["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in record["traceback"] and "1 / 0" in record["traceback"]
    assert record["system"] == "worker-1"


def test_a_real_balancer_writes_ndjson_every_line_of_it() -> None:
    backend_port, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        spawn_demo_backend(children, backend_port, "b1")
        balancer = spawn_balancer(
            children,
            port,
            admin,
            [f"b1=ws://127.0.0.1:{backend_port}"],
            ["log.format=json", "log.level=debug", "workers=2", "balancing.poll_interval=0.2s"],
            output=subprocess.PIPE,
        )
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"

        def metrics() -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/balancer-metrics") as r:
                return json.load(r)

        wait_until(lambda: metrics()["sessions"] == 0, "the session to end")
        wait_until(lambda: len(metrics().get("workers", ())) == 2, "the worker to answer")
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz").read()
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/dashboard").read()
        balancer.terminate()
        output = balancer.communicate(timeout=30)[0]
    # split on newlines only (str.splitlines would also split at RFC 7464's \x1e)
    lines = [line for line in output.split("\n") if line.strip()]
    assert len(lines) > 5
    records = [json.loads(line) for line in lines]  # every line, or this fails
    for record in records:
        assert isinstance(record, dict)
        assert {"time", "level", "logger", "message"} <= record.keys()
        datetime.fromisoformat(record["time"])
        assert "\x1e" not in record["message"] and "\x1b" not in record["message"]
    ends = [r for r in records if " ended after " in r["message"]]
    assert len(ends) == 1
    assert (ends[0]["backend"], ends[0]["code"], ends[0]["by"]) == ("b1", 1000, "client")
    assert ends[0]["logger"].startswith("wsbalancer.")
    # debug: wsbalancer's own decisions, with what led to them ...
    dials = [r for r in records if r["level"] == "debug" and " dials b1 " in r["message"]]
    assert dials and dials[0]["loads"] == {"b1": 1.0}
    assert any(r["level"] == "debug" and r["message"].startswith("poll b1: ") for r in records)
    # ... and no library internals below warn
    assert all(r["logger"].startswith("wsbalancer") or r["level"] != "debug" for r in records)
    # access lines: none for probes and scrapes by default, one for the dashboard
    access = [r for r in records if r["logger"] == "wsbalancer.admin.access"]
    assert [(r["method"], r["uri"], r["status"]) for r in access] == [("GET", "/dashboard", 200)]
    assert any(r.get("system") == "worker-1" for r in records)  # a worker's lines too


def _access_events() -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "wsbalancer.admin.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    return events, observe


@pytest_twisted.ensureDeferred
async def test_the_admin_access_switch() -> None:
    seen: dict[str, list[str]] = {}
    for mode in ("quiet", "all", "off"):
        lb = await start_balancer(["ws://127.0.0.1:1"], log__admin_access=mode)
        events, observe = _access_events()
        try:
            for path in ("/healthz", "/readyz", "/metrics", "/balancer-metrics", "/dashboard"):
                response = await treq.get(lb.admin_url(path), persistent=False)
                await response.content()
            # an unknown path is not a probe: logged unless off
            response = await treq.get(lb.admin_url("/nothing-here"), persistent=False)
            await response.content()
            # (the line is written as the response is finished, before the client reads it)
            seen[mode] = [e["uri"] for e in events]
        finally:
            globalLogPublisher.removeObserver(observe)
            await lb.stop()
    assert seen["quiet"] == ["/dashboard", "/nothing-here"]
    assert seen["all"] == [
        "/healthz",
        "/readyz",
        "/metrics",
        "/balancer-metrics",
        "/dashboard",
        "/nothing-here",
    ]
    assert seen["off"] == []


def test_a_backend_coming_back_is_info_and_going_down_a_warning() -> None:
    from twisted.internet.task import Clock

    from wsbalancer.config import load
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.upstream.pool import PodInfo

    config = load(None, environ={}, overrides=[], backends=["b1=ws://127.0.0.1:1"])
    balancer = Balancer(config, reactor=Clock())
    pool = balancer.pool
    backend = pool.backends["b1"]
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if " is now " in str(event.get("log_format")):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        pool.poll_failed(backend, "connection refused")
        for _ in range(pool.rise):
            pool.poll_succeeded(backend, PodInfo(0))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [(e["state"], e["log_level"]) for e in events] == [
        ("down", LogLevel.warn),
        ("up", LogLevel.info),
    ]
