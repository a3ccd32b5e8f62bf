"""The container image, checked statically (no Docker engine here): the Dockerfile runs as a
non-root user, stops with SIGTERM, health-checks /readyz on the admin port the shipped
ConfigMap uses, reads its configuration where the Deployment mounts it, carries the version
the manifests name; and the build context its .dockerignore lets through builds the wheel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

import wsbalancer
from wsbalancer.config import load

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, "a continuation line ends the file"
    return result


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; the shell form is not used here."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for k, arguments in stage if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def kubernetes_documents() -> dict[str, Any]:
    """The balancer's own manifests by kind (the example backends have a ConfigMap and a
    Deployment of their own)."""
    found: dict[str, Any] = {}
    for m in sorted(KUBERNETES.glob("*.yaml")):
        for d in yaml.safe_load_all(m.read_text()):
            if d["kind"] not in found or d["metadata"].get("name") == "wsbalancer":
                found[d["kind"]] = d
    return found


def version() -> str:
    return wsbalancer.__version__  # setup.cfg reads it: version = attr: wsbalancer.__version__


def test_the_image_runs_as_the_deployments_non_root_user_and_stops_with_sigterm() -> None:
    stage = final_stage(ROOT / "Dockerfile")
    user = one(stage, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    pod = kubernetes_documents()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert one(stage, "STOPSIGNAL") == "SIGTERM"
    # Read-only root: the build writes Twisted's plugin cache, and nothing writes bytecode.
    build = instructions(ROOT / "Dockerfile")[: len(instructions(ROOT / "Dockerfile")) - len(stage)]
    assert any(k == "RUN" and "twistd wsbalancer --help" in a for k, a in build)
    assert "PYTHONDONTWRITEBYTECODE=1" in one(stage, "ENV")


def test_the_healthcheck_asks_readyz_on_the_admin_port_of_the_shipped_config(
    tmp_path: Path,
) -> None:
    stage = final_stage(ROOT / "Dockerfile")
    healthcheck = one(stage, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    probe = " ".join(exec_form(command))
    (url,) = re.findall(r"http://[^'\" ]+", probe)
    config_file = tmp_path / "wsbalancer.yaml"
    config_file.write_text(kubernetes_documents()["ConfigMap"]["data"]["wsbalancer.yaml"])
    config = load(str(config_file), environ={})
    admin_port = int(config.admin_listen.split(":")[1])
    assert url == f"http://127.0.0.1:{admin_port}/readyz"
    # The port is the one the Deployment's probes name and the image exposes.
    container = kubernetes_documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == admin_port
    assert str(admin_port) in one(stage, "EXPOSE").split()


def test_the_command_reads_the_config_where_the_deployment_mounts_the_configmap() -> None:
    command = exec_form(one(final_stage(ROOT / "Dockerfile"), "CMD"))
    assert command[:5] == ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "wsbalancer"]
    config_path = Path(command[command.index("--config") + 1])
    documents = kubernetes_documents()
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "command" not in container and "args" not in container  # the image's CMD runs
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [
        m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]
    ]  # the one ConfigMap volume
    assert volumes[mount["name"]]["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    assert str(config_path.parent) == mount["mountPath"]
    assert config_path.name in documents["ConfigMap"]["data"]


def test_the_image_tag_is_the_package_version_everywhere_it_is_named() -> None:
    tag = f"wsbalancer:{version()}"
    images = [
        c["image"]
        for m in sorted(KUBERNETES.glob("*.yaml"))
        for d in yaml.safe_load_all(m.read_text())
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images and set(images) == {tag}
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "wsbalancer", "newTag": version()}]
    build_line = f"docker build -t {tag} ."
    assert build_line in (ROOT / "Dockerfile").read_text()
    assert build_line in (ROOT / "README.md").read_text()


def dockerignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    excluded = False
    for negated, pattern in patterns:
        regex = re.escape(pattern.rstrip("/")).replace(r"\*\*/", "(.*/)?")  # any depth
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def test_the_build_context_left_by_dockerignore_builds_the_wheel(tmp_path: Path) -> None:
    patterns = [
        (line.startswith("!"), line.removeprefix("!"))
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked
    context = tmp_path / "context"
    for relative in tracked:
        if not dockerignored(relative, patterns) and (ROOT / relative).is_file():
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, context / relative)
    assert not (context / "tests").exists() and not (context / "bench").exists()
    assert (context / "twisted" / "plugins" / "wsbalancer_plugin.py").is_file()
    # The Dockerfile's `pip install .` of the context copied to its WORKDIR, with the
    # dependencies left out (they are installed here already).
    build = instructions(ROOT / "Dockerfile")
    assert ("COPY", ". .") in build
    assert any(k == "RUN" and "pip install --no-cache-dir . " in a + " " for k, a in build)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "wheel"), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("wsbalancer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"twisted/plugins/wsbalancer_plugin.py", "wsbalancer/service/tap.py"} <= names
    assert "wsbalancer/admin/dashboard.html" in names
