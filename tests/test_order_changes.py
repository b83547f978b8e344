"""SQLite's change feed: a log its triggers fill for every writer, polled past a watermark,
so a line's cache follows another process's imports and answers once the book will not."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing, contextmanager
from functools import partial
from pathlib import Path

import pytest

from controller.clock import VirtualClock, run_virtual
from controller.config import OrderStoreConfig
from controller.lookup import OrderLookup
from controller.orders import Order, OrderChanges, OrderStatus
from controller.parcel import SorterStats
from drivers.orders import open_order_store
from drivers.orders import sqlite as sqlite_driver
from drivers.orders.sqlite import SCHEMA_VERSION, SqliteOrderStore

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 1.0

#: A foreign writer: a transaction of its own holds the book EXCLUSIVE while it changes an
#: order, and commits when told on stdin.
HOLD_AND_CHANGE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE orders SET status = 'cancelled' WHERE code = ?", (sys.argv[2],))
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
db.close()
"""

#: The book as version 2 made it: no change log.
V2_SCHEMA = """
CREATE TABLE orders (
    order_id TEXT NOT NULL,
    code TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('released', 'held', 'cancelled', 'backordered', 'shipped')),
    carrier TEXT NOT NULL,
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    postcode TEXT NOT NULL,
    created_at REAL NOT NULL,
    parcels_in_order INTEGER NOT NULL DEFAULT 1,
    promised_ship_at REAL
);
CREATE INDEX orders_by_order ON orders (order_id);
PRAGMA user_version = 2;
"""


def _order(code: str, status: OrderStatus = OrderStatus.RELEASED, created: float = 0.0) -> Order:
    return Order(order_id=f"O-{code}", code=code, channel="web", status=status,
                 carrier="DHL", service="std", route="R1", postcode="10115", created_at=created)


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "orders.sqlite"
    SqliteOrderStore(path).add([_order("A1", created=1.0), _order("B2", created=2.0)])
    return path


def _line_store(book: Path, poll_s: float = POLL_S) -> SqliteOrderStore:
    """The store as ``run`` opens it: read only, lookups bounded by the line's timeout."""
    return SqliteOrderStore(book, create=False, timeout_s=0.2, poll_s=poll_s)


async def _next(feed: AsyncIterator[Order], timeout_s: float = 3 * POLL_S) -> Order:
    async with asyncio.timeout(timeout_s):
        return await anext(feed)


async def _within(pending: asyncio.Future[Order], timeout_s: float = 3 * POLL_S) -> Order:
    async with asyncio.timeout(timeout_s):
        return await pending


def _overwrite(path: Path) -> None:
    """The file's bytes made garbage in place, under any connection open on it."""
    path.write_bytes(b"\xff" * path.stat().st_size)


async def _listening(clock: VirtualClock, feed: AsyncIterator[Order]) -> asyncio.Future[Order]:
    """The feed's first change to come, once it has read its watermark."""
    first = asyncio.ensure_future(anext(feed))
    await clock.sleep(POLL_S / 10)
    return first


