"""The shift report: the KPI summary as a table, and the summary with each parcel as JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STILL_OPEN = "(still open)"
"""How the table names the parcels the journal had no disposition for yet."""


def write_report(path: Path, summary: Mapping[str, Any],
                 records: Sequence[Mapping[str, object]]) -> None:
    """Write the JSON report: the summary and one record per parcel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": summary, "parcels": records}, indent=1) + "\n",
                    encoding="utf-8")


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary table the CLI prints."""
    rows: list[tuple[str, str]] = [("parcels", str(summary["parcels"]))]
    rows += [(f"  {STILL_OPEN if name is None else name}", str(count))
             for name, count in summary["dispositions"].items()]
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
        ("frames captured / decoded", f"{summary['frames']['rendered']} / "
                                      f"{_or_dash(summary['frames']['decoded'])}"),
    ]
    if summary.get("recirculation_rate"):  # a loop: parcels that went round again
        rows.append(("recirculated / mean laps", f"{summary['recirculation_rate']:.2%} / "
                                                 f"{summary['mean_laps']:.2f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
