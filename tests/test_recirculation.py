"""A loop sorter: parcels not diverted come round again, against the emulator's truth.

The loop is the example line turned into one (``line.loop.example.toml``): a 14.1 m loop, 3
laps, the exception chute EXC. Every check is the controller's journal held against where
the emulator put each parcel and how many laps it really went round. The first shift renders
and decodes its labels; the others run on truth frames (every label in view reads), so what
they check is the loop's logic, not a label the decoder misses on every lap.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.app.example_line import EXAMPLES
from controller.app.simulate import ShiftResult
from controller.clock import VirtualClock, run_virtual
from controller.codes import ParcelReads
from controller.config import LineConfig, load_config, parse_config
from controller.errors import ConfigError
from controller.journal import Journal
from controller.kpis import ParcelOutcome
from controller.parcel import Belt, BinState, ParcelState
from controller.recirculation import Recirculation
from controller.sorter import Sorter
from controller.tracking import Tracker
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.devices import SimCamera, SimLineIO
from sim_hardware.line import PhysicalLine
from sim_hardware.scenario import Case, ScenarioSpec, generate
from sim_hardware.truth_frames import TruthDecoder

from .shifts import drain_and_stop, run_sim
from .test_readiness import StoreDownUntil

LOOP_CONFIG = EXAMPLES / "line.loop.example.toml"


@pytest.fixture(scope="module")
def loop_config() -> LineConfig:
    return load_config(LOOP_CONFIG)


def _with_end(config: LineConfig, **end: Any) -> LineConfig:
    return config.model_copy(update={"end_of_line": config.end_of_line.model_copy(update=end)})


def _laps(result: ShiftResult) -> dict[int, tuple[int, int]]:
    """Per emulated parcel: (laps it really went round, laps its one journal record says)."""
    by_enc = {row["inducted_enc"]: row for row in result.journal}
    assert len(by_enc) == len(result.journal)
    return {p.sim_id: (p.laps, by_enc[p.induct_enc]["laps"]) for p in result.truth
            if p.induct_enc is not None}


def _lapped(laps: dict[int, tuple[int, int]], record: ParcelOutcome) -> int:
    """The laps an outcome's parcel really went round."""
    assert record["sim_id"] is not None, record
    return laps[record["sim_id"]][0]


def _check_truth(summary: dict[str, Any], records: list[ParcelOutcome],
                 result: ShiftResult) -> dict[int, tuple[int, int]]:
    """One record per parcel, where the truth says, and the laps the truth says."""
    assert len(result.journal) == len(result.truth)  # one record per parcel, across laps
    laps = _laps(result)
    assert len(laps) == len(result.truth)
    for sim_id, (true_laps, journal_laps) in laps.items():
        assert true_laps == journal_laps, (sim_id, true_laps, journal_laps)
    for r in records:
        assert r["actual_bin"] == r["controller_bin"], r
        # as the report counts it: bins full on the way (every lap, for the cap) is right
        full = "DEST_FULL" if r["disposition"] == "DEST_FULL" or "DEST_FULL" in (
            r["reason"] or "") else None
        assert r["disposition"] == r["expected_disposition"] or (
            r["expected_disposition"] == "SORTED" and full), r
    assert summary["missorts"] == summary["wrong_parcel_fires"] == summary["lost"] == 0
    assert summary["outcome_differs_from_truth"] == 0
    assert result.stats.unknown_end_arrivals == result.stats.returns_missed == 0
    return laps


