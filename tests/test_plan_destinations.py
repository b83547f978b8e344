"""Destinations with several bins, size classes, postcode ranges and consolidation, sans I/O."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from controller.config import (
    Destination,
    SizeClass,
    SortPlanConfig,
    SortRule,
    load_config,
)
from controller.disposition import END_OF_LINE, Disposition
from controller.errors import ConfigError
from controller.orders import Order, OrderStatus
from controller.routing import Route, Router
from controller.sortplan import SortPlan

NONE_FULL: frozenset[str] = frozenset()
EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "line.example.toml"


def _order(order_id: str = "O-1", *, parcels: int = 1, carrier: str = "DHL",
           postcode: str = "1011AB", status: OrderStatus = OrderStatus.RELEASED,
           code: str = "c1") -> Order:
    return Order(order_id=order_id, code=code, channel="web", status=status, carrier=carrier,
                 service="standard", route="R1", postcode=postcode, created_at=0.0,
                 parcels_in_order=parcels)


def _plan(**kwargs: object) -> SortPlanConfig:
    base: dict[str, object] = {
        "destinations": {"north": Destination(bins=["B1", "B2", "B3"], alternates=["B5"])},
        "rules": [SortRule(name="dhl", when={"carrier": "DHL"}, destination="north")],
        "overflow": "B8",
    }
    return SortPlanConfig.model_validate({**base, **kwargs})


def test_a_destination_spreads_its_parcels_over_its_bins_in_turn() -> None:
    router = Router(SortPlan(_plan()))
    bins = [router.for_order(_order(f"O-{i}", code=f"c{i}"), NONE_FULL).bin for i in range(6)]
    assert bins == ["B1", "B2", "B3", "B1", "B2", "B3"]


def test_spreading_skips_full_bins_and_all_full_goes_to_the_alternates_then_the_overflow(
        ) -> None:
    router = Router(SortPlan(_plan()))
    routes = [router.for_order(_order(f"O-{i}"), frozenset({"B2"})) for i in range(4)]
    assert [r.bin for r in routes] == ["B1", "B3", "B1", "B3"]
    assert {r.disposition for r in routes} == {Disposition.SORTED}
    alternate = router.for_order(_order("O-9"), frozenset({"B1", "B2", "B3"}))
    assert alternate == Route(Disposition.DEST_FULL, "B5",
                              "rule dhl: B1, B2, B3 full, sent to B5")
    overflow = router.for_order(_order("O-10"), frozenset({"B1", "B2", "B3", "B5"}))
    assert (overflow.disposition, overflow.bin) == (Disposition.DEST_FULL, "B8")
    nowhere = router.for_order(_order("O-11"), frozenset({"B1", "B2", "B3", "B5", "B8"}))
    assert (nowhere.disposition, nowhere.bin) == (Disposition.DEST_FULL, END_OF_LINE)


def test_fill_first_keeps_to_the_first_bin_until_it_is_full() -> None:
    plan = _plan(destinations={"north": Destination(bins=["B1", "B2"], spread="fill_first")})
    router = Router(SortPlan(plan))
    assert [router.for_order(_order(f"O-{i}"), NONE_FULL).bin for i in range(3)] == ["B1"] * 3
    assert router.for_order(_order("O-4"), frozenset({"B1"})).bin == "B2"


def test_a_multi_parcel_order_goes_to_one_bin_while_spreading_goes_on_around_it() -> None:
    router = Router(SortPlan(_plan()))
    first = router.for_order(_order("BIG", parcels=3, code="p1"), NONE_FULL)
    other = router.for_order(_order("SMALL"), NONE_FULL)
    rest = [router.for_order(_order("BIG", parcels=3, code=c), NONE_FULL) for c in ("p2", "p3")]
    assert first.bin == "B1"
    assert other.bin == "B2"
    assert [r.bin for r in rest] == ["B1", "B1"]
    assert all(r.disposition is Disposition.SORTED for r in rest)
    assert "with the rest of order BIG" in rest[0].reason
    # all three routed: the order is forgotten, a new parcel with its id spreads again
    assert router.for_order(_order("BIG", parcels=3, code="p4"), NONE_FULL).bin == "B3"


def test_when_the_orders_bin_fills_mid_order_the_rest_follow_to_the_same_other_bin() -> None:
    plan = _plan(destinations={"north": Destination(bins=["B1"], alternates=["B5", "B6"])})
    router = Router(SortPlan(plan))
    order = _order("BIG", parcels=4)
    assert router.for_order(order, NONE_FULL).bin == "B1"
    second = router.for_order(order, frozenset({"B1"}))
    assert (second.disposition, second.bin) == (Disposition.DEST_FULL, "B5")
    # B1 emptied meanwhile: the order's parcels still follow to B5, where its others are
    third = router.for_order(order, NONE_FULL)
    assert (third.disposition, third.bin) == (Disposition.DEST_FULL, "B5")
    assert "with the rest of order BIG" in third.reason
    fourth = router.for_order(order, frozenset({"B5"}))
    assert fourth.bin in ("B1", "B6")


def test_consolidation_off_spreads_an_orders_parcels_too() -> None:
    router = Router(SortPlan(_plan(consolidate=False)))
    bins = [router.for_order(_order("BIG", parcels=3), NONE_FULL).bin for _ in range(3)]
    assert bins == ["B1", "B2", "B3"]


def test_an_orders_bin_that_the_new_plan_does_not_allow_is_not_followed() -> None:
    router = Router(SortPlan(_plan()))
    assert router.for_order(_order("BIG", parcels=2), NONE_FULL).bin == "B1"
    router.plan = SortPlan(_plan(destinations={"north": Destination(bins=["B4"])}))
    assert router.for_order(_order("BIG", parcels=2), NONE_FULL).bin == "B4"


def test_size_classes_send_long_and_short_parcels_to_their_own_bins() -> None:
    plan = _plan(
        size_classes=[SizeClass(name="small", max_length_mm=150),
                      SizeClass(name="oversize", min_length_mm=600)],
        destinations={"north": Destination(bins=["B1"]), "big": Destination(bins=["B6"]),
                      "tiny": Destination(bins=["B7"])},
        rules=[SortRule(name="oversize", when={"size_class": "oversize"}, destination="big"),
               SortRule(name="small-dhl", when={"size_class": "small", "carrier": "DHL"},
                        destination="tiny"),
               SortRule(name="dhl", when={"carrier": "DHL"}, destination="north")])
    router = Router(SortPlan(plan))
    assert plan.size_class(149.9) == "small"
    assert plan.size_class(150.0) == "standard"
    assert plan.size_class(600.0) == "oversize"
    assert plan.size_class(None) is None
    assert router.for_order(_order(), NONE_FULL, length_mm=700).bin == "B6"
    assert router.for_order(_order(), NONE_FULL, length_mm=100).bin == "B7"
    assert router.for_order(_order(), NONE_FULL, length_mm=300).bin == "B1"
    # a length not measured matches no rule that names a size class
    assert router.for_order(_order(), NONE_FULL, length_mm=None).bin == "B1"
    assert router.for_order(_order(carrier="UPS"), NONE_FULL, length_mm=100).bin == "B8"


@pytest.mark.parametrize(("postcode", "matches"), [
    ("10000", True), ("1499ZZ", True), ("19999", True), ("2000", False), ("0999", False),
    ("15 000", True), ("1", False)])
def test_a_postcode_range_compares_as_many_characters_as_its_bounds_have(
        postcode: str, matches: bool) -> None:
    plan = _plan(rules=[SortRule(name="range", when={"postcode_from": "10",
                                                     "postcode_to": "19"},
                                 destination="north")])
    route = Router(SortPlan(plan)).for_order(_order(postcode=postcode), NONE_FULL)
    assert (route.bin in ("B1", "B2", "B3")) is matches


@pytest.mark.parametrize("status", [OrderStatus.HELD, OrderStatus.CANCELLED,
                                    OrderStatus.BACKORDERED, OrderStatus.SHIPPED])
def test_orders_not_released_never_reach_a_destinations_bins(status: OrderStatus) -> None:
    router = Router(SortPlan(_plan()))
    route = router.for_order(_order(status=status), NONE_FULL)
    assert route.disposition is Disposition.ORDER_HELD
    assert route.bin == END_OF_LINE
    held_bin = _plan(destinations={"north": Destination(bins=["B1"]),
                                   "hold": Destination(bins=["B7"])},
                     rules=[SortRule(name="waiting", when={"status": str(status)},
                                     destination="hold"),
                            SortRule(name="dhl", when={"carrier": "DHL"},
                                     destination="north")])
    held = Router(SortPlan(held_bin)).for_order(_order(status=status), NONE_FULL)
    assert (held.disposition, held.bin) == (Disposition.ORDER_HELD, "B7")
    released = replace(_order(status=status), status=OrderStatus.RELEASED)
    assert Router(SortPlan(held_bin)).for_order(released, NONE_FULL).bin == "B1"


@pytest.mark.parametrize(("data", "problem"), [
    ({"rules": [{"name": "r", "when": {}, "bins": ["B1"], "destination": "north"}]},
     "either bins or a destination"),
    ({"rules": [{"name": "r", "when": {}}]}, "either bins or a destination"),
    ({"rules": [{"name": "r", "destination": "south"}]}, "unknown destination 'south'"),
    ({"rules": [{"name": "r", "when": {"size_class": "huge"}, "destination": "north"}]},
     "unknown size class 'huge'"),
    ({"size_classes": [{"name": "s", "min_length_mm": 300, "max_length_mm": 200}]},
     "max_length_mm must be greater"),
    ({"destinations": {"north": {"bins": ["B1"], "alternates": ["B1"]}}}, "named twice"),
    ({"rules": [{"name": "r", "when": {"postcode_from": "20", "postcode_to": "10"}, "bins":
                 ["B1"]}]}, "is after postcode_to"),
])
def test_a_bad_plan_is_refused_naming_why(data: dict[str, object], problem: str) -> None:
    base = {"destinations": {"north": {"bins": ["B1"]}}}
    with pytest.raises(ValueError, match=problem):
        SortPlanConfig.model_validate({**base, **data})


def _with_plan(tmp_path: Path, table: str) -> Path:
    text = EXAMPLE.read_text(encoding="utf-8")
    config = tmp_path / "line.toml"
    config.write_text(text[:text.index("[sort_plan]")] + table, encoding="utf-8")
    return config


def test_a_plan_file_beside_the_config_is_the_lines_plan(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text(
        'overflow = "B8"\n[destinations.all]\nbins = ["B1", "B2"]\n'
        '[[rules]]\nname = "all"\ndestination = "all"\n', encoding="utf-8")
    config = load_config(_with_plan(tmp_path, '[sort_plan]\nfile = "plan.toml"\n'))
    assert config.sort_plan.file == "plan.toml"
    assert config.sort_plan.destinations["all"].bins == ["B1", "B2"]
    assert [r.name for r in config.sort_plan.rules] == ["all"]


def test_a_plan_file_naming_an_unknown_bin_or_missing_is_a_config_error(
        tmp_path: Path) -> None:
    config = _with_plan(tmp_path, '[sort_plan]\nfile = "plan.toml"\n')
    with pytest.raises(ConfigError, match="no such plan file"):
        load_config(config)
    (tmp_path / "plan.toml").write_text('[[rules]]\nname = "x"\nbins = ["B99"]\n',
                                        encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown bin 'B99'"):
        load_config(config)
    both = _with_plan(tmp_path, '[sort_plan]\nfile = "plan.toml"\noverflow = "B8"\n')
    with pytest.raises(ConfigError, match="nothing else here"):
        load_config(both)
