"""Every private name of Autobahn and Twisted that wsbalancer relies on is still there.

wsbalancer reads, sets, overrides or replaces names neither library promises to keep:
underscore attributes, module globals, and the undocumented state of their protocols and
transports. The lists below are all of them (found by grepping wsbalancer/ for them), each
with where it is used; a release that removes or renames one fails here, by name, instead
of somewhere in a relay test or in production. setup.cfg pins the versions this passed on.
Public options and documented API are left out: their removal would be announced.
"""

from __future__ import annotations

import importlib
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactor, StringTransport

from wsbalancer.wire import patches, reactor_loop

from .helpers import frame

# (module, name, where wsbalancer uses it)
MODULE_GLOBALS = [
    ("autobahn.websocket.protocol", "pformat", "patches.install: lazy-debug-pformat replaces it"),
    ("autobahn.websocket.protocol", "hltype", "patches.install: lazy-debug-highlight"),
    ("autobahn.websocket.protocol", "hlval", "patches.install: lazy-debug-highlight"),
    ("autobahn.twisted.websocket", "hltype", "patches.install: lazy-debug-highlight"),
    ("autobahn.twisted.websocket", "hlval", "patches.install: lazy-debug-highlight"),
    ("autobahn.websocket.protocol", "create_xor_masker", "patches.install: small-frame-masker"),
    ("autobahn.websocket.xormasker", "create_xor_masker", "lean._native_masker, frames.xor_mask"),
    ("twisted.internet.epollreactor", "log", "patches.install: reactor-log replaces it"),
    ("twisted.internet.posixbase", "_NO_FILEDESC", "reactor_loop._iterate"),
    ("twisted.internet.endpoints", "_WrappingProtocol", "relay/protocols.unwrap"),
    ("twisted.web.client", "_HTTP11ClientFactory", "service/tap, workers, relay/httpproxy"),
    ("twisted.web.http", "_ChunkedTransferDecoder", "relay/httpproxy.BoundedChunkedDecoder"),
    ("autobahn.websocket.protocol", "_url_to_origin", "relay/lean_handshake (Origin check)"),
    ("autobahn.websocket.protocol", "_is_same_origin", "relay/lean_handshake (Origin check)"),
    ("autobahn.websocket.protocol", "parseHttpHeader", "wire/handshake copies its rules"),
    ("autobahn.twisted.util", "create_transport_details", "relay/lean_handshake.LeanSetup"),
    ("autobahn.twisted.util", "peer2str", "relay/lean_handshake.LeanSetup"),
]

_EPOLL = "twisted.internet.epollreactor:EPollReactor"
_WS = "autobahn.websocket.protocol:WebSocketProtocol"

