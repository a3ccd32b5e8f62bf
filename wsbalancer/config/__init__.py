"""Configuration: a YAML file, overridden by environment variables, overridden by flags.

Everything here is plain Python with no I/O beyond reading the one file, so every rule is
unit-testable. A bad value raises `ConfigError` whose message names the source, the key and
what is wrong, in one line.

The package is split by concern, each module importing only those above it:

- `values`: `ConfigError` and the parsers of single values (durations, sizes, endpoints...);
- `model`: the dataclasses of a validated configuration (`Config`, `PoolConfig`, ...);
- `backends`: one backend as listed (a URL or mapping) validated into a `BackendConfig`;
- `discovery`: DNS discovery sources (the `discovery` key);
- `schema`: the dotted keys, their parsers and fields, raw values with their sources;
- `validate`: raw values into a `Config`, and the rules that span keys;
- `sources`: reading the file, environment and flags; `load` and `check`.

This module only re-exports their public names, so `from wsbalancer.config import X` works
as it did before the split; the submodules import one another directly, never from here.
"""

from __future__ import annotations

from wsbalancer.config.backends import (
    BACKEND_KEYS,
    BackendSpec,
    build_backend,
)
from wsbalancer.config.model import (
    DEFAULT_POOL,
    HANDSHAKE_HEADERS,
    BackendConfig,
    Config,
    Keepalive,
    PoolConfig,
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
    RawConfig,
    effective_value,
    parse_discovery,
    suggest_key,
    unknown_key,
)
from wsbalancer.config.sources import (
    SEED_ENV,
    SEED_ENV_IGNORED,
    TRAEFIK_KEYS,
    ConfigCheck,
    check,
    load,
    read_environment,
    read_file,
    read_sources,
)
from wsbalancer.config.validate import (
    build,
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

__all__ = [
    "ADMIN_ACCESS",
    "ADMIN_RESERVED",
    "AFFINITY_MODES",
    "BACKEND_KEYS",
    "BackendConfig",
    "BackendSpec",
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
    "PoolConfig",
    "RawConfig",
    "Route",
    "SCHEMA",
    "SEED_ENV",
    "SEED_ENV_IGNORED",
    "STRATEGIES",
    "TRAEFIK_KEYS",
    "build",
    "build_backend",
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
