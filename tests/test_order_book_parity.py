"""The contract both order stores keep, run against each: SQLite and a real PostgreSQL server
(skipped cleanly where none can run). The book, its change feed, and a line's cache that the
feed keeps fresh answering while the store does not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, aclosing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from controller.config import OrderStoreConfig
from controller.lookup import OrderLookup
from controller.orders import Order, OrderChanges, OrderStatus, Upserted
from controller.parcel import SorterStats
from drivers.orders import open_order_store
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.postgres import Postgres
from tests import order_books

pytestmark = pytest.mark.wallclock  # PostgreSQL's I/O is on real time: both run on it

TIMEOUT_MS = 200.0
#: SQLite's poll, here: the feed is as quick to follow as PostgreSQL's notifications.
POLL_S = 0.05
#: How long a change may take to reach a feed (a notification, a poll) on a loaded machine.
FEED_WAIT_S = 5.0

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


_order = order_books.one_parcel_order
server = order_books.server  # the module's PostgreSQL (a fixture)


async def _drop_table(server: Postgres) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.dsn, password=server.password)
    try:
        await conn.execute("DROP TABLE IF EXISTS orders CASCADE")
    finally:
        await conn.close()


@contextmanager
def _sqlite_locked(path: Path) -> Iterator[None]:
    """Another process holding an EXCLUSIVE transaction on the book."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()


@contextmanager
def _paused(server: Postgres) -> Iterator[None]:
    server.pause()
    try:
        yield
    finally:
        server.resume()


@dataclass(frozen=True)
class Backend:
    """One store's make: its config, a store on it, and an outage of it (the store there
    but not answering)."""

    name: str
    config: OrderStoreConfig
    down: Callable[[], AbstractContextManager[None]]
    sqlite_poll_s: float = POLL_S

    def store(self, *, create: bool = True) -> Any:  # either store: the same contract
        """A store on the book; ``create=False``: as ``run`` opens it, for lookups only."""
        if self.config.backend == "sqlite":
            return SqliteOrderStore(self.config.path, timeout_s=self.config.timeout_ms / 1000,
                                    create=create, poll_s=self.sqlite_poll_s)
        return open_order_store(self.config, create=create)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "orders.sqlite"
        config = OrderStoreConfig(path=str(path), timeout_ms=TIMEOUT_MS, cache_size=100)
        return Backend("sqlite", config, lambda: _sqlite_locked(path))
    server: Postgres = request.getfixturevalue("server")
    if not server.running:
        server.start()
    asyncio.run(_drop_table(server))  # the store makes the table again
    config = OrderStoreConfig(backend="postgresql", dsn=server.dsn,
                              password_file=str(server.password_file), timeout_ms=TIMEOUT_MS,
                              cache_size=100)
    return Backend("postgresql", config, lambda: _paused(server))


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


async def _next(feed: AsyncIterator[Order]) -> Order:
    async with asyncio.timeout(FEED_WAIT_S):
        return await anext(feed)


async def _listening(feed: AsyncIterator[Order]) -> asyncio.Future[Order]:
    """The feed's first change to come, once it listens (has read its watermark)."""
    first = asyncio.ensure_future(_next(feed))
    await asyncio.sleep(0.3)
    return first


