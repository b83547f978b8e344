"""The PostgreSQL order store against a real server: a lookup timeout when the server stops
answering, reconnects, and the change feed's reload after one. What it shares with SQLite's
(the book, the feed, a line's cache following it) is tests/test_order_book_parity.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from controller.config import OrderStoreConfig
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus
from drivers.orders import open_order_store
from sim_hardware.postgres import Postgres
from tests import order_books

pytestmark = pytest.mark.wallclock

asyncpg = pytest.importorskip("asyncpg", reason="the postgresql backend needs asyncpg")
from drivers.orders import postgres as pg_driver  # noqa: E402
from drivers.orders.postgres import PostgresOrderStore  # noqa: E402

TIMEOUT_MS = 200.0


_order = order_books.one_parcel_order
server = order_books.server  # the module's PostgreSQL (a fixture)


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

