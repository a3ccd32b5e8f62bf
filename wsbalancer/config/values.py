"""Configuration values: `ConfigError` and the parsers that turn one raw value (from the file,
the environment or a flag) into a typed one.

Each parser takes the value as found and returns the typed one or raises ValueError with a
short reason; the schema puts the source and key in front of it. Nothing here knows which key
a parser serves, so the model, the schema and discovery can all build on this module.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# Twisted server endpoint types: such strings pass as they are.
ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix", "systemd", "le", "lets", "onion"})


class ConfigError(ValueError):
    """A configuration value is wrong; the message is the one line an operator sees."""


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The dotted name in `known` that `key` was probably meant to be, or None.

    Within a known section only its own keys are candidates (`balancing.pol_interval` ->
    `balancing.poll_interval`); a misspelt section is matched as a whole (`helth.fall`)."""
    names = list(known)
    section, _, leaf = key.rpartition(".")
    leaves = [n[len(section) + 1 :] for n in names if section and n.startswith(section + ".")]
    if leaves:
        close = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.7)
        if not close and len(leaf) >= 3:
            close = [n for n in leaves if n.startswith(leaf)][:1]  # `poll` -> `poll_interval`
        return f"{section}.{close[0]}" if close else None
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.7)
    return close[0] if close else None


@contextmanager
def gathering(problems: list[str] | None) -> Iterator[None]:
    """A `ConfigError` raised inside is appended to `problems` and the caller goes on to the
    next value; with `problems` None (a normal load) it is raised as it is."""
    try:
        yield
    except ConfigError as e:
        if problems is None:
            raise
        problems.append(str(e))


# --- value parsers: each takes the raw value and returns the typed one or raises ValueError ---

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `500ms`, `10s`, `2m`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"expected a duration such as 10s or 500ms, got {value!r}")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
        seconds = float(m.group(1)) * scale
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def parse_positive_duration(value: Any) -> float:
    """A duration that must be above zero."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be above zero, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string such as `64KiB`, `16MiB`."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536 or 64KiB")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"expected a size such as 65536 or 64KiB, got {value!r}")
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    if size < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return size


def parse_int(value: Any) -> int:
    """A non-negative integer."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}")
    if number < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return number


def parse_positive_int(value: Any) -> int:
    """An integer of at least one."""
    number = parse_int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {value!r}")
    return number


def cpu_count() -> int:
    """The cores this process may run on (a cgroup CPU set counts, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parse_workers(value: Any) -> int:
    """`auto` (one per core) or a number of processes, 1 to 256."""
    if str(value).strip().lower() == "auto":
        return cpu_count()
    number = parse_positive_int(value)
    if number > 256:
        raise ValueError(f"at most 256 worker processes, got {value!r}")
    return number


def parse_bool(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_list(value: Any) -> tuple[str, ...]:
    """A YAML list or a comma-separated string."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


_HOST_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
HOST_NAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")


def parse_host_patterns(value: Any) -> tuple[str, ...]:
    """Host names (lower-cased, no port), `.domain` for a domain and its subdomains, or `*`."""
    patterns = []
    for item in parse_list(value):
        name = item.lower().rstrip(".")
        if name != "*" and not HOST_NAME.fullmatch(name.removeprefix(".")):
            raise ValueError(f"expected host names, .domain or *, got {item!r}")
        patterns.append(name)
    return tuple(patterns)


def parse_header_list(value: Any) -> tuple[str, ...]:
    """Header names, lower-cased."""
    return tuple(h.lower() for h in parse_list(value))


def parse_close_codes(value: Any) -> tuple[int, ...]:
    """WebSocket close codes."""
    codes = []
    for item in parse_list(value):
        code = parse_int(item)
        if not 1000 <= code <= 4999:
            raise ValueError(f"close code {code} is outside 1000-4999")
        codes.append(code)
    return tuple(codes)


def one_of(
    choices: Iterable[str], aliases: Mapping[str, str] | None = None
) -> Callable[[Any], str]:
    """A parser of one of `choices` (case-insensitive), `aliases` mapping other spellings."""
    allowed = tuple(choices)
    alias = dict(aliases or {})

    def parse(value: Any) -> str:
        text = alias.get(str(value).strip().lower(), str(value).strip().lower())
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return text

    return parse


