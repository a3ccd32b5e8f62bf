"""Backends as listed: a URL or a mapping (`url`, `id`, `metric`, `weight`) from the file,
the environment, a flag, the admin API or a DNS record, validated into a `BackendConfig`.

Every place a backend can come from builds it here, so an id, URL or metric endpoint means
the same wherever it was given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wsbalancer.config.model import BackendConfig
from wsbalancer.config.values import ConfigError, closest_key, gathering

# The keys of one backend's mapping.
BACKEND_KEYS = ("url", "id", "metric", "metric_url", "metric_path", "weight")


@dataclass
class BackendSpec:
    """One backend as given, with where it was given (`source` starts its errors)."""

    url: Any
    source: str
    id: Any = None
    metric: Any = None
    weight: Any = 1


def backend_specs(
    items: Any, source: str, key: str, problems: list[str] | None = None
) -> list[BackendSpec]:
    """The backends of a list under `key` (`backends`, `services`, ...), each checked in shape;
    with `problems` a list, a bad one is noted there and the rest are still read."""
    if not isinstance(items, list):
        raise ConfigError(f"{source}: {key}: expected a list of backends")
    specs = []
    for index, item in enumerate(items):
        where = f"{source}: {key}[{index}]"
        with gathering(problems):
            specs.append(backend_spec(item, where))
    return specs


def backend_spec(item: Any, where: str) -> BackendSpec:
    """One item of a backends list: a URL or a mapping of BACKEND_KEYS with url."""
    if isinstance(item, str):
        return BackendSpec(url=item, source=where)
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a URL or a mapping with url")
    unknown = set(item) - set(BACKEND_KEYS)
    if unknown:
        name = str(sorted(unknown, key=str)[0])
        meant = closest_key(name, BACKEND_KEYS)
        hint = f" (did you mean {meant}?)" if meant else ""
        raise ConfigError(f"{where}: unknown key {name}{hint}")
    if "url" not in item:
        raise ConfigError(f"{where}: url is missing")
    metric = item.get("metric", item.get("metric_url", item.get("metric_path")))
    return BackendSpec(
        url=item["url"],
        source=where,
        id=item.get("id"),
        metric=metric,
        weight=item.get("weight", 1),
    )


def _normalise_backend_url(url: str) -> str:
    # The Go seed writes `ws:host:port`; the Traefik seed lists http(s):// service URLs.
    m = re.match(r"^(wss?|https?):(?!//)(.+)$", url)
    if m:
        url = f"{m.group(1)}://{m.group(2)}"
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def build_backend(spec: BackendSpec, metric_path: str) -> BackendConfig:
    """Validate one backend; a spec without a metric of its own reads its count at
    `metric_path` (a path on the backend, an http(s) URL or none)."""
    url = _normalise_backend_url(str(spec.url).strip())
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"{spec.source}: url: expected ws://host:port or wss://host:port, got {spec.url!r}"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{spec.source}: url: bad port in {spec.url!r}")
    http_scheme = "https" if parts.scheme == "wss" else "http"
    metric = str(spec.metric) if spec.metric not in (None, "") else metric_path
    metric_url: str | None
    if metric.lower() == "none":
        metric_url = None
    elif metric.startswith("/"):
        metric_url = urlunsplit((http_scheme, parts.netloc, metric, "", ""))
    elif re.match(r"^https?://", metric):
        metric_url = metric
    else:
        raise ConfigError(
            f"{spec.source}: metric: expected a path, an http(s) URL or none, got {spec.metric!r}"
        )
    try:
        weight = float(spec.weight)
    except (TypeError, ValueError):
        raise ConfigError(f"{spec.source}: weight: expected a number, got {spec.weight!r}")
    if not weight > 0:
        raise ConfigError(f"{spec.source}: weight: must be above zero, got {spec.weight!r}")
    backend_id = str(spec.id).strip() if spec.id not in (None, "") else parts.netloc
    if not re.match(r"^[A-Za-z0-9_.:\-\[\]]{1,260}$", backend_id):
        raise ConfigError(
            f"{spec.source}: id: use letters, digits and . _ - : only, got {backend_id!r}"
        )
    return BackendConfig(id=backend_id, url=url, metric_url=metric_url, weight=weight)
