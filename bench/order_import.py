"""Order import speed: a generated jsonl export of ``--orders`` orders into a new SQLite book.

Prints the time to write the file, to parse and validate it alone, and to import it (parse,
validate, upsert in batches), as orders and parcels per second, with the process's peak
resident memory (the import streams: it should not grow with the file). A second import of
the same file measures the all-updates case.

    .venv/bin/python bench/order_import.py [--orders N] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from controller.app.orders_tool import IMPORT_BUSY_TIMEOUT_S, import_files
from controller.order_import import parse_file
from drivers.orders.sqlite import SqliteOrderStore

CHANNELS = ("web", "store", "marketplace", "social")
STATUSES = ("released",) * 16 + ("held", "cancelled", "backordered", "shipped")
CARRIERS = ("DHL", "UPS", "DPD", "GLS", "PostNL")


def write_orders(path: Path, orders: int, seed: int) -> int:
    """Write the export; returns its number of parcels."""
    rng = random.Random(seed)
    parcels = 0
    start = 1_764_576_000
    with path.open("w", encoding="utf-8") as f:
        for n in range(orders):
            count = rng.choice((1, 1, 1, 2, 3))
            parcels += count
            created = start + n * 0.05
            f.write(json.dumps({
                "order_id": f"SO-{n:08d}", "channel": rng.choice(CHANNELS),
                "status": rng.choice(STATUSES), "carrier": rng.choice(CARRIERS),
                "service": rng.choice(("standard", "express")),
                "route": f"R{rng.randrange(40)}", "postcode": f"{rng.randrange(10000, 99999)}",
                "created_at": created, "promised_ship_at": created + 86_400,
                "parcels": [{"code": f"1Z{n:08d}{k}"} for k in range(count)]}) + "\n")
    return parcels


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rate(label: str, orders: int, parcels: int, seconds: float) -> None:
    print(f"{label:<22} {seconds:8.2f} s  {orders / seconds:10,.0f} orders/s  "
          f"{parcels / seconds:10,.0f} parcels/s  peak RSS {_peak_mib():6.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="order-import-") as tmp:
        export = Path(tmp) / "orders.jsonl"
        started = time.perf_counter()
        parcels = write_orders(export, args.orders, args.seed)
        print(f"{args.orders:,} orders, {parcels:,} parcels, "
              f"{export.stat().st_size / 2**20:,.0f} MiB jsonl, written in "
              f"{time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        refused = sum(isinstance(record, str) for _, record in parse_file(export))
        assert refused == 0, f"{refused} generated records refused"
        _rate("parse + validate", args.orders, parcels, time.perf_counter() - started)
        db = Path(tmp) / "orders.sqlite"
        for label in ("import (all added)", "import (all updated)"):
            store = SqliteOrderStore(db, timeout_s=IMPORT_BUSY_TIMEOUT_S)
            started = time.perf_counter()
            summary = asyncio.run(import_files(store, [export]))
            _rate(label, args.orders, parcels, time.perf_counter() - started)
            assert summary.refused == 0
            assert summary.added + summary.updated == parcels


if __name__ == "__main__":
    main()
