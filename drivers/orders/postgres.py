"""A PostgreSQL order book several lines share, with a change feed that keeps caches fresh.

Queries go through a few asyncpg connections kept open; every lookup is bounded by the line's
``timeout_ms`` (a server that stops answering costs a lookup that long, then
:class:`OrderStoreError`), and a connection that timed out or broke is dropped, so the store
reconnects by itself once the server is back. The password is read from ``password_file``
at each (re)connect.

Change feed: statement triggers on ``orders`` send ``NOTIFY orders_changed`` with the codes
the statement wrote (newline-separated, several notifications for a big import), delivered
when the writer commits. :meth:`PostgresOrderStore.changes` LISTENs on a connection of its own
and yields the changed orders. Notifications sent while it is disconnected are lost, so after
every (re)connect it reloads the orders whose ``changed_at`` (set by :meth:`upsert`; a writer
of its own must set it too) is later than the last moment it knew it was listening, less
:data:`RELOAD_MARGIN_S` (for a writer's transaction that began before and committed after).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from controller.config import OrderStoreConfig
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStatus, Upserted

log = logging.getLogger(__name__)

CHANNEL = "orders_changed"
_COLUMNS = ("order_id", "code", "channel", "status", "carrier", "service", "route",
            "postcode", "created_at", "parcels_in_order", "promised_ship_at")
_STATUS = _COLUMNS.index("status")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM orders"

#: Codes per notification: their bytes, newline-separated (a payload is at most 8000 bytes).
_PAYLOAD_BYTES = 7000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL,
    code TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('released', 'held', 'cancelled', 'backordered', 'shipped')),
    carrier TEXT NOT NULL,
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    postcode TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    parcels_in_order INTEGER NOT NULL DEFAULT 1,
    promised_ship_at DOUBLE PRECISION,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS orders_by_order ON orders (order_id, seq);
CREATE INDEX IF NOT EXISTS orders_released ON orders (created_at DESC)
    WHERE status = 'released';
CREATE OR REPLACE FUNCTION orders_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', string_agg(code, E'\\n'))
    FROM (SELECT code, sum(octet_length(code) + 1) OVER (ROWS UNBOUNDED PRECEDING)
                       / {_PAYLOAD_BYTES} AS part
          FROM changed) AS parts
    GROUP BY part;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER orders_inserted AFTER INSERT ON orders
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orders_notify_change();
CREATE OR REPLACE TRIGGER orders_updated AFTER UPDATE ON orders
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orders_notify_change();
"""
#: Serialises schema creation between lines starting at once (an arbitrary, fixed key).
_SCHEMA_LOCK = 0x50524F52

_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS orders_upsert ON COMMIT DELETE ROWS AS "
          f"SELECT {', '.join(_COLUMNS)} FROM orders WITH NO DATA")
_UPSERT = (f"WITH up AS (INSERT INTO orders ({', '.join(_COLUMNS)}) "
           f"SELECT {', '.join(_COLUMNS)} FROM orders_upsert "
           f"ON CONFLICT (code) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "code")
           + ", changed_at = clock_timestamp()"
           + " RETURNING (xmax = 0) AS added) SELECT count(*) FILTER (WHERE added) FROM up")

#: Writes and reports (imports, counts) are not the line's lookups: they get this long.
BOOK_TIMEOUT_S = 60.0
#: Lookups in flight at once on one line.
POOL_SIZE = 4
#: Rows a warming read of released orders fetches a round trip.
RELEASED_PAGE = 2_000
#: A writer's transaction longer than this that commits while the feed is disconnected may
#: be missed by the reload after it reconnects.
RELOAD_MARGIN_S = 60.0
#: How often the feed checks its connection (a silent server is a lost one).
FEED_CHECK_S = 1.0
#: The feed's wait before connecting again after it lost the server.
FEED_RETRY_S = 0.5
#: Changed codes fetched in one query.
_CHANGES_PER_QUERY = 1000

_SERVER_SETTINGS = {"application_name": "parcel-sorter"}
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _order(row: asyncpg.Record) -> Order:
    values = list(row)  # in _COLUMNS' order, which is Order's
    try:
        values[_STATUS] = OrderStatus(values[_STATUS])
    except ValueError as exc:
        raise OrderStoreError(f"order for {values[1]}: {exc}") from exc
    return Order(*values)


def _row(order: Order) -> tuple[object, ...]:
    return tuple(str(order.status) if c == "status" else getattr(order, c) for c in _COLUMNS)