# (module:Class, name, where): methods and class attributes, read, called or overridden.
CLASS_ATTRIBUTES = [
    (_EPOLL, "mainLoop", "patches.install: epoll-main-loop replaces it"),
    (_EPOLL, "doPoll", "reactor_loop reproduces it"),
    (_EPOLL, "_doReadOrWrite", "reactor_loop._iterate"),
    (_EPOLL, "_disconnectSelectable", "reactor_loop._iterate"),
    (_EPOLL, "_insertNewDelayedCalls", "reactor_loop._iterate"),
    ("twisted.internet.abstract:FileDescriptor", "dataBuffer", "lean.write_now, queued_bytes"),
    ("twisted.internet.abstract:FileDescriptor", "offset", "lean.queued_bytes"),
    ("twisted.internet.abstract:FileDescriptor", "_writeDisconnected", "lean.write_now"),
    ("twisted.web.http:HTTPChannel", "_respondToBadRequestAndDisconnect", "admin/http, httpproxy"),
    ("twisted.web.http:HTTPChannel", "_maybeChooseTransferDecoder", "relay/httpproxy"),
    ("twisted.web.http:HTTPChannel", "_abortingCall", "relay/httpproxy.ProxyChannel._close"),
    ("twisted.web.http:HTTPChannel", "_receivedHeaderSize", "relay/httpproxy (with a default)"),
    ("twisted.web.http:_ChunkedTransferDecoder", "_dataReceived_CHUNK_LENGTH", "httpproxy"),
    ("twisted.protocols.basic:LineReceiver", "_buffer", "relay/httpproxy.requestDone"),
    ("twisted.web.client:HTTPConnectionPool", "_factory", "service/tap, workers, httpproxy"),
    (
        "twisted.application.internet:StreamServerEndpointService",
        "_raiseSynchronously",
        "service/listeners.ListenerService",
    ),
    (_WS, "_dataReceived", "relay/protocols, relay/splice, wire/frames"),
    (_WS, "CLOSE_STATUS_CODES_ALLOWED", "relay/protocols (swapped for a 1014 close frame)"),
    (_WS, "_max_message_size_exceeded", "wire/frames"),
    (_WS, "_invalid_payload", "wire/frames"),
    (_WS, "_cancelAutoPingTimeoutCall", "wire/frames"),
    (_WS, "onMessageEnd", "lean.LeanReceive overrides it"),
    (_WS, "sendData", "lean.LeanSend overrides it"),
    (_WS, "dropConnection", "lean.LeanSend overrides it"),
    (_WS, "onAutoPingTimeout", "lean.LeanSend overrides it, lean.restart_ping_timeout"),
    (_WS, "sendCloseFrame", "wire/frames"),
    ("autobahn.websocket.protocol:WebSocketServerProtocol", "CONFIG_ATTRS", "lean.bake_options"),
    ("autobahn.websocket.protocol:WebSocketClientProtocol", "CONFIG_ATTRS", "lean.bake_options"),
    (
        "autobahn.websocket.protocol:WebSocketClientProtocol",
        "_actuallyStartHandshake",
        "relay/protocols.BackendProtocol overrides it",
    ),
    ("autobahn.twisted.websocket:WebSocketAdapterProtocol", "_onMessage", "lean.LeanReceive"),
    ("autobahn.twisted.websocket:WebSocketAdapterProtocol", "_onOpen", "lean_handshake.LeanSetup"),
    (_WS, "_parseExtensionsHeader", "relay/lean_handshake (both legs)"),
    (_WS, "_sendAutoPing", "relay/lean_handshake (the backend leg's keepalive)"),
    (_WS, "onOpenHandshakeTimeout", "relay/lean_handshake.LeanSetup"),
    (_WS, "consumeData", "relay/lean_handshake (bytes after the 101)"),
    (
        "autobahn.websocket.protocol:WebSocketServerProtocol",
        "succeedHandshake",
        "relay/lean_handshake.LeanServerHandshake calls it",
    ),
]

# Set on an Autobahn protocol instance by Autobahn itself, read or set by wsbalancer
# (wire/frames, relay/splice, relay/protocols, relay/session, lean).
AUTOBAHN_STATE = [
    "data",
    "state",
    "send_state",
    "send_queue",  # lean.LeanSend turns it into a property
    "current_frame",
    "inside_message",
    "message_data",  # lean.LeanReceive
    "message_is_binary",  # lean.LeanReceive
    "failedByMe",  # lean.LeanReceive
    "wasMaxMessagePayloadSizeExceeded",
    "autoPingTimeoutCall",  # lean.restart_ping_timeout
    "trackedTimings",
    "websocket_extensions_in_use",
    "http_headers",  # lean.shed_handshake
    "http_request_data",
    "http_response_data",
    "http_request_uri",  # relay/session
    "http_request_path",  # relay/session
    "websocket_protocol_in_use",  # relay/session
    "openHandshakeTimeoutCall",  # relay/session, relay/protocols
    "wasNotCleanReason",  # relay/protocols
    "_perMessageCompress",
    "_isMessageCompressed",
    # relay/lean_handshake sets what Autobahn's handshakes and set-up would have set
    "peer",
    "http_status_line",
    "http_request_host",
    "websocket_version",
    "websocket_protocols",
    "websocket_origin",
    "websocket_extensions",
    "_wskey",
    "autoPingPendingCall",
    "_transport_details",
]


def _owner(where: str) -> Any:
    module, _, cls = where.partition(":")
    target: Any = importlib.import_module(module)
    return getattr(target, cls) if cls else target


@pytest.mark.parametrize(
    "module, name, used_by", MODULE_GLOBALS, ids=[f"{m}.{n}" for m, n, _ in MODULE_GLOBALS]
)
def test_module_globals(module: str, name: str, used_by: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} ({used_by}) is gone"


