"""The shift's KPIs, from the journal's final records and, when known, each parcel's truth.

The truth (where a parcel should have gone, where it really went) is plain data here: a test
bench fills it from its emulator, a real line may have none. Without it the KPIs rest on
what the controller recorded alone.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from controller.disposition import END_OF_LINE, Disposition
from controller.journal import FinalRecord

log = logging.getLogger(__name__)

UNTRACKED = "UNTRACKED"
"""The disposition of a parcel the truth knows and the controller never tracked."""
PHANTOM = "phantom"
"""The case of a parcel the controller tracked and the truth does not know."""
UNKNOWN_BIN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class ParcelTruth:
    """What really happened to one parcel, and what its scenario designed for it."""

    sim_id: int
    case: str
    code: str | None
    order_id: str | None
    order_created_at: float | None
    designed_disposition: str
    expected_bins: tuple[str, ...]  # primary first, then the alternates and the overflow
    actual_bin: str | None  # None: it ended nowhere known
    parcel_id: int | None  # the controller's id for it; None: never tracked
    places: int = 1  # any of the first ``places`` expected bins is its place (spread over)
    plan_bins: tuple[str, ...] | None = None
    """Where its order's plan lets it go, whatever the case designed; None: the expected."""
    plan_places: int = 1

    @property
    def expected_bin(self) -> str:
        return self.expected_bins[0] if self.expected_bins else END_OF_LINE

    def allowed(self) -> tuple[tuple[str, ...], int]:
        """The bins the plan allows it (places first) and how many of them are its place."""
        if self.plan_bins is None:
            return self.expected_bins, self.places
        return self.plan_bins, self.plan_places


@dataclass(frozen=True, slots=True)
class PushTruth:
    """A diverter pushed: the controller parcel its command named, and the parcel it moved."""

    parcel_id: int
    pushed_sim_id: int | None  # None: an empty or jammed push


class ParcelOutcome(TypedDict):
    """One parcel of the report: the controller's outcome beside the truth."""

    parcel_id: int | None
    sim_id: int | None
    case: str | None
    code: str | None
    read_code: str | None
    order_id: str | None
    disposition: str | None  # None: still open in the journal
    expected_disposition: str | None
    expected_bin: str | None
    alternate_bins: list[str]
    actual_bin: str | None
    controller_bin: str | None
    reason: str | None
    missort: bool
    order_created_at: float | None
    final_at: float | None
    laps: int | None  # passes round a loop, from its final record (1 on a line with a reject)


def journal_finals(rows: Iterable[Mapping[str, Any]]) -> tuple[list[FinalRecord], list[int]]:
    """Journal rows as final records, and the ids of the parcels still open."""
    finals: list[FinalRecord] = []
    still_open: list[int] = []
    for row in rows:
        if row["disposition"] is None:
            still_open.append(row["parcel_id"])
            continue
        finals.append(FinalRecord(
            parcel_id=row["parcel_id"], disposition=Disposition(row["disposition"]),
            bin=row["bin"], reason=row["reason"], code=row["code"], order_id=row["order_id"],
            length_mm=row["length_mm"], decided_at=row["decided_at"], final_at=row["final_at"],
            order_created_at=row["order_created_at"], laps=row.get("laps") or 1))
    return finals, still_open


def parcel_outcomes(finals: Sequence[FinalRecord], truth: Sequence[ParcelTruth] | None = None,
                    still_open: Collection[int] = ()) -> list[ParcelOutcome]:
    """One outcome per parcel of the truth (in its order), then per parcel it does not know.

    Without truth, one outcome per journalled parcel, the controller's bin taken as actual.
    """
    by_id = {f.parcel_id: f for f in finals}
    claimed: set[int] = set()
    outcomes: list[ParcelOutcome] = []
    for parcel in truth or ():
        final = by_id.get(parcel.parcel_id) if parcel.parcel_id is not None else None
        if parcel.parcel_id is not None:
            claimed.add(parcel.parcel_id)
        outcomes.append(_with_truth(parcel, final))
    rest = [f for f in finals if f.parcel_id not in claimed]
    rest_open = [i for i in still_open if i not in claimed]
    known = truth is not None
    unknown = sorted([(f.parcel_id, f) for f in rest] + [(i, None) for i in rest_open],
                     key=lambda item: item[0])
    outcomes.extend(_without_truth(parcel_id, final, phantom=known)
                    for parcel_id, final in unknown)
    return outcomes


