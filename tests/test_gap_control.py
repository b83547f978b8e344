"""Gap control: parcels inducted closer than the diverters can push apart are not diverted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from controller.config import InductionConfig, LineConfig, parse_config
from controller.errors import ConfigError
from controller.spacing import Spacing
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
