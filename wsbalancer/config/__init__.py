"""Configuration: a YAML file, overridden by environment variables, overridden by flags.

Everything here is plain Python with no I/O beyond reading the one file, so every rule is
unit-testable. A bad value raises `ConfigError` whose message names the source, the key and
what is wrong, in one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from wsbalancer.config.backends import (
    BACKEND_KEYS,
    BackendSpec,
    backend_specs,
    build_backend,
)
from wsbalancer.config.model import (
    DEFAULT_POOL,
    HANDSHAKE_HEADERS,
    BackendConfig,
    Config,
    Keepalive,
    Route,
)
from wsbalancer.config.schema import (
    ADMIN_ACCESS,
    AFFINITY_MODES,
    ENV_PREFIX,
    FILE_SECTIONS,
    LOG_LEVELS,
    POOL_KEY_PREFIXES,
    SCHEMA,
    STRATEGIES,
    PoolSpec,
    RawConfig,
    RawValue,
    effective_value,
    flatten,
    parse_discovery,
    suggest_key,
    unknown_key,
)
from wsbalancer.config.values import (
    ADMIN_RESERVED,
    ENDPOINT_TYPES,
    HOST_NAME,
    ConfigError,
    gathering,
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
    parse_list,
    parse_load_factor,
    parse_metric_document_path,
    parse_metric_path,
    parse_path,
    parse_percent,
    parse_pool_name,
    parse_positive_duration,
    parse_positive_int,
    parse_size,
    parse_workers,
)

_POOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# Keys of the seed Traefik plugin's configuration, accepted in the file at the top level.
TRAEFIK_KEYS = {
    "metricPath": "balancing.metric_path",
    "balancerMetricPath": "admin.balancer_metric_path",
    "cacheTTL": "balancing.poll_interval",
    "tlsVerify": "tls.verify",
}

# Environment variables of the seed Go balancer, so its users can migrate unchanged.
SEED_ENV = {
    "FE_ADDR": "listen",
    "ADM_ADDR": "admin.listen",
    "LOG_LEVEL": "log.level",
    "FE_TRUST_XFF": "headers.trust_x_forwarded_for",
    "BLOCK_HEADERS": "headers.block",
    "BE_PASS_HEADERS": "headers.pass_back",
    "BE_PING_TIME": "keepalive.backend.ping_interval",
    "BE_HANDSHAKE_TIMEOUT": "timeouts.backend_handshake",
    "BE_BREAKER_THRESHOLD": "breaker.threshold",
    "BE_ABNORMAL_CLOSE_CODES": "failover.close_codes",
    "RECONNECT_HDR": "failover.reconnect_header",
    "FE_MAX_HDR_BYTES": "limits.max_header_bytes",
    "FE_READ_TIMEOUT": "timeouts.client_handshake",
}
# Seed variables with no meaning here (Go buffer sizes, per-request HTTP timeouts, a switch
# for metrics that are always on): accepted, and reported once at start-up.
SEED_ENV_IGNORED = (
    "FE_RB_SIZE",
    "FE_WB_SIZE",
    "BE_RB_SIZE",
    "BE_WB_SIZE",
    "FE_WRITE_TIMEOUT",
    "ADM_READ_TIMEOUT",
    "ADM_WRITE_TIMEOUT",
    "ADM_MAX_HDR_BYTES",
    "ENABLE_INST",
)


def read_file(raw: RawConfig, path: str) -> None:
    """Merge a YAML configuration file into `raw`."""
    source = f"file {path}"
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{source}: cannot be read: {e.strerror or e}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}")
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    data = dict(data)
    problems = raw.problems
    for seed_key, key in TRAEFIK_KEYS.items():
        if seed_key in data:
            raw.set(key, data.pop(seed_key), source)
    if "services" in data:  # the Traefik plugin's list of backend URLs
        services = data.pop("services")
        with raw.gathering():
            raw.backends.extend(backend_specs(services, source, "services", problems))
    upstream = data.pop("upstream", None)  # the Go balancer's `upstream: backends:`
    with raw.gathering():
        if isinstance(upstream, Mapping) and "backends" in upstream:
            listed = backend_specs(upstream["backends"], source, "upstream.backends", problems)
            raw.backends.extend(listed)
        elif upstream is not None:
            raise ConfigError(f"{source}: upstream: expected a mapping with backends")
    if "backends" in data:
        backends = data.pop("backends")
        with raw.gathering():
            raw.backends.extend(backend_specs(backends, source, "backends", problems))
    if "pools" in data:
        pools = data.pop("pools")
        with raw.gathering():
            raw.pools = _pool_specs(pools, source, problems)
    if "routes" in data:
        routes = data.pop("routes")
        with raw.gathering():
            if not isinstance(routes, list):
                raise ConfigError(f"{source}: routes: expected a list of routes")
            raw.routes = [(item, f"{source}: routes[{i}]") for i, item in enumerate(routes)]
    for key, value in flatten(data):
        with raw.gathering():
            raw.set(key, value, source)


def _pool_specs(data: Any, source: str, problems: list[str] | None = None) -> list[PoolSpec]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: pools: expected a mapping of pool names")
    specs = []
    for name, body in data.items():
        with gathering(problems):
            specs.append(_pool_spec(str(name), body, f"{source}: pools.{name}", problems))
    return specs


def _pool_spec(name: str, body: Any, where: str, problems: list[str] | None) -> PoolSpec:
    if not _POOL_NAME.match(name) or name == DEFAULT_POOL:
        raise ConfigError(
            f"{where}: pool names use letters, digits and -_. only, and "
            f"{DEFAULT_POOL!r} is the top-level pool"
        )
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: expected a mapping with backends")
    body = dict(body)
    spec = PoolSpec(name, where)
    listed = body.pop("backends", [])
    with gathering(problems):
        spec.backends = backend_specs(listed, where, "backends", problems)
    for key, value in flatten(body):
        with gathering(problems):
            if key not in SCHEMA:
                raise unknown_key(where, key, [*SCHEMA, "backends"])
            if not key.startswith(POOL_KEY_PREFIXES):
                raise ConfigError(f"{where}: {key}: set for the whole balancer, not per pool")
            spec.values[key] = RawValue(value, where)
    discovery = spec.values.get("discovery")
    if not listed and (discovery is None or not discovery.value):
        raise ConfigError(f"{where}: backends: at least one backend (or discovery) is needed")
    return spec


def _build_route(item: Any, where: str, pools: set[str]) -> Route:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping with path and pool")
    unknown = set(item) - {"path", "host", "pool"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]}")
    try:
        path = parse_path(item.get("path", "/"))
    except ValueError as e:
        raise ConfigError(f"{where}: path: {e}")
    pool = str(item.get("pool", "")).strip()
    if pool not in pools:
        known = ", ".join(sorted(pools)) or "none"
        raise ConfigError(f"{where}: pool: no pool named {pool!r} (pools: {known})")
    host = item.get("host")
    host = str(host).strip().lower() if host not in (None, "") else None
    return Route(path=path.rstrip("/") or "/", pool=pool, host=host)


def _env_backends(raw: RawConfig, urls: str, ids: str | None, source: str) -> None:
    id_list = parse_list(ids) if ids else ()
    url_list = parse_list(urls)
    if id_list and len(id_list) != len(url_list):
        raise ConfigError(
            f"{source}: BE_URL_IDS has {len(id_list)} ids for {len(url_list)} BE_URLS"
        )
    for index, url in enumerate(url_list):
        backend_id = id_list[index] if id_list else None
        if backend_id is None and "=" in url.split("://")[0]:
            backend_id, url = url.split("=", 1)
        raw.backends.append(BackendSpec(url=url, id=backend_id, source=source))


def read_environment(raw: RawConfig, environ: Mapping[str, str]) -> None:
    """Merge environment variables: the seed Go balancer's names, then `WSBALANCER_*`."""
    for name, key in SEED_ENV.items():
        if name in environ:
            raw.set(key, environ[name], f"environment {name}")
    for name in SEED_ENV_IGNORED:
        if name in environ:
            raw.ignored.append(name)
    if "BE_URLS" in environ:
        with raw.gathering():
            _env_backends(raw, environ["BE_URLS"], environ.get("BE_URL_IDS"), "environment BE_URLS")
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        if name == ENV_PREFIX + "BACKENDS":
            raw.backends = []
            _env_backends(raw, environ[name], None, f"environment {name}")
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        with raw.gathering():
            raw.set(key, environ[name], f"environment {name}")


