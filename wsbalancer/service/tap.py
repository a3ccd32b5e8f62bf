"""Service assembly: `twistd wsbalancer` options and `makeService`.

Only `makeService` touches the global reactor; `build_service` takes it as an argument, which
is also the public entry point for programs embedding the balancer.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from treq.client import HTTPClient
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from wsbalancer import __version__
from wsbalancer.admin.site import admin_site
from wsbalancer.config import DEFAULT_POOL, Config, ConfigError, load
from wsbalancer.config.interfaces import IReconfigurable
from wsbalancer.observe import logs
from wsbalancer.relay.balancer import Balancer
from wsbalancer.service.listeners import Frontends, ListenerService
from wsbalancer.service.notify import sd_notify
from wsbalancer.service.tlsreload import reload_certificates
from wsbalancer.service.workers import WorkerPool, WorkerStartError
from wsbalancer.upstream.dialer import tls_options
from wsbalancer.upstream.discovery import PoolDiscovery, balancer_discovery
from wsbalancer.upstream.poller import CountPoller
from wsbalancer.wire import patches

log = logs.logger("wsbalancer")

# Flags that set one configuration key each: (flag, key, help).
FLAG_KEYS = [
    ("admin-listen", "admin.listen", "Admin endpoint (default tcp:8081:interface=127.0.0.1)."),
    ("strategy", "balancing.strategy", "least-loaded, power-of-two or round-robin."),
    ("poll-interval", "balancing.poll_interval", "How often backend counts are read, e.g. 2s."),
    ("log-level", "log.level", "debug, info, warn, error."),
]


class Options(usage.Options):
    """`twistd wsbalancer` options; configuration is file < environment < these flags."""

    synopsis = "[--config FILE] [--listen ENDPOINT]... [--backend [ID=]URL]... [--set KEY=VALUE]..."
    optParameters = [
        ["config", "c", None, "YAML configuration file (also WSBALANCER_CONFIG)."],
        *[[flag, None, None, text] for flag, _, text in FLAG_KEYS],
    ]
    longdesc = (
        "Relays every WebSocket session to the least-loaded backend. Environment variables "
        "override the file (WSBALANCER_SECTION__KEY, or the seed balancer's FE_ADDR, BE_URLS, "
        "...); flags override both. See README.md for every key."
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self["set"] = []
        self.loaded: Config | None = None

    def opt_listen(self, endpoint: str) -> None:
        """Client endpoint, e.g. tcp:8080 or :8080 (repeatable)."""
        self["listen"].append(endpoint)

    def opt_backend(self, url: str) -> None:
        """Backend ws:// or wss:// URL, optionally ID=URL (repeatable; replaces others)."""
        self["backend"].append(url)

    def opt_set(self, assignment: str) -> None:
        """Any configuration key, e.g. --set timeouts.idle=5m (repeatable)."""
        key, sep, value = assignment.partition("=")
        if not sep:
            raise usage.UsageError(f"--set expects KEY=VALUE, got {assignment!r}")
        self["set"].append((key.strip(), value))

    def overrides(self) -> list[tuple[str, Any, str]]:
        """The flags as (key, value, source) triples."""
        out: list[tuple[str, Any, str]] = []
        if self["listen"]:
            out.append(("listen", list(self["listen"]), "flag --listen"))
        for flag, key, _ in FLAG_KEYS:
            if self[flag] is not None:
                out.append((key, self[flag], f"flag --{flag}"))
        out += [(key, value, f"flag --set {key}") for key, value in self["set"]]
        return out

    def postOptions(self) -> None:
        try:
            self.loaded = load(self["config"], overrides=self.overrides(), backends=self["backend"])
        except ConfigError as e:
            # One clear line and a non-zero exit, before anything is started.
            sys.stderr.write(f"wsbalancer: {e}\n")
            raise SystemExit(2)
        twistd = getattr(self, "parent", None)
        if twistd is not None and not twistd.get("logger") and not twistd.get("syslog"):
            # twistd builds its log observer after parsing options: name ours for it (the
            # format, the level per namespace), writing where twistd would have.
            default = None if twistd.get("nodaemon") else "twistd.log"
            logfile = twistd.get("logfile") or default
            logs.configure_output(self.loaded.log_format, logfile, self.loaded.log_level)
            twistd["logger"] = "wsbalancer.observe.logs.twistd_observer"


