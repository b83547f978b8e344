"""Benchmark of a loop sorter's shift: recirculation rate and mean laps, against the truth.

Run: ``.venv/bin/python bench/loop_shift.py`` (``--parcels``, ``--seeds``, ``--frames``).

Shifts of the demo mix plus a share of labels hidden on the first pass
(``Case.HIDDEN_LABEL``) on the example loop (``line.loop.example.toml``: 14.1 m, 3 laps, the
exception chute EXC), on the virtual clock, one per seed, with rendered and decoded frames
by default (``--frames truth`` for truth frames: every label in view reads). Each row, from
the controller's journal: the recirculation rate (parcels that went round at least once, of
all), the mean laps per parcel, the share that hit the cap (RECIRC_LIMIT) and the share
sorted; then, from the emulator's truth, the parcels whose journalled laps are not the laps
they really went round and the outcomes that differ from the truth. The last row is the
median of the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.app.example_line import EXAMPLES  # noqa: E402
from controller.app.shift_report import parcel_records, summarise  # noqa: E402
from controller.app.simulate import FrameMode, ShiftResult, run_shift  # noqa: E402
from controller.clock import VirtualClock, run_virtual  # noqa: E402
from controller.config import load_config  # noqa: E402
from sim_hardware.scenario import DEMO_MIX, Case, ScenarioSpec  # noqa: E402

CONFIG = EXAMPLES / "line.loop.example.toml"
HIDDEN_SHARE = 0.03


def one_shift(parcels: int, seed: int, frames: FrameMode) -> dict[str, Any]:
    config = load_config(CONFIG)
    spec = ScenarioSpec(parcels=parcels, seed=seed, mix={**DEMO_MIX,
                                                         Case.HIDDEN_LABEL: HIDDEN_SHARE})
    with tempfile.TemporaryDirectory() as tmp:

        async def shift(clock: VirtualClock) -> ShiftResult:
            return await run_shift(config, spec, Path(tmp), clock, frames=frames)

        started = time.perf_counter()
        result = run_virtual(shift)
        wall = time.perf_counter() - started
    records = parcel_records(result)
    summary = summarise(result, records)
    laps = [row["laps"] or 1 for row in result.journal]
    true_laps = {p.induct_enc: p.laps for p in result.truth}
    wrong_laps = sum(1 for row in result.journal
                     if true_laps.get(row["inducted_enc"]) != (row["laps"] or 1))
    n = len(laps)
    return {
        "seed": seed, "parcels": n,
        "recirculation_rate": sum(1 for x in laps if x > 1) / n,
        "mean_laps": sum(laps) / n,
        "capped": summary["dispositions"].get("RECIRC_LIMIT", 0) / n,
        "sort_rate": summary["sort_rate"],
        "wrong_laps": wrong_laps,
        "differs": summary["outcome_differs_from_truth"],
        "missorts": summary["missorts"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", choices=["rendered", "truth"], default="rendered")
    args = parser.parse_args()
    rows = [one_shift(args.parcels, seed, args.frames) for seed in args.seeds]
    header = ("seed", "parcels", "recirc rate", "mean laps", "capped", "sort rate",
              "wrong laps", "differs", "missorts", "wall s")
    print(f"loop shift, {CONFIG.name}, {args.frames} frames, virtual clock")
    print("  ".join(f"{h:>11}" for h in header))
    for row in rows:
        print(_line(row))
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    median["seed"] = "median"
    print(_line(median))


def _line(row: dict[str, Any]) -> str:
    cells = [str(row["seed"]), f"{row['parcels']:.0f}", f"{row['recirculation_rate']:.2%}",
             f"{row['mean_laps']:.3f}", f"{row['capped']:.2%}", f"{row['sort_rate']:.2%}",
             f"{row['wrong_laps']:.0f}", f"{row['differs']:.0f}", f"{row['missorts']:.0f}",
             f"{row['wall_s']:.1f}"]
    return "  ".join(f"{c:>11}" for c in cells)


if __name__ == "__main__":
    main()
