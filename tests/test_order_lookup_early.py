"""A parcel's order looked up at its code's first read, so its decision waits on no store.

The real SQLite book on the virtual clock, where each of its queries takes its modelled
time: a decision that takes an early answer takes no time at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.clock import VirtualClock, run_virtual
from controller.config import OrderStoreConfig
from controller.lookup import EARLY_FRESH_S, EARLY_MAX, OrderLookup
from controller.orders import Order, OrderStatus, OrderStore
from controller.parcel import SorterStats
from drivers.orders import open_order_store
from drivers.orders.sqlite import QUERY_COST_S, SqliteOrderStore


def _order(code: str, status: OrderStatus = OrderStatus.RELEASED) -> Order:
    return Order(order_id=f"O-{code}", code=code, channel="web", status=status,
                 carrier="DHL", service="std", route="R1", postcode="10115", created_at=1.0)


class CountingStore:
    """The real store, its lookups counted."""

    def __init__(self, real: OrderStore) -> None:
        self.real = real
        self.asked: list[str] = []

    async def lookup(self, code: str) -> Order | None:
        self.asked.append(code)
        return await self.real.lookup(code)

    async def released(self, limit: int) -> list[Order]:
        return await self.real.released(limit)

    async def close(self) -> None:
        await self.real.close()


@pytest.fixture
def config(tmp_path: Path) -> OrderStoreConfig:
    path = tmp_path / "orders.sqlite"
    SqliteOrderStore(path).add([_order("A1"), _order("B2")])
    return OrderStoreConfig(path=str(path), timeout_ms=200.0, cache_size=0)


def _lookup(config: OrderStoreConfig, clock: VirtualClock) -> tuple[OrderLookup, CountingStore]:
    store = CountingStore(open_order_store(config, clock, create=False))
    return OrderLookup(store, config, SorterStats(), now=clock.now), store


def test_an_order_read_early_answers_the_decision_at_once(config: OrderStoreConfig) -> None:
    async def main(clock: VirtualClock) -> None:
        lookup, store = _lookup(config, clock)
        try:
            lookup.read_early("A1")
            lookup.read_early("A1")  # every frame that reads it says so: asked once
            await clock.sleep(0.05)  # the parcel's next frames
            decided = clock.now()
            assert await lookup.order("A1") == (_order("A1"), "")
            assert clock.now() == decided  # no store round trip in the decision
            assert store.asked == ["A1"]
            asked = clock.now()
            assert await lookup.order("B2") == (_order("B2"), "")  # not read early: asked now
            assert clock.now() - asked == pytest.approx(QUERY_COST_S)
            assert await lookup.order("A1") == (_order("A1"), "")  # taken once: asked again
            assert store.asked == ["A1", "B2", "A1"]
        finally:
            await lookup.aclose()
            await store.close()

    run_virtual(main)


def test_an_early_answer_grown_stale_is_asked_for_again(config: OrderStoreConfig) -> None:
    """An order held after its code was read early is still held when its parcel settles
    later than EARLY_FRESH_S: the decision asks the store again."""
    async def main(clock: VirtualClock) -> None:
        lookup, store = _lookup(config, clock)
        importer = SqliteOrderStore(Path(config.path))
        try:
            lookup.read_early("A1")
            await clock.sleep(0.01)
            await importer.upsert([_order("A1", OrderStatus.HELD)])
            await clock.sleep(EARLY_FRESH_S)
            order, _ = await lookup.order("A1")
            assert order is not None
            assert order.status is OrderStatus.HELD
            assert store.asked == ["A1", "A1"]
            lookup.read_early("B2")
            await clock.sleep(EARLY_FRESH_S + 0.01)
            lookup.read_early("B2")  # read again on the next lap: asked afresh
            await clock.sleep(0.01)
            assert store.asked == ["A1", "A1", "B2", "B2"]
        finally:
            await importer.close()
            await lookup.aclose()
            await store.close()

    run_virtual(main)


def test_early_lookups_nobody_takes_are_bounded_and_cancelled_at_close(
        config: OrderStoreConfig) -> None:
    async def main(clock: VirtualClock) -> None:
        lookup, store = _lookup(config, clock)
        try:
            for i in range(EARLY_MAX + 50):  # codes read on parcels that never settle on them
                lookup.read_early(f"X{i}")
            assert len(lookup._early) <= EARLY_MAX
            pending = [task for _, task in lookup._early.values()]
        finally:
            await lookup.aclose()
            await store.close()
        assert pending
        assert all(task.done() for task in pending)
        assert not lookup._early

    run_virtual(main)


def test_a_store_outage_during_an_early_lookup_answers_as_a_late_one_would(
        tmp_path: Path) -> None:
    """The book gone: the early lookup's failure is the decision's answer (no order, and
    why), counted once as a store error; no task is left with an unread exception."""
    config = OrderStoreConfig(path=str(tmp_path / "missing.sqlite"), timeout_ms=200.0,
                              cache_size=0)

    async def main(clock: VirtualClock) -> None:
        stats = SorterStats()
        store = open_order_store(config, clock, create=True)
        (tmp_path / "missing.sqlite").write_bytes(b"not a database" * 100)
        lookup = OrderLookup(store, config, stats, now=clock.now)
        try:
            lookup.read_early("A1")
            lookup.read_early("B2")  # never taken: its error is retrieved, not warned of
            await clock.sleep(0.05)
            order, why = await lookup.order("A1")
            assert order is None
            assert why.startswith("order store unavailable and order not cached")
            assert stats.order_store_errors == 2
        finally:
            await lookup.aclose()
            await store.close()
        await asyncio.sleep(0)

    run_virtual(main)