@pytest.mark.parametrize(
    "owner, name, used_by",
    CLASS_ATTRIBUTES,
    ids=[f"{o.partition(':')[2]}.{n}" for o, n, _ in CLASS_ATTRIBUTES],
)
def test_class_attributes(owner: str, name: str, used_by: str) -> None:
    assert hasattr(_owner(owner), name), f"{owner}.{name} ({used_by}) is gone"


def test_every_name_install_checks_is_in_these_lists() -> None:
    # A new patch group's private names and module globals belong in the inventory too
    # (the public functions of twisted.python.log it also checks need not).
    listed = {(m, n) for m, n, _ in MODULE_GLOBALS} | {(o, n) for o, n, _ in CLASS_ATTRIBUTES}
    private = [
        (need.owner, need.name)
        for group in patches.GROUPS
        for need in group.needs
        if need.name.startswith("_")
        or (":" not in need.owner and need.owner != "twisted.python.log")
    ]
    assert [need for need in private if need not in listed] == []


def test_every_patch_group_fits_the_installed_versions() -> None:
    # A group that no longer fits is skipped with a warning at run time; here it fails.
    installed = patches.install()
    assert installed.skipped == {}
    assert installed.applied == tuple(group.name for group in patches.GROUPS)


def test_the_epoll_reactor_has_what_the_lean_loop_reads() -> None:
    from twisted.internet.epollreactor import EPollReactor

    instance = EPollReactor()
    try:
        missing = [n for n in reactor_loop.INSTANCE_NAMES if not hasattr(instance, n)]
        assert not missing
    finally:
        instance._poller.close()
        instance.waker.connectionLost(None)


def test_twisted_state_set_in_constructors_and_at_start() -> None:
    from twisted.application.internet import StreamServerEndpointService, TimerService
    from twisted.internet.endpoints import SSL4ServerEndpoint, _WrappingProtocol
    from twisted.internet.task import Clock
    from twisted.web.client import HTTPConnectionPool
    from twisted.web.http import HTTPChannel

    channel = HTTPChannel()
    for name in ("_handlingRequest", "_transferDecoder"):  # relay/httpproxy
        assert name in vars(channel), name
    wrapper = _WrappingProtocol(defer.Deferred(), Protocol())
    assert "_wrappedProtocol" in vars(wrapper)  # relay/protocols.unwrap
    endpoint = SSL4ServerEndpoint(MemoryReactor(), 0, object())
    assert "_sslContextFactory" in vars(endpoint)  # service/tlsreload
    service = StreamServerEndpointService(endpoint, Factory())
    assert "_waitingForPort" in vars(service)  # service/listeners.ListenerService.listening
    timer = TimerService(1.0, lambda: None)
    timer.clock = Clock()
    timer.startService()
    try:
        assert "_loop" in vars(timer)  # service/tap._retime (read with a default)
    finally:
        timer.stopService()
    assert "_factory" in vars(HTTPConnectionPool)


def test_autobahn_state_of_a_protocol_that_received_a_fragmented_message() -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    assert "_batched_timer" in vars(factory)  # lean.restart_ping_timeout, relay/splice
    assert "countConnections" in vars(factory)  # relay/lean_handshake.LeanSetup counts
    protocol: Any = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 101")
    protocol.dataReceived(frame(0x1, b"frag", fin=False) + frame(0x0, b"ment"))
    missing = [name for name in AUTOBAHN_STATE if name not in vars(protocol)]
    assert not missing
    protocol.connectionLost(connectionDone)


def test_permessage_deflate_state() -> None:
    from autobahn.websocket.compress_deflate import PerMessageDeflate

    deflate = PerMessageDeflate(True, False, False, 15, 15, 8)
    deflate.start_compress_message()
    deflate.start_decompress_message()
    for name in ("_is_server", "_compressor", "_decompressor"):  # wire/compression
        assert name in vars(deflate), name


@pytest_twisted.ensureDeferred
async def test_tcp_transports_state() -> None:
    # lean.write_now and queued_bytes, on both ends of a real connection.
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        client = await ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", port.getHost().port)
        for name in ("_tempDataLen", "socket", "connected", "disconnecting"):
            assert hasattr(client.transport, name), name
        assert isinstance(client.transport.socket, socket.socket)
        client.transport.loseConnection()
    finally:
        await port.stopListening()
