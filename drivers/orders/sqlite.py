"""An embedded SQLite order book: the default store of a single line.

Change feed: triggers on ``orders`` append the code of every row written, by any writer
(another process's ``orders import`` too), to the ``order_changes`` log, numbered by ``seq``
in commit order (writers are serialised). :meth:`SqliteOrderStore.changes` polls the log past
its watermark, the last ``seq`` it has yielded, every ``poll_s``. The log keeps the last
:data:`KEEP_CHANGES` entries: a feed that falls further behind logs that it lost changes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from controller.clock import Clock, running_clock
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus, Upserted

T = TypeVar("T")

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""``PRAGMA user_version`` of the current schema: 0 was made before backordered, shipped and
``promised_ship_at`` (a CHECK refusing the two statuses); 1 has the statuses, not the column;
2 has no change log (``order_changes`` and its triggers)."""

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
# A rowid table (no index of its own): AUTOINCREMENT keeps seq growing even once pruned empty.
_CHANGE_LOG = (
    "CREATE TABLE IF NOT EXISTS order_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "code TEXT NOT NULL)",
    *(f"CREATE TRIGGER IF NOT EXISTS orders_{name} AFTER {event} ON orders "
      "BEGIN INSERT INTO order_changes (code) VALUES (NEW.code); END"
      for name, event in (("inserted", "INSERT"), ("updated", "UPDATE"))))

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
#: How often the change feed reads the log, by default.
CHANGES_POLL_S = 1.0
#: A poll waits this share of ``timeout_s`` for a lock (a writer committing), then gives up
#: until the next: the lookups queued behind it are not held up for long.
_POLL_BUSY = 0.25
#: Log entries read in one query (the worker thread is held for no longer than that).
_CHANGES_PER_QUERY = 500
#: Change log entries a write keeps (~20 MB a million): a feed further behind has lost some.
KEEP_CHANGES = 1_000_000


class SqliteOrderStore:
    """Order lookups by parcel code, in a worker thread of their own so the loop never waits.

    Every query runs in one dedicated thread with its own connection (a sqlite3 connection
    belongs to the thread that made it). A lookup blocked by a lock another process holds
    waits at most ``timeout_s`` in that thread and then fails, so the caller's own timeout
    fires on time and the queries behind it are not held up for longer. The change feed's
    polls there wait less for a lock: a book locked longer is polled again ``poll_s`` later.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 0.2,
                 clock: Clock | None = None, create: bool = True,
                 poll_s: float = CHANGES_POLL_S) -> None:
        self.path = str(path)
        self.create = create  # False: the book must exist; it is opened for lookups only
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._generation = 0  # close() ends the change feeds of the generation before
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
                db.executemany(_UPSERT, (_row(o) for o in orders))
                _prune_changes(db)
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
        db = self._open()
        try:
            # row by row: a warming read of the whole cache never holds every row's texts
            # beside the orders made of them
            return [_order(row) for row in
                    db.execute(f"SELECT {self._columns} FROM orders {where}", params)]
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc

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
                _prune_changes(db)
                db.commit()
            except BaseException:
                db.rollback()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc
        added = len(codes) - known
        return Upserted(added=added, updated=len(orders) - added)

    # --- change feed -----------------------------------------------------------------------

    async def changes(self) -> AsyncGenerator[Order, None]:
        """Every order written by anyone from now on, polled every ``poll_s``, until
        :meth:`close`. While the book cannot be read (locked, unreadable, of a schema with no
        change log) it is polled on; what changed meanwhile follows once it answers."""
        generation = self._generation
        clock = self._clock or running_clock()
        since: int | None = None  # the watermark: the last seq yielded
        no_log = failing = False
        while generation == self._generation:
            try:
                if since is None:
                    since = await self._in_worker(self._poll, self._log_end)
                    if since is None:
                        no_log = True
                    elif no_log:  # made by an import since: all it logged is news
                        since = 0
                while since is not None and generation == self._generation:
                    seqs, orders = await self._in_worker(self._poll, self._changed_since,
                                                         since)
                    if seqs and seqs[0] > since + 1:
                        log.warning("sqlite %s: change feed: %d changes were pruned from the "
                                    "log before it read them", self.path, seqs[0] - since - 1)
                    if failing:
                        log.info("sqlite %s: change feed: the book answers again", self.path)
                        failing = False
                    for order in orders:
                        if generation != self._generation:
                            return
                        yield order
                    if not seqs:
                        break
                    since = seqs[-1]
                    if len(seqs) < _CHANGES_PER_QUERY:
                        break
            except OrderStoreError as exc:
                if not failing and generation == self._generation:
                    log.warning("%s; change feed: polling on every %g s", exc, self.poll_s)
                failing = True
            if generation == self._generation:
                await clock.sleep(self.poll_s)

    def _poll(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)``, waiting a short while only for a lock (run in the worker thread)."""
        db = self._open()
        try:
            db.execute(f"PRAGMA busy_timeout = {round(self.timeout_s * 1000 * _POLL_BUSY)}")
        except sqlite3.Error as exc:
            raise OrderStoreError(f"sqlite {self.path}: {exc}") from exc
        try:
            return fn(*args)
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute(f"PRAGMA busy_timeout = {round(self.timeout_s * 1000)}")

    def _log_end(self) -> int | None:
        """The log's last seq (0 if empty), None if the book has none yet: read only, made
        before it; an import upgrades it (run in the worker thread)."""
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'order_changes'", ()):
            return None
        [(end,)] = self._query("SELECT coalesce(max(seq), 0) FROM order_changes", ())
        return int(end)

    def _changed_since(self, since: int) -> tuple[list[int], list[Order]]:
        """The log's next seqs past ``since`` and the orders they name as they are now, each
        once (run in the worker thread)."""
        rows = self._query(
            f"SELECT c.seq, {', '.join(f'o.{c}' for c in _COLUMNS)} FROM order_changes AS c "
            "JOIN orders AS o ON o.code = c.code WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
            (since, _CHANGES_PER_QUERY))
        latest: dict[str, Order] = {}
        for row in rows:
            order = _order(row[1:])
            latest.pop(order.code, None)  # where it changed last
            latest[order.code] = order
        return [int(row[0]) for row in rows], list(latest.values())

    def _close_db(self) -> None:
        """Run in the worker thread."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    async def close(self) -> None:
        """Close the connection in its thread, then end the thread (a later lookup reopens)
        and the change feeds."""
        self._generation += 1
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


def _order(row: Sequence[Any]) -> Order:
    values = dict(zip(_COLUMNS, row, strict=True))
    try:
        values["status"] = OrderStatus(values["status"])
    except ValueError as exc:
        raise OrderStoreError(f"order for {values['code']}: {exc}") from exc
    return Order(**values)


def _prune_changes(db: sqlite3.Connection) -> None:
    """Drop the change log's entries but the last :data:`KEEP_CHANGES` (in the writer's
    transaction)."""
    db.execute("DELETE FROM order_changes WHERE seq <= "
               "(SELECT max(seq) FROM order_changes) - ?", (KEEP_CHANGES,))


def migrate(db: sqlite3.Connection) -> None:
    """Bring a writable order book to :data:`SCHEMA_VERSION`, keeping its rows.

    Version 0's CHECK on status refuses backordered and shipped: SQLite cannot alter a
    CHECK, so the table is rebuilt; version 1 lacks ``promised_ship_at``: it is added;
    version 2 lacks the change log: it is made, empty (the rows already there are not news)."""
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
            for statement in _CHANGE_LOG:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    except BaseException:
        db.rollback()
        raise
