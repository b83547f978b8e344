"""An embedded SQLite order book: the default store of a single line."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from controller.clock import Clock, running_clock
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus, Upserted

T = TypeVar("T")

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of the current schema: 0 was made before backordered, shipped and
``promised_ship_at`` (a CHECK refusing the two statuses); 1 has the statuses, not the column."""

_TABLE = """(
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
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS orders_by_order ON orders (order_id)"

_COLUMNS = ("order_id", "code", "channel", "status", "carrier", "service", "route",
            "postcode", "created_at", "parcels_in_order", "promised_ship_at")
_UPSERT = (f"INSERT INTO orders ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           f"ON CONFLICT (code) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "code"))
#: Codes asked about in one ``IN (...)`` (well under SQLite's limit on parameters).
_CODES_PER_QUERY = 500

#: The virtual time a query is modelled to take (an indexed lookup takes microseconds), so
#: on a virtual clock its answer arrives at a set instant however fast the thread was.
QUERY_COST_S = 0.0001
#: How long a bulk import waits for a lock another process holds on the order book.
IMPORT_BUSY_TIMEOUT_S = 5.0


class SqliteOrderStore:
    """Order lookups by parcel code, in a worker thread of their own so the loop never waits.

    Every query runs in one dedicated thread with its own connection (a sqlite3 connection
    belongs to the thread that made it). A lookup blocked by a lock another process holds
    waits at most ``timeout_s`` in that thread and then fails, so the caller's own timeout
    fires on time and the queries behind it are not held up for longer.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 0.2,
                 clock: Clock | None = None, create: bool = True) -> None:
        self.path = str(path)
        self.create = create  # False: the book must exist; it is opened for lookups only
        self.timeout_s = timeout_s
        self._clock = clock
        self._worker: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # touched only in the worker thread
        self._columns = ", ".join(_COLUMNS)  # what _db selects for them

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        if not self.create and self.path != ":memory:":
            if not Path(self.path).is_file():
                raise sqlite3.OperationalError(f"no such order database: {self.path}")
            return sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro",
                                   timeout=busy_timeout_s, uri=True)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=busy_timeout_s)
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def add(self, orders: Iterable[Order]) -> None:
        """Insert or replace orders (the test bench's way in; blocking)."""
        try:
            with contextlib.closing(self._connect(IMPORT_BUSY_TIMEOUT_S)) as db, db:
                db.executemany(_UPSERT, [_row(o) for o in orders])
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc

    async def lookup(self, code: str) -> Order | None:
        rows = await self._in_worker(self._select, "WHERE code = ?", (code,))
        return rows[0] if rows else None

    async def released(self, limit: int) -> list[Order]:
        return await self._in_worker(
            self._select, "WHERE status = 'released' ORDER BY created_at DESC LIMIT ?",
            (limit,))

    async def upsert(self, orders: Sequence[Order]) -> Upserted:
        """Insert or replace the parcels' rows in one transaction; a code twice: the last."""
        return await self._in_worker(self._upsert, orders)

    async def find(self, code_or_order_id: str) -> list[Order]:
        return await self._in_worker(self._find, code_or_order_id)

    async def counts(self) -> dict[str, int]:
        return await self._in_worker(self._counts)

    async def channels(self) -> dict[str, int]:
        """Orders (distinct ids) by channel, busiest first."""
        rows = await self._in_worker(
            self._query, "SELECT channel, count(DISTINCT order_id) AS n FROM orders "
                         "GROUP BY channel ORDER BY n DESC, channel", ())
        return {str(channel): int(n) for channel, n in rows}

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> T:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orders")
        clock = self._clock or running_clock()
        return await clock.offload(self._worker, fn, *args, cost=QUERY_COST_S)

    def _open(self) -> sqlite3.Connection:
        """The worker thread's connection (run in the worker thread)."""
        if self._db is None:
            try:
                db = self._connect(self.timeout_s)
            except (sqlite3.Error, OSError) as exc:
                raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc
            try:
                present = {row[1] for row in db.execute("PRAGMA table_info(orders)")}
            except sqlite3.Error as exc:
                db.close()
                raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc
            # A read-only book of an older schema cannot be migrated: it reads without them.
            self._columns = ", ".join(c if c in present else f"NULL AS {c}" for c in _COLUMNS)
            self._db = db
        return self._db

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Run in the worker thread."""
        try:
            return self._open().execute(sql, params).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc

    def _select(self, where: str, params: tuple[object, ...]) -> list[Order]:
        """Run in the worker thread."""
        self._open()
        rows = self._query(f"SELECT {self._columns} FROM orders {where}", params)
        orders = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=True))
            try:
                values["status"] = OrderStatus(values["status"])
            except ValueError as exc:
                raise OrderStoreError(f"order for {values['code']}: {exc}") from exc
            orders.append(Order(**values))
        return orders

    def _find(self, key: str) -> list[Order]:
        """Run in the worker thread."""
        return (self._select("WHERE order_id = ? ORDER BY rowid", (key,))
                or self._select("WHERE code = ?", (key,)))

    def _counts(self) -> dict[str, int]:
        """Run in the worker thread."""
        counts = dict.fromkeys(OrderStatus, 0)
        for status, n in self._query("SELECT status, count(*) FROM orders GROUP BY status", ()):
            counts[status] = int(n)
        [(orders,)] = self._query("SELECT count(DISTINCT order_id) FROM orders", ())
        return {**{str(s): n for s, n in counts.items()}, "orders": int(orders)}

    def _upsert(self, orders: Sequence[Order]) -> Upserted:
        """Run in the worker thread."""
        if not self.create:
            raise OrderStoreError(f"sqlite {self.path}: opened for lookups only, not writes")
        latest = {o.code: o for o in orders}
        codes = list(latest)
        try:
            db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                known = 0
                for i in range(0, len(codes), _CODES_PER_QUERY):
                    chunk = codes[i:i + _CODES_PER_QUERY]
                    [(n,)] = db.execute(f"SELECT count(*) FROM orders WHERE code IN "
                                        f"({', '.join('?' * len(chunk))})", chunk).fetchall()
                    known += n
                db.executemany(_UPSERT, [_row(o) for o in latest.values()])
                db.commit()
            except BaseException:
                db.rollback()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc
        added = len(codes) - known
        return Upserted(added=added, updated=len(orders) - added)

    def _close_db(self) -> None:
        """Run in the worker thread."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    async def close(self) -> None:
        """Close the connection in its thread, then end the thread (a later lookup reopens)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            # After the query in hand, which waits on a lock for timeout_s at most.
            await (self._clock or running_clock()).offload(worker, self._close_db)
        except sqlite3.Error as exc:
            log.warning("sqlite %s: closing: %s", self.path, exc)
        except BaseException:
            worker.shutdown(wait=False)  # the close queued still runs, then the thread ends
            raise
        worker.shutdown(wait=True)  # idle by now: returns at once


_values = attrgetter(*_COLUMNS)


def _row(order: Order) -> tuple[object, ...]:
    values: tuple[object, ...] = _values(order)
    return values  # status, a StrEnum, binds as its text


def migrate(db: sqlite3.Connection) -> None:
    """Bring a writable order book to :data:`SCHEMA_VERSION`, keeping its rows.

    Version 0's CHECK on status refuses backordered and shipped: SQLite cannot alter a
    CHECK, so the table is rebuilt; version 1 lacks ``promised_ship_at``: it is added."""
    [(version,)] = db.execute("PRAGMA user_version").fetchall()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        [(version,)] = db.execute("PRAGMA user_version").fetchall()
        if version < SCHEMA_VERSION:
            table = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'orders'",
            ).fetchone()
            present = [row[1] for row in db.execute("PRAGMA table_info(orders)")]
            if table is None:
                db.execute(f"CREATE TABLE orders {_TABLE}")
            elif "'backordered'" not in table[0] or "'shipped'" not in table[0]:
                kept = ", ".join(c for c in present if c in _COLUMNS)
                db.execute(f"CREATE TABLE orders_migrating {_TABLE}")
                db.execute(f"INSERT INTO orders_migrating ({kept}) SELECT {kept} FROM orders")
                db.execute("DROP TABLE orders")
                db.execute("ALTER TABLE orders_migrating RENAME TO orders")
            elif "promised_ship_at" not in present:
                db.execute("ALTER TABLE orders ADD COLUMN promised_ship_at REAL")
            db.execute(_INDEX)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    except BaseException:
        db.rollback()
        raise
