"""A scenario's parcels one at a time, in induction order, each with the whole truth about it.

:func:`stream` yields exactly what :func:`sim_hardware.scenario.generate` returns as a list,
holding only the few parcels that a stage still needs to look at: a shift of any length
can run from it in a memory of its own size. Its stages, each one parcel or a group behind:
orders of several parcels (:func:`grouped`), the parcels' places on the belt, gap control's
truth (:func:`sim_hardware.scenario_truth.too_close`) and, on a loop, a second lap's.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace

from controller.config import LineConfig
from controller.orders import Order, OrderStatus
from sim_hardware.scenario import Case, ParcelGenerator, ScenarioSpec, SimParcel, make_code
from sim_hardware.scenario_truth import expected_place, too_close


def stream(spec: ScenarioSpec, line: LineConfig, *,
           sized_labels: bool = True) -> Iterator[SimParcel]:
    """The scenario's parcels, generated as they are asked for (see ParcelGenerator)."""
    gen = ParcelGenerator(spec, line, sized_labels=sized_labels)
    made = (gen.parcel(i + 1) for i in range(spec.parcels))
    spaced = too_close(placed(grouped(made, spec, line), spec, line), line)
    if not line.end_of_line.recirculates:
        yield from spaced
        return
    for parcel in spaced:
        loop_truth(parcel, line)
        yield parcel


def order_book(spec: ScenarioSpec, line: LineConfig) -> Iterator[Order]:
    """The scenario's order book, one order at a time: the parcels' orders, then earlier ones.

    It runs the stream once more for the orders, so that neither the book nor the stream is
    ever held whole; its labels are not measured, which orders do not depend on.
    """
    count = 0
    for parcel in stream(spec, line, sized_labels=False):
        if parcel.order is not None:
            count += 1
            yield parcel.order
    yield from earlier_orders(spec, line, spec.order_book - count)


def earlier_orders(spec: ScenarioSpec, line: LineConfig, count: int) -> Iterator[Order]:
    """Released orders of earlier days, older than the shift's: codes no parcel carries."""
    gen = ParcelGenerator(spec.model_copy(update={"seed": spec.seed + 2}), line)
    day = 24 * 3600.0
    for n in range(1, count + 1):
        yield replace(gen.order_for(make_code(n, prefix="01"), OrderStatus.RELEASED, n),
                      order_id=f"BK-{n:07d}", created_at=-gen.rng.uniform(0.5 * day, 7 * day))


def grouped(parcels: Iterable[SimParcel], spec: ScenarioSpec,
            line: LineConfig) -> Iterator[SimParcel]:
    """Some runs of consecutive nominal parcels made the parcels of one order (two or three)."""
    rng = random.Random(spec.seed + 1)
    source = iter(parcels)
    ahead: deque[SimParcel] = deque()
    while True:
        first = ahead.popleft() if ahead else next(source, None)
        if first is None:
            return
        if first.case is not Case.NOMINAL or first.order is None \
                or rng.random() >= spec.multi_parcel_share:
            yield first
            continue
        followers = rng.choice((2, 3)) - 1
        while len(ahead) < followers and (parcel := next(source, None)) is not None:
            ahead.append(parcel)
        group = [first]
        for parcel in list(ahead)[:followers]:
            if parcel.case is not Case.NOMINAL or parcel.order is None:
                break
            group.append(parcel)
            ahead.popleft()
        head = first.order
        for parcel in group:
            assert parcel.order is not None
            parcel.order = replace(head, code=parcel.order.code, parcels_in_order=len(group))
            parcel.expected_bins, parcel.places = expected_place(line, parcel.order,
                                                                 parcel.length_mm)
            parcel.plan_bins, parcel.plan_places = parcel.expected_bins, parcel.places
        yield from group


def placed(parcels: Iterable[SimParcel], spec: ScenarioSpec,
           line: LineConfig) -> Iterator[SimParcel]:
    """Each parcel's place on the belt: its gap behind the one before."""
    offset = 0.0
    room_after = 0.0
    for parcel in parcels:
        offset += max(parcel.gap_before_mm, room_after)
        parcel.offset_mm = offset
        offset += parcel.length_mm
        # The parcel after a camera stall enters the view only once the camera is back.
        room_after = (line.belt.speed_mm_s * spec.camera_stall_s + 300.0 - parcel.length_mm
                      if parcel.case is Case.CAMERA_STALL else 0.0)
        yield parcel


_READ_AGAIN = frozenset({Case.CAMERA_STALL, Case.HIDDEN_LABEL})
_END_OF_LINE = frozenset({"NO_READ", "NO_ORDER", "ORDER_HELD", "MULTI_READ", "DEST_FULL",
                          "TOO_CLOSE"})


def loop_truth(parcel: SimParcel, line: LineConfig) -> None:
    """A parcel's truth on a loop (controller.recirculation): what a second lap changes.

    A camera stall or a label hidden on the first pass is read on the next lap and sorted;
    what would ride to the end goes round to the cap, then to the exception bin (without
    one, out at the end of line), a MULTI_READ to the exception bin at once, a pair too
    close out at the end of line (a push at one would move both, on every lap).
    """
    exception = line.end_of_line.exception_bin
    if parcel.case in _READ_AGAIN and parcel.order is not None:
        bins, places = expected_place(line, parcel.order, parcel.length_mm)
        parcel.expected_bins, parcel.places = bins, places
        parcel.expected_disposition = "SORTED" if bins else "DEST_FULL"
    designed = parcel.expected_disposition
    if designed not in _END_OF_LINE or (designed == "ORDER_HELD" and parcel.expected_bins):
        return
    to_exception = exception is not None and designed != "TOO_CLOSE"
    parcel.expected_disposition = ("MULTI_READ" if designed == "MULTI_READ" and to_exception
                                   else "RECIRC_LIMIT")
    parcel.expected_bins = [exception] if to_exception and exception else []
