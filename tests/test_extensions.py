"""Listeners and message hooks loaded from the configuration by dotted name."""

from __future__ import annotations

import pytest
import pytest_twisted
import websockets

from wsbalancer.config import ConfigError, load

from . import extension_examples
from .helpers import aio, recv, start_backend, start_balancer, wait_for


@pytest_twisted.ensureDeferred
async def test_a_listener_hears_every_session_event() -> None:
    extension_examples.EVENTS.clear()
    backend = start_backend("b1")
    lb = await start_balancer(
        [f"b1={backend.url}"], extensions__listeners="tests.extension_examples.RecordingListener"
    )
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.close(4000, "bye"))
        await wait_for(lambda: any(e[0] == "closed" for e in extension_examples.EVENTS))
        kinds = [e[0] for e in extension_examples.EVENTS]
        assert kinds == ["picked", "opened", "closed"]
        assert extension_examples.EVENTS[1][2] == "b1"
        assert extension_examples.EVENTS[2][2] == 4000
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_an_upper_casing_hook_changes_what_the_backend_receives() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], extensions__hooks="tests.extension_examples.UpperCase")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send("quiet words"))
        assert await recv(ws) == "QUIET WORDS"  # the echo backend got the upper-cased text
        await aio(ws.send(b"raw bytes"))
        assert await recv(ws) == b"raw bytes"
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_a_dropping_hook_drops_in_both_directions() -> None:
    backend = start_backend("b1")
    lb = await start_balancer(
        [backend.url], extensions__hooks="tests.extension_examples.DropSecrets"
    )
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send("my SECRET password"))
        await aio(ws.send("internal note"))  # echoed, then dropped on the way back
        await aio(ws.send("public"))
        assert await recv(ws) == "public"  # neither of the first two came back
        session = next(iter(lb.balancer.sessions.values()))
        assert (session.msgs_in, session.msgs_out) == (2, 1)
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()


def test_a_listener_that_cannot_be_imported_stops_start_up_with_one_line() -> None:
    with pytest.raises(ConfigError) as raised:
        load(
            None,
            environ={"BE_URLS": "ws://a:1", "WSBALANCER_EXTENSIONS__LISTENERS": "no.such.Listener"},
        )
    assert str(raised.value).startswith(
        "environment WSBALANCER_EXTENSIONS__LISTENERS: extensions.listeners: cannot import"
    )
