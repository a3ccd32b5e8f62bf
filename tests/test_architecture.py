"""The package's layers, checked from the code: every import inside wsbalancer (module
level, under TYPE_CHECKING and inside functions alike) goes to the same floor or one below,
and no set of modules imports itself in a circle. A later change cannot bring one back."""

from __future__ import annotations

import ast
from pathlib import Path

from zope.interface.verify import verifyObject

PACKAGE = Path(__file__).resolve().parent.parent / "wsbalancer"
# Bottom to top. The root package holds only the version; `extensions` is the users' import
# path for the extension points (a re-export, imported by nothing inside).
FLOORS = [
    "observe",
    "config",
    "wire",
    "upstream",
    "relay",
    "admin",
    "service",
    "devtools",
    "extensions",
]
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (any kind of import)."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base)
                    for alias in node.names
                ]
            else:
                continue
            targets |= {t for t in found if t and t.startswith("wsbalancer")}
        targets.discard(name)
        graph[name] = targets
    return graph


def floor(module: str) -> int:
    parts = module.split(".")
    return -1 if len(parts) == 1 else FLOORS.index(parts[1])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_lives_on_a_known_floor() -> None:
    strays = [m for m in import_graph() if len(m.split(".")) > 1 and m.split(".")[1] not in FLOORS]
    assert not strays, f"modules outside the floors {FLOORS}: {strays}"


def test_no_module_imports_a_higher_floor() -> None:
    graph = import_graph()
    upward = [f"{m} -> {t}" for m in sorted(graph) for t in sorted(graph[m]) if floor(t) > floor(m)]
    assert not upward, "imports of a higher floor:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_the_circle_check_sees_type_checking_and_function_level_imports(tmp_path: Path) -> None:
    # The checker itself: a circle closed only under TYPE_CHECKING or inside a function counts.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from wsbalancer.relay.balancer import Balancer\n"
        "def f():\n    from wsbalancer.admin import site\n"
    )
    tree = ast.parse(source)
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names == ["typing", "wsbalancer.relay.balancer", "wsbalancer.admin"]


def test_the_root_package_holds_only_the_version() -> None:
    assert import_graph()["wsbalancer"] == set()
    assert "wsbalancer.extensions" not in set().union(*import_graph().values())


def test_reload_walks_parts_that_provide_ireconfigurable() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wsbalancer.config import load
    from wsbalancer.config.interfaces import IReconfigurable
    from wsbalancer.service.tap import build_service

    config = load(
        environ={},
        overrides=[("listen", "tcp:0:interface=127.0.0.1", "test")],
        backends=["a=ws://127.0.0.1:1"],
    )
    top = build_service(config, MemoryReactorClock())
    assert [type(p).__name__ for p in top.reconfigurables] == [
        "Balancer",
        "LogLevels",
        "PoolDiscovery",
        "BalancerService",
    ]
    for part in top.reconfigurables:
        assert verifyObject(IReconfigurable, part)


def test_the_boundaries_are_provided_as_declared() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wsbalancer.config import load
    from wsbalancer.extensions import MessageHook, SessionListener
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.relay.interfaces import (
        IFleetView,
        IMessageHook,
        IProxyHost,
        ISessionEvents,
        ISessionListener,
    )

    config = load(environ={}, overrides=[], backends=["a=ws://127.0.0.1:1"])
    balancer = Balancer(config, MemoryReactorClock())
    for interface in (ISessionEvents, IFleetView, IProxyHost):
        assert verifyObject(interface, balancer)
    assert verifyObject(ISessionListener, SessionListener())
    assert verifyObject(IMessageHook, MessageHook())
    for listener in balancer.listeners:
        assert verifyObject(ISessionListener, listener)


def test_no_module_or_class_outgrows_a_room() -> None:
    # ~500 lines a module, ~250 a class (a tenth over is "about"): past that, a module holds
    # two concerns and is split by them.
    oversized = []
    for name, (path, _) in sorted(_modules().items()):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            oversized.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES * 1.1:
                    oversized.append(f"{name}.{node.name}: {size} lines")
    assert not oversized, oversized
