"""The Kubernetes manifests: valid for the API (kubernetes-validate, strict), and the
configuration they carry is one the balancer accepts, with a grace period longer than the
drain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from wsbalancer.config import load

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def test_manifests_validate_strictly_against_the_kubernetes_schemas() -> None:
    assert len(MANIFESTS) >= 4
    validator = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(validator), "--strict", "-k", "1.30.0", *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {
        line.split("resource ")[1].split("/")[0]
        for line in result.stdout.splitlines()
        if "passed for resource" in line
    }
    assert {"deployment", "service", "configmap", "poddisruptionbudget", "statefulset"} <= kinds


def test_the_configmap_holds_a_configuration_the_balancer_accepts(tmp_path: Path) -> None:
    documents = {d["kind"]: d for m in MANIFESTS for d in yaml.safe_load_all(m.read_text())}
    config_file = tmp_path / "wsbalancer.yaml"
    config_file.write_text(documents["ConfigMap"]["data"]["wsbalancer.yaml"])
    config = load(str(config_file), environ={})
    assert [b.id for b in config.backends] == ["chat-0", "chat-1", "chat-2"]
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert (
        pod["terminationGracePeriodSeconds"] > pre_stop + config.drain_period + config.close_timeout
    )
    probes = pod["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_pod_runs_a_set_number_of_workers_with_a_writable_tmp(tmp_path: Path) -> None:
    # `workers: auto` counts the node's cores, not the pod's request; and worker processes
    # need a writable temporary directory, which a read-only root does not give.
    documents = {d["kind"]: d for m in MANIFESTS for d in yaml.safe_load_all(m.read_text())}
    text = documents["ConfigMap"]["data"]["wsbalancer.yaml"]
    assert "workers" in yaml.safe_load(text)
    config_file = tmp_path / "wsbalancer.yaml"
    config_file.write_text(text)
    config = load(str(config_file), environ={})
    cpu = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    requested = cpu["requests"]["cpu"]
    cores = int(requested[:-1]) / 1000 if requested.endswith("m") else float(requested)
    assert config.workers <= max(1, round(cores))
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
