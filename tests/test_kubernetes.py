"""The Kubernetes manifests: valid for the API (kubernetes-validate, strict) from the
minimum version the README names, all listed in the kustomization, and the configuration they
carry is one the balancer accepts, with a grace period longer than the drain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from wsbalancer.config import load

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = FOLDER / "kustomization.yaml"
MANIFESTS = sorted(m for m in FOLDER.glob("*.yaml") if m != KUSTOMIZATION)
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
# The oldest Kubernetes the manifests are for: the preStop `sleep` action is beta and on by
# default from 1.30 (alpha behind a feature gate in 1.29).
MINIMUM = "1.30"


def validate(version: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VALIDATOR), "--strict", "-k", f"{version}.0", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manifests_validate_strictly_against_the_kubernetes_schemas() -> None:
    assert len(MANIFESTS) >= 4
    result = validate(MINIMUM, MANIFESTS)
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


def test_the_kustomization_lists_every_manifest_and_they_validate_from_the_minimum() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = [FOLDER / name for name in kustomization["resources"]]
    assert sorted(resources) == MANIFESTS  # kubectl apply -k applies every file, once
    assert validate(MINIMUM, resources).returncode == 0
    # The version below has no `sleep` handler at all: the minimum is not set too low by
    # accident (the validator ships no 1.29 schemas).
    older = validate("1.28", resources)
    assert older.returncode != 0
    assert "sleep" in older.stdout + older.stderr
    readme = (ROOT / "README.md").read_text()
    assert f"Kubernetes {MINIMUM} or later" in readme
    assert f"Kubernetes {MINIMUM} or later" in KUSTOMIZATION.read_text()
    assert "kubectl apply -k deploy/kubernetes" in readme


def test_the_secret_the_deployment_reads_is_the_one_the_documented_line_creates() -> None:
    documents = {d["kind"]: d for m in MANIFESTS for d in yaml.safe_load_all(m.read_text())}
    (env,) = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env["name"] == "WSBALANCER_ADMIN__TOKEN"
    ref = env["valueFrom"]["secretKeyRef"]
    line = f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}="
    assert line in (ROOT / "README.md").read_text()
    assert line in KUSTOMIZATION.read_text()
