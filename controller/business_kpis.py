"""The business's figures from a production journal and the order book, no emulator needed.

Per shift and per order: read rate, sort rate, ship accuracy, order-information errors, order
cycle time, SCOR perfect orders (beside APQC's product of component rates) and fill rate;
docs/kpis.md defines each. The journal's times are the controller's clock seconds; an order's
created and promised-ship times are epoch seconds: ``clock_start`` (the epoch second at which
the controller's clock read 0) puts the two on one axis.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class ShiftKpis:
    """The figures of one shift (or of the whole journal)."""

    name: str
    start: float | None  # clock seconds: the first parcel's induction
    end: float | None  # clock seconds: the last parcel's final disposition
    parcels: int
    read: int
    in_bin: int
    landed: int  # in a bin, rightly or not
    missorts: int
    order_information_errors: int
    dispositions: dict[str, int]
    orders: int  # orders to ship with any parcel seen
    orders_not_to_ship: int
    orders_filled: int
    orders_on_time: int
    orders_with_promise: int
    perfect_orders: int
    cycle_times_s: tuple[float, ...]

    @property
    def read_rate(self) -> float:
        return _share(self.read, self.parcels)

    @property
    def sort_rate(self) -> float:
        return _share(self.in_bin, self.parcels)

    @property
    def ship_accuracy(self) -> float:
        return 1.0 - _share(self.missorts, self.landed) if self.landed else 1.0

    @property
    def order_information_error_rate(self) -> float:
        return _share(self.order_information_errors, self.parcels)

    @property
    def fill_rate(self) -> float:
        return _share(self.orders_filled, self.orders)

    @property
    def on_time_rate(self) -> float:
        return _share(self.orders_on_time, self.orders_with_promise) \
            if self.orders_with_promise else 1.0

    @property
    def perfect_order_rate(self) -> float:
        return _share(self.perfect_orders, self.orders)

    @property
    def apqc_perfect_order_index(self) -> float:
        """APQC's way: the product of the component rates, each over its own population."""
        return (self.fill_rate * self.on_time_rate * self.ship_accuracy
                * (1.0 - self.order_information_error_rate))

    @property
    def cycle_time_median_min(self) -> float | None:
        return statistics.median(self.cycle_times_s) / 60 if self.cycle_times_s else None

    @property
    def cycle_time_p95_min(self) -> float | None:
        return percentile(self.cycle_times_s, 95) / 60 if self.cycle_times_s else None

    def figures(self) -> dict[str, Any]:
        """The shift's counts and rates as plain data (the report's JSON)."""
        return {
            "name": self.name, "start": self.start, "end": self.end,
            "parcels": self.parcels, "dispositions": self.dispositions,
            "read_rate": self.read_rate, "sort_rate": self.sort_rate,
            "missorts": self.missorts, "ship_accuracy": self.ship_accuracy,
            "order_information_errors": self.order_information_errors,
            "order_information_error_rate": self.order_information_error_rate,
            "orders": self.orders, "orders_not_to_ship": self.orders_not_to_ship,
            "orders_filled": self.orders_filled, "fill_rate": self.fill_rate,
            "orders_with_promise": self.orders_with_promise,
            "orders_on_time": self.orders_on_time, "on_time_rate": self.on_time_rate,
            "perfect_orders": self.perfect_orders,
            "perfect_order_rate": self.perfect_order_rate,
            "apqc_perfect_order_index": self.apqc_perfect_order_index,
            "cycle_time_median_min": self.cycle_time_median_min,
            "cycle_time_p95_min": self.cycle_time_p95_min,
        }


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def percentile(values: Collection[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value at least ``pct`` % of them do not exceed."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(pct / 100 * len(ranked)) - 1)]


@dataclass(frozen=True, slots=True)
class BusinessReport:
    """The whole journal's figures, each shift's, and each order's."""

    total: ShiftKpis
    shifts: list[ShiftKpis]
    orders: list[OrderKpis]
    parcels: list[JournalParcel] = field(repr=False)
    clock_start: float

    def as_json(self) -> dict[str, Any]:
        return {
            "clock_start": self.clock_start,
            "total": self.total.figures(),
            "shifts": [s.figures() for s in self.shifts],
            "orders": [{**{k: getattr(o, k) for k in o.__slots__}, "problems": list(o.problems),
                        "cycle_time_s": o.cycle_time_s} for o in self.orders],
        }


AllowedBins = Callable[[Order, float | None], Collection[str]]
"""The bins the plan allows a parcel of an order, given its length at the induction (its
size class): own bins, alternates, overflow, e.g. from :meth:`SortPlan.destinations`."""


def business_kpis(parcels: Sequence[JournalParcel], orders: Mapping[str, Order], *,
                  clock_start: float = 0.0, allowed_bins: AllowedBins | None = None,
                  shift_hours: float | None = None) -> BusinessReport:
    """The figures of a journal's parcels against the order book (``orders`` by code).

    Without ``allowed_bins`` the controller's own SORTED and DEST_FULL are taken as a bin the
    plan allows. ``shift_hours`` cuts the journal into shifts from its first induction.
    """
    verdicts = {p.parcel_id: _parcel_verdict(p, orders, allowed_bins) for p in parcels}
    order_rows = _order_kpis(parcels, orders, verdicts, clock_start)
    total = _shift("total", parcels, order_rows, verdicts, clock_start)
    shifts = [total]
    if shift_hours and parcels:
        first = min(p.inducted_at for p in parcels)
        span = shift_hours * 3600

        def shift_of(p: JournalParcel) -> int:
            return int((p.inducted_at - first) // span)

        by_shift: dict[int, list[JournalParcel]] = {}
        order_shift: dict[str, int] = {}  # an order belongs to the shift of its last parcel
        for p in parcels:
            by_shift.setdefault(shift_of(p), []).append(p)
            order_id = _order_of(p, orders)
            if order_id is not None:
                order_shift[order_id] = max(order_shift.get(order_id, 0), shift_of(p))
        shifts = [_shift(f"shift {index + 1}", by_shift[index],
                         [o for o in order_rows if order_shift.get(o.order_id) == index],
                         verdicts, clock_start)
                  for index in sorted(by_shift)]
    return BusinessReport(total=total, shifts=shifts, orders=order_rows, parcels=list(parcels),
                          clock_start=clock_start)


def _order_of(parcel: JournalParcel, orders: Mapping[str, Order]) -> str | None:
    order = orders.get(parcel.code) if parcel.code else None
    return order.order_id if order else parcel.order_id


@dataclass(frozen=True, slots=True)
class _Verdict:
    info_error: str | None  # why its order information is wrong, if it is
    missort: bool
    allowed: bool  # in a bin its plan allows


def _parcel_verdict(p: JournalParcel, orders: Mapping[str, Order],
                    allowed_bins: AllowedBins | None) -> _Verdict:
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
    return _Verdict(info_error, missort, allowed)


def _order_kpis(parcels: Sequence[JournalParcel], orders: Mapping[str, Order],
                verdicts: Mapping[int, _Verdict], clock_start: float) -> list[OrderKpis]:
    book: dict[str, list[Order]] = {}
    for order in orders.values():
        book.setdefault(order.order_id, []).append(order)
    seen: dict[str, list[JournalParcel]] = {}
    for p in parcels:
        order_id = _order_of(p, orders)
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
                    verdicts: Mapping[int, _Verdict], *, on_time: bool | None) -> list[str]:
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


def _shift(name: str, parcels: Sequence[JournalParcel], order_rows: Sequence[OrderKpis],
           verdicts: Mapping[int, _Verdict], clock_start: float) -> ShiftKpis:
    to_ship = [o for o in order_rows if o.to_ship]
    return ShiftKpis(
        name=name,
        start=min((p.inducted_at for p in parcels), default=None),
        end=max((p.final_at for p in parcels if p.final_at is not None), default=None),
        parcels=len(parcels),
        read=sum(1 for p in parcels if p.code),
        in_bin=sum(1 for p in parcels if p.in_bin),
        landed=sum(1 for p in parcels if p.in_bin or p.disposition == Disposition.MISSORT),
        missorts=sum(1 for p in parcels if verdicts[p.parcel_id].missort),
        order_information_errors=sum(1 for p in parcels if verdicts[p.parcel_id].info_error),
        dispositions=dict(sorted(Counter(p.disposition or "open" for p in parcels).items())),
        orders=len(to_ship),
        orders_not_to_ship=len(order_rows) - len(to_ship),
        orders_filled=sum(1 for o in to_ship if o.complete),
        orders_on_time=sum(1 for o in to_ship if o.on_time),
        orders_with_promise=sum(1 for o in to_ship if o.promised_ship_at is not None),
        perfect_orders=sum(1 for o in to_ship if o.perfect),
        cycle_times_s=tuple(o.cycle_time_s for o in to_ship if o.cycle_time_s is not None),
    )
