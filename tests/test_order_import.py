"""Orders in: the channels' exports validated record by record, upserted into the SQLite book,
shown and counted; a bad record is reported with its file and line and the rest still go in."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.app.orders_tool import add_orders_command, open_order_book
from controller.config import OrderStoreConfig, SortPlanConfig, SortRule
from controller.disposition import END_OF_LINE, Disposition
from controller.order_import import OrderRecord, parse_file, to_orders
from controller.orders import OrderStatus, Upserted
from controller.routing import Router
from controller.sortplan import SortPlan
from drivers.orders.sqlite import SCHEMA_VERSION, SqliteOrderStore

HEADER = "order_id,channel,status,carrier,service,route,postcode,created_at,promised_ship_at,code"

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL,
    code TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('released', 'held', 'cancelled')),
    carrier TEXT NOT NULL,
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    postcode TEXT NOT NULL,
    created_at REAL NOT NULL,
    parcels_in_order INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS orders_by_order ON orders (order_id);
"""


def _orders(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="parcel-sorter")
    add_orders_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["orders", *argv])
    status: int = args.tool_handler(args)
    return status


def _order(order_id: str, *codes: str, status: str = "released", **fields: object) -> dict[
        str, object]:
    return {"order_id": order_id, "channel": "web", "status": status, "carrier": "DHL",
            "service": "express", "route": "R1", "postcode": "10115",
            "created_at": "2026-12-01T08:00:00Z", "promised_ship_at": 1_764_633_600,
            "parcels": [{"code": c} for c in codes], **fields}


def _refused(out: str) -> list[str]:
    return [line for line in out.splitlines() if not line[0].isdigit()]


def test_csv_bad_records_are_reported_by_line_and_the_good_ones_imported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "web.csv"
    f.write_text("\n".join([
        HEADER,
        "W-1,web,released,DHL,express,R1,10115,2026-12-01T08:00:00+01:00,,C1",   # 2
        "W-1,web,released,DHL,express,R1,10115,2026-12-01T08:00:00+01:00,,C2",   # 3
        "W-2,web,released,,express,R1,10115,1764576000,,C3",                     # 4 no carrier
        "W-3,web,lost,DHL,express,R1,10115,1764576000,,C4",                      # 5 bad status
        "W-4,web,released,DHL,express,R1,10115,2026-12-01 08:00,,C5",            # 6 no zone
        "W-5,web,released,DHL,express,R1,10115,1764576000,,C1",                  # 7 dup code
        "W-6,web,held,DHL,express,R1,10115,1764576000,,C6",                      # 8
        "W-6,web,released,DHL,express,R1,10115,1764576000,,C7",                  # 9 disagrees
        "W-7,store,backordered,UPS,std,,20095,1764576000,1764662400,C8",         # 10
    ]) + "\n")
    db = tmp_path / "orders.sqlite"
    assert _orders("import", str(f), "--db", str(db)) == 1
    out = capsys.readouterr().out
    assert _refused(out) == [
        f"{f}:4: carrier: Field required",
        f"{f}:5: status: Input should be 'released', 'held', 'cancelled', 'backordered' or "
        "'shipped'",
        f"{f}:6: created_at: '2026-12-01 08:00' has no time zone (add Z or +01:00)",
        f"{f}:7: parcel code 'C1' is already order 'W-1''s in this file",
        f"{f}:9: order 'W-6': status 'released' disagrees with line 8's 'held'",
    ]
    assert out.splitlines()[-1].startswith("3 added, 0 updated, 5 refused (of 7 records) in ")

    async def check() -> None:
        store = SqliteOrderStore(db)
        try:
            w1 = await store.find("W-1")
            assert [(o.code, o.parcels_in_order) for o in w1] == [("C1", 2), ("C2", 2)]
            assert w1[0].created_at == datetime(2026, 12, 1, 7, tzinfo=UTC).timestamp()
            assert w1[0].promised_ship_at is None
            [c8] = await store.find("C8")
            assert c8.status is OrderStatus.BACKORDERED
            assert (c8.route, c8.postcode, c8.promised_ship_at) == ("", "20095", 1_764_662_400.0)
        finally:
            await store.close()

    asyncio.run(check())


