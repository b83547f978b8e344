"""The per-order side of the business KPIs: the journal's parcels and each order's figures.

The journal's rows as parcels (and the epoch second its clock started), the order book they
are read against, each parcel's verdict (missorted, wrong order information, in a bin its plan
allows) and each order's row: complete, on time, perfect or why not. The shift and report
totals built on them are :mod:`controller.business_kpis`'s.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from controller.disposition import END_OF_LINE, Disposition
from controller.kpis import UNKNOWN_BIN
from controller.orders import Order, OrderStatus

_IN_BIN = (Disposition.SORTED.value, Disposition.DEST_FULL.value)
_NOT_IN_A_BIN = (END_OF_LINE, UNKNOWN_BIN, "", None)
_NOT_TO_SHIP = (OrderStatus.HELD, OrderStatus.CANCELLED, OrderStatus.BACKORDERED)


class JournalDataError(ValueError):
    """A journal row the KPIs cannot read; the message names the parcel and the field."""


class OrderFinder(Protocol):
    """The order book as the KPIs read it (:class:`controller.orders.OrderBook` is one)."""

    async def find(self, code_or_order_id: str) -> list[Order]:
        """The parcels of the order with this id, or the one parcel with this code."""
        ...


class OrdersByCode:
    """An order book held in memory, code -> parcel's order (tests, an export already read)."""

    def __init__(self, orders: Mapping[str, Order] | Iterable[Order]) -> None:
        rows = orders.values() if isinstance(orders, Mapping) else orders
        self._by_code = {o.code: o for o in rows}

    async def find(self, code_or_order_id: str) -> list[Order]:
        if code_or_order_id in self._by_code:
            return [self._by_code[code_or_order_id]]
        return [o for o in self._by_code.values() if o.order_id == code_or_order_id]


@dataclass(frozen=True, slots=True)
class JournalParcel:
    """One journal row as the KPIs read it; times are the controller's clock seconds."""

    parcel_id: int
    inducted_at: float
    disposition: str | None  # None: still open
    bin: str | None
    code: str | None
    order_id: str | None
    final_at: float | None
    length_mm: float | None = None  # at the induction photo-eye: the parcel's size class

    @property
    def in_bin(self) -> bool:
        """Sorted into a bin (primary or, its primary full, an alternate or the overflow)."""
        return self.disposition in _IN_BIN and self.bin not in _NOT_IN_A_BIN


def journal_parcels(rows: Iterable[Mapping[str, Any]],
                    source: str = "journal") -> list[JournalParcel]:
    """Journal rows (``controller.journal.read_records``) as parcels; a bad row raises
    :class:`JournalDataError` naming the parcel and the field."""
    parcels = []
    known = {d.value for d in Disposition}
    for row in rows:
        pid = row.get("parcel_id")
        where = f"{source}: parcel {pid}"
        if not isinstance(pid, int):
            raise JournalDataError(f"{source}: a row with parcel_id {pid!r}: not an integer")
        inducted = _number(row.get("inducted_at"), f"{where}: inducted_at")
        disposition = row.get("disposition")
        if disposition is not None and disposition not in known:
            raise JournalDataError(f"{where}: disposition {disposition!r}: not a known one")
        final = row.get("final_at")
        final_at = None if final is None else _number(final, f"{where}: final_at")
        if disposition is not None and final_at is None:
            raise JournalDataError(f"{where}: final_at: missing for a finished parcel")
        parcels.append(JournalParcel(
            parcel_id=pid, inducted_at=inducted, disposition=disposition,
            bin=_text(row.get("bin"), f"{where}: bin"), code=_text(row.get("code"),
                                                                   f"{where}: code"),
            order_id=_text(row.get("order_id"), f"{where}: order_id"), final_at=final_at,
            length_mm=None if row.get("length_mm") is None
            else _number(row["length_mm"], f"{where}: length_mm")))
    return parcels


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JournalDataError(f"{what}: {value!r} is not a finite number")
    return float(value)