def _with_truth(parcel: ParcelTruth, final: FinalRecord | None) -> ParcelOutcome:
    tracked = parcel.parcel_id is not None
    if final is not None:
        disposition: str | None = final.disposition.value
    else:
        disposition = None if tracked else UNTRACKED
    actual = parcel.actual_bin or UNKNOWN_BIN
    allowed, places = parcel.allowed()
    return {
        "parcel_id": parcel.parcel_id,
        "sim_id": parcel.sim_id,
        "case": parcel.case,
        "code": parcel.code,
        "read_code": final.code if final else None,
        "order_id": parcel.order_id,
        "disposition": disposition,
        "expected_disposition": parcel.designed_disposition,
        "expected_bin": parcel.expected_bin,
        "alternate_bins": list(parcel.expected_bins[1:]),
        "actual_bin": actual,
        "controller_bin": final.bin if final else None,
        "reason": final.reason if final else (None if tracked
                                              else "never tracked by the controller"),
        "missort": wrong_place(allowed, actual, disposition, places,
                               sent_to=final.bin if final else None),
        "order_created_at": parcel.order_created_at,
        "final_at": final.final_at if final else None,
        "laps": final.laps if final else None,
    }


def _without_truth(parcel_id: int, final: FinalRecord | None, *,
                   phantom: bool) -> ParcelOutcome:
    """A parcel the truth does not know (a phantom) or, with no truth at all, as journalled."""
    return {
        "parcel_id": parcel_id, "sim_id": None, "case": PHANTOM if phantom else None,
        "code": None, "read_code": final.code if final else None,
        "order_id": final.order_id if final else None,
        "disposition": final.disposition.value if final else None,
        "expected_disposition": None, "expected_bin": None, "alternate_bins": [],
        "actual_bin": None if phantom or final is None else final.bin,
        "controller_bin": final.bin if final else None,
        "reason": final.reason if final else None, "missort": False,
        "order_created_at": None if phantom or final is None else final.order_created_at,
        "final_at": final.final_at if final else None,
        "laps": final.laps if final else None,
    }


def wrong_place(expected_bins: Sequence[str], actual: str, disposition: str | None,
                places: int = 1, *, sent_to: str | None = None) -> bool:
    """Physically in a bin its plan does not allow (ship accuracy), whatever the controller
    says and whatever case the scenario designed.

    Any of the first ``places`` expected bins is right; the others only for a DEST_FULL. A
    loop's exception bin is not shipped from, like the end of line: a RECIRC_LIMIT or
    MULTI_READ parcel truly where the controller sent it (``sent_to``) is not mis-sorted.
    """
    if actual in (END_OF_LINE, UNKNOWN_BIN):
        return False
    if disposition in _EXCEPTION_CHUTE and actual == sent_to:
        return False
    if not expected_bins:
        return True
    if actual in expected_bins[:max(1, places)]:
        return False
    return not (disposition == Disposition.DEST_FULL and actual in expected_bins)


_EXCEPTION_CHUTE = frozenset({Disposition.RECIRC_LIMIT.value, Disposition.MULTI_READ.value})


def wrong_parcel_fires(outcomes: Sequence[ParcelOutcome], pushes: Iterable[PushTruth]) -> int:
    """Pushes that moved another parcel than the one the command named."""
    sim_of = {o["parcel_id"]: o["sim_id"] for o in outcomes if o["parcel_id"] is not None}
    return sum(1 for push in pushes
               if push.pushed_sim_id is not None
               and sim_of.get(push.parcel_id) != push.pushed_sim_id)


