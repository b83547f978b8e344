"""A designed case's truth holds on a line with three cameras; a mis-sort is the plan's.

A camera stall on some of the cameras is no LATE when another camera reads the parcel in
time: the scenario's truth says so from physics, and the controller's journal agrees.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from controller.config import LineConfig
from controller.disposition import Disposition
from controller.journal import FinalRecord
from controller.kpis import ParcelTruth, parcel_outcomes
from sim_hardware.scenario import Case, generate

from .conftest import EXAMPLE_CONFIG
from .shifts import only, run_sim

CAMERAS = ("cam1", "cam2", "cam3")


def three_cameras() -> LineConfig:
    """The example line with three cameras at distinct positions across its read zone."""
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    first = raw["cameras"][0]
    raw["cameras"] = [first | {"id": cam, "position_mm": first["position_mm"] + 400.0 * (i - 1)}
                      for i, cam in enumerate(CAMERAS)]
    return LineConfig.model_validate(raw)


@pytest.mark.parametrize("stalled", [["cam1"], ["cam2"], ["cam1", "cam3"], None],
                         ids=["first", "middle", "two", "all"])
def test_a_stall_is_late_only_when_no_camera_reads_the_parcel(
        stalled: list[str] | None, tmp_path: Path) -> None:
    config = three_cameras()
    spec = only(Case.CAMERA_STALL, 10, 8, stall_cameras=stalled)
    summary, records, result = run_sim(config, spec, tmp_path)
    stalls = [r for r in records if r["case"] == Case.CAMERA_STALL]
    assert stalls, "the scenario produced no camera stall"
    designed = {r["expected_disposition"] for r in stalls}
    assert designed == ({"LATE"} if stalled is None else {"SORTED"})  # physics, per the truth
    for r in records:  # every parcel's journal outcome against the emulator's truth
        assert r["disposition"] == r["expected_disposition"], r
        assert r["actual_bin"] == r["expected_bin"], r
    assert summary["outcome_differs_from_truth"] == 0
    assert summary["missorts"] == 0
    assert result.line_counters["empty_fires"] == 0


def test_the_scenario_knows_each_parcels_plan_whatever_its_case() -> None:
    config = three_cameras()
    spec = only(Case.CAMERA_STALL, 20, 3, stall_cameras=None)
    parcels, _ = generate(spec, config)
    stalls = [p for p in parcels if p.case is Case.CAMERA_STALL]
    assert stalls
    for p in stalls:
        assert p.expected_disposition == "LATE"
        assert p.expected_bins == []
        assert p.plan_bins  # designed LATE, its order still has a place in the plan


def _final(disposition: Disposition, bin_id: str) -> FinalRecord:
    return FinalRecord(parcel_id=7, disposition=disposition, bin=bin_id, reason="test",
                       code="001234567895", order_id="SO-1", length_mm=300.0, decided_at=1.0,
                       final_at=2.0, order_created_at=0.0)


@pytest.mark.parametrize(("case", "designed"), [(Case.CAMERA_STALL, "LATE"),
                                                (Case.JAMMED_DIVERTER, "DIVERT_FAULT")])
def test_a_missort_is_a_bin_the_plan_does_not_allow_whatever_the_case(
        case: Case, designed: str) -> None:
    def truth(actual: str) -> ParcelTruth:
        return ParcelTruth(sim_id=1, case=str(case), code="001234567895", order_id="SO-1",
                           order_created_at=0.0, designed_disposition=designed,
                           expected_bins=(), actual_bin=actual, parcel_id=7,
                           plan_bins=("B3", "B4", "B8"), plan_places=2)

    def missort(actual: str, disposition: Disposition = Disposition.SORTED) -> bool:
        return parcel_outcomes([_final(disposition, actual)], [truth(actual)])[0]["missort"]

    assert not missort("B3")  # its place, though the case was designed to miss it
    assert not missort("B4")  # the destination's other bin
    assert not missort("B8", Disposition.DEST_FULL)  # the overflow, while its bins are full
    assert missort("B8")  # the overflow without its bins full
    assert missort("B5")  # a bin its plan does not allow
    assert not missort("END")