class _QuietHTTPFactory(_HTTP11ClientFactory):
    noisy = False  # one connection per backend per poll interval would flood the log


@implementer(IPolicyForHTTPS)
class _MetricTLSPolicy:
    """TLS for https:// metric URLs, with the same verification rules as wss:// backends."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._by_host: dict[str, Any] = {}  # not re-read from the CA bundle on every poll

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii")
        if host not in self._by_host:
            self._by_host[host] = tls_options(host, self.config)
        return self._by_host[host]


@implementer(IReconfigurable)
class LogLevels:
    """`log.level` and `log.library_level`, as a reload changes them."""

    def __init__(self, config: Config) -> None:
        self.levels = (config.log_level, config.log_library_level)

    def reconfigure(self, new: Config) -> list[str]:
        old, self.levels = self.levels, (new.log_level, new.log_library_level)
        changes = []
        if new.log_level != old[0]:
            changes.append(f"log level now {new.log_level}")
        if new.log_library_level != old[1]:
            changes.append(f"library log level now {new.log_library_level}")
        if self.levels != old:
            logs.set_level(new.log_level, new.log_library_level)
        return changes


@implementer(IReconfigurable)
class BalancerService(MultiService):
    """The balancer's services: listeners, the count poller, the admin site."""

    def __init__(self, balancer: Balancer) -> None:
        super().__init__()
        self.balancer = balancer
        self.listeners: list[ListenerService] = []
        self.admin: ListenerService | None = None
        self.poller: CountPoller | None = None
        self.discovery: PoolDiscovery | None = None
        # Under twistd a listener that cannot bind (or worker processes that cannot start)
        # ends the process with one clear line;
        # an embedding program gets the exception instead.
        self.exit_on_listen_error = False
        # Where a reload reads the configuration again (set by makeService); SIGHUP reloads.
        self.reload_source: Callable[[], Config] | None = None
        self.clock: Any = balancer.clock
        self.workers: WorkerPool | None = None  # the other worker processes (workers.py)
        self.frontends: Frontends | None = None  # what the admin API pauses and resumes
        self.poll_timer: TimerService | None = None  # balancing.poll_interval
        self.idle_sweeper: TimerService | None = None  # timeouts.idle (none while it is 0)
        # What a reload walks, in order (set by build_service): each part applies the new
        # configuration to itself and says what changed.
        self.reconfigurables: list[IReconfigurable] = []

    def privilegedStartService(self) -> None:
        # twistd binds ports here, before it drops privileges.
        self._binding(super().privilegedStartService)

    def _binding(self, start: Any) -> None:
        try:
            start()
        except CannotListenError as e:
            if not self.exit_on_listen_error:
                raise
            where = f"{e.interface or '*'}:{e.port}"
            sys.stderr.write(f"wsbalancer: cannot listen on {where}: {e.socketError}\n")
            raise SystemExit(1)
        except WorkerStartError as e:
            if not self.exit_on_listen_error:
                raise
            sys.stderr.write(f"wsbalancer: {e}\n")
            raise SystemExit(1)

    def startService(self) -> None:
        config = self.balancer.config
        for name in config.ignored:
            log.info("{name} has no effect in wsbalancer and is ignored", name=name)
        self._binding(super().startService)
        backends = configured_backends(config)
        self.balancer.event(f"started with {len(backends)} backends: {', '.join(backends)}")
        sd_notify(f"READY=1\nSTATUS=relaying to {len(backends)} backends")
        if self.reload_source is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._on_sighup)
        log.info(
            "wsbalancer relaying {listen} to {backends} ({strategy}); admin on {admin}; "
            "version {version}",
            listen=", ".join(config.listen) or "the master's listening sockets",
            backends=", ".join(f"{name}={url}" for name, url in backends.items()),
            strategy=config.strategy,
            admin=config.admin_listen,
            version=__version__,
        )

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.balancer.reactor.callFromThread(self.reload)

    def reload(self) -> list[str]:
        """Re-read ssl: certificates, then the configuration and apply it; an invalid
        configuration changes nothing (the certificates are reloaded either way)."""
        certificates = reload_certificates(self.listeners)
        if self.workers is not None:
            self.workers.signal_all("HUP")  # each worker re-reads the same sources
            self.workers.forget_backend_changes()  # a reload supersedes them everywhere
        if self.reload_source is None:
            return certificates
        try:
            new = self.reload_source()
        except ConfigError as e:
            log.error("reload rejected, the running configuration stays: {error}", error=str(e))
            return certificates
        changes = certificates
        for part in self.reconfigurables:  # in order: the balancer's own changes first
            changes += part.reconfigure(new)
        self.balancer.event("configuration reloaded: " + ("; ".join(changes) or "no change"))
        log.info("configuration reloaded: {changes}", changes="; ".join(changes) or "no change")
        return changes

    def reconfigure(self, new: Config) -> list[str]:
        """Re-time the poll and idle-sweep timers whose period a reload changed."""
        changes = []
        timer = self.poll_timer
        if timer is not None and timer.step != new.poll_interval:
            timer.step = new.poll_interval  # what the loop starts with, if not yet running
            loop = getattr(timer, "_loop", None)
            if timer.running and loop is not None and loop.running:
                # Re-time the loop in place: a poll still in flight finishes as it would,
                # and the next one follows the new period (stopping and starting the
                # loop would poll at once, alongside the one in flight).
                loop.interval = new.poll_interval
                loop.reset()  # (only reschedules a wait in progress)
            changes.append(f"poll interval now {new.poll_interval:g}s")
        sweeper = self.idle_sweeper
        if (sweeper.step if sweeper is not None else 0.0) != new.idle_timeout:
            if sweeper is not None:
                sweeper.disownServiceParent()
            self.idle_sweeper = None
            if new.idle_timeout:
                # The new timer sweeps at once: that sweep only takes note of each session,
                # so none is closed before it has been idle for a whole new period.
                for session in self.balancer.sessions.values():
                    session.idle_mark = -1
                self.idle_sweeper = idle_sweeper(self.balancer, new.idle_timeout)
                self.idle_sweeper.setServiceParent(self)
            changes.append(
                f"idle timeout now {new.idle_timeout:g}s"
                if new.idle_timeout
                else "idle timeout off"
            )
        return changes

    def stopService(self) -> Deferred[None]:
        """Stop accepting, close sessions with 1001 spread over the drain period, then stop."""
        return ensureDeferred(self._drain_and_stop())

    async def _drain_and_stop(self) -> None:
        balancer = self.balancer
        sd_notify("STOPPING=1")
        period = balancer.config.drain_period
        workers = None
        if self.workers is not None:  # they drain alongside this process
            workers = ensureDeferred(self.workers.drain(period + balancer.config.close_timeout + 5))
        balancer.drain()
        for listener in self.listeners:
            await maybeDeferred(listener.stopService)
        sessions = list(balancer.sessions.values())
        balancer.event(f"shutting down: draining {len(sessions)} sessions over {period:g}s")
        if sessions:
            log.info("draining {n} sessions over {period:g}s", n=len(sessions), period=period)
        # Spread the closes so clients do not all reconnect elsewhere in one wave.
        calls = [
            self.clock.callLater(
                period * i / len(sessions), s.terminate, 1001, "server shutting down"
            )
            for i, s in enumerate(sessions)
        ]
        deadline = self.clock.seconds() + period + balancer.config.close_timeout + 1
        while balancer.sessions and self.clock.seconds() < deadline:
            await deferLater(self.clock, 0.05, lambda: None)
        for call in calls:
            if call.active():
                call.cancel()
        balancer.cluster.stop_timers()
        if workers is not None:
            await workers
        await super().stopService()


