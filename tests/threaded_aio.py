"""asyncio clients (websockets) for tests running on a reactor that is not asyncio's.

The suite's integration tests drive websockets clients with `helpers.aio`, which needs the
asyncio reactor (Twisted and asyncio sharing one loop). scripts/test.sh's second pass runs
some of them on the epoll reactor, the one the balancer runs on in production, with the
lean main loop installed; there `conftest.py` swaps `helpers.aio` for `aio` here: the
clients live on an asyncio loop in a thread of their own, and each await is handed to it
and its result back to the reactor thread (`callFromThread`). What a test then calls on a
connection that is not a coroutine (`ws.transport.abort()`, `ws.protocol.send_frame()`)
runs on the client loop's thread too: asyncio objects are not thread-safe."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from typing import Any

from twisted.internet import defer, reactor
from websockets.asyncio.connection import Connection
from websockets.protocol import Protocol

_loop: asyncio.AbstractEventLoop | None = None
CALL_TIMEOUT = 10.0


def client_loop() -> asyncio.AbstractEventLoop:
    """The asyncio loop the clients run on, started on first use (a daemon thread)."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        threading.Thread(target=_loop.run_forever, name="asyncio clients", daemon=True).start()
    return _loop


class OnLoop:
    """A websockets connection (its transport, its protocol) or an asyncio stream, as the
    reactor thread sees it: coroutine methods come back as they are, to be awaited through
    `aio`; other methods run on the client loop's thread, the caller waiting for their
    result; data is read as is."""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return value
        if inspect.ismethod(value) or inspect.isbuiltin(value):
            return lambda *args, **kwargs: _call_on_loop(value, *args, **kwargs)
        return _wrap(value)

    def __repr__(self) -> str:
        return f"OnLoop({self._target!r})"


_ON_LOOP = (Connection, Protocol, asyncio.BaseTransport, asyncio.StreamReader, asyncio.StreamWriter)


def _wrap(value: Any) -> Any:
    if isinstance(value, _ON_LOOP):
        return OnLoop(value)
    if type(value) is tuple:  # asyncio.open_connection's (reader, writer)
        return tuple(_wrap(item) for item in value)
    return value


def _call_on_loop(func: Any, *args: Any, **kwargs: Any) -> Any:
    async def call() -> Any:
        return func(*args, **kwargs)

    future = asyncio.run_coroutine_threadsafe(call(), client_loop())
    return _wrap(future.result(CALL_TIMEOUT))


def aio(awaitable: Awaitable[Any]) -> defer.Deferred[Any]:
    """`helpers.aio` for a reactor other than asyncio's: await `awaitable` on the client
    loop, firing the Deferred in the reactor thread."""

    async def run() -> Any:
        return _wrap(await awaitable)

    future = asyncio.run_coroutine_threadsafe(run(), client_loop())
    result: defer.Deferred[Any] = defer.Deferred(lambda _: future.cancel())

    def fire(done: Any) -> None:
        if result.called:  # cancelled meanwhile
            return
        if done.cancelled():
            result.cancel()
        elif done.exception() is not None:
            result.errback(done.exception())
        else:
            result.callback(done.result())

    future.add_done_callback(lambda done: reactor.callFromThread(fire, done))  # type: ignore[attr-defined]
    return result
