"""Reading a conformance leg's results: the runner's `index.json` (the serial pass folded
in), the verdicts per case group, the cases that fail or are missing, and the
`summary.json` / `summary.md` written beside them."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from wsbalancer.devtools.conformance.cases import ALLOW_LIST, PASSING, PASSING_CLOSE, SUITE_GROUPS


def merge_serial(outdir: Path, sub: str) -> None:
    """Fold the serial pass's index (in `outdir/sub`) into the main one."""
    main_index = outdir / "index.json"
    index = json.loads(main_index.read_text()) if main_index.exists() else {}
    extra = json.loads((outdir / sub / "index.json").read_text())
    for agent, cases in extra.items():
        for case, result in cases.items():
            if "reportfile" in result:
                result["reportfile"] = f"{sub}/{result['reportfile']}"
            index.setdefault(agent, {})[case] = result
    main_index.write_text(json.dumps(index, indent=1))


def read_results(outdir: Path) -> dict[str, dict[str, Any]]:
    """Per-case results from the runner's index.json (one agent)."""
    index = json.loads((outdir / "index.json").read_text())
    merged: dict[str, dict[str, Any]] = {}
    for cases in index.values():
        merged.update(cases)
    return merged


def case_key(case: str) -> tuple[int, ...]:
    """Sort key: 1.2.10 after 1.2.9."""
    return tuple(int(p) for p in case.split(".") if p.isdigit())


def summarise(results: dict[str, dict[str, Any]], patterns: list[str]) -> dict[str, Any]:
    """Counts per verdict per case group, the cases that break the promise, and missing ones."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    failing = []
    for case, result in sorted(results.items(), key=lambda kv: case_key(kv[0])):
        group = case.split(".")[0]
        behavior = result.get("behavior", "MISSING")
        close = result.get("behaviorClose", "MISSING")
        table[group][behavior] += 1
        if (behavior not in PASSING or close not in PASSING_CLOSE) and case not in ALLOW_LIST:
            failing.append(f"{case}: {behavior}/{close}")
    missing = []
    for pattern in patterns:  # whole groups must be complete; sub-globs must match something
        group = pattern.split(".")[0]
        if pattern == f"{group}.*" and group in SUITE_GROUPS:
            got = sum(table[group].values()) if group in table else 0
            if got < SUITE_GROUPS[group]:
                missing.append(f"{pattern}: {got} of {SUITE_GROUPS[group]} cases")
        elif not any(fnmatch(case, pattern) for case in results):
            missing.append(f"{pattern}: no case")
    return {
        "groups": {g: dict(c) for g, c in sorted(table.items(), key=lambda kv: int(kv[0]))},
        "total": len(results),
        "failing": failing,
        "missing": missing,
        "allow_list": ALLOW_LIST,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: case groups x verdicts."""
    verdicts = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    lines = ["| group | " + " | ".join(verdicts) + " |", "|---|" + "---|" * len(verdicts)]
    for group, counts in summary["groups"].items():
        lines.append(f"| {group}.* | " + " | ".join(str(counts.get(v, 0)) for v in verdicts) + " |")
    return "\n".join(lines)


def write_summary(
    outdir: Path, patterns: list[str], elapsed: float, command: str
) -> dict[str, Any]:
    """Summarise a finished leg into `summary.json` and `summary.md`; returns the summary."""
    if not (outdir / "index.json").exists():
        log = (outdir / "runner.log").read_text()[-800:] if (outdir / "runner.log").exists() else ""
        raise RuntimeError(f"the runner wrote no index.json: {log}")
    summary = summarise(read_results(outdir), patterns)
    summary["seconds"] = round(elapsed, 1)
    summary["command"] = command
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    (outdir / "summary.md").write_text(markdown_table(summary) + "\n")
    return summary