def _text(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise JournalDataError(f"{what}: {value!r} is not text")


def journal_clock_start(path: str | Path) -> float | None:
    """The epoch second at which the journal's clock read 0, if the journal tells it.

    From a ``meta`` table's ``clock_start`` when the journal keeps one, else from the audit
    trail (each command carries its clock time and its wall time); None when neither does.
    """
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'clock_start'").fetchone()
            if row is not None:
                return float(row[0])
        if "audit" in tables:
            offsets = []
            for at, wall in db.execute("SELECT at, wall FROM audit"):
                try:
                    offsets.append(datetime.fromisoformat(wall).timestamp() - float(at))
                except (TypeError, ValueError):
                    continue
            if offsets:
                return statistics.median(offsets)
    except (sqlite3.Error, ValueError):
        return None
    finally:
        db.close()
    return None


async def orders_for(parcels: Iterable[JournalParcel], book: OrderFinder) -> dict[str, Order]:
    """Every parcel of every order the journal saw a code of, by code."""
    found: dict[str, Order] = {}
    order_ids: set[str] = set()
    for parcel in parcels:
        if parcel.code and parcel.code not in found:
            for order in await book.find(parcel.code):
                if order.code == parcel.code:
                    found[order.code] = order
                    order_ids.add(order.order_id)
        if parcel.order_id:
            order_ids.add(parcel.order_id)
    for order_id in sorted(order_ids):
        for order in await book.find(order_id):
            if order.order_id == order_id:
                found.setdefault(order.code, order)
    return found


def order_data_problem(order: Order) -> str | None:
    """Why an order's data cannot route or ship it, or None if it can."""
    for name in ("order_id", "code", "carrier", "service", "route", "postcode"):
        if not str(getattr(order, name)).strip():
            return f"{name} is empty"
    if order.parcels_in_order < 1:
        return f"parcels_in_order is {order.parcels_in_order}"
    if not math.isfinite(order.created_at):
        return "created_at is not a number"
    if order.promised_ship_at is not None and order.promised_ship_at < order.created_at:
        return "promised to ship before it was created"
    return None


@dataclass(frozen=True, slots=True)
class OrderKpis:
    """One order as the shift handled it; times in epoch seconds."""

    order_id: str
    status: str
    parcels: int  # the order's parcels (the book's, or parcels_in_order if more)
    seen: int  # of them, parcels the journal has
    sorted: int  # of them, in a bin
    allowed: int  # of them, in a bin its plan allows
    created_at: float
    promised_ship_at: float | None
    last_sorted_at: float | None  # when its last parcel was sorted, all of them being sorted
    to_ship: bool  # released for shipping (not held, cancelled or backordered)
    complete: bool  # every parcel in a bin
    on_time: bool | None  # None: no promised-ship time to hold it to
    perfect: bool
    problems: tuple[str, ...]

    @property
    def cycle_time_s(self) -> float | None:
        return None if self.last_sorted_at is None else self.last_sorted_at - self.created_at


AllowedBins = Callable[[Order, float | None], Collection[str]]
"""The bins the plan allows a parcel of an order, given its length at the induction (its
size class): own bins, alternates, overflow, e.g. from :meth:`SortPlan.destinations`."""


def order_of(parcel: JournalParcel, orders: Mapping[str, Order]) -> str | None:
    """The order id of a parcel: its code's order in the book, else the journal's."""
    order = orders.get(parcel.code) if parcel.code else None
    return order.order_id if order else parcel.order_id


@dataclass(frozen=True, slots=True)
class ParcelVerdict:
    """One parcel judged against its order and the plan."""

    info_error: str | None  # why its order information is wrong, if it is
    missort: bool
    allowed: bool  # in a bin its plan allows


def parcel_verdict(p: JournalParcel, orders: Mapping[str, Order],
                   allowed_bins: AllowedBins | None) -> ParcelVerdict:
    """Whether a parcel was missorted, its order information wrong, its bin one it may take."""
    order = orders.get(p.code) if p.code else None
    info_error: str | None = None
    if p.disposition == Disposition.NO_ORDER:
        info_error = "no order when it was read"
    elif p.code and order is None and p.disposition not in (Disposition.NO_READ,
                                                           Disposition.MULTI_READ):
        info_error = "no order in the book"
    elif order is not None:
        info_error = order_data_problem(order)
    allowed = p.in_bin
    if allowed and allowed_bins is not None:
        allowed = order is not None and p.bin in allowed_bins(order, p.length_mm)
    missort = p.disposition == Disposition.MISSORT or (p.in_bin and not allowed)
    return ParcelVerdict(info_error, missort, allowed)


def kpis_by_order(parcels: Sequence[JournalParcel], orders: Mapping[str, Order],
                  verdicts: Mapping[int, ParcelVerdict], clock_start: float) -> list[OrderKpis]:
    """A row for each order in the book that the journal has a parcel of."""
    book: dict[str, list[Order]] = {}
    for order in orders.values():
        book.setdefault(order.order_id, []).append(order)
    seen: dict[str, list[JournalParcel]] = {}
    for p in parcels:
        order_id = order_of(p, orders)
        if order_id is not None:
            seen.setdefault(order_id, []).append(p)
    rows = []
    for order_id, journalled in seen.items():
        members = book.get(order_id, [])
        if not members:
            continue  # no order in the book: an order-information error, counted per parcel
        head = members[0]
        expected = max(len(members), *(o.parcels_in_order for o in members))
        codes = {o.code for o in members}
        latest: dict[str, JournalParcel] = {}
        for p in journalled:  # a code seen twice (sent round again) counts by its last pass
            if p.code in codes:
                latest[p.code] = p
        sorted_parcels = [p for p in latest.values() if p.in_bin]
        allowed = [p for p in sorted_parcels if verdicts[p.parcel_id].allowed]
        complete = len(sorted_parcels) == expected
        last = (max(clock_start + (p.final_at or 0.0) for p in sorted_parcels)
                if complete else None)
        promise = head.promised_ship_at
        on_time = None if promise is None or last is None else last <= promise
        if promise is not None and last is None:
            on_time = False
        problems = _order_problems(head, journalled, latest, expected, verdicts,
                                   on_time=on_time)
        to_ship = head.status not in _NOT_TO_SHIP and not all(
            p.disposition == Disposition.ORDER_HELD for p in journalled)
        rows.append(OrderKpis(
            order_id=order_id, status=str(head.status), parcels=expected, seen=len(latest),
            sorted=len(sorted_parcels), allowed=len(allowed), created_at=head.created_at,
            promised_ship_at=promise, last_sorted_at=last, to_ship=to_ship,
            complete=complete, on_time=on_time, perfect=to_ship and not problems,
            problems=tuple(problems)))
    return rows


def _order_problems(head: Order, journalled: Sequence[JournalParcel],
                    latest: Mapping[str, JournalParcel], expected: int,
                    verdicts: Mapping[int, ParcelVerdict], *, on_time: bool | None) -> list[str]:
    problems = []
    if len(latest) < expected:
        problems.append(f"{expected - len(latest)} of {expected} parcels never seen")
    not_sorted = [p for p in latest.values() if not p.in_bin]
    if not_sorted:
        problems.append(", ".join(sorted({f"{p.disposition or 'open'}" for p in not_sorted})))
    if any(verdicts[p.parcel_id].missort for p in journalled):
        problems.append("missorted")
    errors = {verdicts[p.parcel_id].info_error for p in journalled} - {None}
    problems.extend(sorted(e for e in errors if e))
    if on_time is False:
        problems.append("late for its promised-ship time")
    if head.status in _NOT_TO_SHIP:
        problems.append(f"order {head.status}")
    return problems
