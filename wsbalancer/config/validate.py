"""Validation: raw values (`RawConfig`) into a `Config`, with every named pool built over the
top-level values, and the rules that span keys (ids unique across pools, a discovery source
feeding one pool, routes naming pools that exist, a client certificate with its key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from wsbalancer.config.backends import build_backend
from wsbalancer.config.model import (
    DEFAULT_POOL,
    BackendConfig,
    Config,
    Keepalive,
    PoolConfig,
    Route,
)
from wsbalancer.config.schema import SCHEMA, RawConfig
from wsbalancer.config.values import ConfigError, parse_path


def build(raw: RawConfig, require_backends: bool = True) -> Config:
    """Validate `raw` into a `Config`, or raise `ConfigError` naming the first bad value."""
    config = _build_one(raw, require_backends and not raw.pools)
    pools = []
    for spec in raw.pools:
        inherited = {k: v for k, v in raw.values.items() if k != "discovery"}
        merged = RawConfig(
            values={**inherited, **spec.values}, backends=spec.backends, problems=raw.problems
        )
        pools.append(_pool_part(_build_one(merged, True), spec.name))
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


def _pool_part(config: Config, name: str) -> PoolConfig:
    """The pool settings of a `Config` built for one named pool: the rest of it only repeats
    the top level's (the pool inherited them), so the pool keeps none of it."""
    own = {f.name: getattr(config, f.name) for f in fields(PoolConfig)}
    return PoolConfig(**{**own, "pool_name": name})


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


def _build_route(item: Any, where: str, pools: set[str]) -> Route:
    """One item of `routes:`, whose pool must be one of `pools`."""
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