def configured_backends(config: Config) -> dict[str, str]:
    """Every configured backend of every pool, `id` (or `pool/id` outside the default
    pool) to URL: what the start-up line and the dashboard's first event name."""
    return {
        (b.id if pool.pool_name == DEFAULT_POOL else f"{pool.pool_name}/{b.id}"): b.url
        for pool in config.all_pools()
        for b in pool.backends
    }


def idle_sweeper(balancer: Balancer, period: float) -> TimerService:
    """The timer closing sessions idle for a whole period (checked once per period)."""
    sweeper = TimerService(period, balancer.sweep_idle)
    sweeper.clock = balancer.reactor
    return sweeper


def build_service(
    config: Config,
    reactor: Any,
    worker_spec: dict[str, Any] | None = None,
    session_ids: Iterator[int] | None = None,
) -> BalancerService:
    """The whole balancer as a MultiService, for twistd or for embedding.

    With `workers` above 1, `worker_spec` says where worker processes load the
    configuration from (`{"config": path, "overrides": [...], "backends": [...]}`).

    It installs the process-wide Autobahn and Twisted trims the balancer is measured with
    (`wsbalancer.wire.patches.install()`: lazy debug formatting, the small-frame masker, the
    leaner epoll main loop, ...), once; every way the balancer runs (twistd, `wsbalancer
    run`, worker processes, the demo, a program embedding it) comes through here."""
    logs.set_level(config.log_level, config.log_library_level)
    patches.install()  # after set_level: a skipped trim's warning line obeys it
    seed = (worker_spec or {}).get("secret_seed")
    balancer = Balancer(
        config,
        reactor,
        secret_seed=bytes.fromhex(seed) if seed else None,
        session_ids=session_ids,
    )
    top = BalancerService(balancer)
    factory = balancer.server_factory()
    for description in config.listen:
        listener = ListenerService(reactor, description, factory)
        listener.setServiceParent(top)
        top.listeners.append(listener)
    if config.workers > 1 and worker_spec is not None and config.listen:
        top.workers = WorkerPool(
            top.listeners, balancer.cluster.secret_seed, config.workers, worker_spec, reactor
        )

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietHTTPFactory
    pool.maxPersistentPerHost = 1
    pool.cachedConnectionTimeout = int(max(30.0, config.poll_interval * 3))
    agent = Agent(
        reactor,
        contextFactory=_MetricTLSPolicy(config),
        pool=pool,
        connectTimeout=config.fetch_timeout,
    )
    http_client = HTTPClient(agent)
    balancer.cluster.set_poller_factory(
        lambda backends: CountPoller(
            backends,
            http_client,
            reactor,
            config.fetch_timeout,
            on_result=balancer.cluster.reporter.poll_result,
        )
    )
    timer = TimerService(config.poll_interval, balancer.cluster.poll_all)
    timer.clock = reactor
    timer.setServiceParent(top)
    top.poll_timer = timer
    top.poller = balancer.lanes[DEFAULT_POOL].poller

    discovery = balancer_discovery(balancer, reactor)
    discovery.setServiceParent(top)
    top.discovery = discovery

    # rebalance.*: checked once a second; a pool with it off costs nothing.
    rebalancing = TimerService(1.0, balancer.rebalancer.tick)
    rebalancing.clock = reactor
    rebalancing.setServiceParent(top)

    if config.idle_timeout:
        top.idle_sweeper = idle_sweeper(balancer, config.idle_timeout)
        top.idle_sweeper.setServiceParent(top)

    top.frontends = Frontends(top.listeners)
    admin = ListenerService(
        reactor, config.admin_listen, admin_site(balancer, top.frontends, top.workers)
    )
    admin.setServiceParent(top)
    top.admin = admin
    if top.workers is not None:
        top.workers.setServiceParent(top)  # last: the listening sockets exist by then
    # Admission rates are per backend for the whole group of processes: each has its share.
    processes = (worker_spec or {}).get("processes") or (config.workers if top.workers else 1)
    if processes > 1:
        balancer.cluster.set_process_share(1.0 / processes)
    top.reconfigurables = [balancer, LogLevels(config), discovery, top]
    return top


def makeService(options: Options, reactor: Any = None) -> BalancerService:
    """twistd's entry point."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.loaded
    if config is None:
        config = load(options["config"], overrides=options.overrides(), backends=options["backend"])
    spec = {
        "config": options["config"],
        "overrides": options.overrides(),
        "backends": options["backend"],
    }
    service = build_service(config, reactor, spec)
    service.exit_on_listen_error = True
    service.reload_source = lambda: load(
        options["config"], overrides=options.overrides(), backends=options["backend"]
    )
    return service
