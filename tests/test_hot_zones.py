"""Hot zones: the busiest destinations on the nearest bins, from the order book (sans I/O and
through ``parcel-sorter plan hot-zones``, then a shift sorted with the plan it wrote)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from controller.app.cli import main
from controller.app.example_line import EXAMPLE_CONFIG
from controller.app.orders_tool import import_files, open_order_book
from controller.config import LineConfig, load_config, parse_config, read_plan_file
from controller.hot_zones import HotZones, hot_zones, travel_mm
from controller.orders import Order, OrderStatus
from sim_hardware.scenario import Case, ScenarioSpec, generate
from tests.shifts import run_sim


def _line(plan: dict[str, Any], *, bins: int = 8) -> LineConfig:
    data = tomllib.loads(Path(EXAMPLE_CONFIG).read_text(encoding="utf-8"))
    keep = {f"B{i}" for i in range(1, bins + 1)}
    data["diverters"] = [d for d in data["diverters"] if d["bin"] in keep]
    data["bins"] = [b for b in data["bins"] if b["id"] in keep]
    return parse_config({**data, "sort_plan": plan})


def _carrier_plan(overflow: str = "B8", *, rules: list[dict[str, Any]] | None = None,
                  destinations: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One destination per carrier, the busiest (in the tests' books) on the farthest bin;
    ``rules`` and ``destinations`` go before the carriers'."""
    return {"overflow": overflow, **extra, "rules": [
        *(rules or []),
        {"name": "dhl", "when": {"carrier": "DHL"}, "destination": "dhl"},
        {"name": "ups", "when": {"carrier": "UPS"}, "destination": "ups"},
        {"name": "dpd", "when": {"carrier": "DPD"}, "destination": "dpd"}],
        "destinations": {**(destinations or {}), "dhl": {"bins": ["B3"]},
                         "ups": {"bins": ["B2"]}, "dpd": {"bins": ["B1"]}}}


def _orders(volumes: dict[str, int], status: OrderStatus = OrderStatus.RELEASED,
            ) -> list[Order]:
    return [Order(order_id=f"{carrier}-{i}", code=f"{carrier}{i:06d}", channel="web",
                  status=status, carrier=carrier, service="standard", route="R1",
                  postcode="1011AB", created_at=0.0)
            for carrier, n in volumes.items() for i in range(n)]


def _bins(zones: HotZones, destination: str) -> list[str]:
    return zones.plan.destinations[destination].bins


def _swapped_in(line: LineConfig, zones: HotZones) -> LineConfig:
    return parse_config({**line.model_dump(), "sort_plan": zones.plan.model_dump()})


def test_the_busiest_destination_gets_the_nearest_bins_and_travel_falls() -> None:
    line = _line(_carrier_plan(overflow="B4"), bins=4)
    zones = hot_zones(line, _orders({"DHL": 60, "UPS": 30, "DPD": 10}))
    assert [r.destination for r in zones.rows] == ["dhl", "ups", "dpd", "overflow"]
    nearest = sorted((b.id for b in line.bins if b.id != "B4"), key=lambda b: travel_mm(line, b))
    assert _bins(zones, "dhl") == [nearest[0]]
    assert zones.rows[0].share == pytest.approx(0.6)
    assert zones.old_mean_travel_mm is not None
    assert zones.new_mean_travel_mm is not None
    assert zones.new_mean_travel_mm < zones.old_mean_travel_mm
    assert _swapped_in(line, zones).sort_plan == zones.plan


def test_a_busy_destination_gets_several_bins_unless_fewer_fill_between_emptyings() -> None:
    line = _line(_carrier_plan())
    orders = _orders({"DHL": 80, "UPS": 10, "DPD": 10})
    zones = hot_zones(line, orders)
    assert _bins(zones, "dhl") == ["B1", "B2", "B3", "B4", "B5"]  # 7 bins * 0.8, rounded
    assert _bins(zones, "ups") == ["B6"]
    assert _bins(zones, "dpd") == ["B7"]
    assert zones.rows[0].mean_travel_mm == pytest.approx(
        sum(travel_mm(line, f"B{i}") for i in range(1, 6)) / 5)
    # 80 parcels, bins of 120 emptied once a shift: one bin holds them; the rest are spares.
    capped = hot_zones(line, orders, empties_per_shift=1)
    assert [_bins(capped, d) for d in ("dhl", "ups", "dpd")] == [["B1"], ["B2"], ["B3"]]
    assert capped.spares == ("B4", "B5", "B6", "B7")
    assert capped.plan.destinations["dhl"].alternates == ["B4", "B5", "B6", "B7"]
    # 300 of them need three such bins.
    capped = hot_zones(line, _orders({"DHL": 300, "UPS": 10}), empties_per_shift=1)
    assert _bins(capped, "dhl") == ["B1", "B2", "B3"]


