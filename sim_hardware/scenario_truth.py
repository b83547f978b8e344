"""The scenario's truth about where a parcel belongs: the emulator's own reading of the plan.

Independent of the controller's routing on purpose, so a test can hold one against the other.
"""

from __future__ import annotations

from controller.config import LineConfig
from controller.orders import Order, OrderStatus


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
            return bins + ([overflow] if overflow and overflow not in bins else []), places
    return ([overflow] if overflow and released else []), 1


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
