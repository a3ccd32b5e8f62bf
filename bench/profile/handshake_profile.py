"""Where a session's CPU goes on the balancer's side, socket-free (through tests/rig.py).

    cd /work/main && .venv/bin/python bench/profile/handshake_profile.py [N] [--profile OUT]

Opens N sessions through the in-memory rig (client handshake, pick, dial, backend
handshake, 101, one echo, client close), and counts only the time spent *inside* the
balancer's entry points (its two legs' makeConnection / dataReceived / connectionLost, the
front factory's buildProtocol, the dial factory's buildProtocol, and delayed calls the
reactor runs), guarded against nesting. With --profile, cProfile is enabled only inside
those entry points, so its stats hold balancer-side work only. Also times a direct
client<->backend run (no balancer) as the rig's own cost, for reference.
"""

from __future__ import annotations

import cProfile
import gc
import sys
import time

sys.path.insert(0, "/work/main")

import txaio  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from tests import memory  # noqa: E402
from tests.rig import LISTEN, Rig  # noqa: E402
from wsbalancer.relay.protocols import BackendProtocol, FrontendProtocol  # noqa: E402
from wsbalancer.upstream import dialer as dialer_mod  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2000
PROFILE = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
ECHO = "--no-echo" not in sys.argv

if "--no-patches" not in sys.argv:
    from wsbalancer.wire import patches

    print("patches:", patches.install().applied)
if "--ablate-log" in sys.argv:  # what a level guard before the two info lines would save
    from wsbalancer.relay import hooks as _hooks

    class _Quiet:
        def info(self, *a, **k):
            pass

    for _name in dir(_hooks):
        _obj = getattr(_hooks, _name)
        if isinstance(_obj, type) and hasattr(_obj, "session_opened") and "log" in vars(_obj):
            _obj.log = _Quiet()
            print("quiet log on", _name)
if "--ablate-compact" in sys.argv:  # what compact() costs (not a proposal to drop it)
    from wsbalancer.relay import session as _sess

    _sess.compact = lambda leg: None
clock = MemoryReactorClock()
txaio.config.loop = clock

acc = {"t": 0.0, "depth": 0}
prof = cProfile.Profile() if PROFILE else None
per_entry: dict[str, float] = {}


def wrap(owner, name, label):
    orig = getattr(owner, name)

    def inner(*a, **k):
        if acc["depth"]:
            return orig(*a, **k)
        acc["depth"] = 1
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            dt = time.perf_counter() - t0
            if prof:
                prof.disable()
            acc["depth"] = 0
            acc["t"] += dt
            per_entry[label] = per_entry.get(label, 0.0) + dt

    inner.__wrapped__ = orig
    setattr(owner, name, inner)


# Entry points into the balancer's side (what the rig calls on it).
for cls, tag in ((FrontendProtocol, "front"), (BackendProtocol, "back")):
    for meth in ("makeConnection", "dataReceived", "connectionLost"):
        # bind on the concrete class so the rig's Client/BackendPeer are untouched
        wrap(cls, meth, f"{tag}.{meth}")
wrap(dialer_mod._DialFactory, "buildProtocol", "dial.buildProtocol")
from twisted.internet import endpoints as _ep  # noqa: E402

wrap(_ep._WrappingFactory, "buildProtocol", "endpoint.buildProtocol")
for meth in ("makeConnection", "dataReceived", "connectionLost"):
    wrap(_ep._WrappingProtocol, meth, f"endpoint.{meth}")

# Delayed calls (timers) the memory reactor runs: all of them are balancer or Autobahn
# timers of either side; count those whose callable belongs to a balancer leg.
timers = {"t": 0.0}
_orig_advance = MemoryReactorClock.advance


def _advance(self, amount):
    t0 = time.perf_counter()
    try:
        return _orig_advance(self, amount)
    finally:
        timers["t"] += time.perf_counter() - t0


MemoryReactorClock.advance = _advance


def build_rig():
    r = Rig(clock, ("b1", "b2"))
    # the front factory's buildProtocol is balancer work
    f = r.factory
    orig = f.buildProtocol

    def bp(addr, _o=orig):
        if acc["depth"]:
            return _o(addr)
        acc["depth"] = 1
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        try:
            return _o(addr)
        finally:
            dt = time.perf_counter() - t0
            if prof:
                prof.disable()
            acc["depth"] = 0
            acc["t"] += dt
            per_entry["front.buildProtocol"] = per_entry.get("front.buildProtocol", 0.0) + dt

    f.buildProtocol = bp
    return r


def one(r):
    client = r.connect()
    assert client.opened, client.pipe.sent_to_client[:200]
    if ECHO:
        r.send(client, b"x")
        assert client.messages == [b"x:b1"] or client.messages == [b"x:b2"], client.messages
    client.sendClose(1000)
    r.net.pump()
    assert client.closed_with is not None
    # keep the rig's lists from growing (pump walks every pipe)
    r.net.pipes = [p for p in r.net.pipes if not p.closed]
    for b in r.backends.values():
        b.peers.clear()
        b.handshakes.clear()
        b.received.clear()


def run_direct(n):
    """The rig's own client and backend, joined directly: what the rig itself costs."""
    from autobahn.twisted.websocket import WebSocketClientFactory

    from tests.rig import Client, FakeBackend

    net = memory.Network(clock)
    be = FakeBackend("b1", "10.0.0.1")
    t0 = time.perf_counter()
    for _ in range(n):
        factory = WebSocketClientFactory("ws://lb.test/echo", protocols=["v1"])
        factory.protocol = Client
        c = factory.buildProtocol(None)
        c.pipe = net.connect(c, be.build(), LISTEN)
        net.pump()
        assert c.opened
        if ECHO:
            c.sendMessage(b"x", False)
            net.pump()
        c.sendClose(1000)
        net.pump()
        net.pipes = [p for p in net.pipes if not p.closed]
        be.peers.clear()
        be.handshakes.clear()
        be.received.clear()
    return time.perf_counter() - t0


r = build_rig()
for _ in range(200):  # warm-up
    one(r)
acc["t"] = 0.0
timers["t"] = 0.0
per_entry.clear()
if prof:
    prof = cProfile.Profile()
gc.collect()
t0 = time.perf_counter()
for _ in range(N):
    one(r)
wall = time.perf_counter() - t0
bal = acc["t"]
assert not r.balancer.sessions, len(r.balancer.sessions)
print(f"sessions: {N}  echo: {ECHO}  profiled: {bool(prof)}")
print(f"through balancer, whole rig: {wall / N * 1e6:8.1f} us/session")
print(f"  balancer side only:        {bal / N * 1e6:8.1f} us/session")
for k, v in sorted(per_entry.items(), key=lambda kv: -kv[1]):
    print(f"    {k:24s} {v / N * 1e6:8.1f}")
print(
    "  reactor.advance (timers, either side, incl. their balancer work): "
    f"{timers['t'] / N * 1e6:.1f}"
)
if not prof:
    d = run_direct(N)
    print(f"direct client<->backend (rig only): {d / N * 1e6:8.1f} us/session")
if prof:
    prof.dump_stats(PROFILE)
    print("profile:", PROFILE)
