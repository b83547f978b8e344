"""Which texts are parcel codes, when reads settle, and the sort plan's rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.codes import CodeRule, ParcelReads, ReadVerdict, gs1_check_digit, with_check_digit
from controller.config import DecisionConfig, LabelType, SortPlanConfig, SortRule
from controller.orders import Order, OrderCache, OrderStatus
from controller.sortplan import SortPlan


def test_gs1_check_digit_known_values() -> None:
    # SSCC example from the GS1 General Specifications: 0 0614141 123456789 check 0
    assert gs1_check_digit("00614141123456789") == 0
    assert gs1_check_digit("629104150021") == 3  # EAN-13 6291041500213
    assert with_check_digit("00144282714") == "001442827149"


def test_code_rule_checks_pattern_and_check_digit() -> None:
    rule = CodeRule(DecisionConfig())
    assert rule.accepts("001442827149")
    assert not rule.accepts("001442827148")  # wrong check digit
    assert not rule.accepts("00144282714")  # too short
    assert not rule.accepts("ABC442827149")
    assert rule.why_rejected("001442827148", "code128") == "shipment: bad check digit"
    assert rule.why_rejected("ABC", "code128") == "shipment: does not match ^[0-9]{12}$"
    ups = LabelType(name="ups", pattern=r"^1Z[0-9A-Z]{16}$", symbologies=["code128"])
    loose = CodeRule(DecisionConfig(label_types=[ups]))
    assert loose.classify("1Z999AA10123456784", "code128") == ups
    assert loose.classify("1Z999AA10123456784", "qrcode") is None
    assert loose.why_rejected("1Z999AA10123456784", "qrcode") == "ups: not printed as qrcode"


SHIPMENT = LabelType(name="shipment", pattern=r"^[0-9]{12}$", check_digit="gs1-mod10")
PLATE = LabelType(name="plate", pattern=r"^LP[0-9]{8}$", priority=2, sorts=False)
LOOSE = LabelType(name="loose", pattern=r"^X[0-9]+$")


def test_best_priority_label_wins_over_another_type() -> None:
    reads = ParcelReads(min_agreeing=2)
    both = {"001442827149": SHIPMENT, "LP12345678": PLATE}
    reads.add_frame(both, set(), lead_in_view=True, trail_in_view=True)
    reads.add_frame(both, set(), lead_in_view=True, trail_in_view=True)
    assert reads.verdict(final=False) is ReadVerdict.ONE_CODE
    assert (reads.code, reads.label_type) == ("001442827149", "shipment")


def test_a_label_that_does_not_sort_alone_is_no_read() -> None:
    reads = ParcelReads(min_agreeing=2)
    for _ in range(2):
        reads.add_frame({"LP12345678": PLATE}, set(), lead_in_view=True, trail_in_view=True)
    assert reads.verdict(final=False) is ReadVerdict.NO_READ
    assert reads.code is None
    assert "not routed on" in reads.why


def test_one_unconfirmed_read_without_check_digit_is_no_sort_decision() -> None:
    reads = ParcelReads(min_agreeing=2)
    reads.add_frame({"X123": LOOSE}, set(), lead_in_view=True, trail_in_view=True)
    assert reads.verdict(final=True) is ReadVerdict.NO_READ
    assert "one unconfirmed read" in reads.why
    checked = ParcelReads(min_agreeing=2)
    checked.add_frame({"001442827149": SHIPMENT}, set(), lead_in_view=True, trail_in_view=True)
    assert checked.verdict(final=True) is ReadVerdict.ONE_CODE  # the check digit vouches


def test_reads_settle_early_only_when_whole_parcel_seen_and_agreeing() -> None:
    reads = ParcelReads(min_agreeing=2)
    # A long parcel: its lead in view first, then the middle, then its trail.
    reads.add_frame({"A": SHIPMENT}, set(), lead_in_view=True, trail_in_view=False)
    reads.add_frame({"A": SHIPMENT}, set(), lead_in_view=False, trail_in_view=False)
    assert reads.verdict(final=False) is ReadVerdict.PENDING  # its tail may hold a 2nd label
    reads.add_frame({}, set(), lead_in_view=False, trail_in_view=True)
    assert reads.whole_parcel_seen
    assert reads.verdict(final=False) is ReadVerdict.ONE_CODE
    assert reads.code == "A"


def test_trail_before_lead_is_not_a_whole_view() -> None:
    reads = ParcelReads(min_agreeing=1)
    reads.add_frame({"A": SHIPMENT}, set(), lead_in_view=False, trail_in_view=True)
    reads.add_frame({"A": SHIPMENT}, set(), lead_in_view=True, trail_in_view=False)
    assert not reads.whole_parcel_seen
    assert reads.verdict(final=False) is ReadVerdict.PENDING


def test_second_label_makes_multi_read_and_nothing_is_no_read() -> None:
    reads = ParcelReads(min_agreeing=2)
    reads.add_frame({"A": SHIPMENT}, {"junk"}, lead_in_view=True, trail_in_view=True)
    assert reads.verdict(final=False) is ReadVerdict.PENDING  # one read is not agreement
    reads.add_frame({"A": SHIPMENT, "B": SHIPMENT}, set(), lead_in_view=True, trail_in_view=True)
    assert reads.verdict(final=False) is ReadVerdict.MULTI_READ
    assert reads.code is None
    empty = ParcelReads(min_agreeing=2)
    empty.add_frame({}, {"junk"}, lead_in_view=True, trail_in_view=True)
    assert empty.verdict(final=False) is ReadVerdict.PENDING
    assert empty.verdict(final=True) is ReadVerdict.NO_READ


def _order(**kw: str) -> Order:
    base = {"order_id": "SO-1", "code": "001442827149", "channel": "webshop",
            "carrier": "DHL", "service": "standard", "route": "R01", "postcode": "10115"}
    base.update(kw)
    return Order(status=OrderStatus.RELEASED, created_at=0.0, **base)


PLAN = SortPlan(SortPlanConfig(overflow="B9", rules=[
    SortRule(name="dhl-express", when={"carrier": "DHL", "service": "express"}, bins=["B1", "B2"]),
    SortRule(name="dhl", when={"carrier": "dhl"}, bins=["B2"]),
    SortRule(name="north", when={"postcode_prefix": "1"}, bins=["B3", "B9"]),
]))


def test_first_matching_rule_wins_with_alternates_and_overflow() -> None:
    assert PLAN.destinations(_order(service="express")) == ("dhl-express", ["B1", "B2", "B9"])
    assert PLAN.destinations(_order()) == ("dhl", ["B2", "B9"])  # case-insensitive match
    assert PLAN.destinations(_order(carrier="UPS")) == ("north", ["B3", "B9"])
    assert PLAN.destinations(_order(carrier="UPS", postcode="80331")) == (None, ["B9"])
    no_overflow = SortPlan(SortPlanConfig(rules=[]))
    assert no_overflow.destinations(_order()) == (None, [])


def test_held_orders_match_only_rules_that_name_their_status() -> None:
    plan = SortPlan(SortPlanConfig(overflow="B9", rules=[
        SortRule(name="dhl", when={"carrier": "DHL"}, bins=["B2"]),
        SortRule(name="hold", when={"status": "held"}, bins=["B5"]),
    ]))
    held = replace(_order(), status=OrderStatus.HELD)
    cancelled = replace(_order(), status=OrderStatus.CANCELLED)
    assert plan.destinations(_order()) == ("dhl", ["B2", "B9"])
    assert plan.destinations(held) == ("hold", ["B5", "B9"])
    assert plan.destinations(cancelled) == (None, [])  # never the overflow


def test_unknown_status_in_a_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="status must be one of released, held, cancelled"):
        SortRule(name="x", when={"status": "lost"}, bins=["B1"])


def test_order_cache_evicts_least_recent() -> None:
    cache = OrderCache(2)
    a, b, c = (_order(code=code) for code in ("a", "b", "c"))
    cache.put(a)
    cache.put(b)
    assert cache.get("a") == a
    cache.put(c)
    assert cache.get("b") is None
    assert cache.get("a") == a
    assert cache.get("c") == c
