"""The SQLite order store: answers from its own thread, so a locked order book never stalls
the loop, and the caller's lookup timeout fires on time."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.clock import RealClock, VirtualClock, run_real, run_virtual
from controller.config import OrderStoreConfig
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus
from drivers.orders import open_order_store
from drivers.orders.sqlite import QUERY_COST_S, SqliteOrderStore

LOOKUP_TIMEOUT_S = 0.2

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def _order(code: str, status: OrderStatus = OrderStatus.RELEASED, created: float = 0.0) -> Order:
    return Order(order_id=f"O-{code}", code=code, channel="web", status=status,
                 carrier="DHL", service="std", route="R1", postcode="10115", created_at=created)


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "orders.sqlite"
    SqliteOrderStore(path).add([_order("A1", created=1.0), _order("B2", OrderStatus.HELD, 2.0),
                                _order("C3", created=3.0), _order("D4", created=4.0)])
    return path


def _store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("orders")]


def test_lookups_and_released_answer_from_the_book_and_close_ends_the_thread(
        book: Path) -> None:
    async def main(clock: RealClock) -> None:
        store = SqliteOrderStore(book, clock=clock)
        assert await store.lookup("B2") == _order("B2", OrderStatus.HELD, 2.0)
        assert await store.lookup("Z9") is None
        assert [o.code for o in await store.released(2)] == ["D4", "C3"]
        assert len(_store_threads()) == 1
        await store.close()
        assert _store_threads() == []
        assert await store.lookup("A1") == _order("A1", created=1.0)  # reopens
        await store.close()

    run_real(main)
    assert _store_threads() == []


def test_a_lookup_takes_its_modelled_time_on_the_virtual_clock(book: Path) -> None:
    async def main(clock: VirtualClock) -> float:
        store = SqliteOrderStore(book)  # no clock given: the running loop's, virtual here
        try:
            started = clock.now()
            assert await store.lookup("C3") == _order("C3", created=3.0)
            return clock.now() - started
        finally:
            await store.close()

    assert run_virtual(main) == pytest.approx(QUERY_COST_S)


def test_the_busy_timeout_is_the_configured_lookup_timeout(tmp_path: Path) -> None:
    store = open_order_store(OrderStoreConfig(path=str(tmp_path / "o.sqlite"), timeout_ms=150))
    assert isinstance(store, SqliteOrderStore)
    assert store.timeout_s == pytest.approx(0.15)


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, None])
def test_sqlite_errors_reach_the_caller_as_order_store_errors(
        tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "orders.sqlite"
    if content is None:
        path.mkdir()  # a directory where the file should be
    else:
        path.write_bytes(content)

    async def main(clock: RealClock) -> None:
        store = SqliteOrderStore(path, clock=clock)
        try:
            with pytest.raises(OrderStoreError, match=r"orders\.sqlite"):
                await store.lookup("A1")
        finally:
            await store.close()

    run_real(main)
    with pytest.raises(OrderStoreError):
        SqliteOrderStore(path).add([_order("A1")])


@pytest.fixture
def locked_book(book: Path) -> Iterator[Path]:
    """The order book with another process holding an EXCLUSIVE transaction on it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(book), "30"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield book
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.wallclock
def test_a_locked_book_lets_the_lookup_timeout_fire_on_time_and_never_blocks_the_loop(
        locked_book: Path) -> None:
    async def main(clock: RealClock) -> tuple[list[float], list[float]]:
        store = SqliteOrderStore(locked_book, timeout_s=LOOKUP_TIMEOUT_S, clock=clock)
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(clock.now())
                await clock.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        took: list[float] = []
        try:
            for _ in range(3):  # the next lookups are not stuck behind the first one either
                started = clock.now()
                with pytest.raises((TimeoutError, OrderStoreError)):
                    async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                        await store.lookup("A1")
                took.append(clock.now() - started)
            await clock.sleep(0.05)  # the ticker keeps ticking after the failures too
        finally:
            tick_task.cancel()
            await asyncio.gather(tick_task, return_exceptions=True)
            await store.close()
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        return took, gaps

    took, gaps = run_real(main)
    assert all(t < 0.5 for t in took), took
    assert len(gaps) > 20  # it ticked all along
    assert max(gaps) < 0.1, max(gaps)


def test_the_store_answers_again_once_the_lock_is_gone(book: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(book), "0.3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"

        async def main(clock: RealClock) -> Order | None:
            store = SqliteOrderStore(book, timeout_s=LOOKUP_TIMEOUT_S, clock=clock)
            try:
                with pytest.raises((TimeoutError, OrderStoreError)):
                    async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                        await store.lookup("A1")
                assert await clock.offload(None, holder.wait, 10) == 0  # the lock is gone
                return await store.lookup("A1")
            finally:
                await store.close()

        assert run_real(main) == _order("A1", created=1.0)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
