"""The business's figures from a production journal and the order book, no emulator needed.

Per shift and per order: read rate, sort rate, ship accuracy, order-information errors, order
cycle time, SCOR perfect orders (beside APQC's product of component rates) and fill rate;
docs/kpis.md defines each. The journal's times are the controller's clock seconds; an order's
created and promised-ship times are epoch seconds: ``clock_start`` (the epoch second at which
the controller's clock read 0) puts the two on one axis.

This module holds the shift and report totals; the journal's parcels, the order book and each
order's row are :mod:`controller.order_kpis`'s.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.disposition import Disposition
from controller.order_kpis import (
    AllowedBins,
    JournalParcel,
    OrderKpis,
    ParcelVerdict,
    kpis_by_order,
    order_of,
    parcel_verdict,
)
from controller.orders import Order


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


def business_kpis(parcels: Sequence[JournalParcel], orders: Mapping[str, Order], *,
                  clock_start: float = 0.0, allowed_bins: AllowedBins | None = None,
                  shift_hours: float | None = None) -> BusinessReport:
    """The figures of a journal's parcels against the order book (``orders`` by code).

    Without ``allowed_bins`` the controller's own SORTED and DEST_FULL are taken as a bin the
    plan allows. ``shift_hours`` cuts the journal into shifts from its first induction.
    """
    verdicts = {p.parcel_id: parcel_verdict(p, orders, allowed_bins) for p in parcels}
    order_rows = kpis_by_order(parcels, orders, verdicts, clock_start)
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
            order_id = order_of(p, orders)
            if order_id is not None:
                order_shift[order_id] = max(order_shift.get(order_id, 0), shift_of(p))
        shifts = [_shift(f"shift {index + 1}", by_shift[index],
                         [o for o in order_rows if order_shift.get(o.order_id) == index],
                         verdicts, clock_start)
                  for index in sorted(by_shift)]
    return BusinessReport(total=total, shifts=shifts, orders=order_rows, parcels=list(parcels),
                          clock_start=clock_start)


def _shift(name: str, parcels: Sequence[JournalParcel], order_rows: Sequence[OrderKpis],
           verdicts: Mapping[int, ParcelVerdict], clock_start: float) -> ShiftKpis:
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
