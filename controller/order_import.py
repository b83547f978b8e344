"""The sales channels' order exports: the documented record, and parsers for csv, json, jsonl.

A parser yields ``(source, record or reason)`` per order, ``source`` being ``FILE:LINE``
(the line the order starts on), so a bad record is reported and the rest still read. csv
and jsonl stream; json is read whole. :func:`to_orders` makes a record the
:class:`~controller.orders.Order` rows the store keeps, one per parcel code.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from controller.orders import Order, OrderStatus

Format = Literal["csv", "json", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "json", "jsonl")
Parsed = tuple[str, "OrderRecord | str"]
"""``(FILE:LINE, the record, or why it was refused)``."""

#: The order fields of a csv row (each row of an order repeats them), then its parcel's code.
CSV_ORDER_FIELDS = ("order_id", "channel", "status", "carrier", "service", "route", "postcode",
                    "created_at", "promised_ship_at")
CSV_FIELDS = (*CSV_ORDER_FIELDS, "code")

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape made of undecodable bytes


def _epoch_seconds(value: object) -> float:
    """ISO 8601 with a zone, or epoch seconds (a number, or in csv its text)."""
    # ValueError, not TypeError: pydantic reports only the former as the field's error.
    if isinstance(value, bool):
        raise ValueError("a time must be ISO 8601 with a zone or epoch seconds, "  # noqa: TRY004
                         "not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 time or epoch seconds") from None
            if when.tzinfo is None:
                raise ValueError(f"{value!r} has no time zone (add Z or +01:00)")
            seconds = when.timestamp()
    else:
        raise ValueError("a time must be ISO 8601 with a zone or epoch seconds")  # noqa: TRY004
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite time")
    return seconds


EpochSeconds = Annotated[float, BeforeValidator(_epoch_seconds)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
ShortId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")]


class ParcelRecord(BaseModel):
    """One parcel of an order: its label code."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)

    code: Text


class OrderRecord(BaseModel):
    """An order as a sales channel exports it (the documented field set)."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)

    order_id: Text
    channel: ShortId  # web, store, marketplace, social, or any short identifier
    status: Literal["released", "held", "cancelled", "backordered", "shipped"]
    carrier: Text
    service: Text  # the service level
    route: str = ""
    postcode: str = ""
    created_at: EpochSeconds
    promised_ship_at: EpochSeconds | None = None
    parcels: list[ParcelRecord] = Field(min_length=1)

    @model_validator(mode="after")
    def _routable_and_unique(self) -> OrderRecord:
        if not self.route and not self.postcode:
            raise ValueError("needs a route or a postcode")
        seen: set[str] = set()
        for parcel in self.parcels:
            if parcel.code in seen:
                raise ValueError(f"parcel code {parcel.code!r} twice in the order")
            seen.add(parcel.code)
        return self


def to_orders(record: OrderRecord) -> list[Order]:
    """The store's rows for a record: one per parcel code."""
    status = OrderStatus(record.status)
    return [Order(order_id=record.order_id, code=p.code, channel=record.channel, status=status,
                  carrier=record.carrier, service=record.service, route=record.route,
                  postcode=record.postcode, created_at=record.created_at,
                  parcels_in_order=len(record.parcels),
                  promised_ship_at=record.promised_ship_at)
            for p in record.parcels]


def format_of(path: Path, given: Format | None = None) -> Format:
    """``given``, else the file's suffix; ValueError when neither says."""
    if given is not None:
        return given
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "ndjson":
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise ValueError(f"{path}: cannot tell its format from the suffix: give --format "
                     f"{'|'.join(FORMATS)}")


def parse_file(path: Path, fmt: Format | None = None) -> Iterator[Parsed]:
    """Every order record of the file, or why it was refused; OSError if it cannot be read."""
    kind = format_of(path, fmt)
    parser = {"csv": parse_csv, "json": parse_json, "jsonl": parse_jsonl}[kind]
    return _unique_codes(parser(path))


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "record"


