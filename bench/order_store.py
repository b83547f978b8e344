"""Order store figures on a real PostgreSQL: `.venv/bin/python bench/order_store.py`.

Starts its own server (:class:`sim_hardware.postgres.Postgres`, fsync off) and measures:

* the two asyncio drivers on the line's query, so the choice of driver rests on numbers:
  asyncpg and psycopg 3 (``AsyncConnection``, binary, server-side prepared after the first
  executions) each look up ``--lookups`` random codes one at a time (p50/p99) in a book of
  ``--orders`` rows, and each bulk-upserts ``--upsert`` rows (COPY into a temporary table,
  then one ``INSERT ... ON CONFLICT`` with the added count), half of them new;
* the stores as the line uses them: :class:`drivers.orders.postgres.PostgresOrderStore`
  and :class:`drivers.orders.sqlite.SqliteOrderStore`, with the same ``--orders`` in the
  book: ``lookup`` p50/p99, and how long warming a cache of ``--warm`` released orders
  (``released(n)``) takes from each;
* what the line's cache of ``--warm`` orders costs in memory: each store warms a line's
  :class:`controller.lookup.OrderLookup` in a process of its own, which reports the
  resident memory the warming added and its peak over that.

Lookups run in this one event loop with nothing else on it; the server shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.process_memory import peak_rss_mb, rss_mb
from controller.config import OrderStoreConfig
from controller.lookup import OrderLookup
from controller.orders import Order, OrderStatus
from controller.parcel import SorterStats
from drivers.orders import open_order_store
from drivers.orders.postgres import _COLUMNS, _STAGE, _UPSERT, PostgresOrderStore
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.postgres import Postgres, unavailable_reason

_STATUSES = (OrderStatus.RELEASED,) * 7 + (OrderStatus.HELD, OrderStatus.BACKORDERED,
                                           OrderStatus.SHIPPED)
CHUNK = 100_000


def order(i: int, status: OrderStatus | None = None) -> Order:
    return Order(order_id=f"O{i // 2:08d}", code=f"PS{i:010d}", channel="web",
                 status=status or _STATUSES[i % len(_STATUSES)], carrier="DHL",
                 service="std", route=f"R{i % 40}", postcode=f"{10000 + i % 9000}",
                 created_at=1.7e9 + i, parcels_in_order=2, promised_ship_at=1.7e9 + i + 86400)


def row(o: Order) -> tuple[object, ...]:
    return tuple(str(o.status) if c == "status" else getattr(o, c) for c in _COLUMNS)


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in microseconds."""
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1e6,
            ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))] * 1e6)


async def time_lookups(lookup: Callable[[str], Awaitable[object]], n: int, orders: int,
                       seed: int = 1) -> tuple[float, float]:
    rng = random.Random(seed)
    codes = [f"PS{rng.randrange(orders):010d}" for _ in range(n + 200)]
    for code in codes[:200]:  # warm-up: connections, prepared statements, caches
        await lookup(code)
    samples = []
    for code in codes[200:]:
        started = time.perf_counter()
        found = await lookup(code)
        samples.append(time.perf_counter() - started)
        assert found, code
    return percentiles(samples)


async def asyncpg_figures(pg: Postgres, n: int, orders: int, upsert: list[Order]
                          ) -> tuple[tuple[float, float], float]:
    import asyncpg

    conn = await asyncpg.connect(pg.dsn, password=pg.password)
    try:
        sql = "SELECT * FROM orders WHERE code = $1"
        lookups = await time_lookups(lambda code: conn.fetchrow(sql, code), n, orders)
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(_STAGE)
            await conn.copy_records_to_table("orders_upsert", records=[row(o) for o in upsert],
                                             columns=_COLUMNS)
            added = await conn.fetchval(_UPSERT)
        took = time.perf_counter() - started
        assert added == len(upsert) // 2, added
    finally:
        await conn.close()
    return lookups, took


