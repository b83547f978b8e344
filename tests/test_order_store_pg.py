"""The PostgreSQL order store against a real server: the same book as SQLite's, a lookup
timeout when the server stops answering, reconnects, and the change feed (with its reload)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import aclosing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from controller.config import OrderStoreConfig
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus, Upserted
from drivers.orders import open_order_store
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.postgres import Postgres, unavailable_reason

pytestmark = pytest.mark.wallclock

asyncpg = pytest.importorskip("asyncpg", reason="the postgresql backend needs asyncpg")
from drivers.orders import postgres as pg_driver  # noqa: E402
from drivers.orders.postgres import PostgresOrderStore  # noqa: E402

TIMEOUT_MS = 200.0


def _order(code: str, status: OrderStatus = OrderStatus.RELEASED, created: float = 0.0,
           order_id: str | None = None, promised: float | None = None) -> Order:
    return Order(order_id=order_id or f"O-{code}", code=code, channel="web", status=status,
                 carrier="DHL", service="std", route="R1", postcode="10115", created_at=created,
                 promised_ship_at=promised)


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL server can run here: {reason}")
    with Postgres() as pg:
        yield pg


def _config(server: Postgres, **changes: object) -> OrderStoreConfig:
    fields: dict[str, object] = {"backend": "postgresql", "dsn": server.dsn,
                                 "password_file": str(server.password_file),
                                 "timeout_ms": TIMEOUT_MS, **changes}
    return OrderStoreConfig.model_validate(fields)


async def _drop_table(server: Postgres) -> None:
    conn = await asyncpg.connect(server.dsn, password=server.password)
    try:
        await conn.execute("DROP TABLE IF EXISTS orders CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def pg_config(server: Postgres) -> OrderStoreConfig:
    """A config naming the server, its book emptied (the store makes the table again)."""
    if not server.running:
        server.start()
    asyncio.run(_drop_table(server))
    return _config(server)


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


# --- the contract both backends keep -----------------------------------------------------------

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def open_book(request: pytest.FixtureRequest, tmp_path: Path
              ) -> Callable[[], SqliteOrderStore | PostgresOrderStore]:
    if request.param == "sqlite":
        return lambda: SqliteOrderStore(tmp_path / "orders.sqlite")
    config = request.getfixturevalue("pg_config")
    return lambda: PostgresOrderStore(config)


def test_the_book_upserts_finds_counts_and_looks_up_like_sqlite(
        open_book: Callable[[], SqliteOrderStore | PostgresOrderStore]) -> None:
    async def main() -> None:
        store = open_book()
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


# --- PostgreSQL's own ------------------------------------------------------------------------


def test_the_columns_are_the_fields_of_an_order_in_their_order() -> None:
    assert tuple(f.name for f in fields(Order)) == pg_driver._COLUMNS  # rows become Orders


def test_the_registry_opens_it_and_a_lookups_only_store_needs_the_table(
        pg_config: OrderStoreConfig) -> None:
    async def main() -> None:
        readonly = open_order_store(pg_config, create=False)
        assert isinstance(readonly, PostgresOrderStore)
        try:
            with pytest.raises(OrderStoreError, match="no orders table"):
                await readonly.lookup("A1")
        finally:
            await readonly.close()
        store = open_order_store(pg_config)
        try:
            assert await store.lookup("A1") is None  # the table is made
        finally:
            await store.close()

    _run(main)


def test_a_bad_password_file_is_a_one_line_error_naming_it(
        server: Postgres, pg_config: OrderStoreConfig, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n", encoding="utf-8")

    async def main() -> None:
        for path, match in ((tmp_path / "missing", "password_file .*missing"),
                            (wrong, "password authentication failed")):
            store = PostgresOrderStore(_config(server, password_file=str(path)))
            try:
                with pytest.raises(OrderStoreError, match=match) as caught:
                    await store.lookup("A1")
                assert "\n" not in str(caught.value)
            finally:
                await store.close()

    _run(main)


def test_a_server_that_stops_answering_fails_a_lookup_in_timeout_ms_then_answers_again(
        server: Postgres, pg_config: OrderStoreConfig) -> None:
    async def main() -> None:
        store = PostgresOrderStore(pg_config)
        try:
            await store.upsert([_order("A1")])
            assert await store.lookup("A1") is not None
            server.pause()
            try:
                ticks = 0

                async def tick() -> None:
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                ticker = asyncio.create_task(tick())
                started = time.monotonic()
                with pytest.raises(OrderStoreError, match="lookup"):
                    await store.lookup("A1")
                took = time.monotonic() - started
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
                assert TIMEOUT_MS / 1000 * 0.9 <= took < TIMEOUT_MS / 1000 + 0.15, took
                assert ticks >= 10  # the loop kept running meanwhile
            finally:
                server.resume()
            assert await store.lookup("A1") == _order("A1")
        finally:
            await store.close()

    _run(main)


def test_the_store_reconnects_after_a_restart_and_fails_fast_while_it_is_down(
        server: Postgres, pg_config: OrderStoreConfig) -> None:
    async def main() -> None:
        store = PostgresOrderStore(pg_config)
        try:
            await store.upsert([_order("A1")])
            assert await store.lookup("A1") is not None
            await asyncio.to_thread(server.stop)
            for _ in range(2):  # the pooled connection is dead, then the server refuses
                started = time.monotonic()
                with pytest.raises(OrderStoreError):
                    await store.lookup("A1")
                assert time.monotonic() - started < TIMEOUT_MS / 1000 + 0.1
            await asyncio.to_thread(server.start)
            answers = []
            for _ in range(3):  # at most the one dead connection left fails, then it is back
                try:
                    answers.append(await store.lookup("A1"))
                except OrderStoreError:
                    answers.append(None)
            assert answers[-1] == _order("A1")
        finally:
            await store.close()

    _run(main)


async def _next(feed: AsyncIterator[Order], timeout_s: float = 3.0) -> Order:
    async with asyncio.timeout(timeout_s):
        return await anext(feed)


def test_a_change_made_by_another_connection_reaches_the_feed(
        pg_config: OrderStoreConfig) -> None:
    async def main() -> None:
        store, writer = PostgresOrderStore(pg_config), PostgresOrderStore(pg_config)
        try:
            await writer.upsert([_order("A1")])
            async with aclosing(store.changes()) as feed:
                first = asyncio.ensure_future(_next(feed))
                await asyncio.sleep(0.3)  # it is listening by now
                await writer.upsert([_order("A1", OrderStatus.CANCELLED)])
                assert await first == _order("A1", OrderStatus.CANCELLED)
                await writer.upsert([_order(f"N{i}") for i in range(50)])
                seen = {(await _next(feed)).code for _ in range(50)}
                assert seen == {f"N{i}" for i in range(50)}
        finally:
            await writer.close()
            await store.close()

    _run(main)


def test_after_a_reconnect_the_feed_reloads_what_changed_while_it_was_away(
        server: Postgres, pg_config: OrderStoreConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_driver, "FEED_RETRY_S", 0.5)

    async def main() -> None:
        store, writer = PostgresOrderStore(pg_config), PostgresOrderStore(pg_config)
        try:
            await store.upsert([_order("A1"), _order("B2")])
            async with aclosing(store.changes()) as feed:
                first = asyncio.ensure_future(_next(feed))
                await asyncio.sleep(0.3)
                await store.upsert([_order("A1", OrderStatus.HELD)])
                assert (await first).status is OrderStatus.HELD
                # The server ends the feed's connection, and the change is committed before
                # the feed is back (it waits FEED_RETRY_S): no notification of it reaches it.
                conn = await asyncpg.connect(server.dsn, password=server.password)
                try:
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pid <> pg_backend_pid() AND application_name = 'parcel-sorter'")
                finally:
                    await conn.close()
                await writer.upsert([_order("B2", OrderStatus.CANCELLED)])
                got = await _next(feed, timeout_s=5.0)
                while got.code != "B2":
                    got = await _next(feed, timeout_s=5.0)
                assert got == replace(_order("B2"), status=OrderStatus.CANCELLED)
        finally:
            await writer.close()
            await store.close()

    _run(main)


def test_a_lines_cache_follows_the_book_and_answers_while_the_server_does_not(
        server: Postgres, pg_config: OrderStoreConfig) -> None:
    """OrderLookup.follow: an order imported after the line warmed its cache reaches the
    cache through the feed, so once the server stops answering the line still sorts it."""
    from controller.lookup import OrderLookup
    from controller.parcel import SorterStats

    async def main() -> None:
        store, importer = PostgresOrderStore(pg_config), PostgresOrderStore(pg_config)
        stats = SorterStats()
        lookup = OrderLookup(store, pg_config, stats)
        following = asyncio.create_task(lookup.follow())
        try:
            await importer.upsert([_order("OLD")])
            await lookup.warm()
            await asyncio.sleep(0.3)  # the feed listens by now
            await importer.upsert([_order("NEW", created=5.0)])
            await asyncio.sleep(0.5)  # the notification and the fetch that follows it
            server.pause()
            try:
                found, why = await lookup.order("NEW")
            finally:
                server.resume()
            assert (found, why) == (_order("NEW", created=5.0), "")
            assert stats.order_store_errors >= 1  # it was the cache that answered
            missing, why = await lookup.order("NEVER")
            assert missing is None  # now the server answers again: no such order
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await importer.close()
            await store.close()

    _run(main)