def test_the_book_upserts_finds_counts_and_looks_up_alike(backend: Backend) -> None:
    async def main() -> None:
        store = backend.store()
        try:
            first = await store.upsert([
                _order("A1", created=1.0, order_id="O-1"),
                _order("A2", created=1.5, order_id="O-1", promised=99.5),
                _order("B2", OrderStatus.HELD, 2.0),
                _order("C3", OrderStatus.BACKORDERED, 3.0),
                _order("D4", created=4.0)])
            assert first == Upserted(added=5, updated=0)
            second = await store.upsert([_order("D4", OrderStatus.SHIPPED, 4.0),
                                         _order("E5", created=5.0),
                                         _order("E5", OrderStatus.CANCELLED, 5.0)])
            assert second == Upserted(added=1, updated=2)
            assert await store.lookup("A2") == _order("A2", created=1.5, order_id="O-1",
                                                      promised=99.5)
            assert await store.lookup("D4") == _order("D4", OrderStatus.SHIPPED, 4.0)
            assert await store.lookup("Z9") is None
            assert [o.code for o in await store.released(2)] == ["A2", "A1"]
            assert [o.code for o in await store.find("O-1")] == ["A1", "A2"]
            assert [o.code for o in await store.find("B2")] == ["B2"]
            assert await store.find("nothing") == []
            assert await store.counts() == {"released": 2, "held": 1, "cancelled": 1,
                                            "backordered": 1, "shipped": 1, "orders": 5}
            await store.upsert([_order("F6", order_id="O-6"), _order("F7", order_id="O-6")])
            await store.upsert([replace(_order("G8"), channel="shop")])
            assert await store.channels() == {"web": 6, "shop": 1}
        finally:
            await store.close()

    _run(main)


def test_orders_read_from_the_book_share_the_texts_they_repeat(backend: Backend) -> None:
    """A warmed cache holds up to 100,000 orders: their channel, carrier, service, route and
    postcode, read row by row, are kept once each, not once an order."""
    names = ("channel", "carrier", "service", "route", "postcode")
    texts = dict(zip(names, ("web shop", "DHL Paket", "next day", "R-7 north", "10115 B"),
                     strict=True))

    async def main() -> None:
        store = backend.store()
        try:
            await store.upsert([replace(_order(c, created=float(i)), **texts)
                                for i, c in enumerate(("A1", "B2", "C3"))])
            first, *others = await store.released(3)
            looked_up = await store.lookup("A1")
            assert looked_up is not None
            for order in [*others, looked_up]:
                for name in names:
                    assert getattr(order, name) == texts[name]
                    assert getattr(order, name) is getattr(first, name), name
        finally:
            await store.close()

    _run(main)


def test_a_change_made_by_another_connection_reaches_the_feed_and_not_the_past(
        backend: Backend) -> None:
    assert isinstance(backend.store(create=False), OrderChanges)  # what follow() asks

    async def main() -> None:
        store, writer = backend.store(), backend.store()
        try:
            await writer.upsert([_order("A1"), _order("OLD")])
            async with aclosing(store.changes()) as feed:
                first = await _listening(feed)
                await writer.upsert([_order("A1", OrderStatus.CANCELLED)])
                assert await first == _order("A1", OrderStatus.CANCELLED)  # not OLD
                await writer.upsert([_order(f"N{i}") for i in range(1200)])
                seen = {(await _next(feed)).code for _ in range(1200)}
                assert seen == {f"N{i}" for i in range(1200)}
        finally:
            await writer.close()
            await store.close()

    _run(main)


def test_close_ends_the_feed(backend: Backend) -> None:
    async def main() -> None:
        store = backend.store()
        feed = store.changes()
        pending = await _listening(feed)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await pending

    _run(main)


def test_a_lines_cache_follows_the_book_and_answers_while_the_store_does_not(
        backend: Backend) -> None:
    """OrderLookup.follow: an order imported after the line warmed its cache reaches the
    cache through the feed, so once the store stops answering the line still sorts it."""

    async def main() -> None:
        importer, line = backend.store(), backend.store(create=False)
        stats = SorterStats()
        await importer.upsert([_order("OLD")])  # the book exists before the line opens it
        lookup = OrderLookup(line, backend.config, stats)
        following = asyncio.create_task(lookup.follow())
        try:
            await asyncio.sleep(0.3)  # the feed listens by now
            await lookup.warm()
            await importer.upsert([_order("NEW", created=5.0)])
            await asyncio.sleep(0.5)  # the notification or the poll, and the fetch after
            with backend.down():
                found, why = await lookup.order("NEW")
            assert (found, why) == (_order("NEW", created=5.0), "")
            assert stats.order_store_errors >= 1  # it was the cache that answered
            missing, why = await lookup.order("NEVER")
            assert (missing, why) == (None, "")  # the store answers again: no such order
            assert not following.done()  # the feed goes on
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await importer.close()
            await line.close()

    _run(main)
