"""Code → destination decision time, and cache warming: `.venv/bin/python bench/order_decision.py`.

A book of ``--orders`` orders (default 1,000,000; carriers, services, channels and postcodes
that the example line's sort plan routes, a tenth not released) is bulk-loaded into SQLite
(``executemany`` in one transaction, the change log's triggers on) and into a PostgreSQL
server this script starts (fsync off; one ``COPY``). For ``--decisions`` random codes one
at a time it times what the line does for a read code: :meth:`OrderLookup.order` then
:meth:`Router.for_order` with no bin full (the plan of deploy/line.example.toml), p50/p99:

* from SQLite and from PostgreSQL, the store answering;
* from the cache: the cache warmed with the shift's ``--warm`` newest released orders, then
  the PostgreSQL server stopped (each lookup fails at once, connection refused, and the
  cache answers), and the cache and router alone (no store asked: the floor);

and how long :meth:`OrderLookup.warm` takes to fill the cache with ``--warm`` orders from
each store, with the line's ``timeout_ms`` (its warm must finish in ten lookups' time).
Decisions run in this one event loop with nothing else on it; the server shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.config import OrderStoreConfig, load_config
from controller.disposition import Disposition
from controller.lookup import WARM_TIMEOUT_FACTOR, OrderLookup, warm_budget_s
from controller.orders import Order, OrderCache, OrderStatus, OrderStore
from controller.parcel import SorterStats
from controller.routing import Route, Router
from controller.sortplan import SortPlan
from drivers.orders import sqlite as sqlite_driver
from drivers.orders.postgres import _COLUMNS, PostgresOrderStore
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.postgres import Postgres, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
CARRIERS = (("DHL", "express"), ("DHL", "std"), ("UPS", "std"), ("DPD", "std"),
            ("GLS", "std"), ("PostNL", "std"), ("Hermes", "std"))
CHANNELS = ("web", "store", "marketplace", "social")
NOT_RELEASED = (OrderStatus.HELD, OrderStatus.BACKORDERED, OrderStatus.CANCELLED)
START = 1_764_576_000.0
WARM_UP = 200


def order(i: int) -> Order:
    """Parcel ``i`` of the book: every fifth order has two parcels; one in ten is held back."""
    carrier, service = CARRIERS[i % len(CARRIERS)]
    status = NOT_RELEASED[i % 3] if i % 10 == 9 else OrderStatus.RELEASED
    two = (i // 2) % 5 == 0
    return Order(order_id=f"SO-{i // 2 if two else i:09d}", code=f"1Z{i:010d}",
                 channel=CHANNELS[i % len(CHANNELS)], status=status, carrier=carrier,
                 service=service, route=f"R{i % 40}", postcode=f"{10000 + (i * 7919) % 90000}",
                 created_at=START + i * 0.05, parcels_in_order=2 if two else 1,
                 promised_ship_at=START + i * 0.05 + 86_400)


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in microseconds."""
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1e6,
            ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))] * 1e6)


def fill_sqlite(path: Path, orders: int) -> float:
    started = time.perf_counter()
    SqliteOrderStore(path).add([])  # the schema, the change log's triggers
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(sqlite_driver._UPSERT, (sqlite_driver._row(order(i))
                                               for i in range(orders)))
    return time.perf_counter() - started


async def fill_postgres(store: PostgresOrderStore, pg: Postgres, orders: int) -> float:
    import asyncpg

    started = time.perf_counter()
    await store.lookup("none")  # the schema, its triggers
    conn = await asyncpg.connect(pg.dsn, password=pg.password)
    try:
        rows: Iterator[tuple[object, ...]] = (
            tuple(str(o.status) if c == "status" else getattr(o, c) for c in _COLUMNS)
            for o in map(order, range(orders)))
        await conn.copy_records_to_table("orders", records=rows, columns=_COLUMNS)
        await conn.execute("ANALYZE orders")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def time_decisions(decide: Callable[[str], Awaitable[Route]], codes: Sequence[str]
                         ) -> tuple[float, float]:
    for code in codes[:WARM_UP]:  # connections, prepared statements, page cache
        await decide(code)
    samples = []
    for code in codes[WARM_UP:]:
        started = time.perf_counter()
        route = await decide(code)
        samples.append(time.perf_counter() - started)
        assert route.disposition is not Disposition.NO_ORDER, (code, route)
    return percentiles(samples)


def decider(lookup: OrderLookup, router: Router) -> Callable[[str], Awaitable[Route]]:
    async def decide(code: str) -> Route:
        found, why = await lookup.order(code)
        return router.for_order(found, set(), no_order_reason=why)

    return decide


