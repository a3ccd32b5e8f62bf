"""scripts/test.sh's second pass runs the relay and splice integration tests on the epoll
reactor (`--reactor=default`), the one every balancer process runs on, under the lean main
loop that `patches.install()` puts there; this checks that pass really is that. On the
asyncio reactor of the main pass there is nothing to check."""

from __future__ import annotations

import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.base import ReactorBase
from twisted.internet.task import deferLater

from wsbalancer.wire import lean, patches, reactor_loop


@pytest.fixture
def epoll() -> None:
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor):
        pytest.skip("for scripts/test.sh's epoll pass (--reactor=default)")


def test_the_run_is_on_the_epoll_reactor_with_every_trim(epoll: None) -> None:
    from twisted.internet import epollreactor

    assert patches.install().skipped == {}
    assert type(reactor).mainLoop is reactor_loop.main_loop
    assert type(epollreactor.log) is lean._ReactorLog


@pytest_twisted.ensureDeferred
async def test_tests_run_inside_the_lean_loop(epoll: None) -> None:
    # pytest-twisted runs the reactor in a greenlet and a test's coroutine in it, called
    # from the reactor's main loop: ours, not Twisted's (ReactorBase.mainLoop).
    await deferLater(reactor, 0, lambda: None)  # resumed by a timed call, from the loop
    frames = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame.f_code)
        frame = frame.f_back
    assert reactor_loop.main_loop.__code__ in frames
    assert reactor_loop._iterate.__code__ in frames
    assert ReactorBase.mainLoop.__code__ not in frames