def parse_endpoint(value: Any) -> str:
    """A Twisted endpoint string, or the seed's `host:port` / `:port` form."""
    text = str(value).strip()
    if not text:
        raise ValueError("empty listen address")
    if text.split(":", 1)[0] in ENDPOINT_TYPES:
        return text
    m = re.match(r"^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.\-]*)):(\d+)$", text)
    if m:
        host = m.group(1) or m.group(2) or ""
        port = int(m.group(3))
        if port > 65535:
            raise ValueError(f"port {port} is out of range")
        if not host:
            return f"tcp:{port}"
        if m.group(1):
            return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
        return f"tcp:{port}:interface={host}"
    raise ValueError(f"expected an endpoint such as tcp:8080 or 127.0.0.1:8080, got {value!r}")


def parse_endpoints(value: Any) -> tuple[str, ...]:
    """One or several endpoints."""
    items: list[str] | tuple[str, ...]
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        # endpoint strings contain commas only inside ssl options, which users list in YAML
        items = [value] if str(value).startswith(("ssl:", "unix:")) else parse_list(value)
    endpoints = tuple(parse_endpoint(v) for v in items)
    if not endpoints:
        raise ValueError("at least one listen address is needed")
    return endpoints


def parse_compression_level(value: Any) -> int:
    """A zlib level, 1 (fastest) to 9 (smallest)."""
    level = parse_int(value)
    if not 1 <= level <= 9:
        raise ValueError(f"expected a zlib level from 1 to 9, got {value!r}")
    return level


def parse_dotted_names(value: Any) -> tuple[str, ...]:
    """Importable dotted names (checked now, so a typo stops start-up, not a session)."""
    from twisted.python.reflect import namedAny

    names = parse_list(value)
    for name in names:
        try:
            namedAny(name)
        except Exception as e:
            raise ValueError(f"cannot import {name!r} ({e.__class__.__name__}: {e})")
    return names


def parse_metric_path(value: Any) -> str:
    """Where backends report their count: a path, an http(s) URL, or none."""
    text = str(value).strip()
    if text.lower() == "none" or text.startswith("/") or re.match(r"^https?://", text):
        return text
    raise ValueError(f"expected a path starting with /, an http(s) URL or none, got {value!r}")


# First path segments of the admin site's own endpoints.
ADMIN_RESERVED = {
    "api": "the admin API",
    "metrics": "Prometheus",
    "healthz": "health",
    "readyz": "readiness",
    "dashboard": "the dashboard",
    "dashboard.js": "the dashboard's script",
}


def parse_metric_document_path(value: Any) -> str:
    """Where the JSON distribution is served: a path not taken by another endpoint."""
    path = parse_path(value)
    first = path.strip("/").split("/")[0]
    if first in ADMIN_RESERVED:
        raise ValueError(f"/{first} is taken by {ADMIN_RESERVED[first]}")
    if not first:
        raise ValueError("the admin site's root is taken by its index")
    return path


def parse_path(value: Any) -> str:
    """An absolute URL path."""
    text = str(value).strip()
    if not text.startswith("/"):
        raise ValueError(f"expected a path starting with /, got {value!r}")
    return text


def parse_load_factor(value: Any) -> float:
    """The bounded-load factor of consistent hashing: above 1 (1.25 = 25% over the mean)."""
    try:
        factor = float(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a number above 1, got {value!r}")
    if not factor > 1:
        raise ValueError(f"expected a number above 1, got {value!r}")
    return factor


def parse_percent(value: Any) -> float:
    """A share from 0 to 100 (a trailing % is allowed)."""
    text = str(value).strip().removesuffix("%")
    try:
        percent = float(text)
    except ValueError:
        raise ValueError(f"expected a percentage from 0 to 100, got {value!r}")
    if not 0 <= percent <= 100:
        raise ValueError(f"expected a percentage from 0 to 100, got {value!r}")
    return percent


def parse_rate(value: Any) -> float:
    """A rate per second, 0 or more (`500`, `500/s`, `2.5`)."""
    text = str(value).strip().removesuffix("/s")
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"expected a number per second, got {value!r}")
    if not rate >= 0 or math.isinf(rate):
        raise ValueError(f"expected a number per second, 0 or more, got {value!r}")
    return rate


def parse_cookie_name(value: Any) -> str:
    """A cookie name (an RFC 6265 token)."""
    text = str(value).strip()
    if not re.match(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,64}$", text):
        raise ValueError(f"expected a cookie name of letters, digits and -_. only, got {value!r}")
    return text


def parse_pool_name(value: Any) -> str | None:
    """A pool name, or none (requests no route takes get 404)."""
    text = str(value).strip()
    if text.lower() in ("none", ""):
        return None
    return text


def parse_ca_file(value: Any) -> str | None:
    """A readable file, or empty for none."""
    if value in (None, ""):
        return None
    path = str(value)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path
