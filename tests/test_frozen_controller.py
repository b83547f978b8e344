"""A controller frozen for 0.45 s, several times, over the emulated board on a real pty: the
link comes back by itself and the parcels inducted after the last freeze sort (issue 10)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_config
from sim_hardware.scenario import ScenarioSpec, generate
from tests.bench_processes import start_emulate, start_run, stop, wait_for

pytestmark = pytest.mark.wallclock

PARCELS = 30
SEED = 5
FREEZE_S = 0.45
FREEZES_AT_S = (1.0, 2.2, 3.4)
"""Seconds after the belt started; every freeze is longer than the board's resend budget."""
SETTLE_S = 1.0
"""Margin after the last freeze: the resync bound of docs/serial-protocol.md, §6, and more."""


def _freeze(process: subprocess.Popen[str], seconds: float) -> None:
    process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        process.send_signal(signal.SIGCONT)


def _frozen_shift(tmp_path: Path) -> dict[str, Any]:
    emulator, report, config = start_emulate(tmp_path, parcels=PARCELS, seed=SEED)
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^serial: (/dev/pts/\d+)$", seen)
        wait_for(emulator.stdout, r"^config: ", seen)
        controller = start_run(config)
        wait_for(emulator.stdout, r"^controller connected", seen)
        started = time.monotonic()
        for at in FREEZES_AT_S:
            time.sleep(max(0.0, started + at - time.monotonic()))
            _freeze(controller, FREEZE_S)
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
        controller.send_signal(signal.SIGINT)
        output, _ = controller.communicate(timeout=30)
        assert controller.returncode == 0, output
    finally:
        stop(emulator, controller)
    data: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    data["config"] = str(config)
    return data


def test_a_controller_frozen_again_and_again_gets_its_link_back(tmp_path: Path) -> None:
    report = _frozen_shift(tmp_path)
    board = report["summary"]["board"]
    assert board["sessions"] == 1  # the same controller all along
    assert board["hellos"] >= 2, board  # it said Hello again after a freeze
    config = load_config(Path(report["config"]))
    truth, _ = generate(ScenarioSpec(parcels=PARCELS, seed=SEED), config)
    after = FREEZES_AT_S[-1] + FREEZE_S + SETTLE_S
    late = {p.sim_id for p in truth if p.offset_mm / config.belt.speed_mm_s > after}
    assert len(late) >= 5
    outcomes = [p for p in report["parcels"] if p["sim_id"] in late]
    assert len(outcomes) == len(late)
    wrong = [p for p in outcomes
             if p["disposition"] != p["expected_disposition"] or p["missort"]]
    assert wrong == [], [(p["parcel_id"], p["disposition"], p["expected_disposition"],
                          p["actual_bin"], p["reason"]) for p in wrong]
