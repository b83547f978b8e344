"""``parcel-sorter plan hot-zones``: a sort plan from the day's order book (see hot_zones.py).

Orders come from the channels' export files (read as ``orders import`` reads them, each bad
record reported as ``FILE:LINE: reason`` and skipped) or, without ``--orders``, from the
released orders of the line's order store. It prints a table of the destinations and, with
``--out``, writes the plan as a file the line config reads with ``[sort_plan] file = ...``.
Exit 0; 1 when some records were refused (the plan is still made from the rest); 2 for bad
arguments, an unreadable file or book, or a line on which no plan can be made. The CLI adds
the command with :func:`add_plan_command`; its handler is ``tool_handler``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import tomli_w

from controller.app.orders_tool import (
    EXIT_BAD_ARGUMENTS,
    EXIT_REFUSED,
    BookUnavailable,
    open_order_book,
)
from controller.config import LineConfig, OrderStoreConfig, load_config
from controller.errors import SorterError
from controller.hot_zones import HotZones, hot_zones
from controller.order_import import FORMATS, Format, format_of, parse_file, to_orders
from controller.orders import Order

#: Released orders read from the store when none is given.
DEFAULT_LIMIT = 1_000_000


@runtime_checkable
class ReleasedOrders(Protocol):
    """What this tool needs of a store: its released orders (one per parcel)."""

    async def released(self, limit: int) -> list[Order]: ...

    async def close(self) -> None: ...


def add_plan_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plan hot-zones`` to the CLI's subcommands."""
    p = sub.add_parser("plan", help="sort plans: hot zones from the day's order book",
                       description="Make sort plans for a line.")
    actions = p.add_subparsers(dest="plan_command", metavar="hot-zones", required=True)
    hz = actions.add_parser(
        "hot-zones", help="busiest destinations on the bins nearest the scanner",
        description="Count the released parcels per destination under the line's plan, and "
                    "give the busiest destinations the bins with the least belt travel, "
                    "several when their volume needs it. Size-class and status rules and the "
                    "overflow keep their bins. Exit 0; 1 when some order records were "
                    "refused; 2 for bad arguments or a file, book or line that will not do.")
    hz.add_argument("--config", type=Path, required=True, metavar="LINE.toml",
                    help="the line config: its bins, diverters and plan")
    hz.add_argument("--orders", type=Path, nargs="+", metavar="FILE",
                    help="order exports (default: the released orders of [order_store])")
    hz.add_argument("--format", choices=FORMATS, default=None,
                    help="the order files' format (default: from each file's suffix)")
    hz.add_argument("--out", type=Path, metavar="PLAN.toml",
                    help="write the plan here (default: only print the table)")
    hz.add_argument("--spare", type=_count, default=0, metavar="N",
                    help="keep the N farthest free bins as every destination's alternates")
    hz.add_argument("--empties-per-shift", type=_positive, default=None, metavar="N",
                    help="times a bin is emptied in a shift: no destination gets more bins "
                         "than its volume fills (default: bins in proportion to volume)")
    hz.add_argument("--limit", type=_count, default=DEFAULT_LIMIT, metavar="N",
                    help=f"released orders read from the store (default {DEFAULT_LIMIT})")
    hz.add_argument("--json", action="store_true", help="print the table as one JSON document")
    hz.set_defaults(tool_handler=run_hot_zones)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must not be negative")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return value


def _say(message: str) -> None:
    print(f"parcel-sorter: {message}", file=sys.stderr)


def _from_files(files: list[Path], fmt: Format | None, refused: list[str]) -> Iterator[Order]:
    for path in files:
        for source, record in parse_file(path, fmt):
            if isinstance(record, str):
                refused.append(f"{source}: {record}")
                print(f"{source}: {record}")
            else:
                yield from to_orders(record)


async def _from_store(config: OrderStoreConfig, limit: int) -> list[Order]:
    book = open_order_book(config, create=False)
    try:
        if not isinstance(book, ReleasedOrders):
            raise BookUnavailable(f"order_store.backend = {config.backend!r} cannot list its "
                                  "released orders")
        return await book.released(limit)
    finally:
        await book.close()


