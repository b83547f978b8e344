"""The shift report: each parcel's outcome beside the emulator's truth, and the business KPIs."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from controller.disposition import END_OF_LINE, Disposition
from controller.simulate import ShiftResult

UNTRACKED = "UNTRACKED"


def parcel_records(result: ShiftResult) -> list[dict[str, Any]]:
    """One record per emulated parcel, joined to the journal by the induction encoder count."""
    by_enc = {row["inducted_enc"]: row for row in result.journal}
    records = []
    for parcel in result.truth:
        row = by_enc.pop(parcel.induct_enc, None) if parcel.induct_enc is not None else None
        disposition = row["disposition"] if row else UNTRACKED
        actual = parcel.actual or "UNKNOWN"
        wrong_place = _wrong_place(parcel.expected_bins, actual, disposition)
        records.append({
            "parcel_id": row["parcel_id"] if row else None,
            "sim_id": parcel.sim_id,
            "case": str(parcel.case),
            "code": parcel.code,
            "read_code": row["code"] if row else None,
            "order_id": parcel.order.order_id if parcel.order else None,
            "disposition": disposition,
            "expected_disposition": parcel.expected_disposition,
            "expected_bin": parcel.expected_bin,
            "alternate_bins": parcel.expected_bins[1:],
            "actual_bin": actual,
            "controller_bin": row["bin"] if row else None,
            "reason": row["reason"] if row else "never tracked by the controller",
            "missort": wrong_place,
            "order_created_at": parcel.order.created_at if parcel.order else None,
            "final_at": row["final_at"] if row else None,
        })
    records.extend(  # tracked by the controller, unknown to the emulator
        {"parcel_id": row["parcel_id"], "sim_id": None, "case": "phantom",
                        "code": None, "read_code": row["code"], "order_id": row["order_id"],
                        "disposition": row["disposition"], "expected_disposition": None,
                        "expected_bin": None, "alternate_bins": [], "actual_bin": None,
                        "controller_bin": row["bin"], "reason": row["reason"], "missort": False,
                        "order_created_at": None, "final_at": row["final_at"]}
        for row in by_enc.values())
    return records


def wrong_parcel_fires(result: ShiftResult) -> int:
    """Pushes that moved another parcel than the one the command named (the emulator's truth)."""
    sim_by_enc = {p.induct_enc: p.sim_id for p in result.truth if p.induct_enc is not None}
    sim_of = {row["parcel_id"]: sim_by_enc.get(row["inducted_enc"]) for row in result.journal}
    return sum(1 for fire in result.fires
               if fire.pushed is not None and sim_of.get(fire.parcel_id) != fire.pushed)


def _wrong_place(expected_bins: list[str], actual: str, disposition: str) -> bool:
    """Physically in a bin it should not be in (ship accuracy), whatever the controller says."""
    if actual in (END_OF_LINE, "UNKNOWN"):
        return False
    if not expected_bins:
        return True
    if actual == expected_bins[0]:
        return False
    return not (disposition == Disposition.DEST_FULL and actual in expected_bins)


def summarise(result: ShiftResult, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by disposition and the KPIs the business measures the line by."""
    n = sum(1 for r in records if r["sim_id"] is not None)
    counts = Counter(r["disposition"] for r in records)
    read = sum(1 for r in records if r["read_code"])
    in_bin = sum(1 for r in records if r["disposition"] in ("SORTED", "DEST_FULL")
                 and r["actual_bin"] not in (END_OF_LINE, "UNKNOWN", None))
    missorts = sum(1 for r in records if r["missort"])
    hours = result.line_time_s / 3600 if result.line_time_s else 0.0
    cycle = [(r["final_at"] - r["order_created_at"]) / 60 for r in records
             if r["disposition"] in ("SORTED", "DEST_FULL") and r["order_created_at"] is not None
             and r["final_at"] is not None]
    # A perfect order: every parcel of it in a bin its plan allows (primary, or an
    # alternate while the primary was full), none mis-sorted, none missing.
    orders: dict[str, bool] = {}
    for r in records:
        if r["order_id"]:
            perfect = r["disposition"] in ("SORTED", "DEST_FULL") and not r["missort"] \
                and r["actual_bin"] in [r["expected_bin"], *r["alternate_bins"]]
            orders[r["order_id"]] = orders.get(r["order_id"], True) and perfect
    truth_mismatch = sum(1 for r in records if r["expected_disposition"] is not None
                         and r["disposition"] != r["expected_disposition"]
                         and not (r["expected_disposition"] == "SORTED"
                                  and r["disposition"] == "DEST_FULL"))
    stats = result.stats
    return {
        "parcels": n,
        "dispositions": dict(sorted(counts.items())),
        "read_rate": read / n if n else 0.0,
        "sort_rate": in_bin / n if n else 0.0,
        "missorts": missorts,
        "wrong_parcel_fires": wrong_parcel_fires(result),
        "lost": counts.get("LOST", 0) + counts.get(UNTRACKED, 0),
        "order_information_errors": counts.get("NO_ORDER", 0) / n if n else 0.0,
        "order_cycle_time_min_median": statistics.median(cycle) if cycle else None,
        "orders": len(orders),
        "perfect_order_share": sum(orders.values()) / len(orders) if orders else 0.0,
        "outcome_differs_from_truth": truth_mismatch,
        "line_time_s": round(result.line_time_s, 3),
        "throughput_per_hour": n / hours if hours else 0.0,
        "wall_time_s": round(result.wall_time_s, 3),
        "frames": {"rendered": result.line_counters.get("frames", 0),
                   "seen": stats.frames, "decoded": stats.frames_decoded,
                   "dropped": result.frames_dropped},
        "controller": {"reads_unassigned": stats.reads_unassigned,
                       "unexpected_bin_entries": stats.unexpected_bin_entries,
                       "unknown_end_arrivals": stats.unknown_end_arrivals,
                       "order_store_errors": stats.order_store_errors},
        "line": result.line_counters,
        "bins": result.bins,
    }


def write_report(path: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": summary, "parcels": records}, indent=1) + "\n",
                    encoding="utf-8")


def format_summary(summary: dict[str, Any]) -> str:
    """The summary table the CLI prints."""
    rows: list[tuple[str, str]] = [("parcels", str(summary["parcels"]))]
    rows += [(f"  {name}", str(count)) for name, count in summary["dispositions"].items()]
    rows += [
        ("read rate", f"{summary['read_rate']:.2%}"),
        ("sort rate", f"{summary['sort_rate']:.2%}"),
        ("mis-sorts (truth)", str(summary["missorts"])),
        ("diverter fired at a wrong parcel", str(summary["wrong_parcel_fires"])),
        ("lost", str(summary["lost"])),
        ("outcome differs from truth", str(summary["outcome_differs_from_truth"])),
        ("order-information errors", f"{summary['order_information_errors']:.2%}"),
        ("perfect orders", f"{summary['perfect_order_share']:.2%}"),
        ("order cycle time (median)",
         "-" if summary["order_cycle_time_min_median"] is None
         else f"{summary['order_cycle_time_min_median']:.1f} min"),
        ("line time", f"{summary['line_time_s']:.1f} s"),
        ("throughput", f"{summary['throughput_per_hour']:.0f} parcels/h of line time"),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
        ("frames rendered / decoded", f"{summary['frames']['rendered']} / "
                                      f"{_or_dash(summary['frames']['decoded'])}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
