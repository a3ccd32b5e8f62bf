"""The patches policy: importing wsbalancer changes nothing of Autobahn or Twisted;
`patches.install()` applies every patch group once, skips a group that does not fit the
installed libraries whole (one warning line), and every way the balancer runs installs
them. Each case runs in a fresh interpreter: this one has them installed (conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from typing import Any

from wsbalancer.devtools.processes import clean_environment, free_port, processes, wait_until


def _run(script: str) -> Any:
    """Run `script` in a fresh interpreter; what it printed last, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environment(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# The library modules importing all of wsbalancer loads (the reactor module excepted: a
# wsbalancer import that installed a reactor would be a finding of its own).
LIBRARY_MODULES = """
    import importlib, json, pkgutil, sys
    import wsbalancer

    def import_everything():
        names = [m.name for m in pkgutil.walk_packages(wsbalancer.__path__, "wsbalancer.")]
        for name in names:
            importlib.import_module(name)
        return names

    def library(name):
        return name.split(".")[0] in ("autobahn", "twisted", "txaio")
"""


def test_importing_every_wsbalancer_module_patches_nothing() -> None:
    loaded = _run(
        LIBRARY_MODULES
        + """
    names = import_everything()
    print(json.dumps({"wsbalancer": names, "library": sorted(
        name for name in sys.modules if library(name) and name != "twisted.internet.reactor"
    ), "reactor": "twisted.internet.reactor" in sys.modules}))
    """
    )
    assert len(loaded["wsbalancer"]) > 40 and not loaded["reactor"]
    found = _run(
        LIBRARY_MODULES
        + f"""
    for name in {loaded["library"]!r}:
        importlib.import_module(name)

    def snapshot():
        # every module global and class attribute of Autobahn, Twisted and txaio, by identity
        seen = {{}}
        for name, module in list(sys.modules.items()):
            if not library(name) or module is None:
                continue
            for key, value in list(vars(module).items()):
                seen[(name, key)] = value
                if isinstance(value, type) and value.__module__ == name:
                    for attr, member in list(vars(value).items()):
                        seen[(name, key + "." + attr)] = member
        return seen

    before = snapshot()
    import_everything()
    after = snapshot()
    changed = sorted(
        ".".join(key) for key, value in before.items()
        if key in after and after[key] is not value
    )
    from wsbalancer.wire import lean, patches
    misfits = [
        (need.owner, need.name, patches._misfit(need))
        for group in patches.GROUPS for need in group.needs if patches._misfit(need)
    ]
    print(json.dumps({{"changed": changed, "misfits": misfits,
                      "installed": patches.installation() is not None}}))
    """
    )
    assert found == {"changed": [], "misfits": [], "installed": False}


# What install() replaces, as a script prints it: the name of each current value.
PATCHED = """
    import json, pprint
    import autobahn.twisted.websocket as tw
    import autobahn.util
    import autobahn.websocket.protocol as ap
    from autobahn.websocket import xormasker
    from twisted.internet import base, epollreactor
    from twisted.python import log

    def state():
        return {
            "pformat": ap.pformat is pprint.pformat,
            "hltype": ap.hltype is autobahn.util.hltype,
            "hlval": ap.hlval is autobahn.util.hlval,
            "tw.hltype": tw.hltype is autobahn.util.hltype,
            "tw.hlval": tw.hlval is autobahn.util.hlval,
            "create_xor_masker": ap.create_xor_masker is xormasker.create_xor_masker,
            "epollreactor.log": epollreactor.log is log,
            "mainLoop": epollreactor.EPollReactor.mainLoop is base.ReactorBase.mainLoop,
        }  # True: still the library's own
"""


def test_install_applies_every_group_once() -> None:
    found = _run(
        PATCHED
        + """
    from wsbalancer.wire import lean, patches, reactor_loop
    before = state()
    first = patches.install()
    after = state()
    values = [ap.pformat, ap.hltype, ap.hlval, tw.hltype, ap.create_xor_masker, epollreactor.log]
    second = patches.install()
    again = [ap.pformat, ap.hltype, ap.hlval, tw.hltype, ap.create_xor_masker, epollreactor.log]
    print(json.dumps({
        "before": before, "after": after, "applied": first.applied, "skipped": first.skipped,
        "same": second is first and patches.installation() is first,
        "untouched": all(a is b for a, b in zip(values, again)),
        "ours": [
            ap.pformat is lean._LazyFormat,
            ap.create_xor_masker is lean.create_xor_masker,
            type(epollreactor.log) is lean._ReactorLog,
            epollreactor.EPollReactor.mainLoop is reactor_loop.main_loop,
            str(ap.hltype(len)) == str(autobahn.util.hltype(len)),  # the same text, later
        ],
    }))
    """
    )
    assert all(found["before"].values())
    assert not any(found["after"].values())
    assert found["applied"] == [
        "lazy-debug-pformat",
        "lazy-debug-highlight",
        "small-frame-masker",
        "reactor-log",
        "epoll-main-loop",
    ]
    assert found["skipped"] == {}
    assert found["same"] and found["untouched"] and all(found["ours"])


def test_a_name_that_does_not_fit_skips_its_whole_group_with_one_warning() -> None:
    found = _run(
        PATCHED
        + """
    from twisted.logger import globalLogPublisher
    warnings = []
    globalLogPublisher.addObserver(
        lambda event: warnings.append(event) if event.get("log_namespace") == "wsbalancer.lean"
        and event["log_level"].name == "warn" else None
    )
    # Another Autobahn and Twisted, as install() would see them: a masker factory that is
    # not xormasker's, a highlight function gone from one of the two modules (the other
    # module's must stay untouched), and a reactor method the lean loop calls gone (the
    # group's first need, mainLoop, still fits).
    ap.create_xor_masker = lambda mask, length=None: None
    del tw.hlval
    del base.ReactorBase._insertNewDelayedCalls
    from twisted.logger import formatEvent
    from wsbalancer.wire import lean, patches
    installed = patches.install()
    tw.hlval = autobahn.util.hlval
    print(json.dumps({
        "applied": installed.applied, "skipped": installed.skipped, "state": state(),
        "warnings": [formatEvent(event) for event in warnings],
    }))
    """
    )
    assert found["applied"] == ["lazy-debug-pformat", "reactor-log"]
    assert found["skipped"] == {
        "lazy-debug-highlight": "autobahn.twisted.websocket.hlval is not there",
        "small-frame-masker": "autobahn.websocket.protocol.create_xor_masker is not "
        "autobahn.websocket.xormasker.create_xor_masker",
        "epoll-main-loop": "twisted.internet.epollreactor.EPollReactor._insertNewDelayedCalls "
        "is not there",
    }
    state = found["state"]
    assert state["hltype"] and state["hlval"] and state["tw.hltype"]  # no half-patched group
    assert state["mainLoop"] and not state["pformat"] and not state["epollreactor.log"]
    assert len(found["warnings"]) == 3
    for warning, (group, why) in zip(found["warnings"], found["skipped"].items(), strict=True):
        assert "\n" not in warning
        assert warning.startswith(f"not installing the {group} trim: {why} (Twisted ")
        assert "the library's own code runs instead" in warning


def test_the_assembly_installs_them() -> None:
    # makeService (twistd, `wsbalancer run`) through build_service (workers, the demo,
    # embedding programs), on a memory reactor.
    found = _run(
        """
    import json
    from twisted.internet.testing import MemoryReactorClock
    from wsbalancer.service import tap
    from wsbalancer.wire import lean, patches

    before = patches.installation()
    options = tap.Options()
    options.parseOptions(["--backend", "ws://127.0.0.1:1"])
    tap.makeService(options, MemoryReactorClock())
    print(json.dumps({"before": before is None, "applied": patches.installation().applied}))
    """
    )
    assert found["before"]
    assert found["applied"][-1] == "epoll-main-loop" and len(found["applied"]) == 5


def test_twistd_and_its_workers_run_with_them() -> None:
    port, admin = free_port(), free_port()
    cmd = [
        sys.executable.rsplit("/", 1)[0] + "/twistd",
        "-n",
        "--pidfile=",
        "wsbalancer",
        "--log-level",
        "debug",
        "--set",
        "workers=2",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--admin-listen",
        f"tcp:{admin}:interface=127.0.0.1",
        "--backend",
        "ws://127.0.0.1:1",
    ]
    lines: list[str] = []
    with processes() as children:
        balancer = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_environment(),
        )
        children.append(balancer)
        reader = threading.Thread(target=lambda: lines.extend(balancer.stdout or ()))
        reader.start()

        def installed() -> list[str]:
            return [line for line in list(lines) if "trims installed: " in line]

        # the master's line and the worker's (workers=2: one beside the master), whose log
        # system is "worker-1"
        found = wait_until(lambda: len(installed()) >= 2 and installed(), "both processes")
        balancer.terminate()
        balancer.wait(20)
        reader.join(10)
    assert sum("[worker-1]" in line for line in found) == 1
    for line in found:
        assert line.rstrip().endswith(
            "trims installed: lazy-debug-pformat, lazy-debug-highlight, small-frame-masker,"
            " reactor-log, epoll-main-loop"
        )
