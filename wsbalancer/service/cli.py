"""The `wsbalancer` command: `run` (twistd's machinery in the foreground), `check-config`
(every problem of file + environment + flags, nothing bound or resolved), `--version`.

`wsbalancer run ...` is `twistd --nodaemon --pidfile= wsbalancer ...`: the same options, the
same logging, SIGTERM drains, SIGHUP reloads.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from wsbalancer import __version__

USAGE = f"""\
Usage: wsbalancer COMMAND [OPTIONS]

  run [OPTIONS]           run the balancer in the foreground (as `twistd -n wsbalancer`):
                          SIGTERM drains and stops, SIGHUP reloads; `run --help` lists options
  check-config [OPTIONS]  validate the file, the environment and the flags without starting
                          anything; print every problem (exit 2), or the effective
                          configuration and where each value came from (exit 0)
  --version               print the version ({__version__})
"""

# Keys whose values stay out of check-config's output.
SECRET_KEYS = frozenset({"admin.token", "affinity.secret"})
# Endpoint types check-config can build without binding; the others (systemd: needs the
# sockets systemd passes, le:/onion: reach the network) are only parsed by the config.
CHECKED_ENDPOINTS = ("tcp", "tcp6", "ssl", "unix")


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`wsbalancer`); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("--version", "-V", "version"):
        sys.stdout.write(f"wsbalancer {__version__}\n")
        return 0
    if command == "run":
        return run(rest)
    if command == "check-config":
        return check_config(rest)
    sys.stderr.write(f"wsbalancer: unknown command {command!r}\n\n{USAGE}")
    return 2


def run(args: list[str]) -> int:
    """twistd in the foreground, without a pid file, running the wsbalancer plugin."""
    from twisted.scripts.twistd import ServerOptions, runApp

    if any(arg in ("-h", "--help") for arg in args):
        from wsbalancer.service.tap import Options

        sys.stdout.write(f"Usage: wsbalancer run {Options.synopsis}\n{Options().getUsage()}")
        return 0
    options = ServerOptions()
    try:
        options.parseOptions(["--nodaemon", "--pidfile=", "wsbalancer", *args])
    except usage.UsageError as e:
        sys.stderr.write(f"wsbalancer run: {e} (`wsbalancer run --help` lists the options)\n")
        return 2
    runApp(options)  # returns once the reactor stops (a stop by signal re-raises it)
    return 0


def check_config(args: list[str]) -> int:
    """`wsbalancer check-config`: 0 when valid (the configuration printed), else 2."""
    from wsbalancer.service.tap import Options

    class CheckOptions(Options):
        synopsis = "Usage: wsbalancer check-config " + Options.synopsis

        def postOptions(self) -> None:
            pass  # check_config reads the sources itself, gathering every problem

    options = CheckOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        sys.stderr.write(f"wsbalancer check-config: {e}\n")
        return 2
    from wsbalancer.config import check

    result = check(options["config"], overrides=options.overrides(), backends=options["backend"])
    problems = list(result.problems) + endpoint_problems(result.config)
    if problems:
        for problem in problems:
            sys.stderr.write(f"wsbalancer: {problem}\n")
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        sys.stderr.write(f"wsbalancer check-config: {count}; nothing was started\n")
        return 2
    sys.stdout.write(describe(result))
    return 0


def endpoint_problems(config: Any) -> list[str]:
    """Listen endpoints that would fail at start-up for what they say (an unknown option, an
    unreadable or mismatched certificate), found without binding: a memory reactor."""
    from twisted.internet.testing import MemoryReactor

    from wsbalancer.service.tlsreload import server_endpoint

    problems = []
    for key, descriptions in (("listen", config.listen), ("admin.listen", [config.admin_listen])):
        for description in descriptions:
            if description.split(":", 1)[0] not in CHECKED_ENDPOINTS:
                continue
            name = ":".join(description.split(":")[:2])  # file paths stay out of the name
            try:
                _, tls = server_endpoint(MemoryReactor(), description)
                if tls is not None:
                    tls.options.getContext()  # a key that does not match the certificate
            except Exception as e:
                reason = (str(e).strip() or e.__class__.__name__).splitlines()[0][:300]
                problems.append(f"configuration: {key}: {name}: {reason}")
    return problems


def show(key: str, value: Any) -> str:
    """A value as check-config prints it (durations in seconds, secrets hidden)."""
    from wsbalancer.config import SCHEMA, parse_duration, parse_positive_duration

    if key in SECRET_KEYS:
        return "(set, not shown)" if value else "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if SCHEMA[key][0] in (parse_duration, parse_positive_duration):
        return f"{value:g}s"
    if value == "":
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(str(getattr(v, "label", v)) for v in value) or "(none)"
    return str(value)


def describe(result: Any) -> str:
    """The effective configuration, each value with where it came from."""
    from wsbalancer.config import DEFAULT_POOL

    config = result.config
    lines = [
        f"wsbalancer {__version__}: the configuration is valid (nothing was started).",
        "Each value with where it came from: default < file < environment < flag.",
        "",
    ]

    def backends(pool: str) -> None:
        for backend, source in result.backends(pool):
            metric = backend.metric_url or "none"
            lines.append(
                f"  backend {backend.id} = {backend.url} (metric {metric}, weight "
                f"{backend.weight:g})  [{source}]"
            )
        sources = {key: source for key, _, source in result.values(pool)}
        found = next(c for c in config.all_pools() if c.pool_name == pool).discovery
        for dns in found:
            port = dns.port or "from the records"
            lines.append(
                f"  discovery {dns.label} ({dns.scheme}, port {port})  [{sources['discovery']}]"
            )

    pools = [p.pool_name for p in config.pools]
    if config.backends or config.discovery or not pools:
        lines.append(f"pool {DEFAULT_POOL}:")
        backends(DEFAULT_POOL)
    for spec in result.raw.pools:
        lines.append(f"pool {spec.name}:  [{spec.source}]")
        backends(spec.name)
        for key, value, source in result.values(spec.name):
            if key in spec.values and key != "discovery":
                lines.append(f"  {key} = {show(key, value)}  [{source}]")
    for route in config.routes:
        host = f" (host {route.host})" if route.host else ""
        lines.append(f"route {route.path}{host} -> pool {route.pool}")
    if pools:
        lines.append(f"requests no route takes -> pool {config.default_pool or 'none (404)'}")
    lines.append("")
    lines.append("settings:")
    values = result.values()
    width = max(len(key) for key, _, _ in values)
    for key, value, source in values:
        lines.append(f"  {key:<{width}} = {show(key, value)}  [{source}]")
    if config.ignored:
        lines.append("")
        lines.append("accepted but without effect: " + ", ".join(config.ignored))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
