"""Test set-up: Twisted runs on the asyncio loop so real asyncio clients (websockets) and
Twisted code share one reactor; every test waits on events with a timeout, never a sleep."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config: pytest.Config) -> None:
    # The output folder for reports and screenshots the tests leave behind.
    os.makedirs(os.path.join(ROOT, "test-output"), exist_ok=True)


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (its venv has the package and twistd)."""
    return sys.executable