def build(raw: RawConfig, require_backends: bool = True) -> Config:
    """Validate `raw` into a `Config`, or raise `ConfigError` naming the first bad value."""
    config = _build_one(raw, require_backends and not raw.pools)
    pools = []
    for spec in raw.pools:
        inherited = {k: v for k, v in raw.values.items() if k != "discovery"}
        merged = RawConfig(
            values={**inherited, **spec.values}, backends=spec.backends, problems=raw.problems
        )
        pools.append(replace(_build_one(merged, True), pool_name=spec.name))
    # A pool fed by DNS discovery exists even with no backend listed yet.
    names = {DEFAULT_POOL} if config.backends or config.discovery else set()
    found_by: dict[str, str] = {}
    for pool in (config, *pools):
        for source in pool.discovery:
            other = found_by.setdefault(source.label, pool.pool_name)
            with raw.gathering():
                if other != pool.pool_name:
                    raise ConfigError(
                        f"configuration: discovery {source.label} feeds pools {other!r} and "
                        f"{pool.pool_name!r}; a source feeds one pool"
                    )
    names |= {p.pool_name for p in pools}
    seen: dict[str, str] = {b.id: DEFAULT_POOL for b in config.backends}
    for pool in pools:
        for b in pool.backends:
            with raw.gathering():
                if b.id in seen:
                    raise ConfigError(
                        f"configuration: pools.{pool.pool_name}: backend id {b.id!r} is also "
                        f"in pool {seen[b.id]!r}; ids are unique across pools"
                    )
                seen[b.id] = pool.pool_name
    routes = []
    for item, where in raw.routes:
        with raw.gathering():
            routes.append(_build_route(item, where, names))
    default = config.default_pool
    if default is not None and default not in names:
        with raw.gathering():
            if "routing.default" in raw.values:
                raise ConfigError(
                    f"{raw.values['routing.default'].source}: routing.default: no pool named "
                    f"{default!r}"
                )
        default = None  # only named pools: what no route takes gets 404
    return replace(config, pools=tuple(pools), routes=tuple(routes), default_pool=default)


