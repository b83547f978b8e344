"""The KPIs from hand-made journal records and truth, each with its answer worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.disposition import Disposition
from controller.journal import FinalRecord
from controller.kpis import (
    PHANTOM,
    UNTRACKED,
    ParcelTruth,
    PushTruth,
    journal_finals,
    parcel_outcomes,
    summarise,
)
from controller.report import STILL_OPEN, format_summary, write_report

D = Disposition


def final(parcel_id: int, disposition: Disposition, bin_id: str, *, code: str | None = None,
          order_id: str | None = None, final_at: float = 0.0,
          order_created_at: float | None = None) -> FinalRecord:
    return FinalRecord(parcel_id=parcel_id, disposition=disposition, bin=bin_id,
                       reason=f"{disposition} in {bin_id}", code=code, order_id=order_id,
                       length_mm=300.0, decided_at=None, final_at=final_at,
                       order_created_at=order_created_at)


def truth(sim_id: int, parcel_id: int | None, designed: str, expected: tuple[str, ...],
          actual: str | None, *, order: str | None = None,
          created_at: float | None = None) -> ParcelTruth:
    return ParcelTruth(sim_id=sim_id, case="nominal", code=f"C{sim_id}", order_id=order,
                       order_created_at=created_at, designed_disposition=designed,
                       expected_bins=expected, actual_bin=actual, parcel_id=parcel_id)


# Controller parcel ids 11.. for the emulator's parcels 1..; 17 is a phantom.
FINALS = [
    final(11, D.SORTED, "B1", code="C1", final_at=600.0),
    final(12, D.DEST_FULL, "B3", code="C2", final_at=1200.0),
    final(13, D.NO_READ, "END", final_at=50.0),
    final(15, D.SORTED, "B2", code="C5", final_at=360.0),
    final(17, D.SORTED, "B1", code="C7", order_id="O9", final_at=70.0, order_created_at=10.0),
]
TRUTH = [
    truth(1, 11, "SORTED", ("B1", "B2"), "B1", order="O1", created_at=0.0),
    truth(2, 12, "SORTED", ("B1", "B3"), "B3", order="O1", created_at=0.0),  # B1 was full
    truth(3, 13, "NO_READ", (), "END", order="O2", created_at=0.0),
    truth(4, None, "SORTED", ("B1",), None),  # never tracked
    truth(5, 15, "SORTED", ("B2",), "B4", order="O3", created_at=60.0),  # believed in B2
    truth(6, 16, "SORTED", ("B1",), None),  # still open in the journal
]
PUSHES = [PushTruth(11, 1), PushTruth(15, 3), PushTruth(12, None)]


def test_outcomes_join_the_journal_to_the_truth() -> None:
    outcomes = parcel_outcomes(FINALS, TRUTH, still_open=[16])
    assert [o["sim_id"] for o in outcomes] == [1, 2, 3, 4, 5, 6, None]
    assert [o["disposition"] for o in outcomes] == [
        "SORTED", "DEST_FULL", "NO_READ", UNTRACKED, "SORTED", None, "SORTED"]
    assert [o["missort"] for o in outcomes] == [False, False, False, False, True, False, False]
    assert outcomes[1]["alternate_bins"] == ["B3"]
    assert outcomes[3]["actual_bin"] == "UNKNOWN"
    assert outcomes[3]["reason"] == "never tracked by the controller"
    assert outcomes[4]["controller_bin"] == "B2"
    assert outcomes[4]["actual_bin"] == "B4"
    assert outcomes[5]["parcel_id"] == 16
    assert outcomes[5]["reason"] is None
    phantom = outcomes[6]
    assert (phantom["case"], phantom["parcel_id"], phantom["actual_bin"],
            phantom["order_id"]) == (PHANTOM, 17, None, "O9")


def test_summary_from_records_and_truth() -> None:
    outcomes = parcel_outcomes(FINALS, TRUTH, still_open=[16])
    summary = summarise(outcomes, line_time_s=360.0, wall_time_s=1.23456, pushes=PUSHES)
    assert summary["parcels"] == 6  # the phantom is not one of the shift's parcels
    assert list(summary["dispositions"].items()) == [
        ("DEST_FULL", 1), ("NO_READ", 1), ("SORTED", 3), (UNTRACKED, 1), (None, 1)]
    assert summary["read_rate"] == pytest.approx(4 / 6)  # parcels 1, 2, 5 and the phantom
    assert summary["sort_rate"] == pytest.approx(3 / 6)  # in B1, B3 and B4 (wrong, but a bin)
    assert summary["missorts"] == 1
    assert summary["wrong_parcel_fires"] == 1  # 15's push moved parcel 3; an empty one is not
    assert summary["lost"] == 1
    assert summary["order_information_errors"] == 0.0
    assert summary["order_cycle_time_min_median"] == pytest.approx(10.0)  # of 10, 20, 5 min
    assert summary["orders"] == 4
    assert summary["perfect_order_share"] == pytest.approx(2 / 4)  # O1 and O9, not O2, O3
    assert summary["outcome_differs_from_truth"] == 2  # the untracked one and the open one
    assert summary["line_time_s"] == 360.0
    assert summary["throughput_per_hour"] == pytest.approx(60.0)
    assert summary["wall_time_s"] == 1.235


def test_summary_from_the_journal_alone() -> None:
    finals = [final(1, D.SORTED, "B1", code="A", order_id="O1", final_at=180.0,
                    order_created_at=0.0),
              final(2, D.LOST, "UNKNOWN", code="B", order_id="O2", final_at=200.0,
                    order_created_at=0.0),
              final(3, D.NO_ORDER, "END", code="C", final_at=210.0)]
    outcomes = parcel_outcomes(finals, None, still_open=[4])
    assert [o["case"] for o in outcomes] == [None] * 4
    assert [o["actual_bin"] for o in outcomes] == ["B1", "UNKNOWN", "END", None]
    summary = summarise(outcomes, line_time_s=0.0)
    assert summary["parcels"] == 4
    assert summary["dispositions"] == {"LOST": 1, "NO_ORDER": 1, "SORTED": 1, None: 1}
    assert summary["read_rate"] == pytest.approx(3 / 4)
    assert summary["sort_rate"] == pytest.approx(1 / 4)
    assert summary["lost"] == 1
    assert summary["order_information_errors"] == pytest.approx(1 / 4)
    assert summary["order_cycle_time_min_median"] == pytest.approx(3.0)
    assert summary["perfect_order_share"] == pytest.approx(1 / 2)
    assert summary["missorts"] == summary["outcome_differs_from_truth"] == 0
    assert summary["throughput_per_hour"] == 0.0  # no line time: no rate


def test_journal_rows_become_final_records_and_open_ids() -> None:
    rows = [
        {"parcel_id": 1, "inducted_enc": 100, "inducted_at": 0.5, "length_mm": 250.0,
         "code": "X", "order_id": "O1", "disposition": "SORTED", "bin": "B1",
         "reason": "confirmed", "decided_at": 1.0, "final_at": 3.0, "order_created_at": -60.0},
        {"parcel_id": 2, "inducted_enc": 900, "inducted_at": 1.5, "length_mm": None,
         "code": None, "order_id": None, "disposition": None, "bin": None, "reason": None,
         "decided_at": None, "final_at": None, "order_created_at": None},
    ]
    finals, still_open = journal_finals(rows)
    assert finals == [FinalRecord(1, D.SORTED, "B1", "confirmed", "X", "O1", 250.0, 1.0, 3.0,
                                  -60.0)]
    assert still_open == [2]


def test_report_with_a_parcel_still_open(tmp_path: Path) -> None:
    outcomes = parcel_outcomes(FINALS[:1], TRUTH[:1] + TRUTH[5:], still_open=[16])
    summary = summarise(outcomes, line_time_s=10.0)
    summary["frames"] = {"rendered": 5, "decoded": None}
    table = format_summary(summary)
    assert f"  {STILL_OPEN}" in table
    assert table.index("  SORTED") < table.index(STILL_OPEN)
    path = tmp_path / "r.json"
    write_report(path, summary, outcomes)
    data = json.loads(path.read_text())
    assert data["summary"]["dispositions"] == {"SORTED": 1, "null": 1}
    assert [p["disposition"] for p in data["parcels"]] == ["SORTED", None]
