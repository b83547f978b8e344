"""Read rate and false reads of the decoding pipeline per degraded-label condition.

The table of ``tests/test_robustness.py`` for more parcels (default 200 per condition),
three frames per parcel, seeded:

    .venv/bin/python bench/robustness.py [--parcels N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_robustness import FRAMES_PER_PARCEL, run_all, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, default=200, help="per condition (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = run_all(max(1, args.parcels), args.seed,
                   report=lambda cond, _t: print(f"  done: {cond.name}", file=sys.stderr))
    print(f"robustness: {args.parcels} parcels per condition, {FRAMES_PER_PARCEL} frames each, "
          f"seed {args.seed}, located-zxing, {time.perf_counter() - t0:.0f} s")
    print(table(rows))


if __name__ == "__main__":
    main()