def test_a_label_hidden_on_the_first_lap_is_read_on_the_second(
        loop_config: LineConfig, tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=30, seed=3, scuffed_share=0.0, mix={
        Case.NOMINAL: 3.0, Case.HIDDEN_LABEL: 1.0, Case.NO_LABEL: 1.0})
    summary, records, result = run_sim(loop_config, spec, tmp_path)
    laps = _check_truth(summary, records, result)
    max_laps = loop_config.end_of_line.max_laps
    by_case = {case: [r for r in records if r["case"] == case] for case in
               (Case.NOMINAL, Case.HIDDEN_LABEL, Case.NO_LABEL)}
    assert all(by_case.values()), "the scenario lacks a case"
    for r in by_case[Case.HIDDEN_LABEL]:  # NO_READ on lap 1, read and sorted on lap 2
        assert (r["disposition"], r["actual_bin"]) == ("SORTED", r["expected_bin"]), r
        assert _lapped(laps, r) == 2, r
    for r in by_case[Case.NO_LABEL]:  # unreadable every lap: the cap, the exception chute
        assert (r["disposition"], r["actual_bin"]) == ("RECIRC_LIMIT", "EXC"), r
        assert _lapped(laps, r) == max_laps, r
        assert f"{max_laps} of {max_laps} laps, the last NO_READ" in (r["reason"] or "")
    for r in by_case[Case.NOMINAL]:
        assert _lapped(laps, r) == 1, r
    assert summary["dispositions"].get("RECIRC_LIMIT") == len(by_case[Case.NO_LABEL])


def test_a_camera_stall_is_late_on_lap_one_and_sorted_on_lap_two(
        loop_config: LineConfig, tmp_path: Path) -> None:
    """Stalls are few: a stall blinds the camera to every parcel in view, and one going
    round may meet another parcel's stall on its next lap (the truth could not say)."""
    spec = ScenarioSpec(parcels=24, seed=8, scuffed_share=0.0, mix={
        Case.NOMINAL: 5.0, Case.CAMERA_STALL: 1.0})
    summary, records, result = run_sim(loop_config, spec, tmp_path, frames="truth")
    laps = _check_truth(summary, records, result)
    stalled = [r for r in records if r["case"] == Case.CAMERA_STALL]
    assert stalled
    for r in stalled:
        assert (r["disposition"], r["actual_bin"]) == ("SORTED", r["expected_bin"]), r
        assert _lapped(laps, r) >= 2, r


def test_a_full_bin_emptied_while_its_parcels_go_round(
        loop_config: LineConfig, tmp_path: Path) -> None:
    """Small bins, no alternates, no overflow: a parcel whose bin is full goes round and is
    sorted once the operator has emptied it (4 s after it filled, a lap takes 7 s)."""
    bins = [b.model_copy(update={"capacity": 2}) if b.id != "EXC" else b
            for b in loop_config.bins]
    plan = loop_config.sort_plan.model_copy(update={"overflow": None})
    config = loop_config.model_copy(update={"bins": bins, "sort_plan": plan})
    spec = ScenarioSpec(parcels=40, seed=5, scuffed_share=0.0, bin_empty_after_s=4.0,
                        multi_parcel_share=0.0, mix={Case.NOMINAL: 1.0})
    summary, records, result = run_sim(config, spec, tmp_path, frames="truth")
    laps = _check_truth(summary, records, result)
    went_round = [r for r in records if _lapped(laps, r) > 1]
    assert went_round, "no bin was full when its parcel came"
    sorted_later = [r for r in went_round if r["disposition"] == "SORTED"]
    assert sorted_later, went_round
    for r in sorted_later:
        assert r["actual_bin"] in r["alternate_bins"] + [r["expected_bin"]], r
    for r in records:  # never pushed into a full bin: the controller waited for a lap
        if r["disposition"] == "RECIRC_LIMIT":
            assert "DEST_FULL" in (r["reason"] or ""), r
    assert all(b["overfilled"] == 0 for b in result.bins.values()), result.bins


def test_without_an_exception_bin_the_cap_leaves_by_the_exit_gate(
        loop_config: LineConfig, tmp_path: Path) -> None:
    config = _with_end(loop_config, max_laps=2, exception_bin=None)
    spec = ScenarioSpec(parcels=24, seed=11, scuffed_share=0.0, mix={
        Case.NOMINAL: 2.0, Case.NO_LABEL: 1.0, Case.TWO_LABELS: 1.0, Case.HELD_ORDER: 1.0,
        Case.UNKNOWN_ORDER: 1.0})
    summary, records, result = run_sim(config, spec, tmp_path, frames="truth")
    laps = _check_truth(summary, records, result)
    capped = [r for r in records if r["case"] != Case.NOMINAL]
    assert capped
    for r in capped:
        assert (r["disposition"], r["actual_bin"]) == ("RECIRC_LIMIT", "END"), r
        assert _lapped(laps, r) == 2, r


