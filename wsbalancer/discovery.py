"""DNS discovery: a backend source given by a DNS name, re-resolved on the record TTL.

Every A/AAAA record of the name is a backend (a Kubernetes headless Service answers one per
ready pod), or every SRV record's target:port. Backends are added as records appear and
removed through the balancer's own removal path (drain or failover, as on a SIGHUP reload) as
they disappear; backends that stay are never touched. A failed or empty lookup keeps the last
known set: DNS trouble must not empty a pool that is serving.

A source feeds a `BackendTarget` (add or remove one backend), so each pool can have its own.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.names import client, dns

from .config import (
    BackendConfig,
    ConfigError,
    _BackendSpec,
    _build_backend,
    parse_duration,
    parse_positive_duration,
)
from .logs import logger

TYPES = ("a", "srv")
# Retry timeouts of one DNS query (seconds each): a dead server is given up on in 4 s.
QUERY_TIMEOUT = (1, 3)
# Marks a pool backend as owned by a discovery source (a reload leaves those alone).
DISCOVERED = "discovered_by"
_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?\.?$")
_KEYS = {
    "name",
    "type",
    "scheme",
    "port",
    "path",
    "metric",
    "weight",
    "nameserver",
    "min_interval",
    "max_interval",
    "tls_name",
}


@dataclass(frozen=True)
class DiscoverySource:
    """One DNS name whose records are backends."""

    name: str
    type: str = "a"
    scheme: str = "ws"
    port: int | None = None  # required for A/AAAA; SRV records carry their own
    path: str = ""
    metric: str | None = None  # None: balancing.metric_path
    weight: float = 1.0
    nameserver: tuple[str, int] | None = None  # None: the nameservers of /etc/resolv.conf
    min_interval: float = 5.0
    max_interval: float = 60.0
    tls_name: str | None = None  # None: the queried name (A) or the SRV target

    @property
    def label(self) -> str:
        """How logs, events and metrics name this source."""
        return f"{self.type}:{self.name}"


# --- configuration -------------------------------------------------------------------------


def _port(value: Any) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\d{1,5}", str(value).strip()):
        raise ValueError(f"port: expected 1-65535, got {value!r}")
    port = int(str(value).strip())
    if not 1 <= port <= 65535:
        raise ValueError(f"port: expected 1-65535, got {value!r}")
    return port


def _nameserver(value: Any) -> tuple[str, int] | None:
    text = str(value).strip()
    if text in ("", "none", "system"):
        return None
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?", text)
    if not m:
        raise ValueError(f"nameserver: expected an IP address[:port], got {value!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver: expected an IP address[:port], got {value!r}")
    return host, _port(port) if port else 53


def _from_url(text: str) -> dict[str, Any]:
    """`dns+ws://name:port/path?opt=value` or `srv+wss://_svc._tcp.name/path?opt=value`."""
    parts = urlsplit(text)
    kind, _, scheme = parts.scheme.partition("+")
    if kind not in ("dns", "srv") or not scheme:
        raise ValueError(f"expected dns+ws://NAME:PORT or srv+ws://NAME, got {text!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port: bad port in {text!r}")
    item: dict[str, Any] = {
        "name": parts.hostname or "",
        "type": "a" if kind == "dns" else "srv",
        "scheme": scheme,
        "path": parts.path,
    }
    if port is not None:
        item["port"] = port
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("name", "type", "scheme", "port", "path") or key not in _KEYS:
            raise ValueError(f"unknown option {key!r} in {text!r}")
        item[key] = value
    return item


def _source(item: Any) -> DiscoverySource:
    if isinstance(item, str):
        item = _from_url(item.strip())
    if not isinstance(item, Mapping):
        raise ValueError("expected a dns+ws:// URL or a mapping with name")
    unknown = set(item) - _KEYS
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]}")
    name = str(item.get("name") or "").strip()
    if not _NAME.match(name):
        raise ValueError(f"name: expected a DNS name, got {item.get('name')!r}")
    kind = str(item.get("type", "a")).strip().lower()
    kind = {"aaaa": "a", "address": "a"}.get(kind, kind)
    if kind not in TYPES:
        raise ValueError(f"type: expected a or srv, got {item.get('type')!r}")
    scheme = str(item.get("scheme", "ws")).strip().lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"scheme: expected ws or wss, got {item.get('scheme')!r}")
    port = _port(item["port"]) if item.get("port") not in (None, "") else None
    if kind == "a" and port is None:
        raise ValueError("port: needed for type a (A/AAAA records carry no port)")
    path = str(item.get("path") or "")
    if path and not path.startswith("/"):
        raise ValueError(f"path: expected a path starting with /, got {path!r}")
    try:
        low = parse_positive_duration(item.get("min_interval", 5.0))
    except ValueError as e:
        raise ValueError(f"min_interval: {e}")
    try:
        high = parse_duration(item.get("max_interval", max(60.0, low)))
    except ValueError as e:
        raise ValueError(f"max_interval: {e}")
    if high < low:
        raise ValueError(f"max_interval: must not be below min_interval ({low:g}s)")
    try:
        weight = float(item.get("weight", 1))
    except (TypeError, ValueError):
        raise ValueError(f"weight: expected a number, got {item.get('weight')!r}")
    if not weight > 0:
        raise ValueError(f"weight: must be above zero, got {item.get('weight')!r}")
    metric = item.get("metric")
    tls_name = str(item["tls_name"]).strip() if item.get("tls_name") else None
    if tls_name is not None and not _NAME.match(tls_name):
        raise ValueError(f"tls_name: expected a host name, got {tls_name!r}")
    return DiscoverySource(
        name=name.rstrip("."),
        type=kind,
        scheme=scheme,
        port=port,
        path=path.rstrip("/"),
        metric=str(metric) if metric not in (None, "") else None,
        weight=weight,
        nameserver=_nameserver(item.get("nameserver", "")),
        min_interval=low,
        max_interval=high,
        tls_name=tls_name,
    )


def parse_sources(value: Any) -> tuple[DiscoverySource, ...]:
    """The `discovery` key: a list of mappings or URLs, one mapping, or comma-separated URLs
    (environment and flags)."""
    if value in (None, "", []):
        return ()
    if isinstance(value, str):
        items: list[Any] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, Mapping):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("expected a list of sources")
    sources = []
    for index, item in enumerate(items):
        try:
            sources.append(_source(item))
        except ValueError as e:
            raise ValueError(f"[{index}] {e}")
    labels = [s.label for s in sources]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"{label} is listed twice")
    return tuple(sources)


def backend_for(
    source: DiscoverySource, host: str, port: int, metric_path: str, tls_name: str
) -> BackendConfig:
    """The backend one record stands for; its id is `address:port`, as for a listed one, and a
    wss:// one is verified against `tls_name` (a certificate names the service, not the pod IP)."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    spec = _BackendSpec(
        url=f"{source.scheme}://{netloc}{source.path}",
        source=f"discovery {source.label}",
        metric=source.metric,
        weight=source.weight,
    )
    try:
        config = _build_backend(spec, metric_path)
    except ConfigError as e:  # validated at load time, so only a broken record gets here
        raise ValueError(str(e))
    return replace(config, server_name=source.tls_name or tls_name)


