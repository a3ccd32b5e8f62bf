"""Test set-up: Twisted runs on the asyncio loop so real asyncio clients (websockets) and
Twisted code share one reactor; every test waits on events with a timeout, never a sleep.

The balancer's Autobahn and Twisted trims (`wsbalancer.wire.patches.install()`) are installed
for the whole session, as every balancer process has them (build_service installs them
too, but then which tests ran with them would depend on the order). scripts/test.sh also
runs the data-path integration tests (relay, splice, failover, ...) on the epoll reactor
(`--reactor=default`), the one production runs on, where install() puts the lean main loop
under the whole run; there the websockets clients run on an asyncio loop of their own
(tests/threaded_aio.py)."""

import os
import sys

import pytest

# The in-memory session rig's fixtures (`reactor`, `rig`), for every unit test module.
pytest_plugins = ("tests.rig",)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_epoll_reactor(config: pytest.Config) -> bool:
    """Whether this run is pytest-twisted's default reactor: epoll, on Linux."""
    return config.getoption("reactor", "default") == "default" and sys.platform.startswith("linux")


def pytest_configure(config: pytest.Config) -> None:
    # The output folder for reports and screenshots the tests leave behind.
    os.makedirs(os.path.join(ROOT, "test-output"), exist_ok=True)
    from wsbalancer.wire import patches

    patches.install()  # before pytest-twisted first runs the reactor: the main loop is ours


def pytest_sessionstart(session: pytest.Session) -> None:
    # Before any test module is collected (they import `aio` from helpers by name), and
    # after pytest-twisted installed the reactor in pytest_configure (helpers imports it).
    if on_epoll_reactor(session.config):
        from . import helpers, threaded_aio

        helpers.aio = threaded_aio.aio  # type: ignore[assignment]


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (its venv has the package and twistd)."""
    return sys.executable
