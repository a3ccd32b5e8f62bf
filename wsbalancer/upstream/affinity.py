"""Session affinity of one pool: which backend a request is pinned to, and how it is pinned.

Two kinds, chosen per pool (`affinity.mode`):

- `cookie`: the balancer inserts a cookie naming the backend and a per-session nonce,
  signed with HMAC-SHA256 so a client cannot point itself at a backend of its choosing.
  A cookie that does not verify is ignored (the request is placed as a new one).
- `header`, `query`, `client-address`: a hash of that value on a consistent-hash ring with
  bounded loads (Mirrokni et al.): the key's backend unless it already carries more than
  `load_factor` times the mean, then the next one round the ring. No state, so every
  balancer instance agrees.

A pinned backend that is gone, draining, unhealthy or whose breaker is open is not used:
the caller picks by least-loaded and re-pins. Sessions pinned over plain HTTP (Socket.IO's
long-polling phase) count in the least-loaded figures (`BackendState.pinned`) until their
WebSocket opens or they have been idle for `affinity.pin_idle`.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wsbalancer.config import PoolConfig
from wsbalancer.observe.logs import logger
from wsbalancer.upstream.pool import BackendPool, BackendState

VNODES = 64  # ring points per unit of weight: enough for an even split of a few backends
MAX_PINS = 100_000  # pinned HTTP sessions remembered; the oldest are forgotten beyond it


@dataclass
class Placement:
    """Where the affinity wants a request: a usable backend, or None (pick by least-loaded)."""

    backend: BackendState | None = None
    nonce: str | None = None  # the session's nonce when its cookie verified
    pinned_id: str | None = None  # the backend a verified cookie named, usable or not
    forged: bool = False  # a cookie was there but did not verify


class Affinity:
    """One pool's affinity settings, its signing key and its pinned HTTP sessions."""

    def __init__(self, config: PoolConfig, secret: bytes, seconds: Callable[[], float]) -> None:
        self.mode = config.affinity
        self.cookie_name = config.affinity_cookie
        self.samesite = config.affinity_samesite
        self.max_age = config.affinity_max_age
        self.key = config.affinity_key
        self.load_factor = config.affinity_load_factor
        self.pin_idle = config.affinity_pin_idle
        self.pool_name = config.pool_name
        self.secret = secret
        self.seconds = seconds
        self.pins: OrderedDict[str, tuple[BackendState, float]] = OrderedDict()
        self._ring: tuple[tuple[Any, ...], list[int], list[str]] | None = None

    @property
    def enabled(self) -> bool:
        """Whether this pool pins sessions at all."""
        return self.mode != "off"

    # --- where a request goes ---------------------------------------------------------

    def place(
        self,
        pool: BackendPool,
        headers: Mapping[str, str],
        target: str,
        peer: str,
        exclude: Iterable[str] = (),
    ) -> Placement:
        """The backend this request is pinned to, if it is usable. `headers` have lower-case
        names; `target` is the request's path and query."""
        if self.mode == "off":
            return Placement()
        if self.mode == "cookie":
            return self._place_by_cookie(pool, headers.get("cookie", ""), exclude)
        key = self._hash_key(headers, target, peer)
        if key is None:
            return Placement()
        return Placement(backend=self.hash_pick(pool, key, exclude))

    def _place_by_cookie(
        self, pool: BackendPool, cookie_header: str, exclude: Iterable[str]
    ) -> Placement:
        value = cookie_value(cookie_header, self.cookie_name)
        if value is None:
            return Placement()
        verified = self.verify(value)
        if verified is None:
            return Placement(forged=True)
        backend_id, nonce = verified
        state = pool.backends.get(backend_id)
        usable = state is not None and backend_id not in set(exclude) and pool.usable(state)
        return Placement(backend=state if usable else None, nonce=nonce, pinned_id=backend_id)

    def _hash_key(self, headers: Mapping[str, str], target: str, peer: str) -> str | None:
        if self.mode == "client-address":
            return peer
        if self.mode == "header":
            return headers.get(self.key.lower()) or None
        values = parse_qs(urlsplit(target).query).get(self.key)
        return values[0] if values else None

    def hash_pick(
        self, pool: BackendPool, key: str, exclude: Iterable[str] = ()
    ) -> BackendState | None:
        """The key's backend on the ring, skipping unusable ones and ones over their bound."""
        skip = set(exclude)
        usable = [b for b in pool.backends.values() if b.id not in skip and pool.usable(b)]
        if not usable:
            return None
        points, owners = self._ring_for(pool)
        now, ttl = pool.seconds(), pool.count_ttl
        total = sum(b.estimate(now, ttl) for b in usable) + 1
        weights = sum(b.config.weight for b in usable)
        ok = {b.id: b for b in usable}
        start = bisect.bisect(points, _hash(key))
        for i in range(len(points)):
            backend = ok.get(owners[(start + i) % len(points)])
            if backend is None:
                continue
            bound = math.ceil(self.load_factor * total * backend.config.weight / weights)
            if backend.estimate(now, ttl) < bound:
                return backend
        return None  # every usable backend is over its bound: least-loaded decides

    def _ring_for(self, pool: BackendPool) -> tuple[list[int], list[str]]:
        shape = tuple((b.id, b.config.weight) for b in pool.backends.values())
        if self._ring is None or self._ring[0] != shape:
            ring = sorted(
                (_hash(f"{backend_id}#{i}"), backend_id)
                for backend_id, weight in shape
                for i in range(max(1, round(VNODES * weight)))
            )
            self._ring = (shape, [p for p, _ in ring], [o for _, o in ring])
        return self._ring[1], self._ring[2]

    # --- the cookie -------------------------------------------------------------------

    def sign(self, backend_id: str, nonce: str) -> str:
        """The cookie value naming `backend_id` for the session `nonce`."""
        name = _b64(backend_id.encode())
        return f"{name}.{nonce}.{self._mac(name, nonce)}"

    def verify(self, value: str) -> tuple[str, str] | None:
        """(backend id, nonce) from a cookie value whose signature holds, else None."""
        parts = value.split(".")
        if len(parts) != 3:
            return None
        name, nonce, mac = parts
        # Compared as bytes: compare_digest refuses str with non-ASCII characters, and a
        # cookie read as latin-1 may hold any byte. Such a MAC never verifies.
        if not hmac.compare_digest(mac.encode("utf-8"), self._mac(name, nonce).encode()):
            return None
        try:
            return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode(), nonce
        except (ValueError, UnicodeDecodeError):
            return None

    def _mac(self, name: str, nonce: str) -> str:
        # The pool's name is signed too: a cookie of one pool pins nothing in another.
        message = f"{self.pool_name}|{name}|{nonce}".encode()
        return _b64(hmac.new(self.secret, message, hashlib.sha256).digest()[:18])

    def set_cookie(self, backend_id: str, nonce: str, secure: bool) -> str:
        """The Set-Cookie header value pinning a session to `backend_id`."""
        parts = [f"{self.cookie_name}={self.sign(backend_id, nonce)}", "Path=/", "HttpOnly"]
        parts.append(f"SameSite={self.samesite}")
        if self.max_age:
            parts.append(f"Max-Age={int(self.max_age)}")
        if secure or self.samesite == "None":  # browsers drop SameSite=None without Secure
            parts.append("Secure")
        return "; ".join(parts)

    # --- HTTP sessions counted while they are pinned ----------------------------------

    def touch(self, nonce: str, backend: BackendState) -> None:
        """A plain-HTTP request of a pinned session: it counts on `backend` until it goes
        quiet for `pin_idle` or its WebSocket opens."""
        now = self.seconds()
        self.expire(now)
        pinned = self.pins.pop(nonce, None)
        if pinned is not None and pinned[0] is not backend:
            pinned[0].pinned -= 1
            pinned = None
        if pinned is None:
            backend.pinned += 1
            if len(self.pins) >= MAX_PINS:
                _, (oldest, _) = self.pins.popitem(last=False)
                oldest.pinned -= 1
        self.pins[nonce] = (backend, now + self.pin_idle)

    def release(self, nonce: str | None) -> None:
        """The session's WebSocket opened: it counts as a session from now on."""
        pinned = self.pins.pop(nonce, None) if nonce else None
        if pinned is not None:
            pinned[0].pinned -= 1

    def expire(self, now: float) -> None:
        """Forget pins idle past `pin_idle` (oldest first, so this stops at the first live)."""
        while self.pins:
            nonce, (backend, until) = next(iter(self.pins.items()))
            if until > now:
                return
            del self.pins[nonce]
            backend.pinned -= 1

    def release_all(self) -> None:
        """The pool is going away (or its affinity changed): drop every pin's count."""
        for backend, _ in self.pins.values():
            backend.pinned -= 1
        self.pins.clear()


