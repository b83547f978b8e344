"""The durable parcel journal: every inducted parcel and its one final disposition.

A parcel is written when inducted and again, exactly once, when it reaches its final
disposition; the count only moves after that write is committed. Parcels left open by a
crash are closed as LOST when the journal is opened again. A write the storage refuses
(disk full, I/O error) raises :class:`JournalError`: outcomes can no longer be made durable.
Beside the parcels, the ``audit`` table keeps every technician's command and its result.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from controller.clock import Clock
from controller.disposition import Disposition
from controller.errors import JournalError
from controller.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS parcels (
    parcel_id INTEGER PRIMARY KEY,
    inducted_enc INTEGER NOT NULL,
    inducted_at REAL NOT NULL,
    length_mm REAL,
    code TEXT,
    order_id TEXT,
    disposition TEXT,
    bin TEXT,
    reason TEXT,
    decided_at REAL,
    final_at REAL,
    order_created_at REAL,
    laps INTEGER
);
CREATE INDEX IF NOT EXISTS parcels_open ON parcels (disposition) WHERE disposition IS NULL;
CREATE INDEX IF NOT EXISTS parcels_code ON parcels (code, parcel_id);
CREATE TABLE IF NOT EXISTS audit (
    at REAL NOT NULL,
    wall TEXT NOT NULL,
    who TEXT NOT NULL,
    verb TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT
);
"""
MAX_PARCEL_ID = 2**63 - 1  # SQLite's largest integer
_FIND_BY_ID = "SELECT * FROM parcels WHERE parcel_id = ?"
_FIND_BY_CODE = "SELECT * FROM parcels WHERE code = ? ORDER BY parcel_id DESC LIMIT 1"


@dataclass(frozen=True, slots=True)
class FinalRecord:
    """A parcel's final disposition as written to the journal."""

    parcel_id: int
    disposition: Disposition
    bin: str
    reason: str
    code: str | None
    order_id: str | None
    length_mm: float | None
    decided_at: float | None
    final_at: float
    order_created_at: float | None
    laps: int = 1  # passes round a loop (lap 1 is the first); 1 on a line with a reject end


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A technician's command as carried out: who, what, when, and what came of it."""

    at: float  # clock time
    wall: str  # ISO 8601, UTC
    who: str
    verb: str
    args: Mapping[str, object]
    status: str  # "ok" or "error"
    result: object  # the reply's data, or its error


