"""Shared fixtures: the example line, shared/ data, and a leak check on every test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config import LineConfig, load_config
from sim_hardware.broker import Mosquitto, mosquitto_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "deploy" / "line.example.toml"
SHARED = ROOT.parent / "shared"


@pytest.fixture
def example_config() -> LineConfig:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A real broker on a free loopback port for the whole run (restarting tests make their own)."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (scripts/setup installs it)")
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    """A broker of this test's own, for a test that restarts it."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (scripts/setup installs it)")
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of ours running (decode pools, journal writers)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and t.name.startswith(("decode", "journal", "archive", "camera"))]
    for t in leaked:
        t.join(timeout=2)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"
