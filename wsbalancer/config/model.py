"""The configuration model: the frozen dataclasses a validated configuration is made of.

`Config` is the whole process's and also its default pool's; `PoolConfig` is what one pool
has (a named pool's settings); `BackendConfig`, `Keepalive` and `Route` are their parts. No
parsing here (config.validate fills these from raw values), only what the rest of the
balancer reads, so any floor may import it without pulling in YAML or the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsbalancer.config.values import cpu_count

DEFAULT_POOL = "default"

# Headers that belong to one hop or to the WebSocket handshake itself: each leg writes its own.
HANDSHAKE_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "origin",
    }
)


@dataclass(frozen=True)
class BackendConfig:
    """One backend: where to dial it and where its connection count is read."""

    id: str
    url: str
    metric_url: str | None  # None: the backend has no count endpoint; only ours is known
    weight: float = 1.0
    server_name: str | None = None  # TLS name to verify when the URL holds an address


@dataclass(frozen=True)
class Keepalive:
    """Ping/pong keepalive of one leg; an interval of 0 turns it off."""

    ping_interval: float
    pong_timeout: float


@dataclass(frozen=True)
class Route:
    """Requests whose path starts with `path` (and whose Host is `host`, when set) go to `pool`."""

    path: str
    pool: str
    host: str | None = None

    def matches(self, path: str, host: str | None) -> bool:
        """Whether a request for `path` on `host` takes this route."""
        if self.host is not None and (host or "").lower() != self.host:
            return False
        prefix = self.path
        return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


@dataclass(frozen=True)
class PoolConfig:
    """One pool: its backends and the settings a named pool may set for itself (the keys of
    schema.POOL_KEY_PREFIXES). The rest (listen addresses, admin, client-side limits and
    timeouts, logging, extensions, count polling) are the whole process's, in `Config`."""

    backends: tuple[BackendConfig, ...]
    pool_name: str = DEFAULT_POOL
    metric_path: str = "/metric"
    strategy: str = "least-loaded"
    health_fall: int = 3
    health_rise: int = 2
    breaker_threshold: int = 5
    breaker_cooldown: float = 10.0
    outlier_consecutive_failures: int = 3  # outlier.py; 0 turns ejection off
    outlier_base_ejection: float = 30.0
    outlier_max_ejection_percent: float = 50.0
    # admission.py: backend upgrades per second per backend and per pool (0: no limit)
    admission_rate: float = 0.0
    admission_pool_rate: float = 0.0
    admission_burst: int = 0  # 0: one second's worth
    admission_queue: int = 1000  # dials that may wait for a token at once
    admission_max_wait: float = 5.0
    backend_connect_timeout: float = 5.0
    backend_handshake_timeout: float = 10.0
    # How long one client's handshake may spend dialling backends, all tries together.
    backend_total_timeout: float = 30.0
    backend_keepalive: Keepalive = Keepalive(30.0, 10.0)
    forward_headers: tuple[str, ...] = ("*",)
    block_headers: tuple[str, ...] = ()
    pass_back_headers: tuple[str, ...] = ("set-cookie",)
    trust_x_forwarded_for: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None
    tls_client_cert: str | None = None  # presented to wss:// backends (with tls_client_key)
    tls_client_key: str | None = None
    discovery: tuple[Any, ...] = ()  # discovery.DiscoverySource, one per DNS name
    backend_compression: str = "off"
    relay_mode: str = "message"  # or "splice": frames forwarded as they are (splice.py)
    removed_sessions: str = "drain"  # or "failover" (at once), "migrate" (paced, make-before-break)
    # rebalance.py: sessions moved from the most loaded backends to the least, paced
    rebalance: bool = False
    rebalance_tolerance: float = 10.0  # percent of the mean a backend may be off by
    rebalance_max_moves: float = 20.0  # migrations started per second, per process
    rebalance_min_age: float = 10.0  # a session younger than this is not moved
    migrate_replay_first: int = 0  # first N client messages, sent again to a new backend
    failover: bool = True
    failover_attempts: int = 3
    failover_backoff: float = 0.25
    failover_buffer: int = 1024 * 1024
    failover_max_consecutive: int = 10
    failover_stable_after: float = 5.0
    reconnect_header: str = "X-Balancer-Reconnect"
    abnormal_close_codes: tuple[int, ...] = (1006, 1011, 1012, 1001, 1013)
    affinity: str = "off"
    affinity_cookie: str = "wsb_backend"
    affinity_secret: str = ""
    affinity_samesite: str = "Lax"
    affinity_max_age: float = 0.0
    affinity_key: str = ""
    affinity_load_factor: float = 1.25
    affinity_pin_idle: float = 120.0
    http: bool = False
    http_timeout: float = 60.0
    http_max_body: int = 1024 * 1024

    def backend(self, backend_id: str) -> BackendConfig:
        """The backend with this id (KeyError when there is none)."""
        for b in self.backends:
            if b.id == backend_id:
                return b
        raise KeyError(backend_id)


@dataclass(frozen=True)
class Config(PoolConfig):
    """The balancer's whole configuration, validated.

    A `Config` is also a `PoolConfig`: the top-level settings are the default pool's. Each
    named pool in `pools` is a `PoolConfig` of its own (the top-level pool settings with that
    pool's keys over them)."""

    listen: tuple[str, ...] = ("tcp:8080",)
    admin_listen: str = "tcp:8081:interface=127.0.0.1"
    balancer_metric_path: str = "/balancer-metrics"
    admin_token: str = ""
    admin_open_reads: bool = False
    # Host names the admin site answers besides IP literals, localhost and this machine's
    # name ("*" for any, ".example.com" for a domain and its subdomains): DNS rebinding.
    admin_allowed_hosts: tuple[str, ...] = ()
    # Count polling runs once for every pool, so its timing is the process's.
    poll_interval: float = 2.0
    count_ttl: float = 30.0
    fetch_timeout: float = 2.0
    client_handshake_timeout: float = 10.0
    idle_timeout: float = 0.0
    close_timeout: float = 5.0
    client_keepalive: Keepalive = Keepalive(30.0, 10.0)
    max_message_size: int = 64 * 1024 * 1024
    max_frame_size: int = 0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 0
    max_connections_per_ip: int = 0
    # Plain-HTTP clients (httpproxy.py): the whole process's, like the other client limits.
    http_head_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_body_min_rate: int = 500  # bytes/s that each extend the body's deadline by a second
    http_keepalive_timeout: float = 60.0
    max_http_connections: int = 4096
    compression: bool = True
    compression_level: int = 1
    workers: int = field(
        default_factory=cpu_count
    )  # processes sharing the listening sockets (workers.py)
    drain_period: float = 10.0
    listeners: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    log_library_level: str = "warn"
    log_admin_access: str = "quiet"
    pools: tuple[PoolConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    default_pool: str | None = DEFAULT_POOL
    ignored: tuple[str, ...] = field(default=())

    def all_pools(self) -> tuple[PoolConfig, ...]:
        """The default pool (this config) followed by the named ones."""
        return (self, *self.pools)
