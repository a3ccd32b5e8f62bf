"""A leaner main loop for Twisted's epoll reactor, with the same behaviour.

Per wake-up, Twisted's loop runs its timed-call pass and its sleep computation (each
inserting new calls, reading the clock, walking the heap) under a context manager, then
dispatches every ready descriptor through two wrapper calls. A relay carrying one small
message per wake-up pays that for every message: measured at about 3 us of a 30-40 us
echo. This loop does the same work, skipping what is provably a no-op:

- the timed-call pass runs only when something is due (a call inserted or due, enough
  cancelled calls to compact, a call from a thread, a stop), exactly when Twisted's own
  pass would do anything;
- a descriptor that is only readable goes straight to its `doRead`, with the same fileno
  check, error logging and disconnect as `_doReadOrWrite`; any other event takes
  `_doReadOrWrite` itself.

Importing this module changes nothing: `wsbalancer.wire.patches.install()` puts `main_loop`
on `EPollReactor` (after checking that the names it relies on are Twisted's, see its
"epoll-main-loop" group). A reactor instance lacking one of the attributes the loop reads
(`INSTANCE_NAMES`: set in its constructor, so not checkable beforehand) runs Twisted's own
loop instead, with one warning line.
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN
from typing import Any

from twisted.internet import epollreactor, posixbase
from twisted.internet.base import ReactorBase
from twisted.logger import Logger
from twisted.python import log as legacy_log

_log = Logger(namespace="twisted.internet.base")  # as Twisted's own loop logs
_lean_log = Logger(namespace="wsbalancer.lean")
LONGEST_SLEEP = 2147483  # seconds: epoll_wait's timeout is an int of milliseconds


# What the loop reads of the reactor instance, besides the methods install() checks.
INSTANCE_NAMES = (
    "_started",
    "running",
    "_poller",
    "_selectables",
    "_pendingTimedCalls",
    "_newTimedCalls",
    "_cancellations",
    "_justStopped",
    "threadCallQueue",
)


def main_loop(reactor: Any) -> None:
    """`ReactorBase.mainLoop`: iterate until stopped; an error is logged, never fatal."""
    missing = [name for name in INSTANCE_NAMES if not hasattr(reactor, name)]
    if missing:
        _lean_log.warn(
            "the lean epoll main loop needs reactor attributes {missing} this Twisted does not"
            " have: running Twisted's own main loop",
            missing=", ".join(missing),
        )
        ReactorBase.mainLoop(reactor)
        return
    while reactor._started:
        try:
            _iterate(reactor)
        except BaseException:
            _log.failure("Unexpected error in main loop")
    _log.info("Main loop terminated.")


def _iterate(reactor: Any) -> None:
    poll = reactor._poller.poll
    selectables = reactor._selectables
    seconds = reactor.seconds
    run_due = reactor.runUntilCurrent
    read_or_write = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    call_with_logger = epollreactor.log.callWithLogger
    no_filedesc = posixbase._NO_FILEDESC
    while reactor._started:
        pending = reactor._pendingTimedCalls
        if (
            reactor._newTimedCalls
            or reactor.threadCallQueue
            or reactor._justStopped
            or (reactor._cancellations > 50 and reactor._cancellations > len(pending) >> 1)
            or (pending and pending[0].time <= seconds())
        ):
            run_due()
            if reactor._newTimedCalls:
                reactor._insertNewDelayedCalls()  # calls made by the calls just run
            pending = reactor._pendingTimedCalls
        if not reactor.running:
            timeout: float = 0
        elif pending:
            timeout = min(max(pending[0].time - seconds(), 0), LONGEST_SLEEP)
        else:
            timeout = -1
        try:
            events = poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                continue
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue  # removed by an earlier event of this wake-up
            if event != EPOLLIN:
                call_with_logger(selectable, read_or_write, selectable, fd, event)
                continue
            # As _doReadOrWrite: "read" only once doRead has returned, errors logged under
            # the connection's name, and a disconnect that fails logged, not fatal.
            in_read = False
            why: BaseException | None
            try:
                if selectable.fileno() == -1:
                    why = no_filedesc
                else:
                    why = selectable.doRead()
                    in_read = True
            except BaseException:
                why = sys.exc_info()[1]
                legacy_log.err(system=getattr(selectable, "logstr", "-"))
            if why:
                call_with_logger(selectable, disconnect, selectable, why, in_read)
