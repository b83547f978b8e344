"""One controller per line: a second ``run`` on the same journal is refused, the first sorts on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from controller.config import load_config
from controller.journal import read_records
from tests.conftest import ROOT
from tests.test_run_emulate import PARCELS, _assert_every_parcel_in_its_bin, _cli, _wait_for


def test_a_second_run_on_the_same_line_is_refused(tmp_path: Path) -> None:
    report, config = tmp_path / "report.json", tmp_path / "line.toml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    emulator = subprocess.Popen(
        _cli("emulate", "--parcels", str(PARCELS), "--seed", "5", "--report", str(report),
             "--write-config", str(config), "--wait-controller", "60"),
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    first: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        _wait_for(emulator.stdout, r"^config: ", seen)
        first = subprocess.Popen(_cli("run", "--config", str(config)), cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert first.stdout is not None
        first_out: list[str] = []
        _wait_for(first.stdout, r"^parcel-sorter: running line", first_out)  # the lock is held
        second = subprocess.run(_cli("run", "--config", str(config)), cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2, second.stderr
        lock = f"{load_config(config).journal.path}.lock"
        assert second.stderr.splitlines() == [
            f"parcel-sorter: journal lock {lock} is held by another controller "
            f"(pid {first.pid}): one controller per line"]
        assert second.stdout == ""
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=30)
        output = "".join(first_out) + output
        assert first.returncode == 0, output
        assert "stopped; parcels finished" in output
    finally:
        for process in (emulator, first):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if process is not None and process.stdout is not None:
                process.stdout.close()
    _assert_every_parcel_in_its_bin(json.loads(report.read_text(encoding="utf-8")))
    rows = read_records(load_config(config).journal.path)
    assert len(rows) == PARCELS  # the second closed nothing as LOST, took no parcel id
    assert [r["disposition"] for r in rows] == ["SORTED"] * PARCELS