def _bad_file(path: Path, fmt: Format | None) -> str | None:
    problem = ("no such file" if not path.exists() else "not a file" if not path.is_file()
               else "cannot be read" if not os.access(path, os.R_OK) else None)
    if problem is not None:
        return f"{path}: {problem}"
    try:
        format_of(path, fmt)
    except ValueError as exc:
        return str(exc)
    return None


def run_hot_zones(args: argparse.Namespace) -> int:
    """Handle ``plan hot-zones``: print the table, write the plan; 0, 1 (refused) or 2."""
    files: list[Path] | None = args.orders
    for problem in (_bad_file(p, args.format) for p in files or ()):
        if problem is not None:
            _say(problem)
            return EXIT_BAD_ARGUMENTS
    if args.out is not None and not args.out.parent.is_dir():
        _say(f"{args.out.parent}: no such directory")
        return EXIT_BAD_ARGUMENTS
    refused: list[str] = []
    try:
        config = load_config(args.config)
        if files:
            orders: list[Order] = list(_from_files(files, args.format, refused))
            source = ", ".join(str(p) for p in files)
        else:
            orders = asyncio.run(_from_store(config.order_store, args.limit))
            source = f"the released orders of {config.order_store.backend} order store"
        zones = hot_zones(config, orders, spare=args.spare,
                          empties_per_shift=args.empties_per_shift)
    except OSError as exc:
        _say(f"{exc.filename or 'reading'}: {exc.strerror or exc}")
        return EXIT_BAD_ARGUMENTS
    except SorterError as exc:  # ConfigError, OrderStoreError, HotZoneError, ...
        _say(str(exc))
        return EXIT_BAD_ARGUMENTS
    for note in zones.notes:
        _say(note)
    print(json.dumps(table_json(zones), indent=2) if args.json else format_table(zones))
    if args.out is not None:
        write_plan(args.out, zones,
                   header=_header(config, args.config, source, zones, args.out.name))
        _say(f"plan written to {args.out}: point the line at it with [sort_plan] "
             f"file = \"{args.out.name}\"")
    if refused:
        _say(f"{len(refused)} order records refused")
        return EXIT_REFUSED
    return 0


def _mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} mm"


def format_table(zones: HotZones) -> str:
    """The destinations as a person reads them, busiest first, pinned ones last."""
    lines = [f"{'destination':<24} {'parcels':>8} {'share':>6}  {'travel':>8}  bins"]
    lines += [f"{row.destination:<24} {row.parcels:>8} {row.share:>6.1%}  "
              f"{_mm(row.mean_travel_mm):>8}  {', '.join(row.bins)}"
              + ("  (pinned)" if row.pinned else "") for row in zones.rows]
    lines.append(f"spares: {', '.join(zones.spares) or 'none'}")
    lines.append(f"{zones.parcels} released parcels counted, {zones.not_released} not "
                 f"released; mean travel {_mm(zones.old_mean_travel_mm)} -> "
                 f"{_mm(zones.new_mean_travel_mm)}")
    return "\n".join(lines)


def table_json(zones: HotZones) -> dict[str, object]:
    """The table as one JSON document."""
    return {"destinations": [asdict(row) for row in zones.rows],
            "spares": list(zones.spares), "parcels": zones.parcels,
            "not_released": zones.not_released,
            "old_mean_travel_mm": zones.old_mean_travel_mm,
            "new_mean_travel_mm": zones.new_mean_travel_mm, "notes": zones.notes}


def _header(config: LineConfig, config_path: Path, source: str, zones: HotZones,
            name: str) -> str:
    made = datetime.now(UTC).isoformat(timespec="seconds")
    return (f"# Sort plan made by `parcel-sorter plan hot-zones` at {made}\n"
            f"# for line {config.line.name} ({config_path}), from {source}:\n"
            f"# {zones.parcels} released parcels; mean belt travel from the read zone "
            f"{_mm(zones.old_mean_travel_mm)} -> {_mm(zones.new_mean_travel_mm)}.\n"
            f"# The line reads it with [sort_plan] file = \"{name}\" (a path relative to "
            f"its config).\n")


def write_plan(path: Path, zones: HotZones, *, header: str = "") -> None:
    """Write the plan under ``[sort_plan]`` (replacing the file whole, never half-written)."""
    table = zones.plan.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    text = header + "\n" + tomli_w.dumps({"sort_plan": table})
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
