"""A long shift's outcome against the emulator's truth, parcel by parcel, on disk.

Neither side is held in memory while the shift runs: the controller writes its journal, and
:class:`TruthSpill` writes each emulated parcel's truth to a SQLite file of its own as the
parcel settles (``run_shift(truth_sink=...)``). Once the shift is over, the two files are
joined row by row, each journal row to its emulated parcel by the induction encoder count
(as :mod:`controller.app.shift_report` does), and judged by :mod:`controller.kpis`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import sqlite3
from collections import Counter
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


class TruthSpill:
    """Each parcel's truth written to ``path`` as it settles, a few hundred rows a commit."""

    BATCH = 500

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parcels = 0
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE truth (sim_id INTEGER PRIMARY KEY, induct_enc INTEGER, "
                         "truth BLOB NOT NULL)")
        self._rows: list[tuple[int, int | None, bytes]] = []

    def __call__(self, parcel: SimParcel) -> None:
        self._rows.append((parcel.sim_id, parcel.induct_enc,
                           pickle.dumps(truth_of(parcel, None), pickle.HIGHEST_PROTOCOL)))
        self.parcels += 1
        if len(self._rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        with self._db:
            self._db.executemany("INSERT INTO truth VALUES (?, ?, ?)", self._rows)
        self._rows.clear()

    def close(self) -> None:
        self._flush()
        with self._db:
            self._db.execute("CREATE INDEX truth_enc ON truth (induct_enc)")
        self._db.close()


# Each journal row with the truth of the emulated parcel inducted at its count; of rows that
# share a count, only the first (by parcel_id) is that parcel's.
_JOINED = """
WITH rows AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY inducted_enc ORDER BY parcel_id)
              AS nth_at_enc FROM parcels)
SELECT rows.*, t.truth AS truth_pickle FROM rows
LEFT JOIN spill.truth AS t ON t.induct_enc = rows.inducted_enc AND rows.nth_at_enc = 1
ORDER BY rows.parcel_id"""
_UNTRACKED = """
SELECT truth FROM spill.truth WHERE induct_enc IS NULL
   OR induct_enc NOT IN (SELECT inducted_enc FROM parcels WHERE inducted_enc IS NOT NULL)
ORDER BY sim_id"""


def check_journal(journal: Path, truth: Path, keep: int = 20) -> TruthCheck:
    """Every parcel of the ``truth`` spill and every journal row, judged as the KPIs judge them."""
    check = TruthCheck()
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        db.execute("ATTACH DATABASE ? AS spill", (f"file:{truth}?mode=ro",))
        cursor = db.execute(_JOINED)
        names = [d[0] for d in cursor.description]
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            found = row.pop("truth_pickle")
            del row["nth_at_enc"]
            finals, still_open = kpis.journal_finals([row])
            known = [] if found is None else [
                dataclasses.replace(pickle.loads(found), parcel_id=row["parcel_id"])]
            for outcome in kpis.parcel_outcomes(finals, known, still_open):
                check.add(outcome, keep)
        # never inducted, or inducted with no journal row: never tracked by the controller
        for (found,) in db.execute(_UNTRACKED):
            for outcome in kpis.parcel_outcomes([], [pickle.loads(found)]):
                check.add(outcome, keep)
    return check
