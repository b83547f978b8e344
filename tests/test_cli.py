"""The command line: a shift with its JSON report, scenarios as data, and the real clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.app.cli import main
from controller.config import load_config
from controller.errors import ConfigError
from sim_hardware.scenario import load_scenario

from .conftest import EXAMPLE_CONFIG, ROOT

SCENARIO = ROOT / "deploy" / "scenario.example.toml"


def test_sim_prints_summary_and_writes_report(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "out" / "report.json"
    assert main(["sim", "--parcels", "30", "--seed", "3", "--report", str(report)]) == 0
    out = capsys.readouterr()
    assert "30/30 parcels finished" in out.err
    for line in ("parcels", "read rate", "sort rate", "mis-sorts (truth)", "lost",
                 "throughput"):
        assert line in out.out
    data = json.loads(report.read_text())
    assert data["summary"]["parcels"] == 30
    assert sum(data["summary"]["dispositions"].values()) == 30
    assert len(data["parcels"]) == 30
    for record in data["parcels"]:
        assert {"parcel_id", "code", "disposition", "expected_bin", "actual_bin"} <= set(record)
        assert record["disposition"] != "UNTRACKED"


def test_example_scenario_runs_every_case(tmp_path: Path) -> None:
    spec = load_scenario(SCENARIO).model_copy(update={"parcels": 220, "seed": 5})
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.read_text().replace("parcels = 500", "parcels = 220")
                        .replace("seed = 42", "seed = 5"))
    report = tmp_path / "r.json"
    assert main(["sim", "--scenario", str(scenario), "--report", str(report)]) == 0
    parcels = json.loads(report.read_text())["parcels"]
    assert len(parcels) == spec.parcels
    wrong = [p for p in parcels if p["disposition"] != p["expected_disposition"]
             and not (p["expected_disposition"] == "SORTED" and p["disposition"] == "DEST_FULL")]
    assert wrong == []
    assert len({p["case"] for p in parcels}) >= 8


def test_bad_scenario_is_refused_with_its_field(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("spec = 1\nparcels = -5\n[mix]\nnominal = 1\nteleported = 2\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(bad)
    paths = [path for path, _ in info.value.problems]
    assert "parcels" in paths
    assert "mix.teleported.[key]" in paths
    assert main(["sim", "--scenario", str(bad)]) == 2
    assert "parcels: Input should be greater than or equal to 0" in capsys.readouterr().err


@pytest.mark.wallclock
def test_realtime_shift_on_a_short_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The real clock drives the same controller; a short line keeps this to ~3 seconds."""
    text = EXAMPLE_CONFIG.read_text()
    short = tmp_path / "short.toml"
    # Keep D1 and D2 (moved close to the camera) and end the line right after them.
    head, _, _ = text.partition("[[diverters]]\nid = \"D3\"")
    head = head.replace("position_mm = 3000.0", "position_mm = 2500.0") \
        .replace("position_mm = 3800.0", "position_mm = 2900.0")
    tail = text[text.index("[end_of_line]"):].replace("position_mm = 9600.0",
                                                      "position_mm = 3300.0")
    rules = '[sort_plan]\noverflow = "B2"\n[[sort_plan.rules]]\nname = "all"\nbins = ["B1"]\n'
    tail = tail[:tail.index("[sort_plan]")] + rules
    bins = '[[bins]]\nid = "B1"\ncapacity = 50\n[[bins]]\nid = "B2"\ncapacity = 50\n'
    short.write_text(head + bins + tail)
    assert load_config(short).end_of_line.position_mm == 3300.0
    report = tmp_path / "rt.json"
    assert main(["sim", "--realtime", "--config", str(short), "--parcels", "4", "--seed", "2",
                 "--mix", "nominal", "--report", str(report)]) == 0
    summary = json.loads(report.read_text())["summary"]
    assert summary["dispositions"] == {"SORTED": 4}
    assert summary["missorts"] == 0
    assert 1.0 < summary["line_time_s"] < 10.0  # it really took belt time
    assert summary["wall_time_s"] >= summary["line_time_s"]


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """``parcel-sorter check-config LINE | head``: the reader is gone, so no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader closed before a byte was written: EPIPE for sure
    try:
        done = subprocess.run([sys.executable, "-m", "controller", "check-config", "--for",
                               "sim", str(EXAMPLE_CONFIG)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_output_into_a_reader_that_stops_after_one_line(tmp_path: Path) -> None:
    """A reader that takes one line of many and leaves: the CLI ends without a traceback."""
    images = [str(tmp_path / f"missing-{i:04d}.png") for i in range(3000)]  # > a pipe's 64 KiB
    cli = subprocess.Popen([sys.executable, "-m", "controller", "decode", *images],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert cli.stdout is not None
    assert cli.stderr is not None
    first = cli.stdout.readline()
    cli.stdout.close()
    err = cli.stderr.read()
    cli.stderr.close()
    assert cli.wait(timeout=60) == 141, err
    assert first.startswith(images[0] + ": error: ")
    assert err == ""


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_unusable_state_paths_are_one_line_each_never_a_traceback(tmp_path: Path,
                                                                  command: str) -> None:
    """A journal path that is a directory, an order-store folder that cannot be created."""
    (tmp_path / "journal.sqlite").mkdir()
    (tmp_path / "afile").write_text("in the way\n")
    text = EXAMPLE_CONFIG.read_text()
    text = text.replace("/var/lib/parcel-sorter/journal.sqlite", str(tmp_path / "journal.sqlite"))
    text = text.replace("/var/lib/parcel-sorter/orders.sqlite",
                        str(tmp_path / "afile" / "db" / "orders.sqlite"))
    assert "/var/lib" not in text
    text = text.replace('decoder = "located-zxing"',  # a real line's camera and I/O board
                        'decoder = "located-zxing"\nsource = "mjpeg+http://127.0.0.1:9/c"')
    text += f'\n[line_io]\nsensors = "serial"\n[line_io.serial]\nport = "{tmp_path / "tty"}"\n'
    path = tmp_path / "line.toml"
    path.write_text(text)
    args = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    done = subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"parcel-sorter: invalid line config {path}:"
    assert sorted(lines[1:]) == sorted([
        f"  journal.path: {tmp_path / 'journal.sqlite'} is a directory, not a database file",
        f"  order_store.path: no such order database: {tmp_path / 'afile' / 'db'}"
        "/orders.sqlite (never created empty: import the orders into it first)",
    ])
    assert not (tmp_path / "journal.sqlite.lock").exists()  # refused before anything is made


def test_run_stopped_by_a_storage_fault_exits_3_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from controller.app import run
    from controller.errors import JournalError

    async def faulted(*args: object, **kwargs: object) -> None:
        raise JournalError("journal j.sqlite: writing parcel 7 failed: database or disk is full")

    monkeypatch.setattr(run, "run_line", faulted)
    path = tmp_path / "line.toml"
    text = EXAMPLE_CONFIG.read_text().replace("/var/lib/parcel-sorter", str(tmp_path))
    text = text.replace('decoder = "located-zxing"',  # a real line's camera and I/O board
                        'decoder = "located-zxing"\nsource = "mjpeg+http://127.0.0.1:9/c"')
    text += f'\n[line_io]\nsensors = "serial"\n[line_io.serial]\nport = "{tmp_path / "tty"}"\n'
    path.write_text(text)
    (tmp_path / "orders.sqlite").touch()  # the order book exists (run never creates it)
    assert main(["run", "--config", str(path)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("parcel-sorter: line stopped, storage fault: journal j.sqlite: writing "
                       "parcel 7 failed: database or disk is full")
    assert "Traceback" not in "\n".join(err)
    lock = tmp_path / "journal.sqlite.lock"
    assert lock.exists()
    main_again = main(["run", "--config", str(path)])  # the lock went with the first run
    assert main_again == 3