# --- where discovered backends go ------------------------------------------------------------


class BackendTarget(Protocol):
    """A pool a source adds backends to and removes them from."""

    @property
    def metric_path(self) -> str:
        """Where discovered backends report their count."""

    def add_discovered(self, config: BackendConfig, source: str) -> bool:
        """Add (or bring back) a backend; False if the id belongs to a listed backend."""

    def remove_discovered(self, backend_id: str, source: str) -> None:
        """Remove a backend this source added, the way a reload removes one."""


class BalancerTarget:
    """The balancer's pool: adds with `add_backend`, removes with `remove_backend` in the
    configured `reload.removed_sessions` mode, so sessions drain or fail over as on SIGHUP."""

    log = logger("wsbalancer.discovery")

    def __init__(self, balancer: Any) -> None:
        self.balancer = balancer

    @property
    def metric_path(self) -> str:
        """Where discovered backends report their count."""
        return str(self.balancer.config.metric_path)

    def add_discovered(self, config: BackendConfig, source: str) -> bool:
        state = self.balancer.pool.backends.get(config.id)
        owner = state.extra.get(DISCOVERED) if state is not None else None
        if state is not None and not state.removed and owner not in (None, source):
            return True  # another source found the same address: it already serves
        if state is not None and not state.removed and owner is None:
            self.log.warn(
                "discovery {source}: {backend} is a listed backend; not adding it again",
                source=source,
                backend=config.id,
            )
            return False
        state = self.balancer.add_backend(config)
        state.extra[DISCOVERED] = source
        return True

    def remove_discovered(self, backend_id: str, source: str) -> None:
        state = self.balancer.pool.backends.get(backend_id)
        if state is None or state.removed or state.extra.get(DISCOVERED) != source:
            return
        self.balancer.remove_backend(state, self.balancer.config.removed_sessions)


