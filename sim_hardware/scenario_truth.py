"""The scenario's truth about where a parcel belongs: the emulator's own reading of the plan.

Independent of the controller's routing on purpose, so a test can hold one against the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from controller.config import LineConfig
from controller.orders import Order, OrderStatus
from sim_hardware.labels import label_size_mm
from sim_hardware.render import PlacedLabel

if TYPE_CHECKING:
    from sim_hardware.scenario import SimParcel


def expected_bins(line: LineConfig, order: Order, length_mm: float | None = None) -> list[str]:
    """Every bin an order's parcel may go to, its places first (see :func:`expected_place`)."""
    return expected_place(line, order, length_mm)[0]


def expected_place(line: LineConfig, order: Order, length_mm: float | None = None,
                   ) -> tuple[list[str], int]:
    """Where an order should go: the emulator's own reading of the plan, first rule wins.

    ``(bins, places)``: any of the first ``places`` bins is the parcel's place (a destination
    spreads its parcels over its own bins); the rest take it only when those are full.
    Held and cancelled orders go only where a rule names their status; else to the end.
    """
    plan = line.sort_plan
    released = order.status is OrderStatus.RELEASED
    overflow = plan.overflow
    size = size_class(line, length_mm)
    for rule in plan.rules:
        if not released and "status" not in rule.when:
            continue
        if all(_field_matches(order, size, key, value) for key, value in rule.when.items()):
            if rule.destination is not None:
                destination = plan.destinations[rule.destination]
                bins, places = destination.bins + destination.alternates, len(destination.bins)
            else:
                bins, places = list(rule.bins or ()), 1
            return _shared(bins + ([overflow] if overflow and overflow not in bins else [])), \
                places
    return _shared([overflow] if overflow and released else []), 1


def _shared(bins: list[str]) -> list[str]:
    """One list per distinct answer, however many parcels hold it (never mutated, only
    replaced): a long shift's truth holds two per parcel."""
    return _BIN_LISTS.setdefault(tuple(bins), bins)


_BIN_LISTS: dict[tuple[str, ...], list[str]] = {}


def size_class(line: LineConfig, length_mm: float | None) -> str | None:
    if length_mm is None:
        return None
    for size in line.sort_plan.size_classes:
        if size.min_length_mm <= length_mm and (size.max_length_mm is None
                                                or length_mm < size.max_length_mm):
            return size.name
    return line.sort_plan.default_size_class


def _field_matches(order: Order, size: str | None, key: str, value: str) -> bool:
    postcode, bound = order.postcode.replace(" ", "").upper(), value.replace(" ", "").upper()
    if key == "postcode_prefix":
        return postcode.startswith(bound)
    if key == "postcode_from":
        return postcode[:len(bound)] >= bound
    if key == "postcode_to":
        return postcode[:len(bound)] <= bound
    if key == "size_class":
        return size is not None and size.casefold() == value.casefold()
    return str(getattr(order, key)).casefold() == value.casefold()


def class_boundaries(line: LineConfig) -> list[float]:
    """The lengths where a parcel changes size class."""
    return [b for c in line.sort_plan.size_classes
            for b in (c.min_length_mm, c.max_length_mm) if b]


CLOSE_GAP_MM = 40.0  # the least gap a Case.TOO_CLOSE parcel is inducted at: PE-IN sees it
SPACING_MARGIN_MM = 15.0  # no gap this near the line's minimum: PE-IN's measure could fall


def too_close(parcels: Iterable[SimParcel], line: LineConfig) -> Iterator[SimParcel]:
    """The truth of gap control, one parcel behind the stream: both parcels of a pair closer
    than the line's minimum gap or pitch ride to the end (TOO_CLOSE) where they would have
    been diverted. Gaps just around the minimum are widened past it (moving every parcel
    after), so the truth does not hang on a millimetre."""
    min_gap, min_pitch = line.induction.min_gap_mm, line.induction.min_pitch_mm
    if not (min_gap or min_pitch):
        yield from parcels
        return
    shift = 0.0
    before: SimParcel | None = None
    for after in parcels:
        if before is None:
            before = after
            continue
        after.offset_mm += shift
        gap = after.offset_mm - before.offset_mm - before.length_mm
        pitch = after.offset_mm - before.offset_mm
        widen = max(min_gap + SPACING_MARGIN_MM - gap if abs(gap - min_gap) < SPACING_MARGIN_MM
                    else 0.0,
                    min_pitch + SPACING_MARGIN_MM - pitch
                    if abs(pitch - min_pitch) < SPACING_MARGIN_MM else 0.0)
        if widen > 0:
            after.offset_mm += widen
            shift += widen
            gap, pitch = gap + widen, pitch + widen
        if gap < min_gap or pitch < min_pitch:
            for parcel in (before, after):
                if parcel.expected_bins and parcel.expected_disposition in _DIVERTED:
                    parcel.expected_disposition, parcel.expected_bins = "TOO_CLOSE", []
        yield before
        before = after
    if before is not None:
        yield before


_DIVERTED = frozenset({"SORTED", "DEST_FULL", "ORDER_HELD", "DIVERT_FAULT"})


def stall_read(line: LineConfig, stall_cameras: Sequence[str] | None,
               labels: Sequence[PlacedLabel]) -> bool:
    """Whether a camera stall leaves a camera that reads the parcel in time: one it does not
    hit (None hits all) that frames each label whole, at the belt's speed, at least the
    ``min_agreeing_reads`` times a code needs. Every camera looks down on the label face."""
    hit = {c.id for c in line.cameras} if stall_cameras is None else set(stall_cameras)
    need = line.decision.min_agreeing_reads
    if not labels:
        return False
    for camera in line.cameras:
        if camera.id in hit:
            continue
        frames = [math.floor((camera.fov_mm - math.hypot(*label_size_mm(label.spec)))
                             / line.belt.speed_mm_s * camera.fps) for label in labels]
        if min(frames) >= need:
            return True
    return False
