"""Each exception case lands in its own disposition and physical place; the line keeps going."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.config import LineConfig, SortRule
from controller.orders import Order
from sim_hardware.scenario import Case, ScenarioSpec

from .shifts import only, run_sim


def _check_against_truth(records: list[dict[str, Any]], case: Case, disposition: str) -> None:
    special = [r for r in records if r["case"] == case]
    nominal = [r for r in records if r["case"] == Case.NOMINAL]
    assert special, "the scenario produced no parcel of this case"
    assert nominal, "no nominal parcels around it"
    for r in special:
        assert r["disposition"] == disposition, r
        assert r["actual_bin"] == "END", r  # fail-safe: the end of the line, no diverter fired
        assert r["controller_bin"] == "END", r
    for r in nominal:  # the parcels around it still sort
        assert r["disposition"] == "SORTED", r
        assert r["actual_bin"] == r["expected_bin"], r
    assert not any(r["missort"] for r in records)


def test_no_label_is_no_read(example_config: LineConfig, tmp_path: Path) -> None:
    summary, records, _ = run_sim(example_config, only(Case.NO_LABEL, 24, 1), tmp_path)
    _check_against_truth(records, Case.NO_LABEL, "NO_READ")
    # An order with a parcel at the end of the line is not a perfect order.
    orders = {r["order_id"] for r in records}
    good = {r["order_id"] for r in records if r["case"] == Case.NOMINAL} - {
        r["order_id"] for r in records if r["case"] == Case.NO_LABEL}
    assert summary["orders"] == len(orders)
    assert summary["perfect_order_share"] == len(good) / len(orders) < 1.0


def test_damaged_label_is_no_read(example_config: LineConfig, tmp_path: Path) -> None:
    _, records, _ = run_sim(example_config, only(Case.DAMAGED_LABEL, 24, 2), tmp_path)
    _check_against_truth(records, Case.DAMAGED_LABEL, "NO_READ")


def test_two_different_labels_are_multi_read(example_config: LineConfig, tmp_path: Path) -> None:
    _, records, _ = run_sim(example_config, only(Case.TWO_LABELS, 24, 3), tmp_path)
    _check_against_truth(records, Case.TWO_LABELS, "MULTI_READ")
    for r in records:
        if r["case"] == Case.TWO_LABELS:
            assert "different codes" in r["reason"]


def test_label_type_priority_decides_between_two_labels(
        example_config: LineConfig, tmp_path: Path) -> None:
    """A licence plate beside the shipment label: the plan says the shipment label wins."""
    _, records, _ = run_sim(example_config, only(Case.LICENCE_PLATE, 16, 19), tmp_path / "a")
    plated = [r for r in records if r["case"] == Case.LICENCE_PLATE]
    assert plated
    for r in plated:
        assert r["disposition"] == "SORTED", r
        assert r["read_code"] == r["code"]
        assert r["actual_bin"] == r["expected_bin"] == r["controller_bin"]
    # Without that priority both are codes of equal standing: the parcel is a MULTI_READ.
    types = [t.model_copy(update={"priority": 1})
             for t in example_config.decision.label_types]
    equal = example_config.model_copy(update={"decision": example_config.decision.model_copy(
        update={"label_types": types})})
    _, records, _ = run_sim(equal, only(Case.LICENCE_PLATE, 16, 19), tmp_path / "b")
    for r in records:
        if r["case"] == Case.LICENCE_PLATE:
            assert r["disposition"] == "MULTI_READ", r
            assert r["actual_bin"] == "END"


def test_unknown_order_is_no_order(example_config: LineConfig, tmp_path: Path) -> None:
    _, records, _ = run_sim(example_config, only(Case.UNKNOWN_ORDER, 24, 4), tmp_path)
    _check_against_truth(records, Case.UNKNOWN_ORDER, "NO_ORDER")
    for r in records:
        if r["case"] == Case.UNKNOWN_ORDER:
            assert r["read_code"] == r["code"]  # it was read right: the order is what's missing


def test_held_and_cancelled_orders_are_held(example_config: LineConfig, tmp_path: Path) -> None:
    _, held, _ = run_sim(example_config, only(Case.HELD_ORDER, 16, 5), tmp_path / "held")
    _check_against_truth(held, Case.HELD_ORDER, "ORDER_HELD")
    _, cancelled, _ = run_sim(example_config, only(Case.CANCELLED_ORDER, 16, 6), tmp_path / "c")
    _check_against_truth(cancelled, Case.CANCELLED_ORDER, "ORDER_HELD")
    assert any("cancelled" in r["reason"] for r in cancelled if r["case"] == Case.CANCELLED_ORDER)


def test_sort_plan_rule_on_order_status_sends_held_orders_to_a_hold_bin(
        example_config: LineConfig, tmp_path: Path) -> None:
    hold = SortRule(name="on-hold", when={"status": "held"}, bins=["B7"])
    plan = example_config.sort_plan.model_copy(
        update={"rules": [hold, *example_config.sort_plan.rules]})
    config = example_config.model_copy(update={"sort_plan": plan})
    spec = ScenarioSpec(parcels=40, seed=17, scuffed_share=0.0, mix={
        Case.NOMINAL: 2.0, Case.HELD_ORDER: 1.0, Case.CANCELLED_ORDER: 1.0})
    _, records, _ = run_sim(config, spec, tmp_path)
    by_case = {case: [r for r in records if r["case"] == case] for case in Case}
    assert by_case[Case.HELD_ORDER]
    assert by_case[Case.CANCELLED_ORDER]
    for r in by_case[Case.HELD_ORDER]:
        assert r["disposition"] == "ORDER_HELD", r
        assert r["actual_bin"] == r["controller_bin"] == r["expected_bin"] == "B7", r
        assert "rule on-hold" in r["reason"]
    for r in by_case[Case.CANCELLED_ORDER]:  # no rule names cancelled: the end of line
        assert r["disposition"] == "ORDER_HELD", r
        assert r["actual_bin"] == r["controller_bin"] == "END", r
    for r in by_case[Case.NOMINAL]:  # released orders never match the status rule
        assert r["disposition"] in ("SORTED", "DEST_FULL"), r
        assert r["actual_bin"] != "B7" or "postnl-store" in r["reason"], r
        assert r["actual_bin"] == r["controller_bin"]
    assert not any(r["missort"] for r in records)


def test_parcel_too_fast_for_its_decision_is_late(
        example_config: LineConfig, tmp_path: Path) -> None:
    _, records, result = run_sim(example_config, only(Case.CAMERA_STALL, 12, 8), tmp_path)
    _check_against_truth(records, Case.CAMERA_STALL, "LATE")
    assert result.line_counters["empty_fires"] == 0


def test_full_bin_goes_to_alternate_then_overflow(
        example_config: LineConfig, tmp_path: Path) -> None:
    plan = example_config.sort_plan.model_copy(update={"rules": [
        example_config.sort_plan.rules[0].model_copy(update={"when": {}})]})  # all to B1, B2
    bins = [b.model_copy(update={"capacity": 3}) if b.id in ("B1", "B2") else b
            for b in example_config.bins]
    config = example_config.model_copy(update={"sort_plan": plan, "bins": bins})
    spec = ScenarioSpec(parcels=10, seed=9, scuffed_share=0.0, bin_empty_after_s=None)
    _, records, result = run_sim(config, spec, tmp_path)

    assert [r["actual_bin"] for r in records] == ["B1"] * 3 + ["B2"] * 3 + ["B8"] * 4
    assert [r["disposition"] for r in records] == ["SORTED"] * 3 + ["DEST_FULL"] * 7
    assert all(r["controller_bin"] == r["actual_bin"] for r in records)
    assert "B1 full, sent to B2" in records[3]["reason"]
    assert all(b["overfilled"] == 0 for b in result.bins.values())
    assert not any(r["missort"] for r in records)


def test_emptied_bin_is_used_again(example_config: LineConfig, tmp_path: Path) -> None:
    plan = example_config.sort_plan.model_copy(update={"rules": [
        example_config.sort_plan.rules[0].model_copy(update={"when": {}, "bins": ["B1"]})]})
    bins = [b.model_copy(update={"capacity": 2}) if b.id == "B1" else b
            for b in example_config.bins]
    config = example_config.model_copy(update={"sort_plan": plan, "bins": bins})
    spec = ScenarioSpec(parcels=12, seed=10, scuffed_share=0.0, bin_empty_after_s=1.0)
    _, records, result = run_sim(config, spec, tmp_path)
    in_b1 = [r for r in records if r["actual_bin"] == "B1"]
    assert len(in_b1) > 2  # the operator emptied it and the controller went back to it
    assert result.bins["B1"]["overfilled"] == 0
    assert all(r["actual_bin"] in ("B1", "B8") for r in records)


def _routed_case(config: LineConfig, case: Case, seed: int, tmp_path: Path
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    _, records, _ = run_sim(config, only(case, 24, seed), tmp_path)
    special = [r for r in records if r["case"] == case]
    nominal = [r for r in records if r["case"] == Case.NOMINAL]
    assert special
    assert nominal
    for r in nominal:
        assert r["disposition"] == "SORTED", r
        assert r["actual_bin"] == r["expected_bin"], r
    return special, records


def test_jammed_diverter_is_divert_fault(example_config: LineConfig, tmp_path: Path) -> None:
    special, _ = _routed_case(example_config, Case.JAMMED_DIVERTER, 12, tmp_path)
    for r in special:
        assert r["disposition"] == "DIVERT_FAULT", r
        assert r["actual_bin"] == r["controller_bin"] == "END", r
        assert f"fired at {r['expected_bin']} but arrived at the end" in r["reason"]


def test_stray_push_is_detected_as_missort(example_config: LineConfig, tmp_path: Path) -> None:
    special, records = _routed_case(example_config, Case.STRAY_PUSH, 13, tmp_path)
    for r in special:
        assert r["disposition"] == "MISSORT", r
        assert r["missort"]  # the truth agrees: it is in a bin it does not belong in
        assert r["controller_bin"] == r["actual_bin"] != "END", r
    assert sum(r["missort"] for r in records) == len(special)


def test_parcel_lifted_off_the_belt_is_lost(example_config: LineConfig, tmp_path: Path) -> None:
    special, _ = _routed_case(example_config, Case.PICKED_OFF, 14, tmp_path)
    for r in special:
        assert r["disposition"] == "LOST", r
        assert r["actual_bin"] == "REMOVED"
        assert r["controller_bin"] == "UNKNOWN"


def _overwrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)


class CorruptedMidShift:
    """The real SQLite order store, whose file is overwritten with garbage mid-shift."""

    def __init__(self, store: Any, after_lookups: int) -> None:
        self.store = store
        self.after = after_lookups
        self.lookups = 0

    async def lookup(self, code: str) -> Any:
        self.lookups += 1
        if self.lookups == self.after:
            await self.store.close()  # drop the open connection's page cache
            _overwrite(Path(self.store.path), b"not a database at all " * 512)
        return await self.store.lookup(code)

    async def released(self, limit: int) -> Any:
        return await self.store.released(limit)

    async def close(self) -> None:
        await self.store.close()


def test_order_store_failure_sorts_from_the_warmed_cache(
        example_config: LineConfig, tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=30, seed=15, scuffed_share=0.0)
    stores: list[CorruptedMidShift] = []

    def corrupt(store: Any) -> CorruptedMidShift:
        stores.append(CorruptedMidShift(store, after_lookups=10))
        return stores[0]

    summary, records, result = run_sim(example_config, spec, tmp_path,
                                       order_store_wrapper=corrupt)
    assert result.stats.order_store_errors == 21  # every lookup from the 10th on failed
    assert summary["dispositions"] == {"SORTED": 30}
    assert all(r["actual_bin"] == r["expected_bin"] for r in records)


def test_order_store_failure_without_cache_is_no_order(
        example_config: LineConfig, tmp_path: Path) -> None:
    config = example_config.model_copy(update={
        "order_store": example_config.order_store.model_copy(update={"cache_size": 0})})
    spec = ScenarioSpec(parcels=20, seed=16, scuffed_share=0.0)
    _, records, _ = run_sim(config, spec, tmp_path,
                            order_store_wrapper=lambda s: CorruptedMidShift(s, 8))
    assert [r["disposition"] for r in records[:7]] == ["SORTED"] * 7
    for r in records[7:]:  # the line keeps going; these go to the end, safely
        assert r["disposition"] == "NO_ORDER", r
        assert r["actual_bin"] == "END"
        assert "order store unavailable" in r["reason"]
        assert "file is not a database" in r["reason"]


def test_no_read_and_multi_read_parcels_are_archived_for_keying(
        example_config: LineConfig, tmp_path: Path) -> None:
    from controller.archive import NoReadArchive

    spec = ScenarioSpec(parcels=30, seed=24, scuffed_share=0.0, mix={
        Case.NOMINAL: 2.0, Case.DAMAGED_LABEL: 1.0, Case.TWO_LABELS: 1.0})
    _, records, _ = run_sim(example_config, spec, tmp_path)
    archived = {e.parcel_id: e for e in NoReadArchive(
        tmp_path / "noread", max_parcels=1000, max_bytes=10**9).entries()}
    expected = {r["parcel_id"]: r for r in records
                if r["disposition"] in ("NO_READ", "MULTI_READ")}
    assert expected
    assert set(archived) == set(expected)  # exactly those, none of the sorted ones
    for parcel_id, entry in archived.items():
        assert entry.disposition == expected[parcel_id]["disposition"]
        assert 1 <= len(entry.frame_files) <= example_config.archive.frames_per_parcel
        if entry.disposition == "MULTI_READ":
            assert len(entry.codes) == 2
            assert expected[parcel_id]["code"] in entry.codes


class BrokenOnce:
    """An order store with a bug: one lookup raises an error that is not OrderStoreError."""

    def __init__(self, store: Any, on_lookup: int) -> None:
        self.store = store
        self.on_lookup = on_lookup
        self.lookups = 0
        self.broke_on: str | None = None

    async def lookup(self, code: str) -> Any:
        self.lookups += 1
        if self.lookups == self.on_lookup:
            self.broke_on = code
            raise RuntimeError("the store's driver has a bug")
        return await self.store.lookup(code)

    async def released(self, limit: int) -> Any:
        return await self.store.released(limit)

    async def close(self) -> None:
        await self.store.close()


def _check_one_failed_decision(records: list[dict[str, Any]], result: Any, code: str | None,
                               error: str) -> None:
    assert code is not None, "the fault was never injected"
    assert result.stats.decision_errors == 1
    assert len({row["parcel_id"] for row in result.journal}) == len(result.journal)
    assert all(row["disposition"] is not None for row in result.journal)
    failed = [r for r in records if r["code"] == code]
    assert len(failed) == 1
    assert failed[0]["disposition"] == "LATE", failed[0]
    assert failed[0]["reason"] == f"decision failed: RuntimeError: {error}"
    assert failed[0]["actual_bin"] == failed[0]["controller_bin"] == "END"  # nothing fired
    later = [r for r in records if r["parcel_id"] > failed[0]["parcel_id"]]
    assert len(later) >= 5
    others = [r for r in records if r["code"] != code]
    assert all(r["disposition"] == "SORTED" for r in others), others
    assert all(r["actual_bin"] == r["expected_bin"] for r in others)
    assert result.stats.dispositions == {"SORTED": len(others), "LATE": 1}


def test_an_order_store_raising_a_bug_fails_one_decision_and_the_line_goes_on(
        example_config: LineConfig, tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=16, seed=25, scuffed_share=0.0)
    stores: list[BrokenOnce] = []

    def broken(store: Any) -> BrokenOnce:
        stores.append(BrokenOnce(store, on_lookup=6))
        return stores[0]

    _, records, result = run_sim(example_config, spec, tmp_path, order_store_wrapper=broken)
    assert result.stats.order_store_errors == 0  # a bug, not the store being unreachable
    _check_one_failed_decision(records, result, stores[0].broke_on,
                               "the store's driver has a bug")


def test_a_sort_plan_raising_fails_one_decision_and_the_line_goes_on(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.sortplan import SortPlan, Target

    target = SortPlan.target
    calls: list[str] = []

    def raising_once(plan: SortPlan, order: Order, length_mm: float | None = None) -> Target:
        calls.append(order.code)
        if len(calls) == 4:
            raise RuntimeError("rule table corrupt")
        return target(plan, order, length_mm)

    monkeypatch.setattr(SortPlan, "target", raising_once)
    spec = ScenarioSpec(parcels=16, seed=26, scuffed_share=0.0)
    _, records, result = run_sim(example_config, spec, tmp_path)
    _check_one_failed_decision(records, result, calls[3] if len(calls) > 3 else None,
                               "rule table corrupt")


@pytest.mark.parametrize("error", [RuntimeError("a bug in the writer"), OSError("disk full")])
def test_archive_write_failures_of_any_kind_are_counted_and_the_line_goes_on(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    from controller.archive import ArchivedParcel, NoReadArchive

    tried: list[int] = []

    def failing_store(archive: NoReadArchive, entry: ArchivedParcel) -> Path:
        tried.append(entry.parcel_id)
        raise error

    monkeypatch.setattr(NoReadArchive, "store", failing_store)
    spec = ScenarioSpec(parcels=16, seed=27, scuffed_share=0.0,
                        mix={Case.NOMINAL: 2.0, Case.NO_LABEL: 1.0})
    with caplog.at_level("WARNING", logger="controller.sorter"):
        _, records, result = run_sim(example_config, spec, tmp_path)
    no_reads = [r["parcel_id"] for r in records if r["disposition"] == "NO_READ"]
    assert no_reads
    assert sorted(tried) == sorted(no_reads)
    assert result.stats.archive_errors == len(no_reads)
    kept_back = [m for m in caplog.messages if "no-read archive: parcel" in m]
    assert len(kept_back) == len(no_reads)
    assert all(r["disposition"] == "SORTED" for r in records if r["case"] == Case.NOMINAL)
