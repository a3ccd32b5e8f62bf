"""Autobahn TestSuite conformance through the balancer, on both legs: `wsbalancer-conformance`.

Legs (each in its own report folder, every process separate as in production):

- `client`: a fuzzing client drives the balancer, which relays to an echo backend that
  accepts permessage-deflate (the balancer set to mirror compression to it);
- `client-plain-backend`: the same with a backend that refuses compression, the balancer
  in its default configuration (it still offers compression to the client and translates);
- `client-tls`: a subset over `wss://`, the balancer listening on an `ssl:` endpoint with a
  certificate made for the run;
- `client-splice`: the `client` leg with the pool in splice mode (`relay.mode: splice`):
  frames pass byte-for-byte and the echo backend (Autobahn's own) is what is judged, so this
  leg shows the splice neither corrupts, reorders nor truncates anything;
- `client-no-count`: cases 1.* to 10.* through a balancer in its default configuration whose
  only backend, named by the seed Go balancer's `BE_URLS` alone, is an ordinary Autobahn echo
  server with no count endpoint (a plain GET of `/metric` gets its status page);
- `backend`: the fuzzing *server* is the backend, and a testee client that echoes drives each
  case through the balancer, so every verdict judges the balancer's backend leg.

The runner is swappable: `kosoku` (PyPI, Python 3, Autobahn's own case files) by default, or
the official `wstest` (`--runner wstest`, or any command through `--runner-cmd`), whose reports
have the same `index.json` layout and are read the same way.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from wsbalancer.devtools.conformance.cases import ALL_CASES, ALLOW_LIST, LEGS
from wsbalancer.devtools.conformance.legs import run_legs
from wsbalancer.devtools.conformance.report import markdown_table


def missing_packages(legs: list[str], runner: str, runner_cmd: str | None) -> list[str]:
    """The packages of the `conformance` extra these legs need that are not installed: kosoku
    (the fuzzing client and server) and websockets (the backend leg's echoing client)."""
    from importlib.util import find_spec

    needed = []
    if "backend" in legs or (runner == "kosoku" and not runner_cmd):
        needed.append("kosoku")
    if "backend" in legs:
        needed.append("websockets")
    return [name for name in needed if find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 0 when every case of every leg is OK, NON-STRICT or INFORMATIONAL."""
    # One name however it is started (`python -m` of a package would say "__main__.py").
    parser = argparse.ArgumentParser(
        prog="wsbalancer-conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="reports/conformance", help="report folder")
    parser.add_argument(
        "--cases",
        default=",".join(ALL_CASES),
        help="comma-separated case globs (default: all 517, 1.* to 13.*)",
    )
    parser.add_argument("--legs", default=",".join(LEGS), help=f"any of {', '.join(LEGS)}")
    parser.add_argument("-p", "--parallel", type=int, default=2)
    parser.add_argument("--runner", choices=["kosoku", "wstest"], default="kosoku")
    parser.add_argument(
        "--runner-cmd",
        default=None,
        help="custom fuzzing-client command with {target} {outdir} {cases}",
    )
    args = parser.parse_args(argv)
    if args.runner == "wstest" and not args.runner_cmd and not shutil.which("wstest"):
        parser.error(
            "wstest is not on PATH (it needs Python 2, or use its container image "
            "through --runner-cmd)"
        )
    legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    unknown = [leg for leg in legs if leg not in LEGS]
    if unknown:
        parser.error(f"unknown leg {unknown[0]!r}; choose from {', '.join(LEGS)}")
    missing = missing_packages(legs, args.runner, args.runner_cmd)
    if missing:
        sys.stderr.write(
            f"wsbalancer-conformance: needs {' and '.join(missing)}, not installed: "
            "pip install 'wsbalancer[conformance]'\n"
        )
        return 2
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    summaries = run_legs(Path(args.out), legs, cases, args.parallel, args.runner, args.runner_cmd)
    broken = []
    for leg, summary in summaries.items():
        print(
            f"\n{leg}: {summary['total']} cases, {summary['seconds']} s\n" + markdown_table(summary)
        )
        broken += [f"{leg} {item}" for item in summary["failing"] + summary["missing"]]
    print(
        f"\nallow-list: {len(ALLOW_LIST)} cases"
        + "".join(f"\n  {case}: {why}" for case, why in ALLOW_LIST.items())
    )
    if broken:
        print("FAILING:\n  " + "\n  ".join(broken))
        return 1
    return 0
