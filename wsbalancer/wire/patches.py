"""The patches of Autobahn's and Twisted's own modules, applied by `install()` only.

The trims in `wsbalancer.wire.lean` that replace module globals and class attributes change
every connection of the process, so importing wsbalancer does none of that: `install()`
does, once, as the service assembly (`build_service`) and the benchmarks call it. Each
patch group first checks that what it replaces, and what the replacement relies on, is
there with the shape it was written against; a group that does not fit (another Autobahn
or Twisted than the tested ones, see setup.cfg) is skipped whole, with one warning line,
and the process runs with the libraries' own code for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wsbalancer.observe import logs
from wsbalancer.wire.lean import _lazy, _LazyFormat, _ReactorLog, create_xor_masker

_log = logs.logger("wsbalancer.lean")

# --- install(): the patches of Autobahn's and Twisted's own modules ------------------------
#
# Every patch group names what it replaces and what its replacement relies on ("needs"),
# each with the shape it was written against. `install()` checks all of a group's needs
# before touching anything, so a group is either applied whole or not at all.


@dataclass(frozen=True)
class Need:
    """One name a patch group replaces or relies on: `owner` is a dotted module path, with
    `:Class` for a class attribute; `fits` tells whether the value has the expected shape,
    which `shape` says in words for the warning line."""

    owner: str
    name: str
    fits: Callable[[Any], bool]
    shape: str


@dataclass(frozen=True)
class PatchGroup:
    name: str
    needs: tuple[Need, ...]
    apply: Callable[[], None]


@dataclass(frozen=True)
class Installation:
    """What `install()` did: the groups applied, and the ones skipped with why."""

    applied: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)


def resolve(owner: str) -> Any:
    """The module (`a.b`) or class (`a.b:Class`) a `Need` names; ImportError or
    AttributeError when the library has no such thing."""
    module_name, _, class_name = owner.partition(":")
    target: Any = importlib.import_module(module_name)
    if class_name:
        target = getattr(target, class_name)
    return target


def _is(dotted: str) -> Callable[[Any], bool]:
    """`fits` for a name that must still be the library's own object `dotted`
    (`module:attribute.path`)."""
    module_name, _, path = dotted.partition(":")

    def fits(value: Any) -> bool:
        target: Any = importlib.import_module(module_name)
        for part in path.split("."):
            target = getattr(target, part)
        return value is target

    return fits


def _callable(value: Any) -> bool:
    return callable(value)


def _apply_debug_pformat() -> None:
    import autobahn.websocket.protocol as autobahn_protocol

    autobahn_protocol.pformat = _LazyFormat  # type: ignore[assignment]


def _apply_debug_highlight() -> None:
    import autobahn.twisted.websocket as autobahn_twisted_websocket
    import autobahn.websocket.protocol as autobahn_protocol

    for module in (autobahn_protocol, autobahn_twisted_websocket):
        for name in ("hltype", "hlval"):
            setattr(module, name, _lazy(getattr(module, name)))


def _apply_small_frame_masker() -> None:
    import autobahn.websocket.protocol as autobahn_protocol

    autobahn_protocol.create_xor_masker = create_xor_masker


def _apply_reactor_log() -> None:
    from twisted.internet import epollreactor

    epollreactor.log = _ReactorLog()  # type: ignore[assignment]


def _apply_epoll_main_loop() -> None:
    from twisted.internet import epollreactor

    from wsbalancer.wire import reactor_loop

    epollreactor.EPollReactor.mainLoop = reactor_loop.main_loop  # type: ignore[method-assign,assignment]


_EPOLL = "twisted.internet.epollreactor:EPollReactor"

GROUPS: tuple[PatchGroup, ...] = (
    PatchGroup(
        "lazy-debug-pformat",
        (Need("autobahn.websocket.protocol", "pformat", _is("pprint:pformat"), "pprint.pformat"),),
        _apply_debug_pformat,
    ),
    PatchGroup(
        "lazy-debug-highlight",
        tuple(
            Need(module, name, _is(f"autobahn.util:{name}"), f"autobahn.util.{name}")
            for module in ("autobahn.websocket.protocol", "autobahn.twisted.websocket")
            for name in ("hltype", "hlval")
        ),
        _apply_debug_highlight,
    ),
    PatchGroup(
        "small-frame-masker",
        (
            Need(
                "autobahn.websocket.protocol",
                "create_xor_masker",
                _is("autobahn.websocket.xormasker:create_xor_masker"),
                "autobahn.websocket.xormasker.create_xor_masker",
            ),
        ),
        _apply_small_frame_masker,
    ),
    PatchGroup(
        "reactor-log",
        (
            Need(
                "twisted.internet.epollreactor",
                "log",
                _is("twisted.python:log"),
                "the twisted.python.log module",
            ),
            Need("twisted.python.log", "callWithLogger", _callable, "a function"),
            Need("twisted.python.log", "err", _callable, "a function"),
        ),
        _apply_reactor_log,
    ),
    PatchGroup(
        "epoll-main-loop",
        (
            Need(
                _EPOLL,
                "mainLoop",
                _is("twisted.internet.base:ReactorBase.mainLoop"),
                "ReactorBase.mainLoop (Twisted's generic loop, which ours reproduces)",
            ),
            Need(_EPOLL, "doIteration", _is(f"{_EPOLL}.doPoll"), "EPollReactor.doPoll"),
            *(
                Need(_EPOLL, name, _callable, "a method")
                for name in (
                    "runUntilCurrent",
                    "seconds",
                    "_doReadOrWrite",
                    "_disconnectSelectable",
                    "_insertNewDelayedCalls",
                )
            ),
            Need(
                "twisted.internet.posixbase",
                "_NO_FILEDESC",
                lambda value: isinstance(value, BaseException),
                "an exception instance",
            ),
            Need("twisted.python.log", "err", _callable, "a function"),
        ),
        _apply_epoll_main_loop,
    ),
)


def _misfit(need: Need) -> str | None:
    """Why `need` does not hold in the installed libraries, or None when it does."""
    try:
        owner = resolve(need.owner)
    except (ImportError, AttributeError) as e:
        return f"{need.owner.replace(':', '.')} is not there ({e})"
    where = f"{need.owner.replace(':', '.')}.{need.name}"
    if not hasattr(owner, need.name):
        return f"{where} is not there"
    try:
        fits = need.fits(getattr(owner, need.name))
    except (ImportError, AttributeError):
        fits = False
    return None if fits else f"{where} is not {need.shape}"


def _versions() -> str:
    from importlib.metadata import version

    return f"Twisted {version('twisted')}, Autobahn {version('autobahn')}"


_installation: Installation | None = None


def install() -> Installation:
    """Apply every patch group that fits the installed Autobahn and Twisted; once per
    process (a second call does nothing and returns the first call's `Installation`).

    A group any of whose needs is missing or of another shape is skipped whole, with one
    warning line naming the first misfit; the libraries' own code then runs for it."""
    global _installation
    if _installation is not None:
        return _installation
    applied: list[str] = []
    skipped: dict[str, str] = {}
    for group in GROUPS:
        why = next((m for m in map(_misfit, group.needs) if m is not None), None)
        if why is None:
            group.apply()
            applied.append(group.name)
            continue
        skipped[group.name] = why
        _log.warn(
            "not installing the {group} trim: {why} ({versions}; setup.cfg names the tested"
            " ones), the library's own code runs instead",
            group=group.name,
            why=why,
            versions=_versions(),
        )
    _installation = Installation(tuple(applied), skipped)
    _log.debug("Autobahn/Twisted trims installed: {groups}", groups=", ".join(applied) or "none")
    return _installation


def installation() -> Installation | None:
    """What `install()` did in this process, or None before it was called."""
    return _installation
