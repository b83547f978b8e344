"""An embedded SQLite order book: the default store of a single line."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL,
    code TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('released', 'held', 'cancelled')),
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


class SqliteOrderStore:
    """Order lookups by parcel code; an indexed lookup takes microseconds, so it runs inline."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=1.0)
            db.executescript(SCHEMA)
            self._local.db = db
        return db

    def add(self, orders: Iterable[Order]) -> None:
        """Insert or replace orders (the test bench's and the importer's way in)."""
        rows = [tuple(str(o.status) if c == "status" else getattr(o, c) for c in _COLUMNS)
                for o in orders]
        try:
            with self._db() as db:
                db.executemany(
                    f"INSERT OR REPLACE INTO orders ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
        except sqlite3.Error as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc

    async def lookup(self, code: str) -> Order | None:
        rows = self._select("WHERE code = ?", (code,))
        return rows[0] if rows else None

    async def released(self, limit: int) -> list[Order]:
        return self._select("WHERE status = 'released' ORDER BY created_at DESC LIMIT ?",
                            (limit,))

    def _select(self, where: str, params: tuple[object, ...]) -> list[Order]:
        try:
            rows = self._db().execute(
                f"SELECT {', '.join(_COLUMNS)} FROM orders {where}", params).fetchall()
        except sqlite3.Error as exc:
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

    async def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
