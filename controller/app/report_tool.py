"""``parcel-sorter report``: the business's figures from a journal and the order book.

Prints the figures of :mod:`controller.business_kpis` as a table (or JSON) and, with
``--html``, writes the self-contained HTML report with its charts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sqlite3
import sys
from collections.abc import Collection
from pathlib import Path

from controller.business_kpis import BusinessReport, business_kpis
from controller.config import LineConfig, OrderStoreConfig, load_config
from controller.errors import SorterError
from controller.order_kpis import (
    AllowedBins,
    JournalDataError,
    JournalParcel,
    OrderFinder,
    journal_clock_start,
    journal_parcels,
    orders_for,
)
from controller.orders import Order, OrderStore
from controller.sortplan import SortPlan

EXIT_BAD_INPUT = 2


class ReportInputError(SorterError):
    """A journal or order book the report cannot read."""


def add_report_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` to the CLI's subcommands."""
    p = sub.add_parser(
        "report", help="the business's figures from a journal and the order book",
        description="Read rate, sort rate, ship accuracy, order-information errors, order "
                    "cycle time, perfect orders and fill rate, from a production journal and "
                    "the order book (docs/kpis.md). Exit 2 when an input cannot be read.")
    p.add_argument("--journal", type=Path, default=None, metavar="PATH",
                   help="the journal (default: the one --config names)")
    p.add_argument("--orders", type=Path, default=None, metavar="PATH",
                   help="an SQLite order book (default: the store --config names)")
    p.add_argument("--config", type=Path, default=None, metavar="LINE.toml",
                   help="the line config: its order store, its journal, and its sort plan "
                        "(which bins each order may go to)")
    p.add_argument("--clock-start", type=float, default=None, metavar="EPOCH",
                   help="the epoch second at which the journal's clock read 0 (default: what "
                        "the journal tells, else 0: order times on the journal's clock)")
    p.add_argument("--shift-hours", type=float, default=None, metavar="HOURS",
                   help="cut the journal into shifts this long from its first parcel")
    p.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="write the HTML report with its charts here")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(tool_handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Handle ``report``: print the figures, write the HTML; 2 when an input is unreadable."""
    try:
        report = build_report(args)
    except SorterError as exc:
        print(f"parcel-sorter report: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    else:
        print(format_report(report))
    if args.html is not None:
        from controller.app.report_html import write_html

        try:
            write_html(args.html, report, title=f"Shift report: {args.journal}")
        except OSError as exc:
            print(f"parcel-sorter report: --html {args.html}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        if not args.json:
            print(f"HTML report written to {args.html}")
    return 0


def build_report(args: argparse.Namespace) -> BusinessReport:
    if args.shift_hours is not None and not args.shift_hours > 0:
        raise ReportInputError(f"--shift-hours {args.shift_hours}: must be more than 0")
    if args.clock_start is not None and not math.isfinite(args.clock_start):
        raise ReportInputError(f"--clock-start {args.clock_start}: not an epoch second")
    config: LineConfig | None = load_config(args.config) if args.config is not None else None
    if args.journal is None:
        if config is None:
            raise ReportInputError("--journal PATH or --config LINE.toml is needed")
        args.journal = Path(config.journal.path)
    if args.orders is None and config is None:
        raise ReportInputError("--orders PATH or --config LINE.toml is needed")
    parcels = read_journal(args.journal)
    clock_start = args.clock_start
    if clock_start is None:
        clock_start = journal_clock_start(args.journal) or 0.0
    orders = asyncio.run(_read_orders(parcels, args.orders, config))
    allowed: AllowedBins | None = None
    if config is not None:
        plan = SortPlan(config.sort_plan)

        def allowed(order: Order, length_mm: float | None) -> Collection[str]:
            return plan.destinations(order, length_mm)[1]

    return business_kpis(parcels, orders, clock_start=clock_start, allowed_bins=allowed,
                         shift_hours=args.shift_hours)


def read_journal(path: Path) -> list[JournalParcel]:
    """The journal's parcels, read-only; a file that is not a journal is a ReportInputError."""
    if not path.is_file():
        raise ReportInputError(f"--journal {path}: no such file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise ReportInputError(f"--journal {path}: {exc}") from exc
    try:
        cursor = db.execute("SELECT * FROM parcels ORDER BY parcel_id")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor]
    except sqlite3.Error as exc:
        raise ReportInputError(f"--journal {path}: not a parcel journal ({exc})") from exc
    finally:
        db.close()
    try:
        return journal_parcels(rows, str(path))
    except JournalDataError as exc:
        raise ReportInputError(str(exc)) from exc


class StoreFinder:
    """An order store read as the KPIs read the order book: by its ``find`` when it has one
    (an :class:`controller.orders.OrderBook`), else a code at a time by its ``lookup``."""

    def __init__(self, store: OrderStore) -> None:
        self.store = store

    async def find(self, code_or_order_id: str) -> list[Order]:
        find = getattr(self.store, "find", None)
        if find is not None:
            found: list[Order] = await find(code_or_order_id)
            return found
        order = await self.store.lookup(code_or_order_id)
        return [order] if order is not None else []


def open_store(orders: Path | None, config: LineConfig | None) -> OrderStore:
    """The order store to read: the SQLite file ``orders``, else the one the config names."""
    from drivers.orders import open_order_store

    if orders is not None:
        if not orders.is_file():
            raise ReportInputError(f"--orders {orders}: no such file")
        section = OrderStoreConfig(backend="sqlite", path=str(orders), timeout_ms=5000.0)
    else:
        assert config is not None
        section = config.order_store.model_copy(
            update={"timeout_ms": max(config.order_store.timeout_ms, 5000.0)})
    return open_order_store(section, create=False)


async def _read_orders(parcels: list[JournalParcel], orders: Path | None,
                       config: LineConfig | None) -> dict[str, Order]:
    store = open_store(orders, config)
    try:
        finder: OrderFinder = StoreFinder(store)
        return await orders_for(parcels, finder)
    except SorterError as exc:
        where = f"--orders {orders}" if orders is not None else "the config's order store"
        raise ReportInputError(f"{where}: {exc}") from exc
    finally:
        await store.close()


def format_report(report: BusinessReport) -> str:
    """The figures as a table, one column per shift (and the total)."""
    from controller.app.report_html import KPI_ROWS

    columns = [report.total, *(report.shifts if len(report.shifts) > 1 else [])]
    cells: list[list[str]] = [["figure", *(s.name for s in columns)]]
    cells += [[label, *(show(s) for s in columns)] for label, show in KPI_ROWS]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    dispositions = ", ".join(f"{k} {v}" for k, v in report.total.dispositions.items())
    lines.append(f"dispositions: {dispositions or 'none'}")
    return "\n".join(lines)

