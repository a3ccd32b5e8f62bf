"""Autobahn TestSuite RFC 6455 cases through the balancer, on every leg (real processes,
the real fuzzer), exactly as `wsbalancer-conformance` runs them: all 517 cases (1.* to 13.*)
on the client leg with a compressing and with a plain backend, through the splice fast
path, and on the backend leg (the
fuzzing server as the backend), plus the TLS subset through an `ssl:` frontend, and cases 1.*
to 10.* through a default balancer whose only backend is a plain Autobahn echo server with no
count endpoint, named by `BE_URLS` alone. Every case
must be OK, NON-STRICT or INFORMATIONAL, none missing; the allow-list must stay empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsbalancer.devtools.conformance import ALLOW_LIST, main

pytestmark = pytest.mark.slow  # processes, browsers or the Autobahn suite: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "conformance"
GROUPS = ["1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"]


def _check(leg: str, groups: list[str], total: int) -> None:
    summary = json.loads((OUT / leg / "summary.json").read_text())
    assert summary["failing"] == [] and summary["missing"] == [], summary
    assert list(summary["groups"]) == groups
    assert summary["total"] == total


@pytest.mark.timeout(3600)
def test_client_leg_with_a_plain_backend_and_the_tls_subset() -> None:
    assert main(["--out", str(OUT), "--legs", "client-plain-backend,client-tls"]) == 0
    _check("client-plain-backend", GROUPS, 517)
    _check("client-tls", ["1", "2", "5", "7", "9", "12"], 99)
    assert ALLOW_LIST == {}


@pytest.mark.timeout(3600)
def test_client_leg_with_a_compressing_backend_and_the_backend_leg() -> None:
    assert main(["--out", str(OUT), "--legs", "client,backend"]) == 0
    _check("client", GROUPS, 517)
    _check("backend", GROUPS, 517)


@pytest.mark.timeout(3600)
def test_client_leg_through_the_splice_fast_path() -> None:
    # Spliced, frames reach Autobahn's echo backend as the fuzzer sent them: each verdict
    # shows the splice kept every frame whole and in order, and let the backend judge it.
    assert main(["--out", str(OUT), "--legs", "client-splice"]) == 0
    _check("client-splice", GROUPS, 517)


@pytest.mark.timeout(3600)
def test_client_leg_through_a_plain_backend_without_a_count_endpoint() -> None:
    # Before a backend without /metric was taken for a dead one, every case here got a 503.
    assert main(["--out", str(OUT), "--legs", "client-no-count"]) == 0
    _check("client-no-count", ["1", "2", "3", "4", "5", "6", "7", "9", "10"], 301)
