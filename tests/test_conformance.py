"""Autobahn TestSuite RFC 6455 cases through the balancer (real processes, real fuzzer)."""

from __future__ import annotations

import json
from pathlib import Path

from wsbalancer.conformance import ALLOW_LIST, main

ROOT = Path(__file__).resolve().parent.parent
CORE_GROUPS = ["1", "2", "3", "4", "5", "6", "7", "9", "10"]


def test_autobahn_cases_1_to_10_pass_through_the_balancer() -> None:
    out = ROOT / "test-output" / "conformance-core"
    cases = ",".join(f"{g}.*" for g in CORE_GROUPS)
    assert main(["--out", str(out), "--cases", cases, "-p", "2"]) == 0
    summary = json.loads((out / "client-leg" / "summary.json").read_text())
    assert list(summary["groups"]) == CORE_GROUPS
    assert summary["failing"] == []
    assert summary["total"] >= 300  # every case of these groups ran and was judged
    assert ALLOW_LIST == {}
