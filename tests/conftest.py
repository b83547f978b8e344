"""Shared fixtures: the example line, shared/ data, and a leak check on every test.

The leak check fails a test that leaves behind a thread it started, a file descriptor it
opened (fds of fixtures scoped wider than the test, such as the shared broker, are set up
before it and so are allowed), or, for a pytest-asyncio test, a task still pending on its
loop when the test returns. A test whose leak comes from code under repair may carry
``@pytest.mark.leaks_known("why")``: its leaks are then reported as a warning, not a failure.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from controller.clock import RealClock
from controller.config import LineConfig, load_config
from sim_hardware.broker import Mosquitto, mosquitto_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "deploy" / "line.example.toml"
SHARED = ROOT.parent / "shared"

#: How long a thread, fd or task may take to go away after the test is done with it.
LEAK_GRACE_S = 2.0
_SETTLE_STEP_S = 0.02


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


# --- leak checks -----------------------------------------------------------------------------


class LeakedTasks(AssertionError):
    """A pytest-asyncio test returned with tasks of its own still pending on its loop."""


def _open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each is open on."""
    fd_dir = f"/proc/{os.getpid()}/fd"
    fds = {}
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed meanwhile, such as the listing's own fd
        if target != fd_dir:
            fds[int(name)] = target
    return fds


def _settle(leaks: Callable[[], list[str]]) -> list[str]:
    """Ask ``leaks`` until it finds none or the grace is over; what it found last."""
    pause = threading.Event()
    for _ in range(round(LEAK_GRACE_S / _SETTLE_STEP_S)):
        found = leaks()
        if not found:
            return []
        pause.wait(_SETTLE_STEP_S)
    return leaks()


def _report(item: pytest.Item, leaks: list[str], fail: Callable[[str], object]) -> None:
    """Fail with the leaks, or only warn of them for a test marked ``leaks_known``."""
    if not leaks:
        return
    text = "; ".join(leaks)
    known = item.get_closest_marker("leaks_known")
    if known is None:
        fail(text)
        return
    reason = known.args[0] if known.args else "no reason given"
    warnings.warn(f"known leak ({reason}): {text}", pytest.PytestWarning, stacklevel=1)


def _fail_leaked(text: str) -> None:
    pytest.fail(f"the test leaked: {text}", pytrace=False)


def _fail_tasks(text: str) -> None:
    raise LeakedTasks(f"the test left tasks pending: {text}")


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread running or a file descriptor open."""
    threads_before = set(threading.enumerate())
    fds_before = set(_open_fds().items())
    yield

    def threads_left() -> list[str]:
        return [f"thread {t.name!r}{' (daemon)' if t.daemon else ''}"
                for t in threading.enumerate() if t not in threads_before and t.is_alive()]

    def fds_left() -> list[str]:
        return [f"fd {fd} -> {target}" for fd, target in sorted(_open_fds().items())
                if (fd, target) not in fds_before]

    threads = _settle(threads_left)
    with warnings.catch_warnings(record=True) as unclosed:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()  # what only the collector would close: closed now, so it is seen here
    collected = [f"collected unclosed: {w.message}" for w in unclosed
                 if issubclass(w.category, ResourceWarning)]
    _report(request.node, threads + collected + _settle(fds_left), _fail_leaked)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Fail a pytest-asyncio test that returns with tasks it started still pending."""
    runners = [v for v in pyfuncitem.funcargs.values() if isinstance(v, asyncio.Runner)]
    if not runners:
        return (yield)
    loop = runners[0].get_loop()
    before = asyncio.all_tasks(loop)  # the fixtures' tasks (they end them at teardown)
    result = yield
    if loop.is_closed():
        return result

    async def pending() -> list[str]:
        clock = RealClock()
        deadline = clock.now() + LEAK_GRACE_S
        while True:
            me = asyncio.current_task()
            left = [t for t in asyncio.all_tasks() if t is not me and t not in before]
            if not left or clock.now() >= deadline:
                return [f"task {t.get_name()!r} ({t.get_coro()!r})" for t in left]
            await clock.sleep(_SETTLE_STEP_S)

    _report(pyfuncitem, runners[0].run(pending()), _fail_tasks)
    return result