def test_json_and_jsonl_bad_records_are_reported_by_the_line_they_start_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orders = [_order("M-1", "J1", "J2", channel="marketplace"),
              _order("M-2", "J3", surprise=1),
              _order("M-3", "J4", created_at="yesterday"),
              [1, 2],
              _order("M-4", "J5", "J5"),
              _order("M-5", "J6", route="", postcode=""),
              _order("M-6")]
    listing = tmp_path / "market.json"
    listing.write_text(json.dumps({"orders": orders}, indent=1))
    text = listing.read_text().splitlines()
    starts = [n for n, line in enumerate(text, 1) if line in ("  {", "  [")]
    lines = tmp_path / "social.jsonl"
    lines.write_text("\n".join([
        json.dumps(_order("S-1", "L1", channel="social")),
        '{"order_id": "S-2", "channel": ',
        "",
        json.dumps({k: v for k, v in _order("S-3", "L3").items() if k != "service"}),
        json.dumps(_order("S-4", "J1")),  # another file's code: an update, not a clash
    ]) + "\n")
    db = tmp_path / "orders.sqlite"
    assert _orders("import", str(listing), str(lines), "--db", str(db)) == 1
    out = capsys.readouterr().out
    assert _refused(out) == [
        f"{listing}:{starts[1]}: surprise: Extra inputs are not permitted",
        f"{listing}:{starts[2]}: created_at: 'yesterday' is not an ISO 8601 time or epoch "
        "seconds",
        f"{listing}:{starts[3]}: an order must be a JSON object, not list",
        f"{listing}:{starts[4]}: record: parcel code 'J5' twice in the order",
        f"{listing}:{starts[5]}: record: needs a route or a postcode",
        f"{listing}:{starts[6]}: parcels: List should have at least 1 item after validation, "
        "not 0",
        f"{lines}:2: not JSON: EOF while parsing a value at column 31",
        f"{lines}:4: service: Field required",
    ]
    assert out.splitlines()[-1].startswith("3 added, 1 updated, 8 refused (of 11 records)")


