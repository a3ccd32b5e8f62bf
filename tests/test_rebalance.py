"""Sessions follow the fleet: bench/rebalance.py in a short form (real twistd balancers,
demo backend processes, clients exchanging numbered messages). A fourth backend joins; with
`rebalance.enabled` every backend must end within 10% of the mean, no client session
closed, no message lost, duplicated or reordered, no session moved twice; with three
instances on the same backends too (each moves only its share)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("instances", [1, 3])
def test_a_new_backend_gets_its_share_of_live_sessions(instances: int, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rebalance.py"), "--instances", str(instances)]
        + ["--sessions", "60", "--settle", "3", "--limit", "30", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert sum(figures["before"]) == 60 and len(figures["after_settle"]) == 4
    assert figures["after_deviation"] <= 0.10 and figures["closed"] == 0
    assert figures["problems"] == [] and figures["moved_twice"] == 0
    assert figures["moved"] >= 12  # the newcomer's share came by migration
    assert sum(m["migrated"] for m in figures["moves_by_instance"]) == figures["moved"]
    assert "PASS  no session moved twice" in run.stdout
