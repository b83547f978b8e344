"""Routing decisions, sans I/O: a verdict, an order, the plan and the full bins give a route."""

from __future__ import annotations

import pytest

from controller.codes import ReadVerdict
from controller.config import SortPlanConfig, SortRule
from controller.disposition import END_OF_LINE, Disposition
from controller.orders import Order, OrderStatus
from controller.routing import Route, Router
from controller.sortplan import SortPlan

NOTHING_FULL: frozenset[str] = frozenset()


def _order(carrier: str = "DHL", status: OrderStatus = OrderStatus.RELEASED,
           order_id: str = "O-1") -> Order:
    return Order(order_id=order_id, code="123", channel="web", status=status, carrier=carrier,
                 service="standard", route="R1", postcode="1011AB", created_at=0.0)


def _router(*, hold_bin: bool = False, overflow: str | None = "B8") -> Router:
    rules = [SortRule(name="dhl", when={"carrier": "DHL"}, bins=["B1", "B2"]),
             SortRule(name="ups", when={"carrier": "UPS"}, bins=["B3"])]
    if hold_bin:
        rules.insert(0, SortRule(name="on-hold", when={"status": "held"}, bins=["B7"]))
    return Router(SortPlan(SortPlanConfig(rules=rules, overflow=overflow)))


def test_primary_bin_is_sorted() -> None:
    route = _router().for_order(_order(), NOTHING_FULL)
    assert route == Route(Disposition.SORTED, "B1", "rule dhl")
    assert route.diverts


def test_full_primary_goes_to_the_alternate() -> None:
    route = _router().for_order(_order(), frozenset({"B1"}))
    assert route == Route(Disposition.DEST_FULL, "B2", "rule dhl: B1 full, sent to B2")


def test_primary_and_alternate_full_goes_to_the_overflow() -> None:
    route = _router().for_order(_order(), frozenset({"B1", "B2"}))
    assert route == Route(Disposition.DEST_FULL, "B8", "rule dhl: B1 full, sent to B8")


def test_every_bin_full_goes_to_the_end() -> None:
    route = _router().for_order(_order(), frozenset({"B1", "B2", "B8"}))
    assert route == Route(Disposition.DEST_FULL, END_OF_LINE,
                          "rule dhl: every bin full (B1, B2, B8)")
    assert not route.diverts


def test_no_rule_matched_goes_to_the_overflow() -> None:
    route = _router().for_order(_order(carrier="GLS"), NOTHING_FULL)
    assert route == Route(Disposition.SORTED, "B8", "no rule matched: overflow")


def test_no_rule_and_no_overflow_goes_to_the_end() -> None:
    route = _router(overflow=None).for_order(_order(carrier="GLS"), NOTHING_FULL)
    assert route == Route(Disposition.DEST_FULL, END_OF_LINE,
                          "rule None: every bin full (none)")


def test_full_overflow_of_an_unmatched_order_goes_to_the_end() -> None:
    route = _router().for_order(_order(carrier="GLS"), frozenset({"B8"}))
    assert route.disposition is Disposition.DEST_FULL
    assert route.bin == END_OF_LINE


@pytest.mark.parametrize("status", [OrderStatus.HELD, OrderStatus.CANCELLED])
def test_held_or_cancelled_without_a_status_rule_goes_to_the_end(status: OrderStatus) -> None:
    route = _router().for_order(_order(status=status), NOTHING_FULL)
    assert route == Route(Disposition.ORDER_HELD, END_OF_LINE, f"order O-1 {status}")


def test_held_order_goes_to_the_hold_bin_its_rule_names() -> None:
    route = _router(hold_bin=True).for_order(_order(status=OrderStatus.HELD), NOTHING_FULL)
    assert route == Route(Disposition.ORDER_HELD, "B7", "order O-1 held: rule on-hold")


def test_held_order_with_its_hold_bins_full_goes_to_the_end() -> None:
    router = _router(hold_bin=True)
    # The plan ranks the overflow after every rule's bins, the hold rule's too.
    assert router.for_order(_order(status=OrderStatus.HELD), frozenset({"B7"})) == Route(
        Disposition.ORDER_HELD, "B8", "order O-1 held: rule on-hold")
    assert router.for_order(_order(status=OrderStatus.HELD), frozenset({"B7", "B8"})) == Route(
        Disposition.ORDER_HELD, END_OF_LINE, "order O-1 held: rule on-hold: every bin full")


def test_cancelled_order_never_matches_the_held_rule() -> None:
    route = _router(hold_bin=True).for_order(_order(status=OrderStatus.CANCELLED),
                                            NOTHING_FULL)
    assert route == Route(Disposition.ORDER_HELD, END_OF_LINE, "order O-1 cancelled")


def test_no_order_goes_to_the_end_with_the_lookup_reason() -> None:
    router = _router()
    assert router.for_order(None, NOTHING_FULL) == Route(
        Disposition.NO_ORDER, END_OF_LINE, "no order for this code")
    why = "order store unavailable and order not cached: timeout"
    assert router.for_order(None, NOTHING_FULL, no_order_reason=why) == Route(
        Disposition.NO_ORDER, END_OF_LINE, why)


def test_no_read_and_multi_read_go_to_the_end() -> None:
    assert Router.for_reads(ReadVerdict.NO_READ) == Route(
        Disposition.NO_READ, END_OF_LINE, "no acceptable code read")
    assert Router.for_reads(ReadVerdict.NO_READ, why="only a plate") == Route(
        Disposition.NO_READ, END_OF_LINE, "only a plate")
    assert Router.for_reads(ReadVerdict.MULTI_READ, codes=["B2", "A1"]) == Route(
        Disposition.MULTI_READ, END_OF_LINE, "different codes: A1, B2")
    assert Router.for_reads(ReadVerdict.MULTI_READ, why="also on parcel 3",
                            codes=["A1"]) == Route(
        Disposition.MULTI_READ, END_OF_LINE, "also on parcel 3")


def test_one_code_asks_for_its_order_and_pending_routes_nowhere() -> None:
    assert Router.for_reads(ReadVerdict.ONE_CODE) is None
    with pytest.raises(ValueError, match="pending"):
        Router.for_reads(ReadVerdict.PENDING)
