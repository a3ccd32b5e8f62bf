"""Packaging: the wheel carries the twistd plugin (and not twisted/plugins/__init__.py)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_plugin_and_the_demo_page(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("wsbalancer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/wsbalancer_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names  # it would shadow Twisted's own plugins
    assert "wsbalancer/demo/chat.html" in names
    assert {"wsbalancer/dashboard.html", "wsbalancer/dashboard.js"} <= names
    assert "wsbalancer/tap.py" in names


def test_plugin_file_imports_nothing_of_the_package() -> None:
    source = (ROOT / "twisted" / "plugins" / "wsbalancer_plugin.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert imports == ["from twisted.application.service import ServiceMaker"]