def _import(path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "orders", "import", str(path),
                           "--db", str(db)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def _export(path: Path, *records: tuple[str, str, str]) -> Path:
    """A jsonl export of one-parcel orders (order id, code, status)."""
    path.write_text("".join(json.dumps({
        "order_id": order_id, "channel": "web", "status": status, "carrier": "UPS",
        "service": "express", "route": "R7", "postcode": "20095",
        "created_at": 1_764_576_000, "parcels": [{"code": code}]}) + "\n"
        for order_id, code, status in records), encoding="utf-8")
    return path


@contextmanager
def _holding(book: Path, code: str) -> Iterator[subprocess.Popen[str]]:
    """Another process changing ``code`` in a transaction holding the book EXCLUSIVE."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_CHANGE, str(book), code],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()


def _commit(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("commit\n")
    holder.stdin.flush()
    assert holder.wait(timeout=10) == 0


def test_the_store_has_a_change_feed_the_line_follows(book: Path) -> None:
    assert isinstance(_line_store(book), OrderChanges)
    store = open_order_store(OrderStoreConfig(path=str(book)), create=False)
    assert isinstance(store, SqliteOrderStore)
    assert store.poll_s == sqlite_driver.CHANGES_POLL_S


def test_another_process_s_import_reaches_the_feed_as_the_book_then_holds_it(
        book: Path, tmp_path: Path) -> None:
    added = _export(tmp_path / "web.jsonl", ("W-1", "C1", "released"), ("W-2", "C2", "held"))
    changed = _export(tmp_path / "later.jsonl", ("W-1", "C1", "cancelled"))

    async def main(clock: VirtualClock) -> None:
        line, reader = _line_store(book), SqliteOrderStore(book)
        try:
            async with aclosing(line.changes()) as feed:
                first = await _listening(clock, feed)
                done = await clock.offload(None, partial(_import, added, book), cost=0.5)
                assert done.returncode == 0, done.stderr
                seen = [await first, await _next(feed)]
                assert seen == [*await reader.find("C1"), *await reader.find("C2")]
                assert (seen[0].carrier, seen[1].status) == ("UPS", OrderStatus.HELD)
                done = await clock.offload(None, partial(_import, changed, book), cost=0.5)
                assert done.returncode == 0, done.stderr
                assert (await _next(feed)).status is OrderStatus.CANCELLED
        finally:
            await reader.close()
            await line.close()

    run_virtual(main)


def test_the_feed_yields_what_changed_from_its_start_once_each_poll_as_it_is_now(
        book: Path) -> None:
    async def main(clock: VirtualClock) -> None:
        line, writer = _line_store(book, poll_s=POLL_S), SqliteOrderStore(book)
        try:
            async with aclosing(line.changes()) as feed:
                first = await _listening(clock, feed)
                await writer.upsert([_order("A1", OrderStatus.HELD, 1.0)])
                await writer.upsert([_order("N1"), _order("A1", OrderStatus.SHIPPED, 1.0)])
                wrote_at = clock.now()
                # A1 written twice before the poll: once, as it is now; B2 (older) not at all
                assert [await first, await _next(feed)] == [
                    _order("N1"), _order("A1", OrderStatus.SHIPPED, 1.0)]
                assert clock.now() - wrote_at <= POLL_S  # the next poll brought them
                late = asyncio.ensure_future(anext(feed))
                await clock.sleep(5 * POLL_S)  # polls that find nothing yield nothing
                assert not late.done()
                await writer.upsert([_order("N2")])
                assert await _within(late) == _order("N2")
        finally:
            await writer.close()
            await line.close()

    run_virtual(main)


def test_a_locked_book_is_polled_on_and_a_foreign_writer_s_change_follows_its_commit(
        book: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main(clock: VirtualClock) -> None:
        line = _line_store(book)
        try:
            async with aclosing(line.changes()) as feed:
                first = await _listening(clock, feed)
                with _holding(book, "B2") as holder:
                    await clock.sleep(5 * POLL_S)  # five polls meet the lock
                    assert not first.done()
                    await clock.offload(None, _commit, holder, cost=0.01)
                assert await _within(first) == _order("B2", OrderStatus.CANCELLED, 2.0)
        finally:
            await line.close()

    with caplog.at_level(logging.INFO, logger=sqlite_driver.__name__):
        run_virtual(main)
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "database is locked" in m]) == 1, said  # said once
    assert [m for m in said if "answers again" in m], said


@pytest.mark.parametrize("outage", ["locked", "unreadable"])
def test_a_lines_cache_follows_the_book_and_answers_when_it_is_locked_or_unreadable(
        book: Path, outage: str) -> None:
    """OrderLookup.follow: an order imported after the line warmed its cache reaches the
    cache through the feed, so the line still sorts it once the book cannot be read."""
    config = OrderStoreConfig(path=str(book), timeout_ms=200.0, cache_size=100)

    async def main(clock: VirtualClock) -> None:
        store, importer = open_order_store(config, clock, create=False), SqliteOrderStore(book)
        stats = SorterStats()
        lookup = OrderLookup(store, config, stats)
        following = asyncio.create_task(lookup.follow())
        try:
            await clock.sleep(POLL_S / 10)  # the feed has its watermark (the line's order)
            await lookup.warm()
            await importer.upsert([_order("NEW", created=5.0)])
            await importer.close()
            await clock.sleep(2 * POLL_S)
            assert stats.order_store_errors == 0
            if outage == "locked":
                with _holding(book, "A1"):
                    found = await lookup.order("NEW")
                    missing = await lookup.order("NEVER")
            else:  # the file's bytes overwritten in place, under the open connection
                await clock.offload(None, _overwrite, book)
                found = await lookup.order("NEW")
                missing = await lookup.order("NEVER")
            assert found == (_order("NEW", created=5.0), "")
            assert missing[0] is None
            assert missing[1].startswith("order store unavailable and order not cached")
            assert stats.order_store_errors == 2  # it was the cache that answered
            assert not following.done()  # the feed polls on
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await importer.close()
            await store.close()

    run_virtual(main)


def test_a_version_2_book_is_upgraded_in_place_and_a_line_reading_it_follows_from_then(
        tmp_path: Path) -> None:
    db = tmp_path / "orders.sqlite"
    with closing(sqlite3.connect(db)) as old:
        old.executescript(V2_SCHEMA)
        old.execute("INSERT INTO orders VALUES ('O-1', 'OLD1', 'web', 'held', 'DHL', 'std', "
                    "'R1', '10115', 5.0, 1, 9.0)")
        old.commit()

    async def main(clock: VirtualClock) -> None:
        line = _line_store(db)  # read only: it cannot upgrade the book, nor its feed yet
        try:
            async with aclosing(line.changes()) as feed:
                first = await _listening(clock, feed)
                await clock.sleep(3 * POLL_S)
                writer = SqliteOrderStore(db)  # an import's store: upgrades the book
                try:
                    [old_row] = await writer.find("OLD1")
                    assert (old_row.status, old_row.promised_ship_at) == (OrderStatus.HELD, 9.0)
                    await writer.upsert([_order("NEW1")])
                finally:
                    await writer.close()
                assert await _within(first) == _order("NEW1")  # and not OLD1: it was not news
        finally:
            await line.close()

    run_virtual(main)
    with closing(sqlite3.connect(db)) as after:
        assert after.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert after.execute("SELECT code FROM order_changes").fetchall() == [("NEW1",)]
        assert sorted(after.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                      ) == [("orders_inserted",), ("orders_updated",)]


def test_the_log_keeps_its_last_entries_and_a_feed_behind_them_says_it_lost_some(
        book: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sqlite_driver, "KEEP_CHANGES", 10)

    async def main(clock: VirtualClock) -> list[str]:
        line, writer = _line_store(book), SqliteOrderStore(book)
        try:
            async with aclosing(line.changes()) as feed:
                first = await _listening(clock, feed)
                for batch in range(3):  # 30 changes before the next poll: 20 are pruned
                    await writer.upsert([_order(f"N{batch}{i}") for i in range(10)])
                return [(await first).code, *[(await _next(feed)).code for _ in range(9)]]
        finally:
            await writer.close()
            await line.close()

    with caplog.at_level(logging.WARNING, logger=sqlite_driver.__name__):
        assert run_virtual(main) == [f"N2{i}" for i in range(10)]
    assert [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()] == [
        f"sqlite {book}: change feed: 20 changes were pruned from the log before it read them"]
    with closing(sqlite3.connect(book)) as db:
        assert db.execute("SELECT count(*) FROM order_changes").fetchone() == (10,)


def test_close_ends_the_feed(book: Path) -> None:
    async def main(clock: VirtualClock) -> None:
        line = _line_store(book)
        feed = line.changes()
        pending = await _listening(clock, feed)
        await line.close()
        with pytest.raises(StopAsyncIteration):
            await _within(pending)

    run_virtual(main)

