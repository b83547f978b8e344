"""Hot zones: the belt travel a hot-zone plan saves, and how long it takes to compute.

For the example line, as shipped and with its rules' bins reversed (the busiest flows on the
farthest bins), an emulator book of ``--parcels`` parcels per skew (``hot_bins``: 0 even,
larger: the first rules busier) is planned with ``controller.hot_zones``; it prints the
volume-weighted mean travel from the read zone to the diverter under the old plan and the
new one (deterministic: no timing). Then the median of ``--repeat`` computations on a book of
``--timed`` parcels.

    .venv/bin/python bench/hot_zones.py [--parcels N] [--timed N] [--repeat R] [--seed S]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

from controller.app.example_line import EXAMPLE_CONFIG
from controller.config import LineConfig, parse_config
from controller.hot_zones import hot_zones
from sim_hardware.scenario import Case, ScenarioSpec, generate


def lines() -> dict[str, LineConfig]:
    data: dict[str, Any] = tomllib.loads(Path(EXAMPLE_CONFIG).read_text(encoding="utf-8"))
    reverse = {f"B{i}": f"B{8 - i}" for i in range(1, 8)}
    plan = data["sort_plan"]
    cold = {**plan, "rules": [{**r, "bins": [reverse[b] for b in r["bins"]]}
                              for r in plan["rules"]]}
    return {"example": parse_config(data),
            "example, bins reversed": parse_config({**data, "sort_plan": cold})}


def book(line: LineConfig, parcels: int, seed: int, skew: float) -> list[Any]:
    spec = ScenarioSpec(parcels=parcels, seed=seed, mix={Case.NOMINAL: 1.0}, hot_bins=skew)
    return generate(spec, line)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, default=20_000)
    parser.add_argument("--timed", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    for name, line in lines().items():
        for skew in (0.0, 1.0, 2.0):
            zones = hot_zones(line, book(line, args.parcels, args.seed, skew))
            top = zones.rows[0]
            print(f"{name:<24} hot_bins={skew:<4} {zones.parcels} parcels: mean travel "
                  f"{zones.old_mean_travel_mm:.0f} -> {zones.new_mean_travel_mm:.0f} mm "
                  f"(busiest {top.destination} {top.share:.0%} on {', '.join(top.bins)})")
    line = lines()["example, bins reversed"]
    orders = book(line, args.timed, args.seed, 1.0)
    took = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        hot_zones(line, orders)
        took.append(time.perf_counter() - started)
    print(f"hot_zones on {len(orders)} parcels: median {statistics.median(took):.3f} s "
          f"of {args.repeat} (min {min(took):.3f}, max {max(took):.3f})")


if __name__ == "__main__":
    main()
