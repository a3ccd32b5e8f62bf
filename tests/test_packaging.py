"""Packaging: the wheel carries the twistd plugin (and not twisted/plugins/__init__.py) and
the licence setup.cfg names; the changelog keeps Keep a Changelog's shape."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import wsbalancer

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
    assert "wsbalancer/devtools/demo/chat.html" in names
    assert {"wsbalancer/admin/dashboard.html", "wsbalancer/admin/dashboard.js"} <= names
    assert "wsbalancer/service/tap.py" in names
    # A subpackage setup.cfg does not list is left out of the wheel without a word.
    assert "wsbalancer/devtools/conformance/__main__.py" in names
    # The licence travels with the wheel, and its metadata says which one it is.
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert zipfile.ZipFile(wheel).read(license_file) == (ROOT / "LICENSE").read_bytes()


def test_plugin_file_imports_nothing_of_the_package() -> None:
    source = (ROOT / "twisted" / "plugins" / "wsbalancer_plugin.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert imports == ["from twisted.application.service import ServiceMaker"]


def metadata() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser["metadata"]


def test_the_license_file_is_the_one_setup_cfg_names() -> None:
    assert metadata()["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} \S", text, re.MULTILINE)
    assert "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_the_changelog_has_an_unreleased_section_and_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert releases[0] == ("Unreleased", "")
    assert (wsbalancer.__version__, releases[1][1]) == releases[1] and releases[1][1]
    kinds = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    for heading in re.findall(r"^### (.+)$", text, re.MULTILINE):
        assert heading in kinds, heading
