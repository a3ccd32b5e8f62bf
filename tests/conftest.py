"""Test set-up: Twisted runs on the asyncio loop so real asyncio clients (websockets) and
Twisted code share one reactor; every test waits on events with a timeout, never a sleep.

The balancer's Autobahn and Twisted trims (`wsbalancer.wire.lean.install()`) are installed
for the whole session, as every balancer process has them (build_service installs them
too, but then which tests ran with them would depend on the order)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config: pytest.Config) -> None:
    # The output folder for reports and screenshots the tests leave behind.
    os.makedirs(os.path.join(ROOT, "test-output"), exist_ok=True)
    from wsbalancer.wire import lean

    lean.install()  # before pytest-twisted first runs the reactor: the main loop is ours


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (its venv has the package and twistd)."""
    return sys.executable
