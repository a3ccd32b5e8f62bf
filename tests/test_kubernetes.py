"""The Kubernetes manifests: valid for the API (kubernetes-validate, strict) from the
minimum version the README names, all listed in the kustomization, and the configuration they
carry is one the balancer accepts, with a grace period longer than the drain. The echo
backends' preStop hook (echo.yaml) names its backend as DNS discovery does, reaches every
balancer with the token, and, run against a real balancer, evacuates and waits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from wsbalancer.config import load
from wsbalancer.config.discovery import backend_for
from wsbalancer.devtools.processes import (
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = FOLDER / "kustomization.yaml"
MANIFESTS = sorted(m for m in FOLDER.glob("*.yaml") if m != KUSTOMIZATION)
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
# The oldest Kubernetes the manifests are for: the preStop `sleep` action is beta and on by
# default from 1.30 (alpha behind a feature gate in 1.29).
MINIMUM = "1.30"


def documents(name: str = "wsbalancer") -> dict[str, Any]:
    """The objects named `name` in the manifests, by kind."""
    return {
        d["kind"]: d
        for m in MANIFESTS
        for d in yaml.safe_load_all(m.read_text())
        if d["metadata"]["name"] == name
    }


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
    found = documents()
    config_file = tmp_path / "wsbalancer.yaml"
    config_file.write_text(found["ConfigMap"]["data"]["wsbalancer.yaml"])
    config = load(str(config_file), environ={})
    assert [b.id for b in config.backends] == ["chat-0", "chat-1", "chat-2"]
    pod = found["Deployment"]["spec"]["template"]["spec"]
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
    found = documents()
    text = found["ConfigMap"]["data"]["wsbalancer.yaml"]
    assert "workers" in yaml.safe_load(text)
    config_file = tmp_path / "wsbalancer.yaml"
    config_file.write_text(text)
    config = load(str(config_file), environ={})
    cpu = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    requested = cpu["requests"]["cpu"]
    cores = int(requested[:-1]) / 1000 if requested.endswith("m") else float(requested)
    assert config.workers <= max(1, round(cores))
    pod = found["Deployment"]["spec"]["template"]["spec"]
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
    found = documents()
    (env,) = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env["name"] == "WSBALANCER_ADMIN__TOKEN"
    ref = env["valueFrom"]["secretKeyRef"]
    line = f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}="
    assert line in (ROOT / "README.md").read_text()
    assert line in KUSTOMIZATION.read_text()


# --- echo.yaml: backends whose preStop hook evacuates them -----------------------------------


def _echo() -> tuple[dict[str, Any], dict[str, str]]:
    """The echo backends' pod spec and its container's plain environment."""
    pod = documents("echo")["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    return pod, env


def _hook(tmp_path: Path) -> Path:
    script = tmp_path / "evacuate.sh"
    script.write_text(documents("echo-prestop")["ConfigMap"]["data"]["evacuate.sh"])
    return script


def _echo_pool(tmp_path: Path) -> Any:
    config_file = tmp_path / "wsbalancer.yaml"
    config_file.write_text(documents()["ConfigMap"]["data"]["wsbalancer.yaml"])
    config = load(str(config_file), environ={})
    (route,) = [r for r in config.routes if r.pool == "echo"]
    return next(p for p in config.pools if p.pool_name == route.pool)


def test_the_prestop_hook_names_its_backend_as_dns_discovery_does(tmp_path: Path) -> None:
    pod, env = _echo()
    pool = _echo_pool(tmp_path)
    (source,) = pool.discovery
    # The pool discovers the Deployment's headless Service, at the port the pods serve.
    service = documents("echo")["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert source.name == f"{service['metadata']['name']}.default.svc.cluster.local"
    assert (
        service["spec"]["selector"]
        == documents("echo")["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    assert (
        int(env["BACKEND_PORT"]) == source.port == pod["containers"][0]["ports"][0]["containerPort"]
    )
    for pod_ip in ("10.244.1.17", "fd00:10:244::1a"):
        printed = subprocess.run(
            ["sh", str(_hook(tmp_path)), "--print-id"],
            env={"PATH": "/usr/bin:/bin", "POD_IP": pod_ip, "BACKEND_PORT": env["BACKEND_PORT"]},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        discovered = backend_for(source, pod_ip, source.port, pool.metric_path, source.name)
        assert printed == discovered.id


def test_the_prestop_hook_reaches_every_balancer_with_the_token_in_time() -> None:
    pod, env = _echo()
    container = pod["containers"][0]
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert f"{mounts['hook']}/evacuate.sh" in hook[-1]
    assert volumes["hook"]["configMap"]["name"] == "echo-prestop"
    # Bounded: the hook gives up before the kubelet's grace period runs out.
    assert int(env["DEADLINE"]) + 5 <= pod["terminationGracePeriodSeconds"]
    # Every balancer pod, through a headless Service on the admin port...
    admin_pods = documents("wsbalancer-admin-pods")["Service"]["spec"]
    balancer = documents()["Deployment"]["spec"]
    assert admin_pods["clusterIP"] == "None"
    assert admin_pods["selector"] == balancer["selector"]["matchLabels"]
    assert env["BALANCERS"] == "wsbalancer-admin-pods.default.svc.cluster.local"
    ports = {
        p["name"]: p["containerPort"]
        for p in balancer["template"]["spec"]["containers"][0]["ports"]
    }
    assert int(env["ADMIN_PORT"]) == ports[admin_pods["ports"][0]["targetPort"]]
    # ... with the token the balancers read.
    (token,) = [e for e in container["env"] if e["name"] == "WSBALANCER_TOKEN"]
    (theirs,) = balancer["template"]["spec"]["containers"][0]["env"]
    assert token["valueFrom"] == theirs["valueFrom"]
    # The pod's read-only root leaves the hook a writable /tmp (mktemp).
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]


def _tools_without_curl(folder: Path) -> str:
    """A PATH with what the hook uses but curl, so that it takes its wget branch."""
    folder.mkdir()
    for tool in ("sh", "wget", "getent", "awk", "sort", "tr", "sed", "mktemp", "date", "rm"):
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    for tool in ("cat", "grep", "sleep"):
        (folder / tool).symlink_to(shutil.which(tool) or tool)
    return str(folder)


@pytest.mark.slow  # three processes
def test_the_prestop_hook_evacuates_its_backend_and_waits_until_it_is_done(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    hook = _hook(tmp_path)
    token = "hook-t0ken"
    with processes() as children, ExitStack() as sessions:
        ports = [free_port(), free_port()]
        for port in ports:
            spawn_demo_backend(children, port)
        port, admin = free_port(), free_port()
        spawn_balancer(
            children,
            port,
            admin,
            [f"ws://127.0.0.1:{p}" for p in ports],  # ids 127.0.0.1:PORT, as discovery's
            [f"admin.token={token}", "balancing.poll_interval=0.2s", "log.level=warn"],
        )
        url = f"ws://127.0.0.1:{port}/echo"
        clients = [sessions.enter_context(connect(url, compression=None)) for _ in range(4)]

        def backend(p: int) -> Any:
            request = urllib.request.Request(
                f"http://127.0.0.1:{admin}/api/backends/127.0.0.1:{p}",
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())

        def run_hook(pod_ip: str, backend_port: int, path: str) -> str:
            env = {
                "PATH": path,
                "POD_IP": pod_ip,
                "BACKEND_PORT": str(backend_port),
                "BALANCERS": "127.0.0.1",
                "ADMIN_PORT": str(admin),
                "WSBALANCER_TOKEN": token,
                "DEADLINE": "30",
            }
            done = subprocess.run(
                ["sh", str(hook)], env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        wait_until(lambda: all(backend(p)["localSessions"] for p in ports), "sessions on both")
        with_curl, with_wget = os.environ["PATH"], _tools_without_curl(tmp_path / "bin")
        for k, (evacuated, path) in enumerate([(ports[0], with_curl), (ports[1], with_wget)]):
            if k:  # the first one restarted meanwhile: back in rotation
                urllib.request.urlopen(
                    urllib.request.Request(
                        f"http://127.0.0.1:{admin}/api/backends/127.0.0.1:{ports[0]}/enable",
                        data=b"",
                        headers={"Authorization": f"Bearer {token}"},
                    ),
                    timeout=5,
                ).close()
            had = backend(evacuated)["localSessions"]
            assert had > 0
            out = run_hook("127.0.0.1", evacuated, path)
            assert out.strip() == f"evacuated 127.0.0.1:{evacuated}"
            doc = backend(evacuated)  # what the hook waited for
            assert doc["draining"] and doc["localSessions"] == 0
            assert doc["evacuation"]["migrated"] == doc["evacuation"]["sessions"] == had
            for i, ws in enumerate(clients):  # every client still in its session
                ws.send(f"{k}:{i}")
                assert ws.recv(timeout=10) == f"{k}:{i}"
        # A backend no balancer knows (404): nothing to wait for.
        for path in (with_curl, with_wget):
            assert run_hook("127.0.0.2", 9001, path).strip() == "evacuated 127.0.0.2:9001"