def _build_one(raw: RawConfig, require_backends: bool) -> Config:
    typed: dict[str, Any] = {}
    for key, item in raw.values.items():
        parser, field_name = SCHEMA[key]
        with raw.gathering():
            try:
                typed[field_name] = parser(item.value)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{item.source}: {key}: {e}")
    metric_path = typed.pop("_metric_path", "/metric")
    typed["metric_path"] = metric_path
    defaults = Config(backends=())
    client_ka, backend_ka = defaults.client_keepalive, defaults.backend_keepalive
    typed["client_keepalive"] = Keepalive(
        typed.pop("_client_ping", client_ka.ping_interval),
        typed.pop("_client_pong", client_ka.pong_timeout),
    )
    typed["backend_keepalive"] = Keepalive(
        typed.pop("_backend_ping", backend_ka.ping_interval),
        typed.pop("_backend_pong", backend_ka.pong_timeout),
    )
    built: list[BackendConfig] = []
    seen: dict[str, str] = {}
    for spec in raw.backends:
        with raw.gathering():
            backend = build_backend(spec, metric_path)
            if backend.id in seen:
                raise ConfigError(f"{spec.source}: id: {backend.id!r} is used twice")
            seen[backend.id] = spec.source
            built.append(backend)
    backends = tuple(built)
    with raw.gathering():
        if require_backends and not raw.backends and not typed.get("discovery"):
            raise ConfigError(
                "configuration: backends: at least one backend is needed "
                "(config file `backends:` or `discovery:`, BE_URLS or --backend)"
            )
    config = replace(defaults, backends=backends, ignored=tuple(raw.ignored), **typed)
    with raw.gathering():
        _check_client_certificate(config)
    for leg, keepalive in (
        ("client", config.client_keepalive),
        ("backend", config.backend_keepalive),
    ):
        with raw.gathering():
            if keepalive.ping_interval and not keepalive.pong_timeout:
                raise ConfigError(
                    f"configuration: keepalive.{leg}.pong_timeout: must be above "
                    f"zero when ping_interval is set"
                )
    with raw.gathering():
        if config.affinity in ("header", "query") and not config.affinity_key.strip():
            item = raw.values["affinity.mode"]
            raise ConfigError(
                f"{item.source}: affinity.key: the {config.affinity} name to hash is needed "
                f"with affinity.mode {config.affinity}"
            )
    return config


def _check_client_certificate(config: Config) -> None:
    """Both files or neither, and they must hold a certificate and its key."""
    cert, key = config.tls_client_cert, config.tls_client_key
    if (cert is None) != (key is None):
        given, missing = (
            ("client_cert", "client_key") if key is None else ("client_key", "client_cert")
        )
        raise ConfigError(f"configuration: tls.{missing}: needed with tls.{given}")
    if cert is None or key is None:
        return
    from twisted.internet import ssl

    try:
        with open(cert, "rb") as c, open(key, "rb") as k:
            pair = ssl.PrivateCertificate.loadPEM(c.read() + b"\n" + k.read())
        ssl.CertificateOptions(
            privateKey=pair.privateKey.original, certificate=pair.original
        ).getContext()  # a key that does not match the certificate fails here
    except Exception as e:
        reason = (str(e).strip() or e.__class__.__name__).splitlines()[0][:200]
        raise ConfigError(
            f"configuration: tls.client_cert: {cert} and {key} are not a PEM certificate "
            f"and its key ({reason})"
        )


