"""Unit tests of the configuration loader: file < environment < flags, the seed programs'
names, value parsers and one-line error messages that name their source and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wsbalancer.config import (
    ConfigError,
    load,
    parse_duration,
    parse_endpoint,
    parse_size,
)

ONE_BACKEND = ["ws://b1:9000"]


def write(tmp_path: Path, text: str, name: str = "wsbalancer.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_error(**kwargs: Any) -> str:
    """The message of the ConfigError that `load(**kwargs)` raises, checked to be one line."""
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error message spans lines: {message!r}"
    return message


# --- precedence ------------------------------------------------------------------------


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "backends: [ws://b1:9000]\n"
        "log: {level: debug}\n"
        "balancing: {strategy: round-robin, poll_interval: 7s}\n"
        "breaker: {threshold: 9}\n",
    )
    environ = {"WSBALANCER_LOG__LEVEL": "error", "WSBALANCER_BALANCING__POLL_INTERVAL": "3s"}
    overrides = [("log.level", "warn", "flag --log-level")]

    file_only = load(path, environ={})
    assert (file_only.log_level, file_only.poll_interval) == ("debug", 7.0)

    with_env = load(path, environ=environ)
    assert (with_env.log_level, with_env.poll_interval) == ("error", 3.0)
    assert with_env.strategy == "round-robin"  # untouched by the environment

    with_flags = load(path, environ=environ, overrides=overrides)
    assert with_flags.log_level == "warn"
    assert with_flags.poll_interval == 3.0
    assert with_flags.breaker_threshold == 9


def test_prefixed_variables_override_the_seed_variables() -> None:
    config = load(
        environ={"LOG_LEVEL": "debug", "WSBALANCER_LOG__LEVEL": "critical"}, backends=ONE_BACKEND
    )
    assert config.log_level == "critical"


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://from-file:1]\nbalancing: {strategy: p2c}\n")
    config = load(environ={"WSBALANCER_CONFIG": path})
    assert [b.url for b in config.backends] == ["ws://from-file:1"]
    assert config.strategy == "power-of-two"


def test_be_urls_append_to_file_backends_and_flags_replace_both(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://file:1]\n")
    environ = {"BE_URLS": "ws://env:2"}
    assert [b.url for b in load(path, environ=environ).backends] == ["ws://file:1", "ws://env:2"]
    flagged = load(path, environ=environ, backends=["x=ws://flag:3"])
    assert [(b.id, b.url) for b in flagged.backends] == [("x", "ws://flag:3")]


def test_wsbalancer_backends_variable_replaces_file_backends(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://file:1]\n")
    config = load(path, environ={"WSBALANCER_BACKENDS": "one=ws://env:2,ws://env:3"})
    assert [(b.id, b.url) for b in config.backends] == [
        ("one", "ws://env:2"),
        ("env:3", "ws://env:3"),
    ]


def test_empty_file_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load(path, environ={}, backends=ONE_BACKEND).strategy == "least-loaded"


# --- the seed Go balancer's environment --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "endpoint"),
    [
        (":8080", "tcp:8080"),
        ("127.0.0.1:8080", "tcp:8080:interface=127.0.0.1"),
        ("[::1]:9000", "tcp6:9000:interface=\\:\\:1"),
    ],
)
def test_fe_addr_forms_become_endpoint_strings(value: str, endpoint: str) -> None:
    config = load(environ={"FE_ADDR": value}, backends=ONE_BACKEND)
    assert config.listen == (endpoint,)


def test_adm_addr_sets_the_admin_endpoint() -> None:
    config = load(environ={"ADM_ADDR": "127.0.0.1:9101"}, backends=ONE_BACKEND)
    assert config.admin_listen == "tcp:9101:interface=127.0.0.1"


@pytest.mark.parametrize(
    "endpoint", ["tcp:8080", "tcp6:8080", "ssl:8443:privateKey=key.pem", "unix:/run/ws.sock"]
)
def test_twisted_endpoint_strings_pass_unchanged(endpoint: str) -> None:
    # `tcp:8080` looks like host:port to a careless parser; it must not become interface=tcp.
    assert parse_endpoint(endpoint) == endpoint
    config = load(
        environ={}, overrides=[("listen", endpoint, "flag --listen")], backends=ONE_BACKEND
    )
    assert config.listen == (endpoint,)


def test_be_urls_with_ids() -> None:
    config = load(
        environ={"BE_URLS": "ws://10.0.0.1:9090, wss://b.example:443/ws", "BE_URL_IDS": "a,b"}
    )
    assert [(b.id, b.url, b.metric_url) for b in config.backends] == [
        ("a", "ws://10.0.0.1:9090", "http://10.0.0.1:9090/metric"),
        ("b", "wss://b.example:443/ws", "https://b.example:443/metric"),
    ]


def test_be_urls_without_ids_are_named_by_host_and_port() -> None:
    config = load(environ={"BE_URLS": "ws://h1:1,ws://h2:2"})
    assert [b.id for b in config.backends] == ["h1:1", "h2:2"]


def test_seed_variables_for_log_headers_xff_and_close_codes() -> None:
    config = load(
        environ={
            "LOG_LEVEL": "WARN",
            "BLOCK_HEADERS": "X-Debug, Authorization",
            "BE_PASS_HEADERS": "Set-Cookie,X-Pod",
            "FE_TRUST_XFF": "true",
            "BE_ABNORMAL_CLOSE_CODES": "1006,1011,4000",
            "BE_BREAKER_THRESHOLD": "7",
            "RECONNECT_HDR": "X-Again",
        },
        backends=ONE_BACKEND,
    )
    assert config.log_level == "warn"
    assert config.block_headers == ("x-debug", "authorization")
    assert config.pass_back_headers == ("set-cookie", "x-pod")
    assert config.trust_x_forwarded_for is True
    assert config.abnormal_close_codes == (1006, 1011, 4000)
    assert config.breaker_threshold == 7
    assert config.reconnect_header == "X-Again"
    untrusted = load(environ={"FE_TRUST_XFF": "false"}, backends=ONE_BACKEND)
    assert untrusted.trust_x_forwarded_for is False


def test_seed_variables_without_meaning_are_reported_not_rejected() -> None:
    config = load(environ={"FE_RB_SIZE": "1024", "ENABLE_INST": "true"}, backends=ONE_BACKEND)
    assert set(config.ignored) == {"FE_RB_SIZE", "ENABLE_INST"}


# --- the seed Traefik plugin's keys and the Go seed's file --------------------------------


def test_traefik_plugin_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'metricPath: "/stats"\n'
        'balancerMetricPath: "/lb-metrics"\n'
        "services:\n"
        '  - "http://service-1.namespace.svc.cluster.local:80"\n'
        '  - "https://service-2.example:8443"\n'
        "cacheTTL: 30\n"
        "tlsVerify: false\n",
    )
    config = load(path, environ={})
    assert [(b.url, b.metric_url) for b in config.backends] == [
        (
            "ws://service-1.namespace.svc.cluster.local:80",
            "http://service-1.namespace.svc.cluster.local:80/stats",
        ),
        ("wss://service-2.example:8443", "https://service-2.example:8443/stats"),
    ]
    assert config.balancer_metric_path == "/lb-metrics"
    assert config.poll_interval == 30.0
    assert config.tls_verify is False


def test_traefik_cache_ttl_as_a_duration_string(tmp_path: Path) -> None:
    path = write(tmp_path, 'services: ["http://s:80"]\ncacheTTL: "45s"\ntlsVerify: true\n')
    config = load(path, environ={})
    assert config.poll_interval == 45.0
    assert config.tls_verify is True


def test_go_seed_upstream_backends_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "upstream:\n  backends:\n    - url: ws:localhost:9090\n    - url: ws:localhost:9091\n",
    )
    config = load(path, environ={})
    assert [(b.id, b.url, b.metric_url) for b in config.backends] == [
        ("localhost:9090", "ws://localhost:9090", "http://localhost:9090/metric"),
        ("localhost:9091", "ws://localhost:9091", "http://localhost:9091/metric"),
    ]


# --- prefixed environment variables -------------------------------------------------------


def test_section_key_variables() -> None:
    config = load(
        environ={
            "WSBALANCER_BALANCING__STRATEGY": "p2c",
            "WSBALANCER_KEEPALIVE__CLIENT__PING_INTERVAL": "15s",
            "WSBALANCER_KEEPALIVE__CLIENT__PONG_TIMEOUT": "500ms",
            "WSBALANCER_LIMITS__MAX_MESSAGE_SIZE": "64KiB",
            "WSBALANCER_HEADERS__FORWARD": "Cookie,Authorization",
            "WSBALANCER_HEALTH__FALL": "4",
        },
        backends=ONE_BACKEND,
    )
    assert config.strategy == "power-of-two"
    assert (config.client_keepalive.ping_interval, config.client_keepalive.pong_timeout) == (
        15.0,
        0.5,
    )
    assert config.backend_keepalive == load(environ={}, backends=ONE_BACKEND).backend_keepalive
    assert config.max_message_size == 64 * 1024
    assert config.forward_headers == ("cookie", "authorization")
    assert config.health_fall == 4


# --- metric URLs ---------------------------------------------------------------------------


def test_metric_urls_derived_from_backend_urls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "backends:\n"
        "  - ws://plain:8000/socket?room=1\n"
        "  - url: wss://secure:8443/ws\n"
        "  - {url: ws://custom:8001, metric: /stats/connections}\n"
        "  - {url: ws://elsewhere:8002, metric_url: 'http://metrics.internal:9100/count'}\n"
        "  - {url: ws://pathed:8003, metric_path: /m}\n",
    )
    config = load(path, environ={})
    assert [b.metric_url for b in config.backends] == [
        "http://plain:8000/metric",
        "https://secure:8443/metric",
        "http://custom:8001/stats/connections",
        "http://metrics.internal:9100/count",
        "http://pathed:8003/m",
    ]
    assert config.backends[0].url == "ws://plain:8000/socket?room=1"


def test_global_metric_path_applies_to_backends_without_their_own() -> None:
    config = load(
        environ={"WSBALANCER_BALANCING__METRIC_PATH": "/agents"},
        backends=["ws://a:1", "wss://b:2"],
    )
    assert [b.metric_url for b in config.backends] == ["http://a:1/agents", "https://b:2/agents"]


def test_backend_weights_and_ids_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {url: ws://a:1, id: big, weight: 2.5}\n  - ws://b:2\n")
    config = load(path, environ={})
    assert [(b.id, b.weight) for b in config.backends] == [("big", 2.5), ("b:2", 1.0)]
    assert config.backend("big").url == "ws://a:1"


# --- value parsers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1.5s", 1.5),
        ("1h", 3600.0),
        ("10", 10.0),
        (3, 3.0),
        (0.25, 0.25),
        (" 7s ", 7.0),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-1s", "5 minutes", True, "1d", ""])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("64KiB", 65536),
        ("1MB", 1_000_000),
        ("1MiB", 1024**2),
        ("16k", 16384),
        (100, 100),
        ("2gib", 2 * 1024**3),
        ("512", 512),
    ],
)
def test_sizes(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", -1, True, "1.5MiB", "64 KiBs"])
def test_bad_sizes(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_durations_and_sizes_through_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "backends: [ws://a:1]\n"
        "timeouts: {backend_connect: 500ms, idle: 2m}\n"
        "limits: {max_message_size: 64KiB, max_frame_size: 16384}\n"
        "balancing: {fetch_timeout: 1.5}\n",
    )
    config = load(path, environ={})
    assert config.backend_connect_timeout == 0.5
    assert config.idle_timeout == 120.0
    assert config.max_message_size == 65536
    assert config.max_frame_size == 16384
    assert config.fetch_timeout == 1.5


# --- errors: one line naming the source and the key ----------------------------------------


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://a:1]\nbalancing:\n  strategy: a: b\n")
    message = load_error(path=path)
    assert message.startswith(f"file {path}: not valid YAML at line 3")


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.yaml")
    message = load_error(path=path)
    assert message.startswith(f"file {path}: cannot be read")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- ws://a:1\n")
    assert load_error(path=path).startswith(f"file {path}: ")


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://a:1]\nbalancing: {strategy: p2c, bogus: 1}\n")
    assert load_error(path=path) == f"file {path}: balancing.bogus: unknown key"


def test_unknown_key_in_a_backend_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {url: ws://a:1, wieght: 2}\n")
    assert load_error(path=path) == (
        f"file {path}: backends[0]: unknown key wieght (did you mean weight?)"
    )


def test_unknown_prefixed_variable() -> None:
    message = load_error(environ={"WSBALANCER_BALANCING__NOPE": "1"}, backends=ONE_BACKEND)
    assert message == "environment WSBALANCER_BALANCING__NOPE: balancing.nope: unknown key"


def test_bad_duration_names_the_source_each_way(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://a:1]\nbalancing: {poll_interval: soon}\n")
    assert load_error(path=path).startswith(f"file {path}: balancing.poll_interval: ")
    assert "soon" in load_error(path=path)
    message = load_error(
        environ={"WSBALANCER_BALANCING__POLL_INTERVAL": "later"}, backends=ONE_BACKEND
    )
    assert message.startswith(
        "environment WSBALANCER_BALANCING__POLL_INTERVAL: balancing.poll_interval: "
    )
    message = load_error(
        overrides=[("balancing.poll_interval", "never", "flag --poll-interval")],
        backends=ONE_BACKEND,
    )
    assert message.startswith("flag --poll-interval: balancing.poll_interval: ")


def test_zero_poll_interval_is_refused() -> None:
    message = load_error(
        overrides=[("balancing.poll_interval", "0s", "flag --poll-interval")],
        backends=ONE_BACKEND,
    )
    assert message.startswith("flag --poll-interval: balancing.poll_interval: must be above zero")


def test_seed_variable_with_a_bad_value_names_the_variable() -> None:
    message = load_error(environ={"BE_ABNORMAL_CLOSE_CODES": "1006,999"}, backends=ONE_BACKEND)
    assert message.startswith("environment BE_ABNORMAL_CLOSE_CODES: failover.close_codes: ")
    assert "999" in message
    message = load_error(environ={"LOG_LEVEL": "LOUD"}, backends=ONE_BACKEND)
    assert message.startswith("environment LOG_LEVEL: log.level: ")


def test_bad_url_scheme(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [ws://a:1, 'ftp://b:2']\n")
    message = load_error(path=path)
    assert message.startswith(f"file {path}: backends[1]: url: ")
    assert "ftp://b:2" in message
    message = load_error(environ={"BE_URLS": "tcp://c:3"})
    assert message.startswith("environment BE_URLS: url: ")
    message = load_error(backends=["gopher://d:4"])
    assert message.startswith("flag --backend: url: ")


def test_bad_port(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: ['ws://a:99999']\n")
    assert load_error(path=path).startswith(f"file {path}: backends[0]: url: ")


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {url: ws://a:1, id: x}\n  - {url: ws://b:2, id: x}\n")
    message = load_error(path=path)
    assert message.startswith(f"file {path}: backends[1]: id: ")
    assert "'x'" in message
    # the same host:port twice is a duplicate id too
    message = load_error(environ={"BE_URLS": "ws://a:1,ws://a:1"})
    assert message.startswith("environment BE_URLS: id: ")


def test_zero_weight(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {url: ws://a:1, weight: 0}\n")
    message = load_error(path=path)
    assert message.startswith(f"file {path}: backends[0]: weight: must be above zero")


def test_non_numeric_weight(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {url: ws://a:1, weight: heavy}\n")
    assert load_error(path=path).startswith(f"file {path}: backends[0]: weight: ")


def test_no_backends() -> None:
    message = load_error(environ={})
    assert message.startswith("configuration: backends: ")


def test_be_url_ids_count_mismatch() -> None:
    message = load_error(environ={"BE_URLS": "ws://a:1,ws://b:2", "BE_URL_IDS": "only-one"})
    assert message.startswith("environment BE_URLS: ")
    assert "BE_URL_IDS" in message
    assert "1" in message and "2" in message


def test_bad_metric_path_names_the_setting_that_holds_it() -> None:
    # The bad value is the metric path, so the error must point at it, not at a backend.
    message = load_error(
        overrides=[("balancing.metric_path", "metric", "flag --metric-path")],
        backends=ONE_BACKEND,
    )
    assert message.startswith("flag --metric-path: balancing.metric_path: ")
    assert "'metric'" in message


def test_bad_per_backend_metric(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {url: ws://a:1, metric: 'ftp://m/x'}\n")
    message = load_error(path=path)
    assert message.startswith(f"file {path}: backends[0]: metric: ")
    assert "ftp://m/x" in message