def test_spares_are_the_farthest_free_bins_and_every_destinations_alternates() -> None:
    line = _line(_carrier_plan())
    zones = hot_zones(line, _orders({"DHL": 50, "UPS": 30, "DPD": 20}), spare=2)
    assert zones.spares == ("B6", "B7")
    assert all(d.alternates == ["B6", "B7"] for d in zones.plan.destinations.values())
    assert {b for d in zones.plan.destinations.values() for b in d.bins} == {
        "B1", "B2", "B3", "B4", "B5"}
    _swapped_in(line, zones)


def test_hold_size_class_and_overflow_bins_stay_where_they_are() -> None:
    plan = _carrier_plan(
        size_classes=[{"name": "oversize", "min_length_mm": 800.0}],
        rules=[{"name": "held", "when": {"status": "held"}, "destination": "hold"},
               {"name": "big", "when": {"size_class": "oversize"}, "bins": ["B6"]}],
        destinations={"hold": {"bins": ["B7"], "alternates": ["B8"]}})
    line = _line(plan)
    orders = _orders({"DHL": 5, "UPS": 50}) + _orders({"DPD": 40}, OrderStatus.HELD)
    zones = hot_zones(line, orders)
    assert zones.plan.destinations["hold"] == line.sort_plan.destinations["hold"]
    big = next(r for r in zones.plan.rules if r.name == "big")
    assert (big.bins, big.destination) == (["B6"], None)
    assert zones.plan.overflow == "B8"
    handed_out = {b for name in ("dhl", "ups", "dpd") for b in _bins(zones, name)}
    assert handed_out.isdisjoint({"B6", "B7", "B8"})
    assert _bins(zones, "ups")[0] == "B1"
    assert zones.not_released == 40  # held parcels are not volume to place
    pinned = {r.destination: r.bins for r in zones.rows if r.pinned}
    assert pinned == {"hold": ("B7",), "big": ("B6",), "overflow": ("B8",)}
    _swapped_in(line, zones)


def test_a_rule_with_legacy_bins_becomes_a_destination_named_from_it() -> None:
    line = _line({"overflow": "B8", "rules": [
        {"name": "dhl express!", "when": {"carrier": "DHL"}, "bins": ["B5", "B6"]},
        {"name": "ups", "when": {"carrier": "UPS"}, "bins": ["B1"]}]})
    zones = hot_zones(line, _orders({"DHL": 70, "UPS": 30}))
    assert [r.destination for r in zones.plan.rules] == ["dhl-express", "ups"]
    assert _bins(zones, "dhl-express")[0] == "B1"
    assert zones.old_mean_travel_mm == pytest.approx(
        0.7 * travel_mm(line, "B5") + 0.3 * travel_mm(line, "B1"))


def test_a_book_with_no_orders_still_gives_every_destination_a_bin() -> None:
    line = _line(_carrier_plan())
    zones = hot_zones(line, [])
    assert zones.parcels == 0
    assert zones.old_mean_travel_mm is None
    assert zones.new_mean_travel_mm is None
    assert all(_bins(zones, d) for d in ("dhl", "ups", "dpd"))
    assert all(r.parcels == 0 and r.share == 0.0 for r in zones.rows)
    _swapped_in(line, zones)


def test_with_fewer_bins_than_destinations_the_least_busy_share_the_farthest() -> None:
    line = _line(_carrier_plan(overflow="B3"), bins=3)  # B1 and B2 free for three
    zones = hot_zones(line, _orders({"DHL": 10, "UPS": 30, "DPD": 20}))
    assert _bins(zones, "ups") == ["B1"]
    assert _bins(zones, "dpd") == _bins(zones, "dhl") == ["B2"]
    assert zones.notes
    assert "share B2" in zones.notes[0]
    _swapped_in(line, zones)


def _export(orders: list[Order], path: Path) -> None:
    """The book as a channel's jsonl export: one record per order, its parcels' codes."""
    by_order: dict[str, list[Order]] = defaultdict(list)
    for order in orders:
        by_order[order.order_id].append(order)
    with path.open("w", encoding="utf-8") as out:
        for parcels in by_order.values():
            o = parcels[0]
            out.write(json.dumps({
                "order_id": o.order_id, "channel": o.channel, "status": str(o.status),
                "carrier": o.carrier, "service": o.service, "route": o.route,
                "postcode": o.postcode, "created_at": o.created_at,
                "parcels": [{"code": p.code} for p in parcels]}) + "\n")
        out.write('{"order_id": "broken", "channel": "web"}\n')


def _plan_cli(argv: list[str]) -> int:
    return main(argv)


