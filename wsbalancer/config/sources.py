"""Reading the configuration's sources: a YAML file, overridden by environment variables
(`WSBALANCER_*` and the seed programs' names), overridden by flags; then `load` (validate,
raising the first problem) and `check` (gather every problem, for check-config).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from wsbalancer.config.backends import BackendSpec, backend_specs
from wsbalancer.config.model import DEFAULT_POOL, BackendConfig, Config
from wsbalancer.config.schema import (
    ENV_PREFIX,
    POOL_KEY_PREFIXES,
    SCHEMA,
    PoolSpec,
    RawConfig,
    RawValue,
    effective_value,
    flatten,
    unknown_key,
)
from wsbalancer.config.validate import build
from wsbalancer.config.values import ConfigError, gathering, parse_list

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
            value = effective_value(self.config, key, config)
            out.append((key, value, "default" if item is None else item.source))
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
