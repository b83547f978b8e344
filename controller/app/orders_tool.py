"""``parcel-sorter orders import|show|stats``: the order book, for imports and a person at the box.

``import`` reads the sales channels' exports (controller/order_import.py) and upserts them in
batches, reporting each refused record as ``FILE:LINE: reason``; ``show`` prints an order and
its parcels; ``stats`` counts the book. The book comes from :func:`open_order_book`. The CLI
adds the commands with :func:`add_orders_command`; their handler is ``tool_handler``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from controller.config import OrderStoreConfig, load_config
from controller.errors import OrderStoreError, SorterError
from controller.order_import import FORMATS, Format, OrderRecord, format_of, parse_file, to_orders
from controller.orders import Order, OrderBook, Upserted

EXIT_REFUSED = 1
EXIT_BAD_ARGUMENTS = 2
#: Parcels upserted in one transaction.
BATCH_PARCELS = 5000
#: How long an import waits for a lock another process holds on the book.
IMPORT_BUSY_TIMEOUT_S = 5.0


class BookUnavailable(SorterError):
    """The order book the config names cannot be opened by this tool."""


def open_order_book(config: OrderStoreConfig, *, create: bool) -> OrderBook:
    """The order book the config names; ``create=False``: it must exist (read only)."""
    if config.backend == "sqlite":
        from drivers.orders.sqlite import SqliteOrderStore

        timeout_s = IMPORT_BUSY_TIMEOUT_S if create else config.timeout_ms / 1000
        if not create and not Path(config.path).is_file():
            raise BookUnavailable(f"{config.path}: no such order book")
        return SqliteOrderStore(config.path, timeout_s=timeout_s, create=create)
    if config.backend == "postgresql":
        from drivers.orders.postgres import PostgresOrderStore

        return PostgresOrderStore(config, create=create)
    raise BookUnavailable(f"order_store.backend = {config.backend!r}: not known")


def add_orders_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``orders import``, ``orders show`` and ``orders stats`` to the CLI's subcommands."""
    p = sub.add_parser(
        "orders", help="the order book: import the channels' exports, show an order, stats",
        description="Import orders from the sales channels' exports, look one up, or count "
                    "the book. The book is the line config's [order_store], or --db.")
    actions = p.add_subparsers(dest="orders_command", metavar="import|show|stats",
                               required=True)
    imp = actions.add_parser(
        "import", help="upsert orders from csv, json or jsonl files",
        description="Validate every order record and upsert the good ones; each refused "
                    "record is printed as FILE:LINE: reason. Exit 0 when none was refused, 1 "
                    "when some were, 2 for bad arguments or a file that cannot be read.")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument("--format", choices=FORMATS, default=None,
                     help="the files' format (default: from each file's suffix)")
    _book_options(imp)
    imp.set_defaults(tool_handler=run_import)
    show = actions.add_parser(
        "show", help="an order and its parcels",
        description="The order with this id, or the order of the parcel with this code, and "
                    "its parcels. Exit 1 when the book has neither.")
    show.add_argument("key", metavar="CODE_OR_ORDER")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    _book_options(show)
    show.set_defaults(tool_handler=run_show)
    stats = actions.add_parser("stats", help="parcels by status, orders, channels",
                               description="Count the order book.")
    stats.add_argument("--json", action="store_true", help="print one JSON document")
    _book_options(stats)
    stats.set_defaults(tool_handler=run_stats)


def _book_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, metavar="LINE.toml",
                       help="the line config: its [order_store]")
    where.add_argument("--db", type=Path, metavar="PATH", help="an SQLite order book")


def _store_config(args: argparse.Namespace) -> OrderStoreConfig:
    if args.db is not None:
        return OrderStoreConfig(path=str(args.db))
    return load_config(args.config).order_store


def _say(message: str) -> None:
    print(f"parcel-sorter: {message}", file=sys.stderr)


def run_import(args: argparse.Namespace) -> int:
    """Handle ``orders import``: 0 when nothing was refused, 1 when some was, 2 if unreadable."""
    files: list[Path] = args.files
    fmt: Format | None = args.format
    for path in files:
        problem = ("no such file" if not path.exists() else "not a file" if not path.is_file()
                   else "cannot be read" if not os.access(path, os.R_OK) else None)
        if problem is not None:
            _say(f"{path}: {problem}")
            return EXIT_BAD_ARGUMENTS
        try:
            format_of(path, fmt)
        except ValueError as exc:
            _say(str(exc))
            return EXIT_BAD_ARGUMENTS
    started = time.perf_counter()
    try:
        book = open_order_book(_store_config(args), create=True)
        summary = asyncio.run(import_files(book, files, fmt, refused=print))
    except OSError as exc:
        _say(f"{exc.filename or 'reading'}: {exc.strerror or exc}")
        return EXIT_BAD_ARGUMENTS
    except (OrderStoreError, BookUnavailable) as exc:
        _say(str(exc))
        return EXIT_BAD_ARGUMENTS
    print(f"{summary.added} added, {summary.updated} updated, {summary.refused} refused "
          f"(of {summary.records} records) in {time.perf_counter() - started:.2f} s")
    return EXIT_REFUSED if summary.refused else 0


