"""Logging: one filtering observer shared by the balancer's loggers, its level from config."""

from __future__ import annotations

import io
import sys
from typing import Any

import txaio
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


_ORDER = list(LEVELS.values())
_wanted = set(_ORDER[1:])  # the levels that pass the filter (info and above to begin with)


class _LevelledLogger(Logger):
    """A Logger that drops an event below the configured level before building it: the
    info line per session open and close is otherwise formatted into an event only for
    the filter to discard it (a couple of per cent of a session's CPU at `warn`)."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level in _wanted:
            super().emit(level, format, **kwargs)


def logger(namespace: str) -> Logger:
    """A Logger whose events pass the configured level filter."""
    return _LevelledLogger(namespace=namespace, observer=observer)


# Filters on whole processes' output (a worker's), kept at the level set_level applies.
_process_predicates: list[LogLevelFilterPredicate] = []


def process_predicate(level: str) -> LogLevelFilterPredicate:
    """A level filter for everything a process logs, which follows later `set_level` calls
    (a reload that lowers log.level then shows the lines it asks for)."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    _process_predicates.append(predicate)
    return predicate


def set_level(level: str) -> None:
    """Apply `log.level` to our events and to Autobahn's (which stays quieter unless debug)."""
    _predicate.setLogLevelForNamespace("", LEVELS[level])
    for predicate in _process_predicates:
        predicate.setLogLevelForNamespace("", LEVELS[level])
    _wanted.clear()
    _wanted.update(_ORDER[_ORDER.index(LEVELS[level]) :])
    txaio.set_global_log_level("debug" if level == "debug" else "warn")  # type: ignore[attr-defined]


def json_observer(stream: io.TextIOBase | None = None) -> Any:
    """A JSON-lines observer: `twistd --logger=wsbalancer.logs.json_observer ...`."""
    return jsonFileLogObserver(stream or sys.stdout)  # type: ignore[arg-type]
