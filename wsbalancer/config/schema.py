"""The key schema of the configuration: every dotted key of the file format (and so of the
environment and flags), its parser and the `Config` field it fills; which keys a pool may
set; raw values as found, with their sources; and the "did you mean" of an unknown key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from wsbalancer.config.backends import BackendSpec
from wsbalancer.config.discovery import parse_sources
from wsbalancer.config.model import Config, PoolConfig
from wsbalancer.config.values import (
    ConfigError,
    closest_key,
    gathering,
    one_of,
    parse_bool,
    parse_ca_file,
    parse_close_codes,
    parse_compression_level,
    parse_cookie_name,
    parse_dotted_names,
    parse_duration,
    parse_endpoint,
    parse_endpoints,
    parse_header_list,
    parse_host_patterns,
    parse_int,
    parse_load_factor,
    parse_metric_document_path,
    parse_metric_path,
    parse_percent,
    parse_pool_name,
    parse_positive_duration,
    parse_positive_int,
    parse_rate,
    parse_size,
    parse_workers,
)

STRATEGIES = ("least-loaded", "power-of-two", "round-robin")
AFFINITY_MODES = ("off", "cookie", "header", "query", "client-address")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
# Admin-site access lines: every request, all but probes and scrapes, or none.
ADMIN_ACCESS = ("all", "quiet", "off")
ENV_PREFIX = "WSBALANCER_"


def parse_discovery(value: Any) -> tuple[Any, ...]:
    """DNS discovery sources (see wsbalancer.config.discovery)."""
    return parse_sources(value)


# The keys of the file format, dotted, each with its parser and the Config field it fills.
SCHEMA: dict[str, tuple[Callable[[Any], Any], str]] = {
    "listen": (parse_endpoints, "listen"),
    "admin.listen": (parse_endpoint, "admin_listen"),
    "admin.balancer_metric_path": (parse_metric_document_path, "balancer_metric_path"),
    "admin.token": (str, "admin_token"),
    "admin.open_reads": (parse_bool, "admin_open_reads"),
    "admin.allowed_hosts": (parse_host_patterns, "admin_allowed_hosts"),
    "balancing.strategy": (
        one_of(
            STRATEGIES,
            {
                "leastconn": "least-loaded",
                "least-connections": "least-loaded",
                "p2c": "power-of-two",
                "power-of-two-choices": "power-of-two",
                "roundrobin": "round-robin",
            },
        ),
        "strategy",
    ),
    "balancing.poll_interval": (parse_positive_duration, "poll_interval"),
    "balancing.count_ttl": (parse_positive_duration, "count_ttl"),
    "balancing.fetch_timeout": (parse_positive_duration, "fetch_timeout"),
    "balancing.metric_path": (parse_metric_path, "_metric_path"),
    "health.fall": (parse_positive_int, "health_fall"),
    "health.rise": (parse_positive_int, "health_rise"),
    "breaker.threshold": (parse_positive_int, "breaker_threshold"),
    "breaker.cooldown": (parse_positive_duration, "breaker_cooldown"),
    "outlier.consecutive_failures": (parse_int, "outlier_consecutive_failures"),
    "outlier.base_ejection": (parse_duration, "outlier_base_ejection"),
    "outlier.max_ejection_percent": (parse_percent, "outlier_max_ejection_percent"),
    "admission.rate": (parse_rate, "admission_rate"),
    "admission.pool_rate": (parse_rate, "admission_pool_rate"),
    "admission.burst": (parse_int, "admission_burst"),
    "admission.queue": (parse_int, "admission_queue"),
    "admission.max_wait": (parse_duration, "admission_max_wait"),
    "timeouts.backend_connect": (parse_positive_duration, "backend_connect_timeout"),
    "timeouts.backend_handshake": (parse_positive_duration, "backend_handshake_timeout"),
    "timeouts.backend_total": (parse_positive_duration, "backend_total_timeout"),
    "timeouts.client_handshake": (parse_positive_duration, "client_handshake_timeout"),
    "timeouts.idle": (parse_duration, "idle_timeout"),
    "timeouts.close": (parse_positive_duration, "close_timeout"),
    "keepalive.client.ping_interval": (parse_duration, "_client_ping"),
    "keepalive.client.pong_timeout": (parse_duration, "_client_pong"),
    "keepalive.backend.ping_interval": (parse_duration, "_backend_ping"),
    "keepalive.backend.pong_timeout": (parse_duration, "_backend_pong"),
    "limits.max_message_size": (parse_size, "max_message_size"),
    "limits.max_frame_size": (parse_size, "max_frame_size"),
    "limits.max_header_bytes": (parse_size, "max_header_bytes"),
    "limits.max_connections": (parse_int, "max_connections"),
    "limits.max_connections_per_ip": (parse_int, "max_connections_per_ip"),
    "limits.max_http_connections": (parse_int, "max_http_connections"),
    "limits.http_body_min_rate": (parse_size, "http_body_min_rate"),
    "timeouts.http_head": (parse_positive_duration, "http_head_timeout"),
    "timeouts.http_body": (parse_positive_duration, "http_body_timeout"),
    "timeouts.http_keepalive": (parse_positive_duration, "http_keepalive_timeout"),
    "workers": (parse_workers, "workers"),
    "headers.forward": (parse_header_list, "forward_headers"),
    "headers.block": (parse_header_list, "block_headers"),
    "headers.pass_back": (parse_header_list, "pass_back_headers"),
    "headers.trust_x_forwarded_for": (parse_bool, "trust_x_forwarded_for"),
    "tls.verify": (parse_bool, "tls_verify"),
    "tls.ca_file": (parse_ca_file, "tls_ca_file"),
    "tls.client_cert": (parse_ca_file, "tls_client_cert"),
    "tls.client_key": (parse_ca_file, "tls_client_key"),
    "discovery": (parse_discovery, "discovery"),
    "compression.client": (parse_bool, "compression"),
    "compression.backend": (one_of(("off", "mirror")), "backend_compression"),
    "compression.level": (parse_compression_level, "compression_level"),
    "relay.mode": (one_of(("message", "splice")), "relay_mode"),
    "shutdown.drain_period": (parse_duration, "drain_period"),
    "reload.removed_sessions": (one_of(("drain", "failover", "migrate")), "removed_sessions"),
    "rebalance.enabled": (parse_bool, "rebalance"),
    "rebalance.tolerance": (parse_percent, "rebalance_tolerance"),
    "rebalance.max_moves_per_second": (parse_rate, "rebalance_max_moves"),
    "rebalance.min_age": (parse_duration, "rebalance_min_age"),
    "migrate.replay_first": (parse_int, "migrate_replay_first"),
    "failover.enabled": (parse_bool, "failover"),
    "failover.attempts": (parse_positive_int, "failover_attempts"),
    "failover.backoff": (parse_positive_duration, "failover_backoff"),
    "failover.buffer": (parse_size, "failover_buffer"),
    "failover.max_consecutive": (parse_int, "failover_max_consecutive"),
    "failover.stable_after": (parse_duration, "failover_stable_after"),
    "failover.reconnect_header": (str, "reconnect_header"),
    "failover.close_codes": (parse_close_codes, "abnormal_close_codes"),
    "extensions.listeners": (parse_dotted_names, "listeners"),
    "extensions.hooks": (parse_dotted_names, "hooks"),
    "log.level": (one_of(LOG_LEVELS, {"warning": "warn", "fatal": "critical"}), "log_level"),
    "log.format": (one_of(("text", "json")), "log_format"),
    "log.library_level": (
        one_of(LOG_LEVELS, {"warning": "warn", "fatal": "critical"}),
        "log_library_level",
    ),
    "log.admin_access": (one_of(ADMIN_ACCESS, {"on": "all", "none": "off"}), "log_admin_access"),
    "affinity.mode": (
        one_of(AFFINITY_MODES, {"none": "off", "false": "off", "ip": "client-address"}),
        "affinity",
    ),
    "affinity.cookie": (parse_cookie_name, "affinity_cookie"),
    "affinity.secret": (str, "affinity_secret"),
    "affinity.samesite": (
        one_of(("Lax", "Strict", "None"), {"lax": "Lax", "strict": "Strict", "none": "None"}),
        "affinity_samesite",
    ),
    "affinity.max_age": (parse_duration, "affinity_max_age"),
    "affinity.key": (str, "affinity_key"),
    "affinity.load_factor": (parse_load_factor, "affinity_load_factor"),
    "affinity.pin_idle": (parse_positive_duration, "affinity_pin_idle"),
    "http.enabled": (parse_bool, "http"),
    "http.timeout": (parse_positive_duration, "http_timeout"),
    "http.max_body": (parse_size, "http_max_body"),
    "routing.default": (parse_pool_name, "default_pool"),
}

# Keys a named pool may set for itself; the rest (listen addresses, admin, limits of the
# client side, logging, extensions) belong to the whole process.
POOL_KEY_PREFIXES = (
    "balancing.strategy",
    "balancing.metric_path",
    "health.",
    "breaker.",
    "outlier.",
    "admission.",
    "timeouts.backend_",
    "keepalive.backend.",
    "headers.",
    "tls.",
    "compression.backend",
    "relay.",
    "reload.",
    "rebalance.",
    "migrate.",
    "failover.",
    "affinity.",
    "http.",
    "discovery",  # a pool's own DNS sources; a named pool never inherits the top-level ones
)


@dataclass
class RawValue:
    """One raw value and where it was found (`file ...`, `environment ...`, `flag ...`)."""

    value: Any
    source: str


@dataclass
class PoolSpec:
    """One named pool as found in the file: its own raw values and backends."""

    name: str
    source: str
    values: dict[str, RawValue] = field(default_factory=dict)
    backends: list[BackendSpec] = field(default_factory=list)


# Top-level keys of the file that are not in SCHEMA (read on their own).
FILE_SECTIONS = ("backends", "pools", "routes")


def suggest_key(key: str, known: Iterable[str] | None = None) -> str | None:
    """The known dotted key an unknown one was probably meant to be, or None (by default any
    key of the file format)."""
    return closest_key(key, known if known is not None else [*SCHEMA, *FILE_SECTIONS])


def unknown_key(source: str, key: str, known: Iterable[str] | None = None) -> ConfigError:
    """The error for an unknown key, with the likely meant one (as the source spells it)."""
    meant = suggest_key(key, known)
    hint = ""
    if meant is not None:
        if source.startswith(f"environment {ENV_PREFIX}"):
            meant = ENV_PREFIX + meant.upper().replace(".", "__")
        hint = f" (did you mean {meant}?)"
    return ConfigError(f"{source}: {key}: unknown key{hint}")


@dataclass
class RawConfig:
    """Values as found, each with the place it came from, before validation."""

    values: dict[str, RawValue] = field(default_factory=dict)
    backends: list[BackendSpec] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    pools: list[PoolSpec] = field(default_factory=list)
    routes: list[tuple[Any, str]] = field(default_factory=list)
    # A list: every problem is gathered here and reading goes on (check-config); None: the
    # first one is raised (start-up, reload).
    problems: list[str] | None = None

    def set(self, key: str, value: Any, source: str) -> None:
        """Record a value for a dotted key; later calls override earlier ones."""
        if key not in SCHEMA:
            raise unknown_key(source, key)
        self.values[key] = RawValue(value, source)

    def gathering(self) -> AbstractContextManager[None]:
        """`gathering(self.problems)`: gather or raise the problems of one value."""
        return gathering(self.problems)


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of nested mappings; a key whose value is itself a mapping in the
    schema (`discovery: {...}`) is not descended into."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in SCHEMA:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


# Config fields that two-part keys fill (the SCHEMA field names starting with _).
_DERIVED_FIELDS: dict[str, Callable[[Any], Any]] = {
    "_metric_path": lambda c: c.metric_path,
    "_client_ping": lambda c: c.client_keepalive.ping_interval,
    "_client_pong": lambda c: c.client_keepalive.pong_timeout,
    "_backend_ping": lambda c: c.backend_keepalive.ping_interval,
    "_backend_pong": lambda c: c.backend_keepalive.pong_timeout,
}


def effective_value(config: Config, key: str, pool: PoolConfig | None = None) -> Any:
    """The value `config` holds for a dotted key of the file format; with `pool` (one of
    `config.all_pools()`), a key a pool may set is read from that pool."""
    holder: PoolConfig = pool if pool is not None and key.startswith(POOL_KEY_PREFIXES) else config
    field_name = SCHEMA[key][1]
    derived = _DERIVED_FIELDS.get(field_name)
    return derived(holder) if derived is not None else getattr(holder, field_name)
