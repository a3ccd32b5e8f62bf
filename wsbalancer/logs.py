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


def logger(namespace: str) -> Logger:
    """A Logger whose events pass the configured level filter."""
    return Logger(namespace=namespace, observer=observer)


def set_level(level: str) -> None:
    """Apply `log.level` to our events and to Autobahn's (which stays quieter unless debug)."""
    _predicate.setLogLevelForNamespace("", LEVELS[level])
    txaio.set_global_log_level("debug" if level == "debug" else "warn")  # type: ignore[attr-defined]


def json_observer(stream: io.TextIOBase | None = None) -> Any:
    """A JSON-lines observer: `twistd --logger=wsbalancer.logs.json_observer ...`."""
    return jsonFileLogObserver(stream or sys.stdout)  # type: ignore[arg-type]
