"""The test bench's interface: ``parcel-sorter emulate`` in one process as the line's hardware,
``parcel-sorter run`` in another on the config it wrote, each as a user starts them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.app.shift_report import emulated_summary, parcel_records
from controller.app.simulate import ShiftResult
from controller.config import LineConfig
from controller.report import format_summary, write_report
from controller.sorter import SorterStats
from sim_hardware.broker import Mosquitto
from sim_hardware.scenario import ScenarioSpec, generate
from tests.bench_processes import cli, start_emulate, start_run, stop, wait_for
from tests.conftest import ROOT

pytestmark = pytest.mark.wallclock

PARCELS = 12


def _shift(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], list[str]]:
    emulator, report, config = start_emulate(tmp_path, parcels=PARCELS, seed=5, extra=extra)
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        port = wait_for(emulator.stdout, r"^serial: (/dev/pts/\d+)$", seen).group(1)
        assert Path(port).exists()
        wait_for(emulator.stdout, r"^config: ", seen)
        controller = start_run(config)
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
        controller.send_signal(signal.SIGINT)
        output, _ = controller.communicate(timeout=30)
        assert controller.returncode == 0, output
        assert "stopped; parcels finished" in output
    finally:
        stop(emulator, controller)
    return json.loads(report.read_text(encoding="utf-8")), seen


def _assert_every_parcel_in_its_bin(report: dict[str, Any]) -> None:
    parcels = report["parcels"]
    assert len(parcels) == PARCELS
    assert [p for p in parcels if p["disposition"] != "SORTED"] == []
    assert all(p["actual_bin"] == p["expected_bin"] for p in parcels)
    assert report["summary"]["wrong_parcel_fires"] == 0


def test_run_sorts_the_shift_that_emulate_serves_over_serial(tmp_path: Path) -> None:
    report, _ = _shift(tmp_path)
    _assert_every_parcel_in_its_bin(report)


def test_run_sorts_with_the_diverters_on_mqtt(tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    """Through a broker with the deploy rules: no anonymous client, each node its own account."""
    request.getfixturevalue("mosquitto")  # skips where mosquitto is not installed
    with Mosquitto(deploy=True) as broker:
        secrets = tmp_path / "mqtt.secrets"
        broker.write_secrets(secrets)
        report, _ = _shift(tmp_path, "--mqtt", f"{broker.host}:{broker.port}",
                           "--mqtt-secrets", str(secrets))
    _assert_every_parcel_in_its_bin(report)
    written = (tmp_path / "line.toml").read_text()
    assert 'username = "controller"' in written


def test_run_refuses_a_config_without_line_io(tmp_path: Path) -> None:
    done = subprocess.run(cli("run", "--config", str(ROOT / "deploy" / "line.example.toml")),
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2
    assert "[line_io]" in done.stderr


def test_emulate_report_with_a_parcel_still_open_at_the_end(example_config: LineConfig,
                                                             tmp_path: Path) -> None:
    """A controller that has not closed a parcel when the drain is over: the report names it."""
    parcels, _ = generate(ScenarioSpec(parcels=3, seed=4), example_config)
    rows = []
    for i, parcel in enumerate(parcels):
        parcel.induct_enc = 1000 * (i + 1)
        parcel.actual = parcel.expected_bin if i < 2 else None
        done = i < 2
        rows.append({"parcel_id": i + 1, "inducted_enc": parcel.induct_enc,
                     "inducted_at": float(i), "length_mm": parcel.length_mm,
                     "code": parcel.code if done else None, "order_id": None,
                     "disposition": "SORTED" if done else None,
                     "bin": parcel.expected_bin if done else None,
                     "reason": "confirmed" if done else None, "decided_at": None,
                     "final_at": 10.0 + i if done else None, "order_created_at": None})
    result = ShiftResult(config=example_config, truth=parcels, journal=rows,
                         stats=SorterStats(), line_counters={"frames": 7}, bins={},
                         line_time_s=12.0, extra={"board": {"unplugs": 0}})
    records = parcel_records(result)
    summary = emulated_summary(result, records)
    assert summary["dispositions"] == {"SORTED": 2, None: 1}
    assert [r["parcel_id"] for r in records] == [1, 2, 3]
    assert records[2]["disposition"] is None
    assert summary["outcome_differs_from_truth"] == 1
    assert summary["board"] == {"unplugs": 0}
    assert "controller" not in summary
    assert "(still open)" in format_summary(summary)
    write_report(tmp_path / "r.json", summary, records)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"]["dispositions"] == {"SORTED": 2, "null": 1}