def read_sources(
    raw: RawConfig,
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, Any, str]] = (),
    backends: Iterable[str] = (),
) -> None:
    """Read the file (optional), then the environment, then flag overrides into `raw`."""
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    if path:
        with raw.gathering():
            read_file(raw, path)
    read_environment(raw, env)
    flag_backends = list(backends)
    if flag_backends:
        raw.backends = []
        _env_backends(raw, ",".join(flag_backends), None, "flag --backend")
    for key, value, source in overrides:
        with raw.gathering():
            raw.set(key, value, source)


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, Any, str]] = (),
    backends: Iterable[str] = (),
) -> Config:
    """Load the file (optional), then the environment, then flag overrides, and validate.

    `overrides` are (dotted key, value, source) triples; `backends` are URLs given as flags,
    `id=url` allowed, which replace any from the file or environment.
    """
    raw = RawConfig()
    read_sources(raw, path, environ, overrides, backends)
    return build(raw)


@dataclass(frozen=True)
class ConfigCheck:
    """What `check` found: every problem, and where each value of the result came from."""

    problems: tuple[str, ...]
    config: Config  # meaningful only without problems (bad values are left at defaults)
    raw: RawConfig

    def values(self, pool: str = DEFAULT_POOL) -> list[tuple[str, Any, str]]:
        """(key, effective value, source) of every key, the source `default` when unset."""
        spec = next((p for p in self.raw.pools if p.name == pool), None)
        config = next(c for c in self.config.all_pools() if c.pool_name == pool)
        set_here = self.raw.values if spec is None else {**self.raw.values, **spec.values}
        out = []
        for key in SCHEMA:
            item = set_here.get(key)
            if spec is not None and key == "discovery" and key not in spec.values:
                item = None  # a named pool never inherits the top-level sources
            out.append(
                (key, effective_value(config, key), "default" if item is None else item.source)
            )
        return out

    def backends(self, pool: str = DEFAULT_POOL) -> list[tuple[BackendConfig, str]]:
        """Each listed backend of a pool with where it was listed."""
        spec = next((p for p in self.raw.pools if p.name == pool), None)
        config = next(c for c in self.config.all_pools() if c.pool_name == pool)
        listed = self.raw.backends if spec is None else spec.backends
        return [(b, s.source) for b, s in zip(config.backends, listed, strict=False)]


def check(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, Any, str]] = (),
    backends: Iterable[str] = (),
) -> ConfigCheck:
    """Read and validate as `load` does, but gather every problem instead of the first."""
    raw = RawConfig(problems=[])
    read_sources(raw, path, environ, overrides, backends)
    config = build(raw)
    return ConfigCheck(tuple(dict.fromkeys(raw.problems or ())), config, raw)


# The package's public names, as before it was split (some now live in submodules).
__all__ = [
    "ADMIN_ACCESS",
    "ADMIN_RESERVED",
    "AFFINITY_MODES",
    "BACKEND_KEYS",
    "BackendSpec",
    "build_backend",
    "BackendConfig",
    "Config",
    "ConfigCheck",
    "ConfigError",
    "DEFAULT_POOL",
    "ENDPOINT_TYPES",
    "ENV_PREFIX",
    "FILE_SECTIONS",
    "HANDSHAKE_HEADERS",
    "HOST_NAME",
    "Keepalive",
    "LOG_LEVELS",
    "POOL_KEY_PREFIXES",
    "RawConfig",
    "Route",
    "SCHEMA",
    "SEED_ENV",
    "SEED_ENV_IGNORED",
    "STRATEGIES",
    "TRAEFIK_KEYS",
    "build",
    "check",
    "effective_value",
    "gathering",
    "load",
    "parse_bool",
    "parse_ca_file",
    "parse_close_codes",
    "parse_compression_level",
    "parse_cookie_name",
    "parse_discovery",
    "parse_dotted_names",
    "parse_duration",
    "parse_endpoint",
    "parse_endpoints",
    "parse_header_list",
    "parse_host_patterns",
    "parse_int",
    "parse_list",
    "parse_load_factor",
    "parse_metric_document_path",
    "parse_metric_path",
    "parse_path",
    "parse_percent",
    "parse_pool_name",
    "parse_positive_duration",
    "parse_positive_int",
    "parse_size",
    "parse_workers",
    "read_environment",
    "read_file",
    "read_sources",
    "suggest_key",
    "unknown_key",
]