def _reason(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{_field_path(err['loc'])}: {message}")
    return "; ".join(problems)


def validate(data: object) -> OrderRecord | str:
    """A record from one decoded order object, or why not."""
    if not isinstance(data, dict):
        return f"an order must be a JSON object, not {type(data).__name__}"
    try:
        return OrderRecord.model_validate(data)
    except ValidationError as exc:
        return _reason(exc)


def _unique_codes(parsed: Iterable[Parsed]) -> Iterator[Parsed]:
    """Refuse an order whose parcel code an earlier order of the same file has."""
    owners: dict[str, str] = {}
    for source, record in parsed:
        if isinstance(record, OrderRecord):
            clash = next((p.code for p in record.parcels if p.code in owners), None)
            if clash is not None:
                yield source, (f"parcel code {clash!r} is already order "
                               f"{owners[clash]!r}'s in this file")
                continue
            for parcel in record.parcels:
                owners[parcel.code] = record.order_id
        yield source, record


def parse_jsonl(path: Path) -> Iterator[Parsed]:
    """One order object per line; blank lines are skipped."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw
            if line.strip():
                yield f"{path}:{number}", validate_json(line.rstrip(b"\r\n"))


_AT_LINE_1 = re.compile(r" at line 1 column (\d+)$")


def validate_json(raw: bytes) -> OrderRecord | str:
    """A record from one order's JSON text (one line), or why not."""
    try:
        return OrderRecord.model_validate_json(raw)
    except ValidationError as exc:
        [first, *_] = exc.errors(include_url=False)
        if first["type"] == "json_invalid":
            error = str(first.get("ctx", {}).get("error", first["msg"]))
            return "not JSON: " + _AT_LINE_1.sub(r" at column \1", error)
        if first["type"] == "model_type" and not first["loc"]:
            return "an order must be a JSON object"
        return _reason(exc)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def parse_json(path: Path) -> Iterator[Parsed]:
    """A list of order objects, or ``{"orders": [...]}``; each reported at its first line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        yield f"{path}:{line}", "not valid UTF-8"
        return
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def at(pos: int) -> str:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return f"{path}:{line}"

    pos = _skip_space(text, 0)
    if text.startswith("{", pos):
        pos = _skip_space(text, pos + 1)
        if not text.startswith('"orders"', pos):
            yield at(pos), 'not an order file: expected a list, or {"orders": [...]}'
            return
        pos = _skip_space(text, pos + len('"orders"'))
        if not text.startswith(":", pos):
            yield at(pos), "not JSON: expected ':'"
            return
        pos = _skip_space(text, pos + 1)
    if not text.startswith("[", pos):
        yield at(pos), 'not an order file: expected a list, or {"orders": [...]}'
        return
    pos = _skip_space(text, pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            source = at(pos)
            try:
                data, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield at(exc.pos), f"not JSON: {exc.msg} at column {exc.colno}"
                return
            yield source, validate(data)
            pos = _skip_space(text, pos)
            if text.startswith(",", pos):
                pos = _skip_space(text, pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                yield at(pos), "not JSON: expected ',' or ']' after an order"
                return
    end = _skip_space(text, pos)
    if text.startswith("}", end) and text.lstrip().startswith("{"):
        end = _skip_space(text, end + 1)
    if end != len(text):
        yield at(end), "not JSON: more after the orders"


def parse_csv(path: Path) -> Iterator[Parsed]:
    """One row per parcel, a header first; consecutive rows with one order_id are one order,
    and must agree on every order field."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = csv.reader(f)
        try:
            header = [name.strip() for name in next(rows)]
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"{path}:1", f"not CSV: {exc}"
            return
        unknown = [name for name in header if name not in CSV_FIELDS]
        missing = [name for name in ("order_id", "code") if name not in header]
        if unknown or missing or len(set(header)) != len(header):
            problem = (f"unknown column {unknown[0]!r}" if unknown
                       else f"no {missing[0]!r} column" if missing else "a column twice")
            yield f"{path}:1", f"bad header: {problem} (columns: {', '.join(CSV_FIELDS)})"
            return
        yield from _csv_orders(path, header, rows)


def _csv_orders(path: Path, header: list[str], rows: Iterator[list[str]]) -> Iterator[Parsed]:
    group: list[tuple[int, dict[str, str]]] = []
    started: dict[str, int] = {}  # order id → the line its rows started on
    reader = rows
    while True:
        line = getattr(reader, "line_num", 0) + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if group:
                yield _csv_group(path, group)
                group = []
            yield f"{path}:{line}", f"not CSV: {exc}"
            continue
        line = getattr(reader, "line_num", line)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            if group:
                yield _csv_group(path, group)
                group = []
            yield f"{path}:{line}", f"{len(row)} cells, the header has {len(header)}"
            continue
        cells = {name: cell.strip() for name, cell in zip(header, row, strict=True)}
        order_id = cells.get("order_id", "")
        if group and order_id != group[0][1].get("order_id", ""):
            yield _csv_group(path, group)
            group = []
        if not group and order_id and order_id in started:
            yield f"{path}:{line}", (f"order {order_id!r} has rows apart: its rows must be "
                                     f"together (it started at line {started[order_id]})")
            continue
        if not group and order_id:
            started[order_id] = line
        group.append((line, cells))
    if group:
        yield _csv_group(path, group)


def _csv_group(path: Path, group: list[tuple[int, dict[str, str]]]) -> Parsed:
    """The one order of consecutive rows sharing an order id."""
    first_line, first = group[0]
    source = f"{path}:{first_line}"
    for line, cells in group:
        if any(_NOT_UTF8.search(cell) for cell in cells.values()):
            return f"{path}:{line}", "not valid UTF-8"
    for line, cells in group[1:]:
        for name in CSV_ORDER_FIELDS:
            if cells.get(name, "") != first.get(name, ""):
                return f"{path}:{line}", (
                    f"order {first.get('order_id')!r}: {name} {cells.get(name, '')!r} "
                    f"disagrees with line {first_line}'s {first.get(name, '')!r}")
    data: dict[str, Any] = {name: value for name, value in first.items()
                            if name in CSV_ORDER_FIELDS and value != ""}
    data["parcels"] = [{"code": cells["code"]} if cells.get("code", "") else {}
                       for _, cells in group]
    return source, validate(data)