def test_a_multi_read_goes_to_the_exception_bin_at_once(
        loop_config: LineConfig, tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=24, seed=3, scuffed_share=0.0, mix={
        Case.NOMINAL: 2.0, Case.TWO_LABELS: 2.0, Case.HELD_ORDER: 1.0})
    summary, records, result = run_sim(loop_config, spec, tmp_path, frames="truth")
    laps = _check_truth(summary, records, result)
    for r in records:
        if r["case"] == Case.TWO_LABELS:
            assert (r["disposition"], r["actual_bin"]) == ("MULTI_READ", "EXC"), r
            assert _lapped(laps, r) == 1, r
        elif r["case"] == Case.HELD_ORDER:  # held every lap: the cap, then the chute
            assert (r["disposition"], r["actual_bin"]) == ("RECIRC_LIMIT", "EXC"), r
            assert "ORDER_HELD" in (r["reason"] or ""), r


def test_loop_config_is_checked(loop_config: LineConfig) -> None:
    data = loop_config.model_dump(mode="json")
    end = data["end_of_line"]
    for bad, field in (({**end, "loop_length_mm": None}, "loop_length_mm"),
                       ({**end, "exception_bin": "NOPE"}, "exception_bin"),
                       ({**end, "loop_length_mm": 9800.0}, "loop_length_mm"),
                       ({**end, "role": "reject"}, "recirculate")):
        with pytest.raises(ConfigError, match=field):
            parse_config({**data, "end_of_line": bad})


