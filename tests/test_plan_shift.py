"""Destinations, size classes and consolidation on a whole shift, against the emulator's truth."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from controller.config import Destination, LineConfig, SizeClass, SortPlanConfig, SortRule
from sim_hardware.scenario import ScenarioSpec
from tests.shifts import run_sim

CAPACITY = 6


def _config(example: LineConfig) -> LineConfig:
    plan = SortPlanConfig(
        size_classes=[SizeClass(name="oversize", min_length_mm=500)],
        destinations={"parcels": Destination(bins=["B1", "B2"], alternates=["B3", "B4"]),
                      "big": Destination(bins=["B6"])},
        rules=[SortRule(name="big", when={"size_class": "oversize"}, destination="big"),
               SortRule(name="all", destination="parcels")],
        overflow="B8")
    bins = [b.model_copy(update={"capacity": CAPACITY}) if b.id in ("B1", "B2") else b
            for b in example.bins]
    return example.model_copy(update={"sort_plan": plan, "bins": bins})


def test_a_multi_parcel_order_stays_together_across_a_bin_filling_and_sizes_sort_apart(
        example_config: LineConfig, tmp_path: Path) -> None:
    config = _config(example_config)
    spec = ScenarioSpec(parcels=40, seed=31, scuffed_share=0.0, bin_empty_after_s=None,
                        multi_parcel_share=0.7, length_mm=(250.0, 650.0))
    _, records, result = run_sim(config, spec, tmp_path)
    truth = {p.sim_id: p for p in result.truth}
    assert len(records) == len(truth)
    assert not any(r["missort"] for r in records), [r for r in records if r["missort"]]
    assert all(r["controller_bin"] == r["actual_bin"] for r in records)
    assert {r["disposition"] for r in records} <= {"SORTED", "DEST_FULL"}
    for r in records:
        assert r["sim_id"] is not None
        parcel = truth[r["sim_id"]]
        oversize = parcel.length_mm >= 500
        assert (r["actual_bin"] == "B6") is oversize, (parcel.length_mm, r)
        assert r["actual_bin"] in parcel.expected_bins, r
    # both of the destination's bins took parcels: spread, not only sent on when full
    standard = [r for r in records if r["actual_bin"] != "B6"]
    first_ten = [r["actual_bin"] for r in standard[:10]]
    assert {"B1", "B2"} <= set(first_ten)
    assert sum(r["actual_bin"] in ("B1", "B2") for r in records) == 2 * CAPACITY
    # every multi-parcel order's standard parcels share one bin, but where it filled
    by_order: dict[str, list[str]] = defaultdict(list)
    for r in standard:
        assert r["sim_id"] is not None
        assert r["actual_bin"] is not None
        parcel = truth[r["sim_id"]]
        assert parcel.order is not None
        if parcel.order.parcels_in_order > 1:
            by_order[parcel.order.order_id].append(r["actual_bin"])
    assert len(by_order) >= 5
    split = 0
    for order_id, bins in by_order.items():
        runs = [b for i, b in enumerate(bins) if i == 0 or bins[i - 1] != b]
        assert len(runs) == len(set(runs)), (order_id, bins)  # never back to an earlier bin
        if len(runs) > 1:
            split += 1
            assert all(result.bins[b]["received"] == CAPACITY for b in runs[:-1]), \
                (order_id, bins, result.bins)
    assert split <= 2  # an order moves bin only where its bin filled under it
    assert result.bins["B1"]["overfilled"] == result.bins["B2"]["overfilled"] == 0