def test_the_cli_writes_a_plan_the_line_loads_and_a_shift_sorts_by(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tomllib.loads(Path(EXAMPLE_CONFIG).read_text(encoding="utf-8"))
    # The example's rules, their bins reversed: the busiest flows start on the farthest.
    reversed_bins = {f"B{i}": f"B{8 - i}" for i in range(1, 8)}
    data["sort_plan"]["rules"] = [{**r, "bins": [reversed_bins[b] for b in r["bins"]]}
                                  for r in data["sort_plan"]["rules"]]
    cold = tmp_path / "cold.toml"
    cold.write_text(tomli_w.dumps(data), encoding="utf-8")
    spec = ScenarioSpec(parcels=80, seed=13, mix={Case.NOMINAL: 1.0}, scuffed_share=0.0,
                        hot_bins=2.0)
    _, book = generate(spec, load_config(cold))
    _export(book, tmp_path / "web.jsonl")

    status = _plan_cli(["plan", "hot-zones", "--config", str(cold), "--orders",
                        str(tmp_path / "web.jsonl"), "--out", str(tmp_path / "plan.toml")])
    out = capsys.readouterr().out
    assert status == 1  # the broken record was refused, the plan made from the rest
    assert "web.jsonl:" in out
    assert "dhl-express" in out
    assert (tmp_path / "plan.toml").read_text(encoding="utf-8").startswith(
        "# Sort plan made by `parcel-sorter plan hot-zones`")

    data["sort_plan"] = {"file": "plan.toml"}
    hot = tmp_path / "hot.toml"
    hot.write_text(tomli_w.dumps(data), encoding="utf-8")
    line = load_config(hot)
    table = out.splitlines()
    assert table[table.index(next(t for t in table if t.startswith("destination"))) + 1
                 ].startswith("dhl-express")  # the busiest: hot_bins skews to the first rule
    assert line.sort_plan.destinations["dhl-express"].bins[0] == "B1"  # D1: the nearest

    summary, records, result = run_sim(line, spec, tmp_path / "shift")
    assert summary["missorts"] == 0
    assert len(records) == spec.parcels
    assert all(r["disposition"] == "SORTED" for r in records)
    assert all(r["actual_bin"] == r["expected_bin"] for r in records)
    orders = {p.order.code: p.order for p in result.truth if p.order is not None}
    assert sorted(orders.values(), key=lambda o: o.code) == sorted(book, key=lambda o: o.code)
    express_bins = {r["actual_bin"] for r in records if r["code"] is not None
                    and orders[r["code"]].carrier == "DHL"
                    and orders[r["code"]].service == "express"}
    assert express_bins
    assert express_bins <= set(line.sort_plan.destinations["dhl-express"].bins)
    assert "B1" in express_bins


def test_without_orders_files_the_cli_reads_the_line_order_book(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tomllib.loads(Path(EXAMPLE_CONFIG).read_text(encoding="utf-8"))
    data["order_store"] = {"backend": "sqlite", "path": "orders.sqlite"}
    line_file = tmp_path / "line.toml"
    line_file.write_text(tomli_w.dumps(data), encoding="utf-8")
    line = load_config(line_file)
    assert _plan_cli(["plan", "hot-zones", "--config", str(line_file)]) == 2  # no book yet
    assert "no such order book" in capsys.readouterr().err

    book = _orders({"UPS": 40, "DPD": 25}) + _orders({"DHL": 30}, OrderStatus.HELD)
    _export(book, tmp_path / "book.jsonl")
    store = open_order_book(line.order_store, create=True)
    asyncio.run(import_files(store, [tmp_path / "book.jsonl"], refused=lambda _: None))
    assert _plan_cli(["plan", "hot-zones", "--config", str(line_file), "--json",
                      "--out", str(tmp_path / "plan.toml")]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [(d["destination"], d["parcels"]) for d in table["destinations"][:2]] == [
        ("ups", 40), ("dpd", 25)]
    assert table["parcels"] == 65  # only released parcels: the store hands out no others
    plan = read_plan_file(tmp_path / "plan.toml")
    assert plan["destinations"]["ups"]["bins"] == ["B1"]
    assert plan["destinations"]["dpd"]["bins"] == ["B2"]


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(EXAMPLE_CONFIG)
    assert _plan_cli(["plan", "hot-zones", "--config", example,
                      "--orders", str(tmp_path / "none.jsonl")]) == 2
    (tmp_path / "orders.txt").write_text("", encoding="utf-8")
    assert _plan_cli(["plan", "hot-zones", "--config", example,
                      "--orders", str(tmp_path / "orders.txt")]) == 2
    assert _plan_cli(["plan", "hot-zones", "--config", str(tmp_path / "no-line.toml"),
                      "--orders", str(tmp_path / "orders.txt"), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert "none.jsonl: no such file" in err
    assert "cannot tell its format" in err
    assert "invalid line config" in err.splitlines()[-2]
    assert "no such file" in err.splitlines()[-1]
    with pytest.raises(SystemExit) as exited:
        _plan_cli(["plan", "hot-zones", "--config", example, "--spare", "-1"])
    assert exited.value.code == 2