async def warm(store: OrderStore, config: OrderStoreConfig) -> tuple[OrderLookup, float]:
    """A line's lookup on ``store`` with its cache warmed, and how long warming took.

    The line gives warming ten lookups' time or 50 us an order, whichever is longer
    (:func:`warm_budget_s`); here it is given a minute, so the figure is what it takes, and
    the budget is said beside it. The lookups made with it are bounded by that longer
    timeout too (none comes near either)."""
    stats = SorterStats()
    patient = config.model_copy(update={"timeout_ms": 60_000 / WARM_TIMEOUT_FACTOR})
    lookup = OrderLookup(store, patient, stats)
    started = time.perf_counter()
    await lookup.warm()
    took = time.perf_counter() - started
    assert stats.order_store_errors == 0, "warming failed in a minute"
    return lookup, took


def _budget(took: float, config: OrderStoreConfig) -> str:
    budget = warm_budget_s(config)
    return f"   (the line's budget {budget:g} s: {'met' if took <= budget else 'EXCEEDED'})"


def _row(label: str, p50: float, p99: float, extra: str = "") -> None:
    print(f"  {label:<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us{extra}")


async def main(args: argparse.Namespace) -> None:
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"order_decision bench: {reason}")
    logging.getLogger("controller.lookup").addHandler(logging.NullHandler())
    logging.getLogger("controller.lookup").propagate = False  # one warning per failed lookup
    line = load_config(ROOT / "deploy" / "line.example.toml")
    router = Router(SortPlan(line.sort_plan))
    rng = random.Random(args.seed)
    book_codes = [f"1Z{rng.randrange(args.orders):010d}" for _ in range(WARM_UP + args.decisions)]
    with Postgres() as pg, tempfile.TemporaryDirectory(prefix="order-decision-") as tmp:
        path = Path(tmp) / "orders.sqlite"
        lite_config = line.order_store.model_copy(update={"path": str(path),
                                                          "cache_size": args.warm})
        pg_config = OrderStoreConfig(backend="postgresql", dsn=pg.dsn, cache_size=args.warm,
                                     password_file=str(pg.password_file),
                                     timeout_ms=line.order_store.timeout_ms)
        writer = PostgresOrderStore(pg_config)
        try:
            pg_fill = await fill_postgres(writer, pg, args.orders)
        finally:
            await writer.close()
        lite_fill = await asyncio.to_thread(fill_sqlite, path, args.orders)
        print(f"book of {args.orders:,} parcels: loaded in {lite_fill:.1f} s (SQLite, "
              f"executemany, one transaction), {pg_fill:.1f} s (PostgreSQL, COPY); "
              f"timeout_ms {line.order_store.timeout_ms:g}, cache_size {args.warm:,}")

        lite = SqliteOrderStore(path, timeout_s=lite_config.timeout_ms / 1000, create=False)
        shared = PostgresOrderStore(pg_config, create=False)
        try:
            print(f"\nwarming the cache with the {args.warm:,} newest released orders "
                  f"(OrderLookup.warm):")
            await lite.released(1000)
            lite_lookup, lite_warm = await warm(lite, lite_config)
            print(f"  SQLite      {lite_warm:6.2f} s{_budget(lite_warm, lite_config)}")
            await shared.released(1000)
            pg_lookup, pg_warm = await warm(shared, pg_config)
            print(f"  PostgreSQL  {pg_warm:6.2f} s{_budget(pg_warm, pg_config)}")

            print(f"\ncode -> route, {args.decisions:,} random codes one at a time "
                  f"(OrderLookup.order + Router.for_order):")
            _row("SQLite (store answering)", *await time_decisions(
                decider(lite_lookup, router), book_codes))
            _row("PostgreSQL (store answering)", *await time_decisions(
                decider(pg_lookup, router), book_codes))

            newest = await lite.released(args.warm)
            cached = [rng.choice(newest).code for _ in range(WARM_UP + args.decisions)]
            pg_lookup, _ = await warm(shared, pg_config)  # as it was before the lookups
            await asyncio.to_thread(pg.stop)
            _row("cache (PostgreSQL stopped: lookup refused)", *await time_decisions(
                decider(pg_lookup, router), cached))
            cache = OrderCache(args.warm)
            for o in reversed(newest):
                cache.put(o)

            async def from_cache(code: str) -> Route:
                return router.for_order(cache.get(code), set())

            _row("cache and router alone (no store asked)", *await time_decisions(
                from_cache, cached))
        finally:
            await lite.close()
            await shared.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--warm", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
