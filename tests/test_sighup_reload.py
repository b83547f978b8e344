"""SIGHUP to ``run``: the sort plan is read again, checked first; a bad one is refused."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from controller.config import load_config
from controller.journal import read_records
from tests.bench_processes import start_emulate, start_run, stop, wait_for
from tests.test_graceful_stop import wait_finals

pytestmark = pytest.mark.wallclock

UNKNOWN_BIN = '[sort_plan]\n[[sort_plan.rules]]\nname = "nowhere"\nbins = ["B9"]\n'
PLAN_FILE = '[sort_plan]\nfile = "wave2.toml"\n'
WAVE_2 = '[destinations.all]\nbins = ["B5", "B6"]\n[[rules]]\nname = "all"\ndestination = "all"\n'


def _with_plan(config: Path, plan: str) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text[:text.index("[sort_plan]")] + plan, encoding="utf-8")


def test_sighup_swaps_the_plan_mid_shift_and_refuses_a_bad_one(tmp_path: Path) -> None:
    emulator, report, config_path = start_emulate(tmp_path, parcels=36, seed=12,
                                                  extra=("--drain", "1"))
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        config = load_config(config_path)
        controller = start_run(config_path)
        assert controller.stdout is not None
        wait_finals(config.journal.path, 5, within_s=90)
        _with_plan(config_path, UNKNOWN_BIN)
        controller.send_signal(signal.SIGHUP)
        wait_for(controller.stdout, r".*reload: plan refused: .*unknown bin 'B9'.*"
                                    r"the running plan stays", seen)
        (tmp_path / "wave2.toml").write_text(WAVE_2, encoding="utf-8")
        _with_plan(config_path, PLAN_FILE)
        controller.send_signal(signal.SIGHUP)
        wait_for(controller.stdout, r".*reload: new sort plan, 1 rules", seen)
        done = sum(r["disposition"] is not None for r in read_records(config.journal.path))
        wait_finals(config.journal.path, done + 8, within_s=60)
        time.sleep(0.5)
        controller.send_signal(signal.SIGTERM)
        output, _ = controller.communicate(timeout=40)
        assert controller.returncode == 0, "".join(seen) + output
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
    finally:
        stop(emulator, controller)

    with sqlite3.connect(config.journal.path) as db:
        audit = db.execute("SELECT at, who, verb, status FROM audit ORDER BY rowid").fetchall()
    assert [row[1:] for row in audit] == [("SIGHUP", "reload-plan", "error"),
                                          ("SIGHUP", "reload-plan", "ok")]
    swapped_at = audit[1][0]
    rows = read_records(config.journal.path)
    before = [r for r in rows if r["decided_at"] is not None
              and r["decided_at"] < swapped_at and r["disposition"] == "SORTED"]
    after = [r for r in rows if r["decided_at"] is not None
             and r["decided_at"] > swapped_at and r["disposition"] == "SORTED"]
    assert before
    assert len(after) >= 5
    assert {r["bin"] for r in before} - {"B5", "B6"}, "the first plan was in force before"
    assert {r["bin"] for r in after} == {"B5", "B6"}  # wave 2 spreads over its two bins
    parcels = json.loads(report.read_text(encoding="utf-8"))["parcels"]
    tracked = {r["parcel_id"] for r in rows}
    mine = [p for p in parcels if p["parcel_id"] in tracked]
    assert len(mine) == len(rows)
    # no parcel in another bin than the one decided for it, before, across and after the swap
    assert all(p["actual_bin"] == p["controller_bin"] for p in mine), mine
