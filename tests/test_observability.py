"""The observability kit (deploy/observability): promtool checks the alert rules and runs their
unit tests, the dashboard's queries parse as PromQL, and every metric either names is one a
running balancer really exports at /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .helpers import aio, recv, start_backend, start_balancer

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "deploy" / "observability"
ALERTS = KIT / "alerts.yaml"
DASHBOARD = KIT / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\bwsbalancer_[a-zA-Z0-9_]+")
# What Grafana puts in a query before sending it, to check the query as Prometheus sees it.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is needed (.ci/run installs Debian's prometheus package)"
    return subprocess.run(
        [tool, *args], cwd=KIT, capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard's panels, Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"an unknown variable in {target['expr']}"
            queries.append(expr)
    return queries


def dashboard_variable_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "WsbalancerNoBackendUsable",
        "WsbalancerBackendDown",
        "WsbalancerBreakerOpen",
        "WsbalancerFailoverLosses",
        "WsbalancerHandshakeRefusals",
        "WsbalancerDrainStuck",
    } <= names
    # Each alert is exercised by the unit tests, firing at least once.
    tests = yaml.safe_load((KIT / "alerts_test.yaml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries()
    assert len(queries) >= 20
    # promtool parses expressions in rule files: the queries as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-queries.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(tmp_path / "dashboard-queries.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def exported_names(text: str) -> set[str]:
    """The sample names a /metrics text carries or declares (a labelled counter with no
    child yet has only its HELP and TYPE lines: its names follow from its type)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


@pytest_twisted.ensureDeferred
async def test_every_metric_the_kit_names_is_exported_by_a_running_balancer() -> None:
    backend = start_backend("one")
    lb = await start_balancer([backend.url])
    try:
        ws = await aio(websockets.connect(lb.ws_url(), open_timeout=10))
        await aio(ws.send("counted"))
        assert await recv(ws) == "counted"
        await aio(ws.close())
        response = await treq.get(lb.admin_url("/metrics"), persistent=False)
        assert response.code == 200
        exported = exported_names((await response.content()).decode())
    finally:
        await lb.stop()
        await backend.stop()
    assert "wsbalancer_sessions_opened_total" in exported  # the scrape is the balancer's
    named = {
        source: set(METRIC_NAME.findall(text))
        for source, text in [
            *((f"alert {r['alert']}", r["expr"]) for r in alert_rules()),
            *((f"dashboard query {q}", q) for q in dashboard_queries()),
            *((f"dashboard variable {q}", q) for q in dashboard_variable_queries()),
        ]
    }
    assert all(named.values())
    unknown = {source: names - exported for source, names in named.items() if names - exported}
    assert not unknown, unknown
    # What the alerts watch, the dashboard shows (the pool gauge only serves their join).
    shown = set().union(*(METRIC_NAME.findall(q) for q in dashboard_queries()))
    alerted = set().union(*(METRIC_NAME.findall(r["expr"]) for r in alert_rules()))
    assert alerted - shown == {"wsbalancer_backend_pool"}
