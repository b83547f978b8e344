"""One controller per line: a second ``run`` on the same journal is refused, the first sorts on."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from controller.config import load_config
from controller.journal import read_records
from tests.bench_processes import ENV, cli, start_emulate, start_run, stop, wait_for
from tests.conftest import ROOT
from tests.test_run_emulate import PARCELS, _assert_every_parcel_in_its_bin

pytestmark = pytest.mark.wallclock


def test_a_second_run_on_the_same_line_is_refused(tmp_path: Path) -> None:
    emulator, report, config = start_emulate(tmp_path, parcels=PARCELS, seed=5)
    first: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        first = start_run(config)
        assert first.stdout is not None
        first_out: list[str] = []
        wait_for(first.stdout, r"^parcel-sorter: running line", first_out)  # the lock is held
        # Niced: on 2 cores the second's start-up (imports: a second of CPU) would otherwise
        # starve the first of the CPU it sorts with in real time, which is not what is tested.
        second = subprocess.run(["nice", "-n", "19", *cli("run", "--config", str(config))],
                                cwd=ROOT, env=ENV,
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
        stop(emulator, first)
    _assert_every_parcel_in_its_bin(json.loads(report.read_text(encoding="utf-8")))
    rows = read_records(load_config(config).journal.path)
    assert len(rows) == PARCELS  # the second closed nothing as LOST, took no parcel id
    assert [r["disposition"] for r in rows] == ["SORTED"] * PARCELS
