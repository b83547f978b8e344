"""The sort plan: ordered rules from order attributes to ranked destination bins."""

from __future__ import annotations

from controller.config import SortPlanConfig, SortRule
from controller.orders import Order, OrderStatus


def rule_matches(rule: SortRule, order: Order) -> bool:
    if "status" not in rule.when and order.status is not OrderStatus.RELEASED:
        return False
    for field_name, wanted in rule.when.items():
        if field_name == "postcode_prefix":
            if not order.postcode.upper().startswith(wanted.upper()):
                return False
        elif getattr(order, field_name).casefold() != wanted.casefold():
            return False
    return True


class SortPlan:
    """First matching rule wins; its bins are primary then alternates; overflow last."""

    def __init__(self, config: SortPlanConfig) -> None:
        self.config = config

    def destinations(self, order: Order) -> tuple[str | None, list[str]]:
        """``(rule name, ranked bins)`` for an order; no rule → ``(None, [overflow])``.

        A held or cancelled order that no rule names goes nowhere: ``(None, [])``.
        """
        overflow = self.config.overflow
        for rule in self.config.rules:
            if rule_matches(rule, order):
                ranked = list(rule.bins)
                if overflow is not None and overflow not in ranked:
                    ranked.append(overflow)
                return rule.name, ranked
        if order.status is not OrderStatus.RELEASED:
            return None, []
        return None, [overflow] if overflow else []