def test_a_journal_from_before_loops_gets_its_laps_column(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE parcels (parcel_id INTEGER PRIMARY KEY, inducted_enc INTEGER "
               "NOT NULL, inducted_at REAL NOT NULL, length_mm REAL, code TEXT, order_id TEXT,"
               " disposition TEXT, bin TEXT, reason TEXT, decided_at REAL, final_at REAL, "
               "order_created_at REAL)")
    db.execute("INSERT INTO parcels (parcel_id, inducted_enc, inducted_at, disposition, bin)"
               " VALUES (1, 0, 0.0, 'SORTED', 'B1')")
    db.commit()
    db.close()

    async def reopen(clock: VirtualClock) -> list[dict[str, Any]]:
        journal = Journal(path, clock)
        await journal.open()
        try:
            return await journal.records()
        finally:
            await journal.close()

    (row,) = run_virtual(reopen)
    assert (row["laps"], row["disposition"]) == (None, "SORTED")


def _loop_belt(config: LineConfig) -> tuple[Belt, Recirculation]:
    belt = Belt(Tracker(config.induction.photo_eye_mm, config.belt.encoder_counts_per_mm),
                {b.id: BinState(b.capacity) for b in config.bins})
    window = belt.tracker.blocked(1, 1000)
    belt.tracker.cleared(1800)  # 400 mm long
    belt.parcels[1] = ParcelState(window, ParcelReads(2), 0.0)
    return belt, Recirculation(config, belt)


def test_a_returning_parcel_is_known_by_where_it_is_due(loop_config: LineConfig) -> None:
    belt, loop = _loop_belt(loop_config)
    parcel = belt.parcels[1]
    cpm = loop_config.belt.encoder_counts_per_mm
    end = loop_config.end_of_line
    at_end = 1000 + round((end.position_mm - loop_config.induction.photo_eye_mm) * cpm)
    assert loop.at_end(at_end)  # undecided, lap 1 of 3: round again
    assert parcel.returning
    assert parcel.disposition is not None
    assert parcel.disposition.value == "LATE"
    assert end.loop_length_mm is not None
    due = 1000 + round(end.loop_length_mm * cpm)
    tolerance = max(loop_config.decision.assign_tolerance_mm, 15.0)
    assert loop.returning_at(due - round((tolerance + 5) * cpm)) is None  # a new parcel
    assert loop.returning_at(due + round((tolerance - 5) * cpm)) is parcel
    loop.inducted_again(parcel, due)
    assert (parcel.lap, parcel.returning, parcel.disposition) == (2, False, None)
    assert belt.tracker.inducting is parcel.window


def test_a_parcel_that_does_not_come_back_round_is_missed(loop_config: LineConfig) -> None:
    belt, loop = _loop_belt(loop_config)
    parcel = belt.parcels[1]
    cpm = loop_config.belt.encoder_counts_per_mm
    at_end = 1000 + round(loop_config.end_of_line.position_mm * cpm)
    assert loop.at_end(at_end)
    assert loop_config.end_of_line.loop_length_mm is not None
    due = 1000 + round(loop_config.end_of_line.loop_length_mm * cpm)
    assert not loop.missed(parcel, due)
    assert loop.missed(parcel, due + round(500 * cpm))  # its tail well past PE-IN, unseen
    assert belt.stats.returns_missed == 1


def test_parcels_inducted_before_the_line_is_ready_are_sorted_a_lap_later(
        loop_config: LineConfig, tmp_path: Path) -> None:
    """No infeed gate, the order store down for the first 3 s: the first parcels are
    NOT_READY on lap 1, go round, and are sorted on lap 2 as the truth says."""
    spec = ScenarioSpec(parcels=20, seed=21, mix={Case.NOMINAL: 1.0}, scuffed_share=0.0)
    parcels, orders = generate(spec, loop_config)
    SqliteOrderStore(tmp_path / "orders.sqlite").add(orders)

    async def shift(clock: VirtualClock) -> list[dict[str, Any]]:
        line = PhysicalLine(loop_config, spec, parcels, clock, truth_frames=True)
        store = StoreDownUntil(SqliteOrderStore(tmp_path / "orders.sqlite"), clock, 3.0)
        sorter = Sorter(loop_config, clock, line_io=SimLineIO(line),
                        cameras=[SimCamera(line, c.id) for c in loop_config.cameras],
                        decoders={c.id: TruthDecoder(parcels) for c in loop_config.cameras},
                        order_store=store, journal=Journal(tmp_path / "journal.sqlite", clock))
        running = asyncio.create_task(sorter.run())
        await line.run()
        return await drain_and_stop(sorter, running, clock)

    rows = run_virtual(shift)
    assert len(rows) == len(parcels)  # one record per parcel, across laps
    by_enc = {r["inducted_enc"]: r for r in rows}
    early = [p for p in parcels if by_enc[p.induct_enc]["inducted_at"] < 3.0]
    assert early
    for parcel in parcels:
        row = by_enc[parcel.induct_enc]
        assert row["laps"] == parcel.laps, (row, parcel.events)
        assert row["bin"] == parcel.actual, (row, parcel.events)
        assert row["disposition"] in ("SORTED", "DEST_FULL"), row
        assert parcel.actual in parcel.expected_bins, (row, parcel.expected_bins)
    assert all(by_enc[p.induct_enc]["laps"] >= 2 for p in early)


def test_a_pair_too_close_goes_round_together_and_leaves_at_the_cap(
        loop_config: LineConfig, tmp_path: Path) -> None:
    """A pusher loop keeps a pair in its slots: too close on every lap, never pushed; at the
    cap both leave by the exit gate. The merge never puts a new parcel between them."""
    config = loop_config.model_copy(update={"induction": loop_config.induction.model_copy(
        update={"min_gap_mm": 150.0})})
    spec = ScenarioSpec(parcels=30, seed=41, mix={Case.NOMINAL: 1.0, Case.TOO_CLOSE: 0.4},
                        scuffed_share=0.0, multi_parcel_share=0.0)
    summary, records, result = run_sim(config, spec, tmp_path, frames="truth")
    laps = _check_truth(summary, records, result)
    close = [r for r in records if "inducted too close" in (r["reason"] or "")]
    assert len(close) >= 6
    for r in close:
        assert (r["disposition"], r["actual_bin"]) == ("RECIRC_LIMIT", "END"), r
        assert _lapped(laps, r) == config.end_of_line.max_laps, r
        assert "TOO_CLOSE" in (r["reason"] or ""), r
    assert result.line_counters["empty_fires"] == 0
