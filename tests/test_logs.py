"""log.level: a reload that changes it reaches every filter a process logs through."""

from __future__ import annotations

from twisted.logger import LogLevel, PredicateResult

from wsbalancer import logs


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
