"""Logging: the levels from config, and the observers a process writes its log with.

Two levels apply: `log.level` to wsbalancer's own loggers (every namespace below
`wsbalancer`), `log.library_level` to everybody else's (Twisted, Autobahn, treq), so
`log.level: debug` shows the balancer's decisions without Autobahn's frame-by-frame lines.

`log.format: json` writes NDJSON: one JSON object per line with `time` (ISO-8601, UTC),
`level`, `logger` (the namespace), `message` (the rendered line) and the event's own fields
(`backend`, `session`, `code`, ...); values that JSON cannot carry are written as their
repr, and a failure's traceback goes into `traceback`.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import txaio
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
NAMESPACE = "wsbalancer"  # our loggers' namespaces all start with it

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


_ORDER = list(LEVELS.values())
_wanted = set(_ORDER[1:])  # the levels that pass the filter (info and above to begin with)
_levels = {"own": "info", "library": "warn"}  # as set_level last applied them


class _LevelledLogger(Logger):
    """A Logger that drops an event below the configured level before building it: the
    info line per session open and close is otherwise formatted into an event only for
    the filter to discard it (a couple of per cent of a session's CPU at `warn`)."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level in _wanted:
            super().emit(level, format, **kwargs)


def wants(level: LogLevel) -> bool:
    """Whether wsbalancer's own events at `level` are written (log.level)."""
    return level in _wanted


def logger(namespace: str) -> Logger:
    """A Logger whose events pass the configured level filter."""
    return _LevelledLogger(namespace=namespace, observer=observer)


class Lazy:
    """A log field computed only when the event is written (a debug line's details cost
    nothing while debug is off): `log.debug("... {loads}", loads=Lazy(lambda: ...))`."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.compute = compute

    def __format__(self, spec: str) -> str:
        return format(self.compute(), spec)

    def __repr__(self) -> str:
        return repr(self.compute())


# Filters on whole processes' output, kept at the levels set_level applies.
_process_predicates: list[LogLevelFilterPredicate] = []


def _apply(predicate: LogLevelFilterPredicate) -> None:
    predicate.setLogLevelForNamespace("", LEVELS[_levels["library"]])
    predicate.setLogLevelForNamespace(NAMESPACE, LEVELS[_levels["own"]])


def process_predicate(level: str | None = None) -> LogLevelFilterPredicate:
    """A level filter for everything a process logs: wsbalancer's namespaces at `level`
    (log.level), all others at log.library_level; it follows later `set_level` calls
    (a reload that lowers log.level then shows the lines it asks for)."""
    if level is not None:
        _levels["own"] = level
    predicate = LogLevelFilterPredicate()
    _apply(predicate)
    _process_predicates.append(predicate)
    return predicate


def set_level(level: str, library_level: str | None = None) -> None:
    """Apply `log.level` to our events and `log.library_level` (unchanged when None) to
    everybody else's, Autobahn's included (which only then builds its debug events)."""
    _levels["own"] = level
    if library_level is not None:
        _levels["library"] = library_level
    _predicate.setLogLevelForNamespace("", LEVELS[level])
    for predicate in _process_predicates:
        _apply(predicate)
    _wanted.clear()
    _wanted.update(_ORDER[_ORDER.index(LEVELS[level]) :])
    txaio.set_global_log_level(_levels["library"])  # type: ignore[attr-defined]


# --- writing the log -------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Keys that Twisted's legacy log system adds to an event; they repeat what the record has.
_LEGACY_KEYS = frozenset(
    ("message", "time", "system", "isError", "format", "why", "failure", "printed", "logLevel")
)
_RECORD_KEYS = ("time", "level", "logger", "message")
_MAX_DEPTH = 4


def plain(text: str) -> str:
    """`text` without terminal colour codes (Autobahn colours parts of its lines)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as JSON can carry it: odd objects as their repr, text without colour codes."""
    if isinstance(value, Lazy):
        value = value.compute()
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, list | tuple | set | frozenset):
            return [json_safe(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    try:
        return plain(repr(value))
    except Exception as e:  # a repr that fails must not lose the line
        return f"<unrepresentable {type(value).__name__}: {e}>"


def event_as_json(event: dict[str, Any]) -> str:
    """One event as one NDJSON line (with its newline)."""
    seconds = event.get("log_time")
    moment = datetime.fromtimestamp(seconds if seconds is not None else 0.0, UTC)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": str(getattr(level, "name", "info")),
        "logger": str(event.get("log_namespace", "-")),
        "message": plain(formatEvent(event)),
    }
    system = event.get("log_system")
    if system not in (None, "-"):
        record["system"] = str(system)
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        record[f"{key}_" if key in record else key] = json_safe(value)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        kind = getattr(failure.type, "__name__", "Exception")
        record["error"] = plain(f"{kind}: {failure.getErrorMessage()}")
        record["traceback"] = failure.getTraceback()
    return json.dumps(record) + "\n"


def _event_as_text(event: dict[str, Any]) -> str | None:
    text = formatEventAsClassicLogText(event)
    return plain(text) if text else None


def json_observer(stream: io.TextIOBase | None = None) -> ILogObserver:
    """An NDJSON observer writing every event it is given to `stream` (standard output)."""
    return FileLogObserver(stream or sys.stdout, event_as_json)  # type: ignore[arg-type]


def text_observer(stream: io.TextIOBase | None = None) -> ILogObserver:
    """twistd's text lines, without terminal colour codes."""
    return FileLogObserver(stream or sys.stdout, _event_as_text)  # type: ignore[arg-type]


# What the twistd master writes its log to, from `configure_output`.
_output: dict[str, Any] = {"format": "text", "logfile": None}


def configure_output(log_format: str, logfile: str | None, level: str) -> None:
    """Remember what `twistd_observer` is to build (called while options are parsed)."""
    _output.update(format=log_format, logfile=logfile)
    _levels["own"] = level


def twistd_observer() -> ILogObserver:
    """The twistd master's observer (twistd's `--logger`, set by our options): the
    configured format, to standard output or twistd's `--logfile`, filtered by level."""
    target = _output["logfile"]
    stream: Any = sys.stdout
    if target and target != "-":
        from twisted.python.logfile import LogFile

        stream = LogFile.fromFullPath(target)
    if _output["format"] == "json":
        base = json_observer(stream)
    else:
        base = text_observer(stream)
    return FilteringLogObserver(base, [process_predicate()])
