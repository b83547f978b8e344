"""Gap control: parcels inducted closer than the diverters can push apart are not diverted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from controller import diverting
from controller.config import InductionConfig, LineConfig, parse_config
from controller.errors import ConfigError
from controller.spacing import Spacing, neighbour_in_reach
from controller.tracking import TrackingWindow
from sim_hardware.scenario import Case, ScenarioSpec
from tests.shifts import run_sim

CPM = 10.0  # encoder counts per mm


def _window(parcel_id: int, lead_mm: float, length_mm: float) -> TrackingWindow:
    return TrackingWindow(parcel_id, round(lead_mm * CPM), 0.0, CPM,
                          round((lead_mm + length_mm) * CPM))


def test_a_pair_closer_than_the_gap_or_the_pitch_is_named_with_its_measure() -> None:
    spacing = Spacing(InductionConfig(min_gap_mm=100))
    assert spacing.inducted(_window(1, 0, 300)) is None
    assert spacing.inducted(_window(2, 420, 300)) is None  # a gap of 120 mm is enough
    pair = spacing.inducted(_window(3, 800, 300))  # 80 mm behind parcel 2
    assert pair is not None
    assert (pair.before, pair.after) == (2, 3)
    assert "gap 80 mm, the diverters need 100" in pair.reason
    by_pitch = Spacing(InductionConfig(min_pitch_mm=450))
    by_pitch.inducted(_window(1, 0, 300))
    short = by_pitch.inducted(_window(2, 420, 300))
    assert short is not None
    assert "pitch 420 mm, the diverters need 450" in short.reason
    assert Spacing(InductionConfig()).inducted(_window(1, 0, 300)) is None


def test_a_minimum_gap_longer_than_the_way_to_the_read_zones_end_is_refused(
        example_config: LineConfig) -> None:
    reach = example_config.read_zone_end_mm - example_config.induction.photo_eye_mm
    data = example_config.model_dump()
    data["induction"]["min_gap_mm"] = reach + 1
    with pytest.raises(ConfigError, match=r"induction.min_gap_mm: .* is longer than the belt"):
        parse_config(data)


def _close_line(example: LineConfig, min_gap_mm: float) -> LineConfig:
    return example.model_copy(update={"induction": example.induction.model_copy(
        update={"min_gap_mm": min_gap_mm})})


def test_parcels_inducted_too_close_ride_to_the_end_and_the_rest_sort(
        example_config: LineConfig, tmp_path: Path) -> None:
    config = _close_line(example_config, 150.0)
    spec = ScenarioSpec(parcels=40, seed=41, mix={Case.NOMINAL: 1.0, Case.TOO_CLOSE: 0.4},
                        scuffed_share=0.0, multi_parcel_share=0.0)
    _, records, result = run_sim(config, spec, tmp_path)
    assert len(records) == 40
    wrong = [r for r in records if r["disposition"] != r["expected_disposition"]]
    assert wrong == []
    close = [r for r in records if r["disposition"] == "TOO_CLOSE"]
    assert len(close) >= 8  # both parcels of each pair
    assert all(r["actual_bin"] == "END" for r in close)
    assert all("inducted too close: gap" in (r["reason"] or "") for r in close)
    assert not any(r["missort"] for r in records)
    assert result.stats.dispositions["TOO_CLOSE"] == len(close)
    assert result.line_counters["empty_fires"] == 0
    cases = Counter(r["case"] for r in close)
    assert cases["too_close"] >= len(close) / 2 - 1  # the second of each pair was designed


def test_without_a_minimum_gap_the_same_stream_sorts(example_config: LineConfig,
                                                     tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=20, seed=41, mix={Case.NOMINAL: 1.0, Case.TOO_CLOSE: 0.4},
                        scuffed_share=0.0, multi_parcel_share=0.0)
    _, records, _ = run_sim(example_config, spec, tmp_path)
    assert {r["disposition"] for r in records} <= {"SORTED", "DEST_FULL"}
    assert all(r["actual_bin"] == r["expected_bin"] for r in records)


def test_a_neighbour_within_the_arms_reach_at_the_fire_count_is_found() -> None:
    arm, reach = 3000.0, 80.0
    # the target's centre reaches the arm at 3000 mm of lead + 30 (it is 60 mm long)
    target = _window(1, 0, 60)
    fire_enc = target.enc_when_centre_at(arm)
    # inducted 95 mm before it: its centre 95 mm ahead at the fire count, out of reach
    ahead_far = _window(2, -95, 60)
    ahead_close = _window(3, -75, 60)
    assert neighbour_in_reach(target, [target, ahead_far], arm, reach, fire_enc) is None
    assert neighbour_in_reach(target, [target, ahead_close], arm, reach, fire_enc) \
        is ahead_close
    behind = _window(4, 70, 60)
    assert neighbour_in_reach(target, [behind], arm, reach, fire_enc) is behind
    # still at PE-IN: no centre yet, so its leading edge stands for it
    inducting = TrackingWindow(5, round(60 * CPM), 0.0, CPM)
    assert neighbour_in_reach(target, [inducting], arm, reach, fire_enc) is inducting
    far = TrackingWindow(6, round(200 * CPM), 0.0, CPM)
    assert neighbour_in_reach(target, [far], arm, reach, fire_enc) is None


def _dense_stream() -> ScenarioSpec:
    # centres 55-100 mm apart: some neighbours inside a 160 mm arm's reach of 80 mm, most
    # beyond it
    return ScenarioSpec(parcels=120, seed=43, length_mm=(40.0, 70.0), gap_mm=(15.0, 40.0),
                        width_mm=(150.0, 300.0), scuffed_share=0.0, multi_parcel_share=0.0)


def test_an_arm_never_fires_with_a_neighbour_in_its_reach(example_config: LineConfig,
                                                          tmp_path: Path) -> None:
    _, records, result = run_sim(example_config, _dense_stream(), tmp_path, frames="truth")
    assert len(records) == 120
    assert [r for r in records if r["missort"]] == []
    assert not any("pushed along" in e for p in result.truth for e in p.events)
    reached = [r for r in records if "reach" in (r["reason"] or "")]
    assert reached, "the stream has no pair inside an arm's reach: the test shows nothing"
    assert all(r["disposition"] == "TOO_CLOSE" and r["actual_bin"] == "END" for r in reached)
    # each one had a neighbour whose centre was within the reach of its own, give or take
    # the encoder's resolution both ways
    by_sim = {p.sim_id: p for p in result.truth}
    reach = max(d.window_mm for d in example_config.diverters) / 2 \
        + 2 * diverting.REACH_MARGIN_COUNTS / example_config.belt.encoder_counts_per_mm
    for r in reached:
        me = by_sim[r["sim_id"]]
        centre = me.offset_mm + me.length_mm / 2
        near = [p for p in result.truth if p is not me
                and abs(p.offset_mm + p.length_mm / 2 - centre) <= reach]
        assert near, f"parcel {r['parcel_id']} was held back with no neighbour in reach"
    assert sum(1 for r in records if r["disposition"] == "SORTED") > len(records) / 3


def test_the_same_stream_fired_regardless_pushes_neighbours_into_bins(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diverting, "neighbour_in_reach", lambda *_: None)
    _, records, result = run_sim(example_config, _dense_stream(), tmp_path, frames="truth")
    assert any("pushed along" in e for p in result.truth for e in p.events)
    assert [r for r in records if r["missort"]] != []
