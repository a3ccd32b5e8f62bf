"""Many instances: bench/instances.py run in CI (three twistd balancers, three backends).

The script prints its figures; here its exit status and JSON are the checks: backend-reported
counts within 5% of even after a simultaneous burst on every instance, and an empty backend
that joins takes the new sessions until level.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes, browsers or the Autobahn suite: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("strategy", ["power-of-two", "least-loaded"])
def test_three_instances_stay_within_five_percent_of_even(strategy: str, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instances.py"), "--strategy", strategy]
        + ["--per-instance", "60", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (figures,) = json.loads(out.read_text())
    assert sum(figures["burst_counts"]) == 180
    assert figures["burst_deviation"] <= 0.05
    assert figures["newcomer_got"] >= 0.95 * figures["new_sessions"]
    assert figures["final_deviation"] <= 0.05
    assert "max deviation from even" in run.stdout