def new_nonce() -> str:
    """A fresh session nonce for a new cookie."""
    return secrets.token_urlsafe(9)


def new_secret() -> bytes:
    """A signing key for a pool configured without one."""
    return secrets.token_bytes(32)


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header (None when absent or unparseable)."""
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def strip_cookie(header: str, name: str) -> str:
    """The Cookie header without the balancer's own cookie (the backend has no use for it)."""
    if name not in header:
        return header
    kept = [p.strip() for p in header.split(";") if p.strip().partition("=")[0] != name]
    return "; ".join(p for p in kept if p)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def affinity_settings(config: PoolConfig) -> tuple[Any, ...]:
    """What a pool's affinity is made of: a change in any of it makes a new one."""
    return (
        config.affinity,
        config.affinity_cookie,
        config.affinity_secret,
        config.affinity_samesite,
        config.affinity_max_age,
        config.affinity_key,
        config.affinity_load_factor,
        config.affinity_pin_idle,
    )


class AffinityKeys:
    """The keys cookie affinity signs with. A pool with no `affinity.secret` gets one
    derived from `seed`, which worker processes share with their master (a cookie one
    issued, all honour); derived keys are kept across reloads."""

    log = logger("wsbalancer")

    def __init__(self, seed: bytes | None = None) -> None:
        self.seed = seed or new_secret()
        self._derived: dict[str, bytes] = {}

    def affinity(self, config: PoolConfig, seconds: Callable[[], float]) -> Affinity:
        """A pool's Affinity, with its configured key or one derived for it."""
        secret = config.affinity_secret.encode()
        if config.affinity == "cookie" and not secret:
            secret = self._derived.get(config.pool_name, b"")
            if not secret:
                secret = hmac.new(self.seed, config.pool_name.encode(), "sha256").digest()
                self._derived[config.pool_name] = secret
                self.log.warn(
                    "affinity.secret is not set for pool {pool}: using a random one, so its "
                    "affinity cookies will not survive a restart or be honoured by another "
                    "instance",
                    pool=config.pool_name,
                )
        return Affinity(config, secret, seconds)