# --- resolving -----------------------------------------------------------------------------


class DiscoveryError(Exception):
    """A lookup gave nothing usable; the last known set stays."""


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The `nameserver` lines of resolv.conf (127.0.0.1 when there are none)."""
    servers = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append((fields[1].split("%")[0], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def make_resolver(source: DiscoverySource, reactor: Any) -> Any:
    """A twisted.names resolver asking the source's nameserver (or the system's) directly."""
    servers = [source.nameserver] if source.nameserver else system_nameservers()
    return client.Resolver(servers=servers, reactor=reactor)


def _addresses(result: tuple[list[Any], list[Any], list[Any]]) -> list[tuple[str, int]]:
    """(address, ttl) of the A/AAAA answers (CNAMEs followed by the server are skipped)."""
    found = []
    for rr in result[0]:
        if rr.type == dns.A:
            found.append((rr.payload.dottedQuad(), rr.ttl))
        elif rr.type == dns.AAAA:
            found.append((socket.inet_ntop(socket.AF_INET6, rr.payload.address), rr.ttl))
    return found


Found = set[tuple[str, int, str]]  # (address, port, name the address was found under)


async def resolve(source: DiscoverySource, resolver: Any) -> tuple[Found, int]:
    """The backends the source's records name now, and the lowest TTL."""

    async def addresses(name: str) -> list[tuple[str, int]]:
        a, aaaa = await defer.gatherResults(
            [
                resolver.lookupAddress(name, timeout=QUERY_TIMEOUT),
                resolver.lookupIPV6Address(name, timeout=QUERY_TIMEOUT),
            ],
            consumeErrors=True,
        )
        return _addresses(a) + _addresses(aaaa)

    ttls: list[int] = []
    found: Found = set()
    if source.type == "a":
        assert source.port is not None
        for address, ttl in await addresses(source.name):
            found.add((address, source.port, source.name))
            ttls.append(ttl)
    else:
        answers, _, _ = await resolver.lookupService(source.name, timeout=QUERY_TIMEOUT)
        for rr in answers:
            if rr.type != dns.SRV:
                continue
            ttls.append(rr.ttl)
            target = rr.payload.target.name.decode("ascii")
            for address, ttl in await addresses(target):
                found.add((address, rr.payload.port, target))
                ttls.append(ttl)
    if not found:
        raise DiscoveryError("no records")
    return found, min(ttls)


def _describe(failure: Any) -> str:
    error = failure.value
    if isinstance(error, defer.FirstError):
        error = error.subFailure.value
    if isinstance(error, DiscoveryError):
        return str(error)
    names = {
        "DNSNameError": "no such name",
        "DNSServerError": "server failure",
        "DNSQueryRefusedError": "query refused",
        "DNSQueryTimeoutError": "no answer",
        "TimeoutError": "no answer",
    }
    kind = error.__class__.__name__
    return names.get(kind, f"{kind}: {error}"[:200])


