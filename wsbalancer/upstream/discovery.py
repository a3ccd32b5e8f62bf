"""DNS discovery: a backend source given by a DNS name, re-resolved on the record TTL.

Every A/AAAA record of the name is a backend (a Kubernetes headless Service answers one per
ready pod), or every SRV record's target:port. Backends are added as records appear and
removed through the balancer's own removal path (drain or failover, as on a SIGHUP reload) as
they disappear; backends that stay are never touched. A failed or empty lookup keeps the last
known set: DNS trouble must not empty a pool that is serving.

A source feeds a `BackendTarget` (add or remove one backend): each pool has its own sources.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.names import client, dns
from zope.interface import implementer

from wsbalancer.config import DEFAULT_POOL, BackendConfig
from wsbalancer.config.discovery import DiscoverySource, backend_for
from wsbalancer.config.interfaces import IReconfigurable
from wsbalancer.observe.logs import logger

# Retry timeouts of one DNS query (seconds each): a dead server is given up on in 4 s.
QUERY_TIMEOUT = (1, 3)
# Marks a pool backend as owned by a discovery source (a reload leaves those alone).
DISCOVERED = "discovered_by"


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
    """One of the balancer's pools: adds with `add_backend`, removes with `remove_backend` in
    the pool's `reload.removed_sessions` mode, so sessions drain or fail over as on SIGHUP."""

    log = logger("wsbalancer.discovery")

    def __init__(self, balancer: Any, pool: str = DEFAULT_POOL) -> None:
        self.balancer = balancer
        self.pool = pool
        # (source, id, reason) already logged: a refused record is offered again on every
        # lookup, and is worth one line, not one per TTL.
        self._refused: set[tuple[str, str, str]] = set()

    def _refuse(self, source: str, backend_id: str, reason: str) -> bool:
        if (source, backend_id, reason) not in self._refused:
            self._refused.add((source, backend_id, reason))
            self.log.warn(
                "discovery {source}: not adding {backend}: {reason}",
                source=source,
                backend=backend_id,
                reason=reason,
            )
        return False

    @property
    def lane(self) -> Any:
        return self.balancer.lanes[self.pool]

    @property
    def metric_path(self) -> str:
        """Where discovered backends report their count."""
        return str(self.lane.config.metric_path)

    def add_discovered(self, config: BackendConfig, source: str) -> bool:
        lane = self.lane
        state = lane.pool.backends.get(config.id)
        owner = state.extra.get(DISCOVERED) if state is not None else None
        if state is not None and not state.removed and owner not in (None, source):
            return True  # another source found the same address: it already serves
        if state is not None and not state.removed and owner is None:
            return self._refuse(source, config.id, "it is a listed backend")
        for other, taken in self.balancer.all_backends():
            if other is not lane and taken.id == config.id:
                # Ids are unique across pools; one still draining there is retried on the
                # next lookups, until it is gone.
                return self._refuse(source, config.id, f"it is a backend of pool {other.name}")
        self._refused = {r for r in self._refused if r[1] != config.id}
        state = self.balancer.add_backend(config, lane)
        state.extra[DISCOVERED] = source
        return True

    def remove_discovered(self, backend_id: str, source: str) -> None:
        lane = self.lane
        state = lane.pool.backends.get(backend_id)
        if state is None or state.removed or state.extra.get(DISCOVERED) != source:
            return
        self.balancer.remove_backend(state, lane.config.removed_sessions)


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
            known = self.known.get(backend_id)
            if known != config and self.target.add_discovered(config, label):
                self.known[backend_id] = config
                changes.append(f"{'added' if known is None else 'changed'} {backend_id}")
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
        """Run exactly these sources; unchanged ones keep running (and their backends). A
        source whose options changed takes over its backends, so none is drained meanwhile."""
        wanted = list(sources)
        labels = {s.label for s in wanted}
        handed_over: dict[str, dict[str, BackendConfig]] = {}
        changes = []
        for source in [s for s in self.sources if s not in wanted]:
            running = self.sources.pop(source)
            running.disownServiceParent()
            if source.label in labels:
                handed_over[source.label] = running.known
            else:
                running.forget()
                changes.append(f"discovery {source.label} stopped")
        for source in wanted:
            if source not in self.sources:
                running = DnsSource(
                    source, self.target, self.resolver_for(source), self.clock, self.on_lookup
                )
                running.known = handed_over.get(source.label, {})
                self.sources[source] = running
                running.setServiceParent(self)
                verb = "changed" if source.label in handed_over else "started"
                changes.append(f"discovery {source.label} {verb}")
        return changes


@implementer(IReconfigurable)
class PoolDiscovery(MultiService):
    """Discovery for every pool of the balancer: one `DiscoveryService` per pool with
    sources, applied again (started, stopped, handed over) on each reload."""

    def __init__(self, balancer: Any, reactor: Any, on_lookup: Any) -> None:
        super().__init__()
        self.balancer = balancer
        self.reactor = reactor
        self.on_lookup = on_lookup
        self.pools: dict[str, DiscoveryService] = {}

    @property
    def sources(self) -> dict[DiscoverySource, DnsSource]:
        """Every running source, of every pool."""
        return {s: r for service in self.pools.values() for s, r in service.sources.items()}

    def reconfigure(self, config: Any) -> list[str]:
        """Run exactly the sources of `config`'s pools; a pool that is gone stops its own
        (its discovered backends are removed as the pool's others are)."""
        wanted = {pool.pool_name: pool.discovery for pool in config.all_pools()}
        changes = []
        for name in sorted(set(wanted) | set(self.pools)):
            service = self.pools.get(name)
            if service is None:
                if not wanted.get(name):
                    continue
                service = DiscoveryService(
                    BalancerTarget(self.balancer, name),
                    self.balancer.clock,
                    lambda source: make_resolver(source, self.reactor),
                    on_lookup=self.on_lookup,
                )
                self.pools[name] = service
                service.setServiceParent(self)
            prefix = "" if name == DEFAULT_POOL else f"pool {name}: "
            changes += [prefix + change for change in service.apply(wanted.get(name, ()))]
            if not service.sources:
                del self.pools[name]
                service.disownServiceParent()
        return changes


def balancer_discovery(balancer: Any, reactor: Any) -> PoolDiscovery:
    """Discovery feeding the balancer's pools, counted in its Prometheus registry."""
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

    service = PoolDiscovery(balancer, reactor, counted)
    service.reconfigure(balancer.config)
    return service
