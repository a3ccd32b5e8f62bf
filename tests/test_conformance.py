"""Autobahn TestSuite RFC 6455 cases through the balancer, on both legs (real processes,
the real fuzzer). Every case run must be OK, NON-STRICT or INFORMATIONAL, none missing.

Covered here, every run:
- the client leg in the default configuration (the backend leg uncompressed, the backend
  refusing compression) with every case but the 72 heaviest compression cases (12.*.10,
  12.*.14-18 and the same in 13.*: 1,000 compressed messages of 64-128 KiB each, which take
  18-30 s against the 30 s kosoku allows a case: too close to be a stable gate);
- the TLS subset through an `ssl:` frontend;
- for 1.* to 10.*, the client leg with a compressing backend and the backend leg (the fuzzing
  server as the backend).
Everything else (all 517 cases on every leg) runs with the documented command,
`wsbalancer-conformance`; README, Conformance, has the last results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsbalancer.conformance import ALLOW_LIST, main

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "conformance"
CORE = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
# Every compression case but the heaviest sizes, case by case: a missing one fails.
LIGHT_COMPRESSION = [
    f"{group}.{sub}.{n}"
    for group, subs in ((12, 5), (13, 7))
    for sub in range(1, subs + 1)
    for n in [*range(1, 10), 11, 12, 13]
]


def _check(leg: str, groups: list[str], at_least: int) -> None:
    summary = json.loads((OUT / leg / "summary.json").read_text())
    assert summary["failing"] == [] and summary["missing"] == [], summary
    assert list(summary["groups"]) == groups
    assert summary["total"] >= at_least


@pytest.mark.timeout(2400)
def test_client_leg_with_the_compression_cases_and_the_tls_subset() -> None:
    cases = ",".join(CORE + LIGHT_COMPRESSION)
    legs = "client-plain-backend,client-tls"
    assert main(["--out", str(OUT), "--cases", cases, "--legs", legs]) == 0
    groups = [c.split(".")[0] for c in CORE] + ["12", "13"]
    _check("client-plain-backend", groups, 301 + len(LIGHT_COMPRESSION))
    _check("client-tls", ["1", "2", "5", "7", "9", "12"], 99)
    assert ALLOW_LIST == {}


@pytest.mark.timeout(1800)
def test_backend_leg_and_compressing_backend() -> None:
    assert main(["--out", str(OUT), "--cases", ",".join(CORE), "--legs", "client,backend"]) == 0
    groups = [c.split(".")[0] for c in CORE]
    _check("client", groups, 301)
    _check("backend", groups, 301)
