"""An embedded SQLite order book: the default store of a single line."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from controller.clock import Clock, running_clock
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus

T = TypeVar("T")

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL,
    code TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('released', 'held', 'cancelled', 'backordered', 'shipped')),
    carrier TEXT NOT NULL,
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    postcode TEXT NOT NULL,
    created_at REAL NOT NULL,
    parcels_in_order INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS orders_by_order ON orders (order_id);
"""

_COLUMNS = ("order_id", "code", "channel", "status", "carrier", "service", "route",
            "postcode", "created_at", "parcels_in_order")

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
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def add(self, orders: Iterable[Order]) -> None:
        """Insert or replace orders (the test bench's and the importer's way in; blocking)."""
        rows = [tuple(str(o.status) if c == "status" else getattr(o, c) for c in _COLUMNS)
                for o in orders]
        try:
            with contextlib.closing(self._connect(IMPORT_BUSY_TIMEOUT_S)) as db, db:
                db.executemany(
                    f"INSERT OR REPLACE INTO orders ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc

    async def lookup(self, code: str) -> Order | None:
        rows = await self._in_worker(self._select, "WHERE code = ?", (code,))
        return rows[0] if rows else None

    async def released(self, limit: int) -> list[Order]:
        return await self._in_worker(
            self._select, "WHERE status = 'released' ORDER BY created_at DESC LIMIT ?",
            (limit,))

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> T:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orders")
        clock = self._clock or running_clock()
        return await clock.offload(self._worker, fn, *args, cost=QUERY_COST_S)

    def _select(self, where: str, params: tuple[object, ...]) -> list[Order]:
        """Run in the worker thread."""
        try:
            if self._db is None:
                self._db = self._connect(self.timeout_s)
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM orders {where}", params).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc
        orders = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=True))
            try:
                values["status"] = OrderStatus(values["status"])
            except ValueError as exc:
                raise OrderStoreError(f"order for {values['code']}: {exc}") from exc
            orders.append(Order(**values))
        return orders

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
