"""Autobahn TestSuite RFC 6455 cases through the balancer, on both legs (real processes,
the real fuzzer). Every case must be OK, NON-STRICT or INFORMATIONAL, none missing.

Covered here, every run: the client leg with every case (1.* to 13.*) in the default
configuration (the backend leg uncompressed, the backend refusing compression), the TLS
subset through an `ssl:` frontend, and for 1.* to 10.* the client leg with a compressing
backend and the backend leg (the fuzzing server as backend). The compression groups with
compression on both legs (12.*, 13.*: some twenty minutes of CPU on this 2-core machine) run
with the documented command (`wsbalancer-conformance`); there, 18 of the 12.* cases, each
1,000 compressed messages of 64-128 KiB echoed through two compressing legs, outlast the
30 s kosoku gives a case (the case files allow 480 s); see README, Conformance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsbalancer.conformance import ALL_CASES, ALLOW_LIST, main

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "conformance"
BOTH_LEGS = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*"


def _check(leg: str, groups: list[str], at_least: int) -> None:
    summary = json.loads((OUT / leg / "summary.json").read_text())
    assert summary["failing"] == [] and summary["missing"] == [], summary
    assert list(summary["groups"]) == groups
    assert summary["total"] >= at_least


@pytest.mark.timeout(2400)
def test_every_case_on_the_client_leg_and_the_tls_subset() -> None:
    assert (
        main(
            [
                "--out",
                str(OUT),
                "--cases",
                ",".join(ALL_CASES),
                "--legs",
                "client-plain-backend,client-tls",
            ]
        )
        == 0
    )
    _check("client-plain-backend", [c.split(".")[0] for c in ALL_CASES], 517)
    _check("client-tls", ["1", "2", "5", "7", "9", "12"], 100)
    assert ALLOW_LIST == {}


@pytest.mark.timeout(1800)
def test_backend_leg_and_compressing_backend() -> None:
    assert main(["--out", str(OUT), "--cases", BOTH_LEGS, "--legs", "client,backend"]) == 0
    groups = [c.split(".")[0] for c in BOTH_LEGS.split(",")]
    _check("client", groups, 301)
    _check("backend", groups, 301)
