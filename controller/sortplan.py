"""The sort plan: ordered rules from an order (and its parcel's size) to a destination's bins."""

from __future__ import annotations

from dataclasses import dataclass

from controller.config import SortPlanConfig, SortRule
from controller.orders import Order, OrderStatus


def _postcode(value: str) -> str:
    return value.replace(" ", "").upper()


def rule_matches(rule: SortRule, order: Order, size_class: str | None = None) -> bool:
    """Whether a rule takes this order; a rule naming a size class needs the parcel's."""
    if "status" not in rule.when and order.status is not OrderStatus.RELEASED:
        return False
    postcode = _postcode(order.postcode)
    for field_name, wanted in rule.when.items():
        match field_name:
            case "postcode_prefix":
                ok = postcode.startswith(_postcode(wanted))
            case "postcode_from":
                bound = _postcode(wanted)
                ok = postcode[:len(bound)] >= bound
            case "postcode_to":
                bound = _postcode(wanted)
                ok = postcode[:len(bound)] <= bound
            case "size_class":
                ok = size_class is not None and size_class.casefold() == wanted.casefold()
            case _:
                ok = getattr(order, field_name).casefold() == wanted.casefold()
        if not ok:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Target:
    """Where the plan sends an order: ``own`` bins (any of them is its place, spread over
    unless ``fill_first``), then ``fallback`` bins in order (alternates, then overflow)."""

    rule: str | None  # None: no rule matched
    destination: str  # the destination's name, or the rule's name for a rule naming bins
    own: tuple[str, ...]
    fallback: tuple[str, ...]
    fill_first: bool

    @property
    def ranked(self) -> list[str]:
        return [*self.own, *self.fallback]


class SortPlan:
    """First matching rule wins; its destination's bins, then alternates; overflow last."""

    def __init__(self, config: SortPlanConfig) -> None:
        self.config = config

    def target(self, order: Order, length_mm: float | None = None) -> Target:
        """The target of a parcel of this order, ``length_mm`` long at the induction.

        No rule: the overflow alone, and nothing for an order that is not released (a held
        or cancelled order goes only where a rule naming its status says).
        """
        config = self.config
        overflow = config.overflow
        size_class = config.size_class(length_mm)
        own: tuple[str, ...]
        for rule in config.rules:
            if not rule_matches(rule, order, size_class):
                continue
            if rule.bins is not None:
                own, others, fill_first = (rule.bins[0],), tuple(rule.bins[1:]), True
                name = rule.name
            else:
                assert rule.destination is not None
                destination = config.destinations[rule.destination]
                own, others = tuple(destination.bins), tuple(destination.alternates)
                fill_first, name = destination.spread == "fill_first", rule.destination
            if overflow is not None and overflow not in own + others:
                others += (overflow,)
            return Target(rule.name, name, own, others, fill_first)
        if order.status is not OrderStatus.RELEASED or overflow is None:
            return Target(None, "", (), (), True)
        return Target(None, "overflow", (overflow,), (), True)

    def destinations(self, order: Order, length_mm: float | None = None,
                     ) -> tuple[str | None, list[str]]:
        """``(rule name, every bin the plan allows it, own bins first)``."""
        target = self.target(order, length_mm)
        return target.rule, target.ranked
