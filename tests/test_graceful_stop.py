"""SIGTERM mid-shift: induction stops, the parcels on the belt are finished, then ``run`` exits."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controller.app.run import stop_timeout_s
from controller.config import load_config
from controller.journal import read_records
from tests.bench_processes import start_emulate, start_run, stop, wait_for

pytestmark = pytest.mark.wallclock

PARCELS = 40


def wait_finals(journal: str, at_least: int, within_s: float) -> list[dict[str, Any]]:
    """The journal's rows once ``at_least`` parcels have a final disposition."""
    until = time.monotonic() + within_s
    while time.monotonic() < until:
        rows = read_records(journal)
        if sum(r["disposition"] is not None for r in rows) >= at_least:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} parcels finished within {within_s} s")


def test_sigterm_finishes_the_parcels_on_the_belt(tmp_path: Path) -> None:
    emulator, report, config_path = start_emulate(tmp_path, parcels=PARCELS, seed=8,
                                                  extra=("--drain", "1"))
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        config = load_config(config_path)
        controller = start_run(config_path)
        wait_finals(config.journal.path, 6, within_s=90)
        open_before = [r for r in read_records(config.journal.path) if r["disposition"] is None]
        assert open_before, "SIGTERM should come while parcels are on the belt"
        stopped_at = time.monotonic()
        controller.send_signal(signal.SIGTERM)
        output, _ = controller.communicate(timeout=40)
        took = time.monotonic() - stopped_at
        assert controller.returncode == 0, output
        assert "stopping: induction stopped, finishing" in output
        assert "stopped: every parcel on the belt finished" in output
        assert took < stop_timeout_s(config) + 5
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
    finally:
        stop(emulator, controller)

    rows = read_records(config.journal.path)
    assert [r for r in rows if r["disposition"] is None] == []  # none left open
    assert [r for r in rows if r["disposition"] == "LOST"] == []  # all finished, none given up
    tracked = {r["parcel_id"] for r in rows}
    assert {r["parcel_id"] for r in open_before} <= tracked
    parcels = json.loads(report.read_text(encoding="utf-8"))["parcels"]
    mine = [p for p in parcels if p["parcel_id"] in tracked]
    assert len(mine) == len(rows)
    assert 6 <= len(mine) < PARCELS  # the rest came after the stop: not tracked
    for p in mine:  # each final disposition matches where the emulator found the parcel
        assert p["disposition"] == p["expected_disposition"], p
        assert p["actual_bin"] == p["controller_bin"], p


def test_a_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    """The parcels on the belt are left open, closed LOST at the next start."""
    emulator, _, config_path = start_emulate(tmp_path, parcels=PARCELS, seed=9,
                                             extra=("--drain", "1"))
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        config = load_config(config_path)
        controller = start_run(config_path)
        assert controller.stdout is not None
        wait_finals(config.journal.path, 4, within_s=90)
        controller.send_signal(signal.SIGTERM)
        out: list[str] = []
        wait_for(controller.stdout, r"^parcel-sorter: stopping: induction stopped", out)
        stopped_at = time.monotonic()
        controller.send_signal(signal.SIGTERM)
        output, _ = controller.communicate(timeout=40)
        took = time.monotonic() - stopped_at
        assert controller.returncode == 0, "".join(out) + output
        assert took < 1.5  # not the stop timeout
        emulator.send_signal(signal.SIGINT)
    finally:
        stop(emulator, controller)
    rows = read_records(config.journal.path)
    assert [r for r in rows if r["disposition"] is None]  # left open: LOST at the next start
