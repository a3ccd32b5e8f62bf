"""DNS discovery sources as configured: the `discovery` key, validated (plain Python, no I/O).

A source is a mapping (`name`, `type`, `scheme`, `port`, ...) or a URL such as
`dns+ws://NAME:PORT/PATH?min_interval=2s` or `srv+wss://_ws._tcp.NAME/PATH`; every bad value is
a ValueError whose one line names the source's index and key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from wsbalancer.config.backends import BackendSpec, build_backend
from wsbalancer.config.model import BackendConfig
from wsbalancer.config.values import ConfigError, parse_duration, parse_positive_duration

TYPES = ("a", "srv")
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
    spec = BackendSpec(
        url=f"{source.scheme}://{netloc}{source.path}",
        source=f"discovery {source.label}",
        metric=source.metric,
        weight=source.weight,
    )
    try:
        config = build_backend(spec, metric_path)
    except ConfigError as e:  # validated at load time, so only a broken record gets here
        raise ValueError(str(e))
    return replace(config, server_name=source.tls_name or tls_name)
