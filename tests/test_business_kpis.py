"""The business's figures from a journal and the order book: against an emulated shift's
truth, on hand-built journals whose answers are worked out by hand, and through
``parcel-sorter report``."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from controller.app.example_line import EXAMPLE_CONFIG
from controller.app.report_tool import StoreFinder, add_report_command
from controller.business_kpis import business_kpis, percentile
from controller.config import LineConfig
from controller.journal import SCHEMA, read_records
from controller.kpis import UNKNOWN_BIN
from controller.order_kpis import (
    JournalDataError,
    JournalParcel,
    OrdersByCode,
    journal_clock_start,
    journal_parcels,
    orders_for,
)
from controller.orders import Order, OrderStatus
from controller.sortplan import SortPlan
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.scenario import Case, ScenarioSpec

from .shifts import run_sim

EPOCH = 1_780_000_000.0  # the wall time at which the journals' clock read 0 in these tests


def order(order_id: str, code: str, *, status: OrderStatus = OrderStatus.RELEASED,
          parcels: int = 1, created: float = EPOCH - 3600, promised: float | None = None,
          carrier: str = "DHL") -> Order:
    return Order(order_id=order_id, code=code, channel="web", status=status, carrier=carrier,
                 service="standard", route="R01", postcode="10115", created_at=created,
                 parcels_in_order=parcels, promised_ship_at=promised)


def row(parcel_id: int, disposition: str | None, bin_id: str | None, code: str | None, *,
        inducted: float = 0.0, final: float | None = None) -> dict[str, Any]:
    return {"parcel_id": parcel_id, "inducted_enc": parcel_id * 1000, "inducted_at": inducted,
            "length_mm": 300.0, "code": code, "order_id": None, "disposition": disposition,
            "bin": bin_id, "reason": "", "decided_at": None,
            "final_at": final if final is not None or disposition is None else inducted + 10,
            "order_created_at": None}


def parcels_of(rows: Sequence[dict[str, Any]]) -> list[JournalParcel]:
    return journal_parcels(rows, "test journal")


# --- against an emulated shift's truth -------------------------------------------------------

def test_every_figure_matches_the_emulators_truth(example_config: LineConfig,
                                                  tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=20, seed=26, scuffed_share=0.0, mix={
        Case.NOMINAL: 4.0, Case.UNKNOWN_ORDER: 1.0, Case.HELD_ORDER: 1.0, Case.NO_LABEL: 1.0,
        Case.STRAY_PUSH: 1.0, Case.PICKED_OFF: 1.0})
    summary, records, _ = run_sim(example_config, spec, tmp_path)
    cases = {r["case"] for r in records}
    assert {Case.UNKNOWN_ORDER, Case.HELD_ORDER, Case.NO_LABEL, Case.STRAY_PUSH,
            Case.PICKED_OFF} <= cases, "the scenario lacks a case the test relies on"
    assert all(r["parcel_id"] is not None and r["case"] != "phantom" for r in records)

    parcels = parcels_of(read_records(tmp_path / "journal.sqlite"))
    store = SqliteOrderStore(tmp_path / "orders.sqlite", create=False)

    async def read_book() -> dict[str, Order]:
        try:
            return await orders_for(parcels, StoreFinder(store))
        finally:
            await store.close()

    book = asyncio.run(read_book())
    plan = SortPlan(example_config.sort_plan)
    report = business_kpis(parcels, book,
                           allowed_bins=lambda o, length: plan.destinations(o, length)[1])
    got = report.total

    # Per parcel, from where each parcel really went (the emulator's truth).
    n = len(records)
    into_bins = [r for r in records if r["disposition"] in ("SORTED", "DEST_FULL")
                 and r["actual_bin"] not in ("END", UNKNOWN_BIN, None)]
    assert got.parcels == n == summary["parcels"]
    assert got.read_rate == sum(1 for r in records if r["read_code"]) / n
    assert got.sort_rate == len(into_bins) / n == summary["sort_rate"]
    # Mis-sorts: in a bin they should not be in. (The truth's own count also holds parcels
    # lifted off the belt, REMOVED, which is no bin of the line.)
    bins = {b.id for b in example_config.bins}
    assert got.missorts == sum(1 for r in records
                               if r["missort"] and r["actual_bin"] in bins) > 0
    # Order-information errors: a code read that the truth has no order for (unknown orders,
    # and a stray-pushed parcel the scenario gave none).
    assert got.order_information_errors == sum(
        1 for r in records if r["read_code"] and r["order_id"] is None) > 0

    # Per order: the orders the journal saw a code of, each with all its parcels in the truth.
    by_order: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["order_id"]:
            by_order.setdefault(r["order_id"], []).append(dict(r))
    seen = {r["order_id"] for r in records if r["read_code"] and r["order_id"]}
    to_ship = {o for o in seen if all(r["case"] != Case.HELD_ORDER for r in by_order[o])}

    def in_bin(r: dict[str, Any]) -> bool:
        return r["disposition"] in ("SORTED", "DEST_FULL") and r["actual_bin"] in bins

    def right(r: dict[str, Any]) -> bool:
        return in_bin(r) and r["actual_bin"] in [r["expected_bin"], *r["alternate_bins"]]

    filled = {o for o in to_ship if all(in_bin(r) for r in by_order[o])}
    perfect = {o for o in to_ship if all(right(r) for r in by_order[o])}
    assert any(len(by_order[o]) > 1 for o in filled), "no multi-parcel order filled"
    assert got.orders == len(to_ship)
    assert got.orders_not_to_ship == len(seen - to_ship) > 0
    assert got.orders_filled == len(filled)
    assert got.perfect_orders == len(perfect) < len(to_ship)
    assert got.fill_rate == len(filled) / len(to_ship)
    cycle = [max(r["final_at"] for r in by_order[o]) - by_order[o][0]["order_created_at"]
             for o in filled]
    assert got.cycle_time_median_min == pytest.approx(statistics.median(cycle) / 60)
    assert got.cycle_time_p95_min == pytest.approx(percentile(cycle, 95) / 60)
    assert {o.order_id for o in report.orders if o.perfect} == perfect


# --- hand-built journals -----------------------------------------------------------------------

BOOK = [
    order("O-ONTIME", "A1", parcels=2, created=EPOCH - 7200, promised=EPOCH + 600),
    order("O-ONTIME", "A2", parcels=2, created=EPOCH - 7200, promised=EPOCH + 600),
    order("O-MISSING", "B1", parcels=2, promised=EPOCH + 600),
    order("O-MISSING", "B2", parcels=2, promised=EPOCH + 600),
    order("O-LATE", "C1", created=EPOCH - 600, promised=EPOCH + 100),
    order("O-WRONG", "D1"),
    order("O-HELD", "E1", status=OrderStatus.HELD),
    order("O-BAD", "F1", carrier=" "),
    order("O-NOPROMISE", "G1", created=EPOCH - 60),
]
JOURNAL = [
    row(1, "SORTED", "B1", "A1", inducted=100, final=110),
    row(2, "DEST_FULL", "B2", "A2", inducted=200, final=230),  # its primary full: alternate
    row(3, "SORTED", "B1", "B1", inducted=300),  # B2 of the order never came
    row(4, "SORTED", "B3", "C1", inducted=400, final=420),  # after its promised time
    row(5, "SORTED", "B7", "D1", inducted=500),  # a bin its plan does not allow
    row(6, "ORDER_HELD", "END", "E1", inducted=600),
    row(7, "NO_ORDER", "END", "Z9", inducted=700),
    row(8, "SORTED", "B4", "F1", inducted=800),
    row(9, "NO_READ", "END", None, inducted=900),
    row(10, "SORTED", "B5", "G1", inducted=1000, final=1020),
]
ALLOWED = {"A1": {"B1", "B2"}, "A2": {"B1", "B2"}, "B1": {"B1"}, "B2": {"B1"}, "C1": {"B3"},
           "D1": {"B6"}, "E1": set(), "F1": {"B4"}, "G1": {"B5"}}


def hand_report(**kwargs: Any) -> Any:
    return business_kpis(parcels_of(JOURNAL), {o.code: o for o in BOOK}, clock_start=EPOCH,
                         allowed_bins=lambda o, _length: ALLOWED[o.code], **kwargs)


def test_orders_complete_late_missing_and_wrong() -> None:
    report = hand_report()
    by_id = {o.order_id: o for o in report.orders}
    ontime = by_id["O-ONTIME"]
    assert ontime.complete
    assert ontime.on_time
    assert ontime.perfect
    assert ontime.last_sorted_at == EPOCH + 230
    assert ontime.cycle_time_s == 7200 + 230
    missing = by_id["O-MISSING"]
    assert (missing.seen, missing.sorted, missing.parcels) == (1, 1, 2)
    assert not missing.complete
    assert missing.on_time is False
    assert not missing.perfect
    assert missing.cycle_time_s is None
    assert "1 of 2 parcels never seen" in missing.problems
    late = by_id["O-LATE"]
    assert late.complete
    assert late.on_time is False
    assert not late.perfect
    assert late.problems == ("late for its promised-ship time",)
    wrong = by_id["O-WRONG"]
    assert wrong.complete
    assert not wrong.perfect
    assert "missorted" in wrong.problems
    assert not by_id["O-HELD"].to_ship
    assert not by_id["O-HELD"].perfect
    assert by_id["O-BAD"].problems == ("carrier is empty",)
    assert by_id["O-NOPROMISE"].on_time is None
    assert by_id["O-NOPROMISE"].perfect


def test_shift_figures_by_hand() -> None:
    s = hand_report().total
    assert s.parcels == 10
    assert s.read == 9
    assert s.in_bin == 7  # 1, 2, 3, 4, 5, 8, 10
    assert s.sort_rate == 0.7
    assert s.missorts == 1  # parcel 5
    assert s.ship_accuracy == pytest.approx(6 / 7)
    assert s.order_information_errors == 2  # Z9 has no order, F1's carrier is empty
    assert s.order_information_error_rate == 0.2
    # Orders to ship: ONTIME, MISSING, LATE, WRONG, BAD, NOPROMISE (HELD is not to ship).
    assert (s.orders, s.orders_not_to_ship) == (6, 1)
    assert s.orders_filled == 5  # all but MISSING
    assert s.perfect_orders == 2  # ONTIME, NOPROMISE
    assert s.perfect_order_rate == pytest.approx(2 / 6)
    assert (s.orders_with_promise, s.orders_on_time) == (3, 1)
    # APQC multiplies the component rates, each over its own population: it is not SCOR's.
    apqc = (5 / 6) * (1 / 3) * (6 / 7) * (1 - 0.2)
    assert s.apqc_perfect_order_index == pytest.approx(apqc)
    assert s.apqc_perfect_order_index != pytest.approx(s.perfect_order_rate)
    # Cycle times of the filled orders: ONTIME 7200 + 230 s, LATE 600 + 420, WRONG 3600 + 510,
    # BAD 3600 + 810, NOPROMISE 60 + 1020.
    assert sorted(s.cycle_times_s) == [1020, 1080, 4110, 4410, 7430]
    assert s.cycle_time_median_min == pytest.approx(4110 / 60)
    assert s.cycle_time_p95_min == pytest.approx(7430 / 60)


def test_shifts_split_by_induction_and_orders_by_their_last_parcel() -> None:
    # From the first induction (100 s): 100-599 s, parcels 1-5; 600-1099 s, parcels 6-10.
    report = hand_report(shift_hours=500 / 3600)
    assert [s.parcels for s in report.shifts] == [5, 5]
    assert [s.orders for s in report.shifts] == [4, 2]  # HELD, in the second, is not to ship
    assert [s.orders_not_to_ship for s in report.shifts] == [0, 1]
    assert sum(s.perfect_orders for s in report.shifts) == report.total.perfect_orders


def test_without_a_plan_the_controllers_bins_are_taken_as_allowed() -> None:
    report = business_kpis(parcels_of(JOURNAL), {o.code: o for o in BOOK}, clock_start=EPOCH)
    assert report.total.missorts == 0
    assert {o.order_id for o in report.orders if o.perfect} == {"O-ONTIME", "O-NOPROMISE",
                                                                 "O-WRONG"}


def test_a_code_sent_round_again_counts_once_by_its_last_pass() -> None:
    journal = [row(1, "LATE", "END", "A1", inducted=0), row(2, "SORTED", "B1", "A1", inducted=50),
               row(3, "SORTED", "B1", "A2", inducted=60)]
    report = business_kpis(parcels_of(journal), {o.code: o for o in BOOK[:2]},
                           clock_start=EPOCH)
    (ontime,) = report.orders
    assert (ontime.seen, ontime.sorted, ontime.complete) == (2, 2, True)
    assert report.total.fill_rate == 1.0


def test_percentile_is_nearest_rank() -> None:
    assert percentile(range(1, 21), 95) == 19
    assert percentile(range(1, 101), 95) == 95
    assert percentile([7.0], 95) == 7.0


@pytest.mark.parametrize(("change", "message"), [
    ({"inducted_at": "soon"}, "test journal: parcel 1: inducted_at: 'soon' is not a finite"),
    ({"disposition": "SHIPPED"}, "parcel 1: disposition 'SHIPPED': not a known one"),
    ({"final_at": None}, "parcel 1: final_at: missing for a finished parcel"),
    ({"parcel_id": "x"}, "a row with parcel_id 'x': not an integer"),
    ({"code": 42}, "parcel 1: code: 42 is not text"),
])
def test_a_bad_journal_row_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(JournalDataError, match=re.escape(message)):
        journal_parcels([{**row(1, "SORTED", "B1", "A1"), **change}], "test journal")


def test_siblings_of_an_order_are_read_by_its_id() -> None:
    parcels = parcels_of([row(1, "SORTED", "B1", "A1")])
    found = asyncio.run(orders_for(parcels, OrdersByCode(BOOK)))
    assert set(found) == {"A1", "A2"}


# --- parcel-sorter report -------------------------------------------------------------------

def report(argv: list[str]) -> int:
    """``parcel-sorter report ARGV``, by the parser the CLI adds it with."""
    parser = argparse.ArgumentParser(prog="parcel-sorter")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    status: int = args.tool_handler(args)
    return status


def write_journal(path: Path, rows: Sequence[dict[str, Any]], *,
                  audit_offset: float | None = None) -> Path:
    db = sqlite3.connect(path)
    try:
        db.executescript(SCHEMA)
        with db:
            db.executemany(
                f"INSERT INTO parcels ({', '.join(rows[0])}) VALUES "
                f"({', '.join('?' * len(rows[0]))})", [tuple(r.values()) for r in rows])
            if audit_offset is not None:
                from datetime import UTC, datetime

                wall = datetime.fromtimestamp(audit_offset + 5.0, UTC).isoformat()
                db.execute("INSERT INTO audit VALUES (5.0, ?, 'tech', 'pause', '{}', 'ok', "
                           "'null')", (wall,))
    finally:
        db.close()
    return path


@pytest.fixture
def shift_files(tmp_path: Path) -> tuple[Path, Path]:
    journal = write_journal(tmp_path / "journal.sqlite", JOURNAL, audit_offset=EPOCH)
    orders = tmp_path / "orders.sqlite"
    SqliteOrderStore(orders).add(BOOK)
    return journal, orders


def test_the_clock_start_is_read_from_the_audit_trail(shift_files: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    journal, _ = shift_files
    assert journal_clock_start(journal) == pytest.approx(EPOCH)
    assert journal_clock_start(write_journal(tmp_path / "bare.sqlite", JOURNAL)) is None


def test_report_prints_the_figures_and_json(shift_files: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    journal, orders = shift_files
    assert report(["--journal", str(journal), "--orders", str(orders)]) == 0
    out = capsys.readouterr().out
    assert "read rate" in out
    assert "90.0 %" in out
    assert "dispositions: DEST_FULL 1, NO_ORDER 1, NO_READ 1, ORDER_HELD 1, SORTED 6" in out
    assert report(["--journal", str(journal), "--orders", str(orders), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["clock_start"] == pytest.approx(EPOCH)
    assert data["total"]["parcels"] == 10
    assert data["total"]["orders_filled"] == 5
    expected = hand_report().total.figures()
    for key in ("orders_with_promise", "orders_on_time", "missorts", "perfect_orders"):
        # Without --config the controller's bins count as allowed: O-WRONG is no mis-sort.
        want = {"missorts": 0, "perfect_orders": 3}.get(key, expected[key])
        assert data["total"][key] == want, key


@pytest.mark.parametrize(("args", "message"), [
    (["--journal", "{tmp}/none.sqlite", "--orders", "{orders}"], "--journal {tmp}/none.sqlite: "
                                                                  "no such file"),
    (["--journal", "{journal}", "--orders", "{tmp}/none.sqlite"], "--orders {tmp}/none.sqlite: "
                                                                  "no such file"),
    (["--journal", "{orders}", "--orders", "{orders}"], "--journal {orders}: not a parcel "
                                                        "journal"),
    (["--journal", "{tmp}/text.txt", "--orders", "{orders}"], "--journal {tmp}/text.txt: not a "
                                                              "parcel journal"),
    (["--journal", "{journal}", "--orders", "{tmp}/text.txt"], "--orders {tmp}/text.txt: "),
    (["--journal", "{journal}"], "--orders PATH or --config LINE.toml is needed"),
    (["--journal", "{journal}", "--orders", "{orders}", "--shift-hours", "0"],
     "--shift-hours 0.0: must be more than 0"),
    (["--journal", "{journal}", "--orders", "{orders}", "--clock-start", "nan"],
     "--clock-start nan: not an epoch second"),
    # A bad config is reported as every command reports one: its file, then each problem.
    (["--journal", "{journal}", "--config", "{tmp}/text.txt"],
     "invalid line config {tmp}/text.txt:\n  (syntax): Expected '=' after a key"),
])
def test_report_refuses_bad_inputs_in_one_line(
        shift_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], message: str) -> None:
    journal, orders = shift_files
    (tmp_path / "text.txt").write_text("not a database at all, just some words\n" * 100)
    fill = {"tmp": str(tmp_path), "journal": str(journal), "orders": str(orders)}
    assert report([*(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parcel-sorter report: " + message.format(**fill)), err
    assert err.count("\n") == 1 + message.count("\n"), err


def test_report_with_a_config_uses_its_plan_and_store(example_config: LineConfig,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    journal = write_journal(tmp_path / "journal.sqlite", JOURNAL)
    orders = tmp_path / "orders.sqlite"
    SqliteOrderStore(orders).add(BOOK)
    assert report(["--journal", str(journal), "--orders", str(orders), "--config",
                 str(EXAMPLE_CONFIG), "--json", "--clock-start", str(EPOCH)]) == 0
    data = json.loads(capsys.readouterr().out)
    plan = SortPlan(example_config.sort_plan)
    wrong = sum(1 for r in JOURNAL if r["disposition"] in ("SORTED", "DEST_FULL")
                and r["code"] in {o.code for o in BOOK}
                and r["bin"] not in plan.destinations(
                    next(o for o in BOOK if o.code == r["code"]))[1])
    assert data["total"]["missorts"] == wrong > 0


def test_add_report_command_declares_the_options() -> None:
    parser = argparse.ArgumentParser()
    add_report_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "--journal", "j", "--orders", "o", "--html", "r.html",
                              "--json", "--clock-start", "5", "--shift-hours", "8"])
    assert (args.journal, args.orders, args.html) == (Path("j"), Path("o"), Path("r.html"))
    assert (args.json, args.clock_start, args.shift_hours) == (True, 5.0, 8.0)
