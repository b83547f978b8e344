"""The sort plan's section of the line config: size classes, destinations and ordered rules.

A rule maps orders (and the parcel's size class) to a destination; a destination owns one
or more bins, which its parcels are spread over, and names alternates for when all of
them are full; the overflow takes what no rule matches. :mod:`controller.config` checks
the names against the line's bins and re-exports these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.config_base import Identifier, PositiveFloat, Strict
from controller.orders import OrderStatus

RuleField = Literal["carrier", "service", "route", "channel", "postcode_prefix",
                    "postcode_from", "postcode_to", "status", "size_class"]
ORDER_STATUSES = tuple(OrderStatus)
DEFAULT_SIZE_CLASS = "standard"


class SizeClass(Strict):
    """Parcels whose length at the induction photo-eye is in ``[min_length_mm,
    max_length_mm)``; the first class that holds a parcel names it."""

    name: Identifier
    min_length_mm: Annotated[float, Field(ge=0)] = 0.0
    max_length_mm: PositiveFloat | None = Field(default=None, description="none: no limit")

    @model_validator(mode="after")
    def _bounds(self) -> SizeClass:
        if self.max_length_mm is not None and self.max_length_mm <= self.min_length_mm:
            raise ValueError("max_length_mm must be greater than min_length_mm")
        return self

    def holds(self, length_mm: float) -> bool:
        return self.min_length_mm <= length_mm and (
            self.max_length_mm is None or length_mm < self.max_length_mm)


class Destination(Strict):
    """Where a rule's parcels go: its own ``bins`` (parcels spread over those not full, or
    the first not full with ``spread = "fill_first"``), then ``alternates`` in order."""

    bins: list[Identifier] = Field(min_length=1)
    alternates: list[Identifier] = Field(default_factory=list)
    spread: Literal["round_robin", "fill_first"] = "round_robin"

    @model_validator(mode="after")
    def _distinct(self) -> Destination:
        named = self.bins + self.alternates
        twice = sorted({b for b in named if named.count(b) > 1})
        if twice:
            raise ValueError(f"a bin is named twice: {', '.join(twice)}")
        return self


class SortRule(Strict):
    """Orders matching every ``when`` field go to ``destination`` (or to ``bins``: primary
    first, the rest alternates).

    ``postcode_from``/``postcode_to`` bound the postcode by as many leading characters as
    the bound has, both ends included. ``size_class`` names one of the plan's size classes.
    An order that is not released (held, cancelled, backordered, shipped) matches only
    rules that name its ``status``.
    """

    name: str
    when: dict[RuleField, str] = Field(default_factory=dict)
    bins: list[Identifier] | None = Field(default=None, min_length=1)
    destination: Identifier | None = None

    @model_validator(mode="after")
    def _checked(self) -> SortRule:
        if (self.bins is None) == (self.destination is None):
            raise ValueError("a rule names either bins or a destination (exactly one)")
        status = self.when.get("status")
        if status is not None and status.casefold() not in ORDER_STATUSES:
            raise ValueError(f"status must be one of {', '.join(ORDER_STATUSES)}")
        low, high = self.when.get("postcode_from"), self.when.get("postcode_to")
        if low is not None and high is not None:
            width = min(len(low), len(high))
            if low.upper()[:width] > high.upper()[:width]:
                raise ValueError(f"postcode_from {low!r} is after postcode_to {high!r}")
        return self

    def named_bins(self, destinations: dict[str, Destination]) -> list[str]:
        """Every bin the rule can send to, own bins first (no overflow)."""
        if self.bins is not None:
            return list(self.bins)
        destination = destinations.get(self.destination or "")
        return [] if destination is None else destination.bins + destination.alternates


class SortPlanConfig(Strict):
    """The plan: its rules are tried in order; the first that matches an order wins."""

    file: str | None = Field(default=None, description=(
        "a TOML file holding this table (as written by `plan hot-zones`), relative to the "
        "config; read at start and on every reload, with nothing else in this table"))
    rules: list[SortRule] = Field(default_factory=list)
    overflow: Identifier | None = None
    destinations: dict[Identifier, Destination] = Field(default_factory=dict)
    size_classes: list[SizeClass] = Field(default_factory=list)
    default_size_class: Identifier = Field(
        default=DEFAULT_SIZE_CLASS, description="a parcel's class when none of them holds it")
    consolidate: bool = Field(default=True, description=(
        "all parcels of a multi-parcel order go to the bin its first parcel went to, while "
        "that bin is not full (then the rest follow to the same other bin)"))

    @model_validator(mode="after")
    def _names(self) -> SortPlanConfig:
        problems = []
        classes = [c.name for c in self.size_classes]
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            problems.append(f"size_classes: {', '.join(twice)} named twice")
        known = {*classes, self.default_size_class}
        for rule in self.rules:
            if rule.destination is not None and rule.destination not in self.destinations:
                problems.append(f"rule {rule.name!r} names unknown destination "
                                f"{rule.destination!r}")
            size = rule.when.get("size_class")
            if size is not None and size not in known:
                problems.append(f"rule {rule.name!r} names unknown size class {size!r} "
                                f"(known: {', '.join(sorted(known))})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def size_class(self, length_mm: float | None) -> str | None:
        """The size class of a parcel this long; None while its length is unknown."""
        if length_mm is None:
            return None
        return next((c.name for c in self.size_classes if c.holds(length_mm)),
                    self.default_size_class)

    def named_bins(self) -> set[str]:
        """Every bin the plan names."""
        named = {b for rule in self.rules for b in rule.named_bins(self.destinations)}
        named |= {b for d in self.destinations.values() for b in d.bins + d.alternates}
        return named | ({self.overflow} if self.overflow else set())
