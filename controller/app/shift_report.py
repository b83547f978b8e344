"""A shift against the emulator as the report's data: its truth and journal, then the KPIs.

The emulator's parcels, pushes and journal rows become the plain records
:mod:`controller.kpis` computes from; the shift's counters are added beside the KPIs.
"""

from __future__ import annotations

import logging
from typing import Any

from controller import kpis
from controller.app.simulate import ShiftResult
from controller.kpis import ParcelOutcome, ParcelTruth, PushTruth

log = logging.getLogger(__name__)


def parcel_truth(result: ShiftResult) -> list[ParcelTruth]:
    """The emulator's truth per parcel, joined to the journal by the induction encoder count."""
    by_enc = {row["inducted_enc"]: row["parcel_id"] for row in result.journal}
    return [ParcelTruth(
        sim_id=p.sim_id, case=str(p.case), code=p.code,
        order_id=p.order.order_id if p.order else None,
        order_created_at=p.order.created_at if p.order else None,
        designed_disposition=p.expected_disposition, expected_bins=tuple(p.expected_bins),
        actual_bin=p.actual, places=p.places,
        plan_bins=tuple(p.plan_bins), plan_places=p.plan_places,
        parcel_id=by_enc.pop(p.induct_enc, None) if p.induct_enc is not None else None,
    ) for p in result.truth]


def pushes(result: ShiftResult) -> list[PushTruth]:
    """Every push of the emulated diverters: the parcel commanded and the one moved."""
    return [PushTruth(f.parcel_id, f.pushed) for f in result.fires]


def parcel_records(result: ShiftResult) -> list[ParcelOutcome]:
    """One record per emulated parcel, then any the controller tracked that the line never had."""
    finals, still_open = kpis.journal_finals(result.journal)
    return kpis.parcel_outcomes(finals, parcel_truth(result), still_open)


def summarise(result: ShiftResult, records: list[ParcelOutcome]) -> dict[str, Any]:
    """The KPIs of the shift's records, and the controller's and the line's counters."""
    summary = kpis.summarise(records, line_time_s=result.line_time_s,
                             wall_time_s=result.wall_time_s, pushes=pushes(result))
    stats = result.stats
    summary.update({
        "frames": {"rendered": result.line_counters.get("frames", 0),
                   "seen": stats.frames, "decoded": stats.frames_decoded,
                   "dropped": result.frames_dropped},
        "controller": {"reads_unassigned": stats.reads_unassigned,
                       "unexpected_bin_entries": stats.unexpected_bin_entries,
                       "unknown_end_arrivals": stats.unknown_end_arrivals,
                       "order_store_errors": stats.order_store_errors},
        "line": result.line_counters,
        "bins": result.bins,
    })
    return summary


def emulated_summary(result: ShiftResult, records: list[ParcelOutcome]) -> dict[str, Any]:
    """The summary of a shift served to a controller in another process.

    That controller's own counters are in its log, not here; the board's are.
    """
    summary = summarise(result, records)
    summary["frames"]["seen"] = summary["frames"]["decoded"] = None
    summary["frames"]["dropped"] = None
    summary.pop("controller", None)
    summary["board"] = result.extra.get("board", {})
    return summary
