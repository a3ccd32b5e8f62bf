"""The chaos script in its short form: backends killed under load, no session dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes, browsers or the Autobahn suite: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent


def test_killing_backends_under_load_drops_no_session_and_reorders_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--clients",
            "50",
            "--duration",
            "12",
            "--kill-every",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures = json.loads(out.read_text())
    (ROOT / "test-output" / "chaos.json").write_text(json.dumps(figures, indent=1))
    assert figures["backend_kills"] >= 1 and figures["failovers"] >= 1, figures
    assert figures["sessions_dropped"] == 0, figures
    assert figures["duplicated"] == 0 and figures["out_of_order"] == 0, figures
    assert figures["messages_echoed"] + figures["messages_lost"] == figures["messages_sent"]
    assert result.returncode == 0, result.stdout + result.stderr
