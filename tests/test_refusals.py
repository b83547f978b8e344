"""What ``run`` and ``check-config`` refuse, one line naming the field, before anything opens."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomli_w

from controller.app.cli import main
from tests.bench_processes import cli, start_emulate, stop, wait_for
from tests.conftest import ROOT

EXAMPLE = ROOT / "deploy" / "line.example.toml"


def _line(tmp_path: Path, *, source: str | None = "mjpeg+http://127.0.0.1:9/cam1",
          line_io: bool = True, book: bool = True) -> Path:
    """The example line with its state in ``tmp_path``, a real camera and an I/O board."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    if source is not None:
        for camera in data["cameras"]:
            camera["source"] = source
    data["order_store"]["path"] = str(tmp_path / "orders.sqlite")
    data["journal"]["path"] = str(tmp_path / "journal.sqlite")
    data["archive"] = {**data.get("archive", {}), "path": str(tmp_path / "noread")}
    if line_io:
        data["line_io"] = {"sensors": "serial", "diverters": "serial",
                           "serial": {"port": str(tmp_path / "ttyNONE")}}
    if book:
        sqlite3.connect(tmp_path / "orders.sqlite").close()
    path = tmp_path / "line.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_an_emulator_camera_is_refused_outside_sim(tmp_path: Path, command: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _line(tmp_path, source="emulator")
    argv = ["run", "--config", str(path)] if command == "run" else ["check-config", str(path)]
    lines = _refused(capsys, argv)
    assert lines[0] == f"parcel-sorter: invalid line config {path}:"
    assert lines[1:] == ["  cameras[0].source: camera cam1 is the emulator's: only `sim` has "
                         "one; name the real camera's source"]
    assert not (tmp_path / "journal.sqlite").exists()


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_config_without_line_io_is_refused(tmp_path: Path, command: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = _line(tmp_path, line_io=False)
    argv = ["run", "--config", str(path)] if command == "run" else ["check-config", str(path)]
    lines = _refused(capsys, argv)
    assert len(lines) == 2
    assert lines[1].startswith("  line_io: [line_io] absent: `run` needs")


def test_check_config_for_sim_passes_the_emulated_example(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example line has emulator cameras and no [line_io]: fine for `sim`, not for `run`."""
    path = tmp_path / "line.toml"
    path.write_text(EXAMPLE.read_text().replace("/var/lib/parcel-sorter", str(tmp_path / "s")))
    assert main(["check-config", "--for", "sim", str(path)]) == 0
    assert "valid line 'line1' for sim" in capsys.readouterr().out
    lines = _refused(capsys, ["check-config", str(path)])
    fields = sorted(line.split(":")[0].strip() for line in lines[1:])
    assert fields == ["cameras[0].source", "line_io", "order_store.path"]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_missing_order_database_is_refused_and_never_created(
        tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _line(tmp_path, book=False)
    argv = ["run", "--config", str(path)] if command == "run" else ["check-config", str(path)]
    lines = _refused(capsys, argv)
    assert lines[1:] == [f"  order_store.path: no such order database: {tmp_path / 'orders.sqlite'}"
                         " (never created empty: import the orders into it first)"]
    assert not (tmp_path / "orders.sqlite").exists()


def test_the_store_opened_for_run_never_creates_a_database(tmp_path: Path) -> None:
    """Even past the check (deleted in between): the lookup fails, nothing is made."""
    import asyncio

    from controller.config import OrderStoreConfig
    from controller.errors import OrderStoreError
    from drivers.orders import open_order_store

    store = open_order_store(OrderStoreConfig(path=str(tmp_path / "gone.sqlite")), create=False)

    async def look() -> None:
        try:
            with pytest.raises(OrderStoreError, match="no such order database"):
                await store.lookup("X")
        finally:
            await store.close()

    asyncio.run(look())
    assert not (tmp_path / "gone.sqlite").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
@pytest.mark.parametrize("which", ["", "-wal"])
def test_a_journal_that_is_not_writable_is_refused(tmp_path: Path, which: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The journal file itself, or its side file (a journal half there), read-only."""
    path = _line(tmp_path)
    journal = tmp_path / "journal.sqlite"
    sqlite3.connect(journal).close()
    locked = Path(f"{journal}{which}")
    locked.touch()
    locked.chmod(0o444)
    try:
        lines = _refused(capsys, ["run", "--config", str(path)])
    finally:
        locked.chmod(0o644)
    reason = (f"{journal} is not writable" if not which
              else f"{locked} (the database's side file) is not writable")
    assert lines[1:] == [f"  journal.path: {reason}"]


@pytest.mark.wallclock
def test_a_camera_of_another_resolution_is_refused_not_reconnected(tmp_path: Path) -> None:
    """The emulator's cameras stream 1920x1080; the config says 1280x720: exit 2, the field."""
    emulator, _, config = start_emulate(tmp_path, parcels=3, seed=3)
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        data = tomllib.loads(config.read_text(encoding="utf-8"))
        data["cameras"][0]["resolution"] = [1280, 720]
        config.write_text(tomli_w.dumps(data), encoding="utf-8")
        controller = subprocess.Popen(cli("run", "--config", str(config)), cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = controller.communicate(timeout=60)
        assert controller.returncode == 2, output
        assert "resolution" in output
        assert "Traceback" not in output
        emulator.send_signal(signal.SIGINT)
    finally:
        stop(emulator, controller)


def test_a_journal_under_a_file_is_refused(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A journal path that partly exists: its folder would have to be made inside a file."""
    path = _line(tmp_path)
    (tmp_path / "state").write_text("not a folder\n")
    text = path.read_text().replace(str(tmp_path / "journal.sqlite"),
                                    str(tmp_path / "state" / "db" / "journal.sqlite"))
    path.write_text(text)
    lines = _refused(capsys, ["run", "--config", str(path)])
    assert lines[1:] == [f"  journal.path: folder {tmp_path / 'state' / 'db'} cannot be created: "
                         f"{tmp_path / 'state'} is not a directory"]
    assert not (tmp_path / "state.lock").exists()


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_an_unknown_symbology_is_refused_naming_its_label_type(
        tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _line(tmp_path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["decision"]["label_types"][0]["symbologies"] = ["code128", "datamatrx"]
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    argv = ["run", "--config", str(path)] if command == "run" else ["check-config", str(path)]
    lines = _refused(capsys, argv)
    assert lines[0] == f"parcel-sorter: invalid line config {path}:"
    assert len(lines) == 2
    assert lines[1].startswith("  decision.label_types[0].symbologies: label type ")
    assert "unknown symbology 'datamatrx'" in lines[1]