def test_a_file_that_is_not_an_order_list_is_one_refused_record(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text('\n\n{"customers": []}')
    assert list(parse_file(f)) == [
        (f"{f}:3", 'not an order file: expected a list, or {"orders": [...]}')]
    f.write_text('[\n{"order_id": "A"},\n{"order_id": ')
    parsed = list(parse_file(f))
    assert [source for source, _ in parsed] == [f"{f}:2", f"{f}:3"]
    assert str(parsed[1][1]).startswith("not JSON: Expecting value")


def test_importing_again_updates_and_a_changed_status_is_stored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "orders.jsonl"
    f.write_text("".join(json.dumps(_order(f"O-{n}", f"P{n}a", f"P{n}b")) + "\n"
                         for n in range(3)))
    db = tmp_path / "orders.sqlite"
    assert _orders("import", str(f), "--db", str(db)) == 0
    assert capsys.readouterr().out.startswith("6 added, 0 updated, 0 refused (of 3 records)")
    f.write_text(f.read_text().replace('"released"', '"backordered"', 1))
    assert _orders("import", str(f), "--db", str(db)) == 0
    assert capsys.readouterr().out.startswith("0 added, 6 updated, 0 refused (of 3 records)")
    assert _orders("show", "P0b", "--db", str(db), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["order_id"] == "O-0"
    assert [(p["code"], p["status"]) for p in shown["parcels"]] == [
        ("P0a", "backordered"), ("P0b", "backordered")]


def test_a_backordered_order_is_kept_out_of_shipping_bins(tmp_path: Path) -> None:
    f = tmp_path / "orders.jsonl"
    f.write_text(json.dumps(_order("B-1", "K1", status="backordered")) + "\n")
    [(_, record)] = list(parse_file(f))
    assert isinstance(record, OrderRecord)
    [order] = to_orders(record)
    assert order.status is OrderStatus.BACKORDERED
    plan = SortPlan(SortPlanConfig(rules=[SortRule(name="dhl", when={"carrier": "DHL"},
                                                   bins=["B1"])], overflow="B8"))
    route = Router(plan).for_order(order, frozenset())
    assert route.disposition is Disposition.ORDER_HELD
    assert route.bin == END_OF_LINE
    assert route.reason == "order B-1 backordered"


def test_show_and_stats_for_a_person_at_the_box(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "orders.json"
    f.write_text(json.dumps([_order("W-1", "A1", "A2"),
                             _order("S-1", "A3", channel="store", status="held"),
                             _order("S-2", "A4", channel="store", status="shipped")]))
    db = tmp_path / "orders.sqlite"
    assert _orders("import", str(f), "--db", str(db)) == 0
    capsys.readouterr()
    assert _orders("show", "A2", "--db", str(db)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "order W-1  released  channel web",
        "  carrier DHL  service express  route R1  postcode 10115",
        "  created 2026-12-01T08:00:00+00:00  promised ship 2025-12-02T00:00:00+00:00",
        "  parcels (2 of 2):",
        "    A1",
        "    A2",
    ]
    assert _orders("show", "nope", "--db", str(db)) == 1
    assert capsys.readouterr().err == "parcel-sorter: no order or parcel 'nope' in the order book\n"
    assert _orders("stats", "--db", str(db)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "parcels: 4  released 2  held 1  cancelled 0  backordered 0  shipped 1",
        "orders: 3",
        "channels (orders): store 2  web 1",
    ]
    assert _orders("stats", "--db", str(db), "--json") == 0
    assert json.loads(capsys.readouterr().out)["channels"] == {"store": 2, "web": 1}


def test_bad_arguments_and_unreadable_files_exit_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "orders.sqlite"
    assert _orders("import", str(tmp_path / "missing.csv"), "--db", str(db)) == 2
    assert capsys.readouterr().err == f"parcel-sorter: {tmp_path / 'missing.csv'}: no such file\n"
    odd = tmp_path / "orders.txt"
    odd.write_text("")
    assert _orders("import", str(odd), "--db", str(db)) == 2
    assert "give --format csv|json|jsonl" in capsys.readouterr().err
    assert _orders("stats", "--db", str(db)) == 2  # show and stats never make an empty book
    assert capsys.readouterr().err == f"parcel-sorter: {db}: no such order book\n"
    assert not db.exists()
    shared = open_order_book(OrderStoreConfig(backend="postgresql",
                                              dsn="postgresql://db/orders"), create=True)
    assert type(shared).__name__ == "PostgresOrderStore"  # tests/test_order_store_pg.py
    asyncio.run(shared.close())


#: Version 1: the statuses, not yet the promised-ship time.
V1_SCHEMA = OLD_SCHEMA.replace("'cancelled')", "'cancelled', 'backordered', 'shipped')")


@pytest.mark.parametrize("schema", [OLD_SCHEMA, V1_SCHEMA], ids=["v0", "v1"])
def test_an_old_schema_book_is_migrated_keeping_its_rows(tmp_path: Path, schema: str) -> None:
    db = tmp_path / "orders.sqlite"
    with sqlite3.connect(db) as old:
        old.executescript(schema)
        old.execute("INSERT INTO orders VALUES ('O-1', 'OLD1', 'web', 'held', 'DHL', 'std', "
                    "'R1', '10115', 5.0, 1)")
        if schema is OLD_SCHEMA:
            with pytest.raises(sqlite3.IntegrityError):
                old.execute("INSERT INTO orders VALUES ('O-2', 'X', 'web', 'backordered', "
                            "'DHL', 'std', 'R1', '10115', 5.0, 1)")
    old.close()

    async def main() -> None:
        reader = SqliteOrderStore(db, create=False)  # read only: reads it as it is
        try:
            old_row = await reader.lookup("OLD1")
            assert old_row is not None
            assert (old_row.status, old_row.promised_ship_at) == (OrderStatus.HELD, None)
        finally:
            await reader.close()
        store = SqliteOrderStore(db)
        try:
            assert await store.lookup("OLD1") == old_row
            new = to_orders(OrderRecord.model_validate(
                _order("O-2", "NEW1", status="backordered")))
            assert await store.upsert(new) == Upserted(added=1, updated=0)
            [found] = await store.find("NEW1")
            assert found.status is OrderStatus.BACKORDERED
            assert found.promised_ship_at == 1_764_633_600.0
            assert (await store.counts())["orders"] == 2
        finally:
            await store.close()

    asyncio.run(main())
    with sqlite3.connect(db) as after:
        assert after.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert after.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall(
            ) == [("sqlite_autoindex_orders_1",), ("orders_by_order",)]
    after.close()


def test_csv_rows_apart_bad_cells_and_bad_bytes_are_refused_by_line(tmp_path: Path) -> None:
    f = tmp_path / "store.csv"
    f.write_bytes("\n".join([
        "order_id,channel,status,carrier,service,postcode,created_at,code",
        "S-1,store,released,DHL,std,10115,1764576000,A1",
        "S-2,store,released,DHL,std,10115,1764576000,A2",
        "S-1,store,released,DHL,std,10115,1764576000,A3",       # 4: S-1 again, apart
        "S-3,store,released,DHL,std,10115,1764576000",          # 5: a cell short
        "S-4,store,released,DHL,std,10115,1764576000,",         # 6: no code
        "S-5,st\xf6re,released,DHL,std,10115,1764576000,A5",    # 7: Latin-1, not UTF-8
        "S-6,store,released,DHL,std,10115,NaN,A6",              # 8
    ]).encode("latin-1"))
    parsed = [(source.rsplit(":", 1)[1], r if isinstance(r, str) else r.order_id)
              for source, r in parse_file(f)]
    assert parsed == [
        ("2", "S-1"), ("3", "S-2"),
        ("4", "order 'S-1' has rows apart: its rows must be together (it started at line 2)"),
        ("5", "7 cells, the header has 8"),
        ("6", "parcels[0].code: Field required"),
        ("7", "not valid UTF-8"),
        ("8", "created_at: 'NaN' is not an ISO 8601 time or epoch seconds"),
    ]
    f.write_text("order_id,channel,colour,code\n1,web,red,A1\n")
    assert list(parse_file(f)) == [(f"{f}:1", (
        "bad header: unknown column 'colour' (columns: order_id, channel, status, carrier, "
        "service, route, postcode, created_at, promised_ship_at, code)"))]


def test_a_code_twice_in_one_batch_is_one_added_then_updated(tmp_path: Path) -> None:
    first, second = (to_orders(OrderRecord.model_validate(_order("D-1", "Z1", status=s)))
                     for s in ("held", "released"))

    async def main() -> None:
        store = SqliteOrderStore(tmp_path / "orders.sqlite")
        try:
            assert await store.upsert([*first, *second]) == Upserted(added=1, updated=1)
            found = await store.lookup("Z1")
            assert found is not None
            assert found.status is OrderStatus.RELEASED  # the last one wins
            assert await store.counts() == {"released": 1, "held": 0, "cancelled": 0,
                                            "backordered": 0, "shipped": 0, "orders": 1}
        finally:
            await store.close()

    asyncio.run(main())