async def psycopg_figures(pg: Postgres, n: int, orders: int, upsert: list[Order]
                          ) -> tuple[tuple[float, float], float]:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(pg.dsn, password=pg.password,
                                                 prepare_threshold=1, autocommit=True)
    try:
        sql = "SELECT * FROM orders WHERE code = %s"

        async def lookup(code: str) -> object:
            cur = await conn.execute(sql, (code,), binary=True)
            return await cur.fetchone()

        lookups = await time_lookups(lookup, n, orders, seed=2)
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(_STAGE)
            async with conn.cursor().copy(
                    f"COPY orders_upsert ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                for o in upsert:
                    await copy.write_row(row(o))
            cur = await conn.execute(_UPSERT)
            fetched = await cur.fetchone()
        took = time.perf_counter() - started
        assert fetched is not None
        assert fetched[0] == len(upsert) // 2, fetched
    finally:
        await conn.close()
    return lookups, took


async def fill(store: PostgresOrderStore | SqliteOrderStore, orders: int) -> float:
    started = time.perf_counter()
    for first in range(0, orders, CHUNK):
        await store.upsert([order(i) for i in range(first, min(orders, first + CHUNK))])
    return time.perf_counter() - started


async def store_figures(store: PostgresOrderStore | SqliteOrderStore, n: int, orders: int,
                        warm: int) -> tuple[tuple[float, float], float]:
    lookups = await time_lookups(store.lookup, n, orders, seed=3)
    await store.released(1000)
    started = time.perf_counter()
    got = await store.released(warm)
    took = time.perf_counter() - started
    assert len(got) == warm, len(got)
    return lookups, took


async def warm_in_this_process(config: OrderStoreConfig) -> dict[str, float]:
    """Warm a line's cache from the store: the resident memory it added, and its peak over
    the memory before (the store connected and one lookup made first)."""
    store = open_order_store(config)
    try:
        await store.lookup("PS-none")
        gc.collect()
        before = rss_mb()
        stats = SorterStats()
        lookup = OrderLookup(store, config, stats)
        started = time.perf_counter()
        await lookup.warm()
        took = time.perf_counter() - started
        if stats.order_store_errors:
            raise SystemExit("warming the cache failed (its warning above)")
        gc.collect()
        return {"s": took, "added_mb": rss_mb() - before, "peak_mb": peak_rss_mb() - before}
    finally:
        await store.close()


def warm_memory(config: OrderStoreConfig) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--warm-child", config.model_dump_json()],
                         check=True, capture_output=True, text=True)
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


async def main(args: argparse.Namespace) -> None:
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"order_store bench: {reason}")
    half = args.upsert // 2  # half replace existing rows, half are new
    with Postgres() as pg, tempfile.TemporaryDirectory(prefix="orders-bench-") as tmp:
        config = OrderStoreConfig(backend="postgresql", dsn=pg.dsn,
                                  password_file=str(pg.password_file), timeout_ms=1000)
        store = PostgresOrderStore(config)
        sqlite = SqliteOrderStore(Path(tmp) / "orders.sqlite", timeout_s=1.0)
        try:
            pg_fill = await fill(store, args.orders)
            lite_fill = await fill(sqlite, args.orders)
            print(f"book of {args.orders:,} orders: filled in {pg_fill:.1f} s (PostgreSQL, "
                  f"store.upsert, {CHUNK:,} at a time), {lite_fill:.1f} s (SQLite)")

            print(f"\ndrivers, {args.lookups:,} lookups by code one at a time; bulk upsert "
                  f"of {args.upsert:,} ({half:,} new):")
            for name, figures in (("asyncpg", asyncpg_figures),
                                  ("psycopg 3", psycopg_figures)):
                first = args.orders + (half if name == "psycopg 3" else 0)
                batch = [order(i) for i in range(first - half, first + half)]
                (p50, p99), took = await figures(pg, args.lookups, args.orders, batch)
                print(f"  {name:10} lookup p50 {p50:7.0f} us  p99 {p99:7.0f} us   "
                      f"upsert {took:6.2f} s ({args.upsert / took:,.0f} rows/s)")

            print(f"\nstores as the line uses them ({args.orders:,}+ orders in the book):")
            for name, st in (("PostgreSQL", store), ("SQLite", sqlite)):
                (p50, p99), took = await store_figures(st, args.lookups, args.orders,
                                                       args.warm)
                print(f"  {name:10} lookup p50 {p50:7.0f} us  p99 {p99:7.0f} us   "
                      f"warm {args.warm:,} released: {took:.2f} s")

            print(f"\nthe line's cache warmed with {args.warm:,} orders, each store in a "
                  "process of its own (OrderLookup.warm):")
            lite_config = OrderStoreConfig(path=str(sqlite.path), timeout_ms=1000)
            for name, cfg in (("PostgreSQL", config), ("SQLite", lite_config)):
                got = warm_memory(cfg.model_copy(update={"cache_size": args.warm}))
                print(f"  {name:10} warmed in {got['s']:.2f} s: RSS "
                      f"+{got['added_mb']:.0f} MB ({got['added_mb'] * 2**20 / args.warm:,.0f} "
                      f"B an order), peak +{got['peak_mb']:.0f} MB")
        finally:
            await store.close()
            await sqlite.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--upsert", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=100_000)
    parser.add_argument("--warm-child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.warm_child:
        child = OrderStoreConfig.model_validate_json(arguments.warm_child)
        print(json.dumps(asyncio.run(warm_in_this_process(child))))
    else:
        asyncio.run(main(arguments))