class Journal:
    """SQLite journal written from one dedicated thread, so the event loop never waits on fsync.

    Each committed write is reported to ``telemetry`` in real seconds, timed on the writer
    thread (the storage's own time, whatever the clock), so a virtual-clock shift measures it
    as well.
    """

    def __init__(self, path: str | Path, clock: Clock, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self._clock = clock
        self._synchronous = synchronous
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._db: sqlite3.Connection | None = None
        self.telemetry: Telemetry = NO_TELEMETRY

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the writer thread; a storage failure becomes a JournalError."""
        try:
            return await self._clock.offload(self._writer, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal {self.path}: {what} failed: {exc}") from exc

    async def open(self) -> list[int]:
        """Open (creating) the journal; close parcels a crash left open as LOST; return them."""
        return await self._call("open", self._open, self._clock.now())

    def _open(self, now: float) -> list[int]:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.executescript(SCHEMA)
        _add_laps(db)
        self._db = db
        open_ids = [r[0] for r in db.execute(
            "SELECT parcel_id FROM parcels WHERE disposition IS NULL ORDER BY parcel_id")]
        with db:
            db.execute(
                "UPDATE parcels SET disposition = ?, bin = 'UNKNOWN', final_at = ?, "
                "reason = 'controller restarted while the parcel was tracked' "
                "WHERE disposition IS NULL", (Disposition.LOST.value, now))
        return open_ids

    async def next_parcel_id(self) -> int:
        return await self._call("reading the last parcel id", self._next_id)

    def _next_id(self) -> int:
        assert self._db is not None
        (last,) = self._db.execute("SELECT COALESCE(MAX(parcel_id), 0) FROM parcels").fetchone()
        return int(last) + 1

    async def inducted(self, parcel_id: int, enc: int, at: float) -> None:
        await self._call(f"writing parcel {parcel_id}", self._write,
                         "INSERT INTO parcels (parcel_id, inducted_enc, inducted_at) "
                         "VALUES (?, ?, ?)", (parcel_id, enc, at))

    async def finalise(self, record: FinalRecord) -> bool:
        """Write the final disposition; False if the parcel already had one (never overwritten)."""
        return await self._call(f"writing parcel {record.parcel_id}'s disposition",
                                self._finalise, record)

    def _finalise(self, r: FinalRecord) -> bool:
        assert self._db is not None
        started = time.perf_counter()
        with self._db:
            cursor = self._db.execute(
                "UPDATE parcels SET disposition = ?, bin = ?, reason = ?, code = ?, order_id = ?, "
                "length_mm = ?, decided_at = ?, final_at = ?, order_created_at = ?, laps = ? "
                "WHERE parcel_id = ? AND disposition IS NULL",
                (r.disposition.value, r.bin, r.reason, r.code, r.order_id, r.length_mm,
                 r.decided_at, r.final_at, r.order_created_at, r.laps, r.parcel_id))
        self.telemetry.observe_journal_write(time.perf_counter() - started)
        return cursor.rowcount == 1

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        assert self._db is not None
        started = time.perf_counter()
        with self._db:
            self._db.execute(sql, params)
        self.telemetry.observe_journal_write(time.perf_counter() - started)

    async def audit(self, record: AuditRecord) -> None:
        await self._call(f"writing the audit of {record.verb}", self._write,
                         "INSERT INTO audit (at, wall, who, verb, args, status, result) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (record.at, record.wall, record.who, record.verb,
                          json.dumps(dict(record.args), default=str), record.status,
                          json.dumps(record.result, default=str)))

    async def audit_records(self) -> list[dict[str, Any]]:
        """The audit trail, oldest first, its ``args`` and ``result`` decoded."""
        return await self._call("reading the audit", self._audit_records)

    def _audit_records(self) -> list[dict[str, Any]]:
        assert self._db is not None
        cursor = self._db.execute("SELECT * FROM audit ORDER BY rowid")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor]
        for row in rows:
            row["args"], row["result"] = json.loads(row["args"]), json.loads(row["result"])
        return rows

    async def find_parcel(self, parcel_id: int | None = None,
                          code: str | None = None) -> dict[str, Any] | None:
        """A parcel's record by its id, or the newest one of a code; None if there is none."""
        return await self._call("finding a parcel", self._find, parcel_id, code)

    def _find(self, parcel_id: int | None, code: str | None) -> dict[str, Any] | None:
        assert self._db is not None
        return _find_parcel(self._db, parcel_id, code)

    async def records(self) -> list[dict[str, Any]]:
        return await self._call("reading", self._records)

    def _records(self) -> list[dict[str, Any]]:
        assert self._db is not None
        cursor = self._db.execute("SELECT * FROM parcels ORDER BY parcel_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    async def close(self) -> None:
        if self._db is not None:
            try:
                await self._call("closing", self._db.close)
            except JournalError as exc:  # what was committed stays; nothing more to do
                log.warning("%s", exc)
            self._db = None
        self._writer.shutdown(wait=True)


def _add_laps(db: sqlite3.Connection) -> None:
    """A journal written before loops were known gets the ``laps`` column (NULL: one lap)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(parcels)")}
    if "laps" not in columns:
        with db:
            db.execute("ALTER TABLE parcels ADD COLUMN laps INTEGER")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Another process's journal, read-only (the emulator reading the controller's outcome)."""
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return []
    try:
        cursor = db.execute("SELECT * FROM parcels ORDER BY parcel_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]
    except sqlite3.Error:
        return []
    finally:
        db.close()


def read_parcel(path: str | Path, parcel_or_code: str) -> dict[str, Any] | None:
    """A parcel's record from a journal file, read-only: an integer is a parcel id, else a code.

    An integer no parcel has is tried as a code (a shipment code is digits too). A journal
    that does not exist (or is not one) has no parcels: None.
    """
    text = parcel_or_code.strip()
    parcel_id = int(text) if text.isascii() and text.isdigit() else None
    if parcel_id is not None and parcel_id > MAX_PARCEL_ID:
        parcel_id = None
    if not Path(path).is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        found = _find_parcel(db, parcel_id, None) if parcel_id is not None else None
        return found or _find_parcel(db, None, parcel_or_code)
    except sqlite3.Error:
        return None
    finally:
        db.close()


def _find_parcel(db: sqlite3.Connection, parcel_id: int | None,
                 code: str | None) -> dict[str, Any] | None:
    if parcel_id is not None:
        cursor = db.execute(_FIND_BY_ID, (parcel_id,))
    elif code is not None:
        cursor = db.execute(_FIND_BY_CODE, (code,))
    else:
        return None
    row = cursor.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cursor.description]
    return dict(zip(names, row, strict=True))