class ImportSummary:
    """What an import did: parcels added and updated, order records read and refused."""

    def __init__(self) -> None:
        self.added = 0
        self.updated = 0
        self.records = 0
        self.refused = 0

    def count(self, upserted: Upserted) -> None:
        self.added += upserted.added
        self.updated += upserted.updated


def _records(files: list[Path], fmt: Format | None, summary: ImportSummary,
             refused: _Printer) -> Iterator[OrderRecord]:
    for path in files:
        for source, record in parse_file(path, fmt):
            summary.records += 1
            if isinstance(record, str):
                summary.refused += 1
                refused(f"{source}: {record}")
            else:
                yield record


class _Printer(Protocol):
    def __call__(self, line: str, /) -> object: ...


async def import_files(book: OrderBook, files: list[Path], fmt: Format | None = None, *,
                       refused: _Printer = print) -> ImportSummary:
    """Upsert every good record of the files in batches; each refused one goes to
    ``refused``. The book is closed at the end.

    A batch is upserted while the next is parsed (a book that works in a thread of its own
    overlaps the two)."""
    summary = ImportSummary()
    batch: list[Order] = []
    pending: asyncio.Task[Upserted] | None = None

    async def hand_over(orders: list[Order]) -> asyncio.Task[Upserted]:
        if pending is not None:
            summary.count(await pending)
        task = asyncio.ensure_future(book.upsert(orders))
        await asyncio.sleep(0)  # the task starts: the batch is in the book's hands
        return task

    try:
        for record in _records(files, fmt, summary, refused):
            batch.extend(to_orders(record))
            if len(batch) >= BATCH_PARCELS:
                pending, batch = await hand_over(batch), []
        if batch:
            pending = await hand_over(batch)
        if pending is not None:
            task, pending = pending, None
            summary.count(await task)
    finally:
        if pending is not None:
            with contextlib.suppress(Exception):  # the failure in hand is the one to tell
                await pending
        await book.close()
    return summary


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def run_show(args: argparse.Namespace) -> int:
    """Handle ``orders show``: the order and its parcels; 1 when unknown."""
    key: str = args.key.strip()
    try:
        parcels = asyncio.run(_find_order(open_order_book(_store_config(args), create=False),
                                          key))
    except (OrderStoreError, BookUnavailable) as exc:
        _say(str(exc))
        return EXIT_BAD_ARGUMENTS
    if not parcels:
        _say(f"no order or parcel {key!r} in the order book")
        return 1
    if args.json:
        first = parcels[0]
        print(json.dumps({"order_id": first.order_id,
                          "parcels": [{**asdict(p), "status": str(p.status)} for p in parcels]},
                         indent=2, ensure_ascii=False))
    else:
        print(format_order(parcels))
    return 0


async def _find_order(book: OrderBook, key: str) -> list[Order]:
    try:
        parcels = await book.find(key)
        if len(parcels) == 1 and parcels[0].order_id != key:  # a code: show its whole order
            parcels = await book.find(parcels[0].order_id) or parcels
        return parcels
    finally:
        await book.close()


def format_order(parcels: list[Order]) -> str:
    """An order's parcels as a person reads them (the order fields from its first parcel)."""
    o = parcels[0]
    lines = [f"order {o.order_id}  {o.status}  channel {o.channel}",
             f"  carrier {o.carrier}  service {o.service}  route {o.route or '-'}  "
             f"postcode {o.postcode or '-'}",
             f"  created {_when(o.created_at)}  promised ship {_when(o.promised_ship_at)}",
             f"  parcels ({len(parcels)} of {o.parcels_in_order}):"]
    lines += [f"    {p.code}" + (f"  {p.status}" if p.status is not o.status else "")
              for p in parcels]
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    """Handle ``orders stats``: parcels by status, orders, and orders by channel."""
    try:
        counts, channels = asyncio.run(_stats(open_order_book(_store_config(args),
                                                              create=False)))
    except (OrderStoreError, BookUnavailable) as exc:
        _say(str(exc))
        return EXIT_BAD_ARGUMENTS
    if args.json:
        print(json.dumps({"parcels": {k: v for k, v in counts.items() if k != "orders"},
                          "orders": counts.get("orders", 0), "channels": channels}, indent=2))
        return 0
    statuses = {k: v for k, v in counts.items() if k != "orders"}
    print(f"parcels: {sum(statuses.values())}  "
          + "  ".join(f"{status} {n}" for status, n in statuses.items()))
    print(f"orders: {counts.get('orders', 0)}")
    if channels:
        print("channels (orders): " + "  ".join(f"{c} {n}" for c, n in channels.items()))
    return 0


async def _stats(book: OrderBook) -> tuple[dict[str, int], dict[str, int]]:
    try:
        counts = await book.counts()
        channels = await book.channels()
        return counts, channels
    finally:
        await book.close()