def _disposition_order(item: tuple[str | None, int]) -> tuple[bool, str]:
    """Dispositions by name, parcels still open (no disposition) last."""
    return item[0] is None, item[0] or ""


def summarise(outcomes: Sequence[ParcelOutcome], *, line_time_s: float, wall_time_s: float = 0.0,
              pushes: Iterable[PushTruth] = ()) -> dict[str, Any]:
    """Counts by disposition and the KPIs the business measures the line by."""
    n = sum(1 for o in outcomes if o["case"] != PHANTOM)
    counts = Counter(o["disposition"] for o in outcomes)
    read = sum(1 for o in outcomes if o["read_code"])
    in_bin = sum(1 for o in outcomes if _is_sorted(o)
                 and o["actual_bin"] not in (END_OF_LINE, UNKNOWN_BIN, None))
    hours = line_time_s / 3600 if line_time_s else 0.0
    cycle = [(o["final_at"] - o["order_created_at"]) / 60 for o in outcomes
             if _is_sorted(o) and o["order_created_at"] is not None
             and o["final_at"] is not None]
    laps = [o["laps"] for o in outcomes if o["laps"] is not None]
    orders: dict[str, bool] = {}
    for o in outcomes:
        if o["order_id"]:
            orders[o["order_id"]] = orders.get(o["order_id"], True) and _perfect(o)
    return {
        "parcels": n,
        "dispositions": dict(sorted(counts.items(), key=_disposition_order)),
        "read_rate": read / n if n else 0.0,
        "sort_rate": in_bin / n if n else 0.0,
        "missorts": sum(1 for o in outcomes if o["missort"]),
        "wrong_parcel_fires": wrong_parcel_fires(outcomes, pushes),
        "lost": counts.get(Disposition.LOST.value, 0) + counts.get(UNTRACKED, 0),
        "order_information_errors": counts.get(Disposition.NO_ORDER.value, 0) / n if n else 0.0,
        "order_cycle_time_min_median": statistics.median(cycle) if cycle else None,
        "orders": len(orders),
        "perfect_order_share": sum(orders.values()) / len(orders) if orders else 0.0,
        "outcome_differs_from_truth": sum(1 for o in outcomes if differs_from_truth(o)),
        # on a loop: parcels that went round at least once, of those finished, and their laps
        "recirculation_rate": sum(1 for x in laps if x > 1) / len(laps) if laps else 0.0,
        "mean_laps": statistics.mean(laps) if laps else None,
        "line_time_s": round(line_time_s, 3),
        "throughput_per_hour": n / hours if hours else 0.0,
        "wall_time_s": round(wall_time_s, 3),
    }


def _is_sorted(o: ParcelOutcome) -> bool:
    return o["disposition"] in (Disposition.SORTED.value, Disposition.DEST_FULL.value)


def _perfect(o: ParcelOutcome) -> bool:
    """In a bin its plan allows (primary, or an alternate while the primary was full)."""
    if not _is_sorted(o) or o["missort"]:
        return False
    if o["sim_id"] is None:
        return True  # no truth to hold its bin against
    return o["actual_bin"] in [o["expected_bin"], *o["alternate_bins"]]


def differs_from_truth(o: ParcelOutcome) -> bool:
    """Not the designed disposition (a DEST_FULL where SORTED was designed is right, and on
    a loop so is a RECIRC_LIMIT whose last lap found its bins full)."""
    designed = o["expected_disposition"]
    if designed is None or o["disposition"] == designed:
        return False
    if designed == Disposition.SORTED and o["disposition"] == Disposition.RECIRC_LIMIT:
        return Disposition.DEST_FULL.value not in (o["reason"] or "")
    return not (designed == Disposition.SORTED and o["disposition"] == Disposition.DEST_FULL)
