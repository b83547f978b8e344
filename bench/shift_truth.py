"""A long shift's outcome against the emulator's truth, parcel by parcel, from its journal.

The journal is read row by row from its SQLite file once the shift is over, so a bench
need hold no final record in memory while the shift runs: the emulator's truth is what it
keeps. Each row is joined to its emulated parcel by the induction encoder count (as
:mod:`controller.app.shift_report` does) and judged by :mod:`controller.kpis`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import kpis
from controller.disposition import END_OF_LINE
from controller.kpis import ParcelOutcome, ParcelTruth
from sim_hardware.scenario import SimParcel


@dataclass
class TruthCheck:
    """How many parcels differ from the truth and how, with the first few of them."""

    parcels: int = 0
    differs: int = 0
    missorts: int = 0
    untracked: int = 0
    phantoms: int = 0
    still_open: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # "designed -> got (case)"
    examples: list[dict[str, Any]] = field(default_factory=list)
    off_bins: int = 0  # not in one of its expected bins (the END when none): a coarser test
    off_kinds: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: ParcelOutcome, keep: int) -> None:
        self.parcels += outcome["case"] != kpis.PHANTOM
        self.phantoms += outcome["case"] == kpis.PHANTOM
        self.untracked += outcome["disposition"] == kpis.UNTRACKED
        self.still_open += outcome["disposition"] is None
        self.missorts += outcome["missort"]
        expected = [] if outcome["expected_bin"] in (None, END_OF_LINE) else [
            outcome["expected_bin"], *outcome["alternate_bins"]]
        if outcome["case"] != kpis.PHANTOM and not (
                outcome["actual_bin"] in expected
                or (outcome["actual_bin"] == END_OF_LINE and not expected)):
            self.off_bins += 1
            self.off_kinds[f"{outcome['expected_disposition']} -> {outcome['disposition']} "
                           f"({outcome['case']})"] += 1
        wrong = kpis.differs_from_truth(outcome)
        if not (wrong or outcome["missort"]):
            return
        self.differs += wrong
        self.kinds[f"{outcome['expected_disposition']} -> {outcome['disposition']} "
                   f"({outcome['case']})"] += 1
        if len(self.examples) < keep:
            self.examples.append({k: outcome[k] for k in (
                "sim_id", "parcel_id", "case", "expected_disposition", "disposition",
                "expected_bin", "alternate_bins", "actual_bin", "controller_bin", "reason",
                "missort")})


def truth_of(parcel: SimParcel, parcel_id: int | None) -> ParcelTruth:
    order = parcel.order
    return ParcelTruth(
        sim_id=parcel.sim_id, case=str(parcel.case), code=parcel.code,
        order_id=order.order_id if order else None,
        order_created_at=order.created_at if order else None,
        designed_disposition=parcel.expected_disposition,
        expected_bins=tuple(parcel.expected_bins), actual_bin=parcel.actual,
        places=parcel.places, plan_bins=tuple(parcel.plan_bins),
        plan_places=parcel.plan_places, parcel_id=parcel_id)


def check_journal(journal: Path, truth: Sequence[SimParcel], keep: int = 20) -> TruthCheck:
    """Every parcel of ``truth`` and every journal row, judged as the KPIs judge them."""
    check = TruthCheck()
    by_enc = {p.induct_enc: p for p in truth if p.induct_enc is not None}
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        cursor = db.execute("SELECT * FROM parcels ORDER BY parcel_id")
        names = [d[0] for d in cursor.description]
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            finals, still_open = kpis.journal_finals([row])
            parcel = by_enc.pop(row["inducted_enc"], None)
            known = [truth_of(parcel, row["parcel_id"])] if parcel is not None else []
            for outcome in kpis.parcel_outcomes(finals, known, still_open):
                check.add(outcome, keep)
    # never inducted, or inducted with no journal row: never tracked by the controller
    for parcel in [p for p in truth if p.induct_enc is None] + list(by_enc.values()):
        for outcome in kpis.parcel_outcomes([], [truth_of(parcel, None)]):
            check.add(outcome, keep)
    return check