class PostgresOrderStore:
    """Order lookups and the order book in a PostgreSQL database (``order_store.dsn``)."""

    def __init__(self, config: OrderStoreConfig, *, create: bool = True) -> None:
        """``create=False`` (``run``): the table must exist (it is not made) and the book is
        opened for lookups only."""
        if not config.dsn:
            raise OrderStoreError("postgresql order store: no dsn")
        self.config = config
        self.create = create
        self.dsn = config.dsn
        parts = urlsplit(config.dsn)
        self.where = f"postgresql {parts.hostname or 'localhost'}:{parts.port or 5432}" \
                     f"{parts.path or ''}"
        self.timeout_s = config.timeout_ms / 1000
        # idle connections, and None for each one not open: at most POOL_SIZE in all
        self._slots: asyncio.Queue[asyncpg.Connection | None] | None = None
        self._schema_ready = False
        self._feeds: set[asyncpg.Connection] = set()
        self._generation = 0  # close() ends the change feeds of the generation before

    # --- connections -----------------------------------------------------------------------

    def _password(self) -> str | None:
        if self.config.password_file is None:
            return None
        path = Path(self.config.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OrderStoreError(f"{self.where}: password_file {path}: {exc}") from exc
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise OrderStoreError(f"{self.where}: password_file {path}: line 1: empty")
        return lines[0]

    async def _connect(self, timeout_s: float) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, password=self._password, timeout=timeout_s,
            server_settings=_SERVER_SETTINGS)
        return conn

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        if self._schema_ready:
            return
        if await conn.fetchval("SELECT to_regclass('orders') IS NULL"):
            if not self.create:
                raise OrderStoreError(f"{self.where}: no orders table (import orders first)")
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(SCHEMA)
        self._schema_ready = True

    @contextlib.asynccontextmanager
    async def _connection(self, what: str, timeout_s: float
                          ) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the store's own for one query or transaction, all of it within
        ``timeout_s``; any failure is an OrderStoreError naming ``what``.

        Up to :data:`POOL_SIZE` connections, kept open between queries. One that failed or
        timed out is terminated (its state is unknown), so the next query connects anew:
        that is the reconnect. (asyncpg's own pool costs ~150 us a query to acquire and
        release; these cost none.)
        """
        if self._slots is None:
            self._slots = asyncio.Queue()
            for _ in range(POOL_SIZE):
                self._slots.put_nowait(None)
        slots = self._slots
        conn: asyncpg.Connection | None = None
        healthy = False
        try:
            async with asyncio.timeout(timeout_s):
                conn = await slots.get()
                if conn is None or conn.is_closed():
                    conn = await self._connect(timeout_s)
                    await self._ensure_schema(conn)
                yield conn
            healthy = True
        except _ERRORS as exc:
            raise OrderStoreError(f"{self.where}: {what}: "
                                  f"{str(exc) or type(exc).__name__}") from exc
        finally:
            keep = healthy and slots is self._slots  # not after close()
            if conn is not None and not keep:
                conn.terminate()
            slots.put_nowait(conn if keep else None)

    async def _run(self, what: str, timeout_s: float, query: str, *args: object) -> list[Any]:
        """``query``'s rows within ``timeout_s``, or OrderStoreError naming ``what``."""
        async with self._connection(what, timeout_s) as conn:
            rows: list[Any] = await conn.fetch(query, *args)
        return rows

    # --- OrderStore ------------------------------------------------------------------------

    async def lookup(self, code: str) -> Order | None:
        rows = await self._run("lookup", self.timeout_s, f"{_SELECT} WHERE code = $1", code)
        return _order(rows[0]) if rows else None

    async def released(self, limit: int) -> list[Order]:
        # a page of rows at a time: a warming read of the whole cache never holds every
        # row's texts beside the orders made of them
        orders: list[Order] = []
        async with self._connection("released orders", BOOK_TIMEOUT_S) as conn, \
                conn.transaction(readonly=True):
            cursor = await conn.cursor(
                f"{_SELECT} WHERE status = 'released' ORDER BY created_at DESC LIMIT $1", limit)
            while rows := await cursor.fetch(RELEASED_PAGE):
                orders += map(_order, rows)
        return orders

    async def close(self) -> None:
        """Close the connections and end the change feeds (a later call reconnects)."""
        self._generation += 1
        for conn in list(self._feeds):
            conn.terminate()
        self._feeds.clear()
        slots, self._slots = self._slots, None
        while slots is not None and not slots.empty():
            conn = slots.get_nowait()
            if conn is not None:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await conn.close()
                except _ERRORS:
                    conn.terminate()

    # --- OrderBook -------------------------------------------------------------------------

    async def upsert(self, orders: Sequence[Order]) -> Upserted:
        """Insert or replace the parcels' rows in one transaction; a code twice: the last."""
        if not self.create:
            raise OrderStoreError(f"{self.where}: opened for lookups only, not writes")
        latest = {o.code: o for o in orders}
        if not latest:
            return Upserted(added=0, updated=0)
        records = [_row(o) for o in latest.values()]
        async with self._connection("upsert", BOOK_TIMEOUT_S) as conn, conn.transaction():
            await conn.execute(_STAGE)
            await conn.copy_records_to_table("orders_upsert", records=records,
                                             columns=_COLUMNS)
            added = int(await conn.fetchval(_UPSERT))
        return Upserted(added=added, updated=len(orders) - added)

    async def find(self, code_or_order_id: str) -> list[Order]:
        rows = await self._run(
            "find", BOOK_TIMEOUT_S,
            f"{_SELECT} WHERE order_id = $1 ORDER BY seq", code_or_order_id)
        if not rows:
            rows = await self._run("find", BOOK_TIMEOUT_S, f"{_SELECT} WHERE code = $1",
                                   code_or_order_id)
        return [_order(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((str(s) for s in OrderStatus), 0)
        rows = await self._run("counts", BOOK_TIMEOUT_S,
                               "SELECT status, count(*) FROM orders GROUP BY status")
        for status, n in rows:
            counts[status] = int(n)
        [(distinct,)] = await self._run("counts", BOOK_TIMEOUT_S,
                                        "SELECT count(DISTINCT order_id) FROM orders")
        return {**counts, "orders": int(distinct)}

    async def channels(self) -> dict[str, int]:
        """Orders (distinct ids) by channel, busiest first."""
        rows = await self._run("channels", BOOK_TIMEOUT_S,
                               "SELECT channel, count(DISTINCT order_id) AS n FROM orders "
                               "GROUP BY channel ORDER BY n DESC, channel")
        return {str(channel): int(n) for channel, n in rows}

    # --- change feed -----------------------------------------------------------------------

    async def changes(self) -> AsyncGenerator[Order, None]:
        """Every order written by anyone from now on, as it is committed, until :meth:`close`.

        While the server is away it retries every :data:`FEED_RETRY_S`; once back, it first
        yields what changed meanwhile (the reload), then the notified changes again.
        """
        generation = self._generation
        since: datetime | None = None
        while generation == self._generation:
            conn: asyncpg.Connection | None = None
            try:
                codes: asyncio.Queue[str | None] = asyncio.Queue()
                async with asyncio.timeout(BOOK_TIMEOUT_S):
                    conn = await self._connect(self.timeout_s)
                    self._feeds.add(conn)
                    await self._ensure_schema(conn)
                    await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload, q=codes:
                                            [q.put_nowait(code) for code in payload.split("\n")])
                    conn.add_termination_listener(lambda _c, q=codes: q.put_nowait(None))
                    listening: datetime = await conn.fetchval("SELECT clock_timestamp()")
                    reload = [] if since is None else await conn.fetch(
                        f"{_SELECT} WHERE changed_at >= $1 ORDER BY changed_at",
                        since - timedelta(seconds=RELOAD_MARGIN_S))
                since = listening
                for row in reload:
                    yield _order(row)
                while generation == self._generation:
                    try:
                        async with asyncio.timeout(FEED_CHECK_S):
                            code = await codes.get()
                    except TimeoutError:  # quiet: is the server still there?
                        async with asyncio.timeout(self.timeout_s):
                            since = await conn.fetchval("SELECT clock_timestamp()")
                        continue
                    if code is None:
                        break  # the connection is gone
                    batch = {code}
                    while not codes.empty() and len(batch) < _CHANGES_PER_QUERY:
                        more = codes.get_nowait()
                        if more is None:
                            codes.put_nowait(None)
                            break
                        batch.add(more)
                    async with asyncio.timeout(BOOK_TIMEOUT_S):
                        rows = await conn.fetch(f"{_SELECT} WHERE code = ANY($1::text[])",
                                                list(batch))
                    for row in rows:
                        yield _order(row)
            except _ERRORS as exc:
                if generation == self._generation:
                    log.warning("%s: change feed: %s; reconnecting", self.where,
                                str(exc) or type(exc).__name__)
            finally:
                if conn is not None:
                    self._feeds.discard(conn)
                    conn.terminate()
            if generation == self._generation:
                await asyncio.sleep(FEED_RETRY_S)