class DnsSource(Service):
    """Resolves one source now and again on its TTL (bounded), and applies what changed."""

    log = logger("wsbalancer.discovery")

    def __init__(
        self,
        source: DiscoverySource,
        target: BackendTarget,
        resolver: Any,
        clock: Any,
        on_lookup: Callable[[DiscoverySource, str], None] | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.resolver = resolver
        self.clock = clock
        self.on_lookup = on_lookup
        self.known: dict[str, BackendConfig] = {}
        self.last_error: str | None = None
        self.failures = 0
        self.next_at: float | None = None
        self._call: Any = None
        self._lookup: defer.Deferred[Any] | None = None
        self._waiters: list[defer.Deferred[list[str]]] = []
        self._finishing: list[defer.Deferred[None]] = []  # refresh() calls sharing a lookup

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._lookup is not None:
            self._lookup.cancel()

    def when_changed(self) -> defer.Deferred[list[str]]:
        """Fires with the changes the next time a lookup changes the set."""
        waiter: defer.Deferred[list[str]] = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.next_at = self.clock.seconds() + delay
        self._call = self.clock.callLater(delay, self.refresh)

    def refresh(self) -> defer.Deferred[None]:
        """Look the name up now (or join the lookup under way) and apply the answer; fires
        once it is applied, never fails."""
        done: defer.Deferred[None] = defer.Deferred()
        self._finishing.append(done)
        if self._lookup is not None:  # one lookup at a time
            return done
        d: defer.Deferred[Any] = defer.ensureDeferred(resolve(self.source, self.resolver))
        self._lookup = d

        def succeeded(answer: tuple[Found, int]) -> None:
            found, ttl = answer
            self._lookup = None
            self._succeeded(found)
            self._schedule(min(max(ttl, self.source.min_interval), self.source.max_interval))

        def failed(failure: Any) -> None:
            self._lookup = None
            if failure.check(defer.CancelledError):
                return
            self._failed(_describe(failure))
            self._schedule(self.source.min_interval)

        d.addCallbacks(succeeded, failed)
        d.addErrback(lambda f: self.log.failure("applying a DNS answer failed", f))
        d.addBoth(lambda _: self._finished())
        return done

    def _finished(self) -> None:
        finishing, self._finishing = self._finishing, []
        for done in finishing:
            done.callback(None)

    def _succeeded(self, found: Found) -> None:
        label = self.source.label
        if self.last_error is not None:
            self.log.info("discovery {source}: answers again", source=label)
        self.last_error = None
        self._count("ok")
        wanted: dict[str, BackendConfig] = {}
        for host, port, name in sorted(found):
            try:
                config = backend_for(self.source, host, port, self.target.metric_path, name)
            except ValueError as e:
                self.log.warn("discovery {source}: record skipped: {e}", source=label, e=str(e))
                continue
            wanted[config.id] = config
        changes = []
        for backend_id, config in wanted.items():
            if backend_id not in self.known and self.target.add_discovered(config, label):
                self.known[backend_id] = config
                changes.append(f"added {backend_id}")
        for backend_id in [b for b in self.known if b not in wanted]:
            del self.known[backend_id]
            self.target.remove_discovered(backend_id, label)
            changes.append(f"removed {backend_id}")
        if changes:
            self.log.info(
                "discovery {source}: {changes}; {n} backends",
                source=label,
                changes=", ".join(changes),
                n=len(self.known),
            )
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.called:  # a caller may have given up waiting (timeout)
                    waiter.callback(changes)

    def _failed(self, error: str) -> None:
        self.failures += 1
        self._count("error")
        if error != self.last_error:
            self.log.warn(
                "discovery {source}: lookup failed ({error}); keeping {n} known backends",
                source=self.source.label,
                error=error,
                n=len(self.known),
            )
        self.last_error = error

    def _count(self, outcome: str) -> None:
        if self.on_lookup is not None:
            self.on_lookup(self.source, outcome)

    def forget(self) -> None:
        """The source left the configuration: remove its backends as a reload would."""
        for backend_id in list(self.known):
            self.target.remove_discovered(backend_id, self.source.label)
        self.known.clear()


class DiscoveryService(MultiService):
    """The running sources of one target; `apply` starts new ones and stops removed ones."""

    def __init__(
        self,
        target: BackendTarget,
        clock: Any,
        resolver_for: Callable[[DiscoverySource], Any],
        on_lookup: Callable[[DiscoverySource, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.clock = clock
        self.resolver_for = resolver_for
        self.on_lookup = on_lookup
        self.sources: dict[DiscoverySource, DnsSource] = {}

    def apply(self, sources: Iterable[DiscoverySource]) -> list[str]:
        """Run exactly these sources; unchanged ones keep running (and their backends)."""
        wanted = list(sources)
        changes = []
        for source in [s for s in self.sources if s not in wanted]:
            running = self.sources.pop(source)
            running.disownServiceParent()
            running.forget()
            changes.append(f"discovery {source.label} stopped")
        for source in wanted:
            if source not in self.sources:
                running = DnsSource(
                    source, self.target, self.resolver_for(source), self.clock, self.on_lookup
                )
                self.sources[source] = running
                running.setServiceParent(self)
                changes.append(f"discovery {source.label} started")
        return changes


def balancer_discovery(balancer: Any, reactor: Any) -> DiscoveryService:
    """Discovery feeding the balancer's pool, counted in its Prometheus registry."""
    from prometheus_client import Counter

    lookups = Counter(
        "wsbalancer_discovery_lookups",
        "DNS discovery lookups by source and outcome (error: the last known set was kept)",
        ["source", "outcome"],
        registry=balancer.metrics.registry,
    )

    def counted(source: DiscoverySource, outcome: str) -> None:
        lookups.labels(source.label, outcome).inc()
        if outcome == "error":
            balancer.event(f"discovery {source.label} lookup failed")

    service = DiscoveryService(
        BalancerTarget(balancer),
        balancer.clock,
        lambda source: make_resolver(source, reactor),
        on_lookup=counted,
    )
    service.apply(balancer.config.discovery)
    return service
