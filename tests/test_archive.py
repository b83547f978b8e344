"""The no-read archive: bounded, atomic, tolerant of foreign content, listed and exported."""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from controller.app.cli import main
from controller.archive import (
    ArchivedFrame,
    ArchivedParcel,
    ArchiveError,
    NoReadArchive,
    open_archive,
)
from controller.config import load_config

MB = 1024 * 1024


def _frame(seed: int, size: int = 64, camera_id: str = "cam1") -> ArchivedFrame:
    """A gray noise frame: it does not compress, so its PNG is about size*size bytes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return ArchivedFrame(camera_id=camera_id, enc=1000 + seed, image=image)


def _parcel(pid: int, frames: int = 2, size: int = 64,
            disposition: str = "NO_READ") -> ArchivedParcel:
    codes = ["001234567895", "009876543217"] if disposition == "MULTI_READ" else []
    return ArchivedParcel(parcel_id=pid, disposition=disposition,
                          reason="no acceptable code read", codes=codes, at=pid * 0.5,
                          wall_time=f"2026-11-26T09:00:{pid % 60:02d}+00:00",
                          frames=[_frame(pid * 10 + n, size) for n in range(frames)])


def test_store_layout_and_entries(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path / "arc", max_parcels=10, max_bytes=10 * MB)
    assert archive.entries() == []  # no folder yet: empty, not an error
    parcel = ArchivedParcel(parcel_id=7, disposition="MULTI_READ", reason="two codes",
                            codes=["001234567895", "009876543217"], at=12.5,
                            wall_time="2026-11-26T09:00:00+00:00",
                            frames=[_frame(1, camera_id="cam1"), _frame(2, camera_id="cam/2")])
    path = archive.store(parcel)
    assert path == tmp_path / "arc" / "00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "frame-0-cam1.png", "frame-1-cam_2.png", "meta.json"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["frames"][1] == {"file": "frame-1-cam_2.png", "camera_id": "cam/2", "enc": 1002}
    back = cv2.imread(str(path / "frame-0-cam1.png"), cv2.IMREAD_GRAYSCALE)
    assert back is not None
    assert np.array_equal(back, parcel.frames[0].image)  # lossless

    (entry,) = archive.entries()
    assert (entry.parcel_id, entry.disposition, entry.reason, entry.codes, entry.at,
            entry.wall_time) == (7, "MULTI_READ", "two codes", parcel.codes, 12.5,
                                 parcel.wall_time)
    assert entry.frame_files == ["frame-0-cam1.png", "frame-1-cam_2.png"]
    assert entry.size_bytes == sum(p.stat().st_size for p in path.iterdir())
    assert entry.path == path


def test_count_bound_drops_oldest_parcel_ids(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=3, max_bytes=100 * MB)
    for pid in (5, 2, 9, 7, 11):  # stored out of order: age is the parcel id
        archive.store(_parcel(pid))
    assert [e.parcel_id for e in archive.entries()] == [7, 9, 11]


def test_byte_bound_drops_oldest_first(tmp_path: Path) -> None:
    one = NoReadArchive(tmp_path / "probe", max_parcels=100, max_bytes=100 * MB)
    one.store(_parcel(1, frames=2, size=100))
    per_entry = one.entries()[0].size_bytes
    archive = NoReadArchive(tmp_path / "arc", max_parcels=100, max_bytes=int(per_entry * 3.5))
    for pid in range(1, 7):
        archive.store(_parcel(pid, frames=2, size=100))
    entries = archive.entries()
    assert [e.parcel_id for e in entries] == [4, 5, 6]
    assert sum(e.size_bytes for e in entries) <= archive.max_bytes


def test_a_parcel_bigger_than_the_bound_keeps_the_frames_that_fit(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=10, max_bytes=4096 + 2 * 100 * 100 + 500)
    archive.store(_parcel(1, frames=1, size=70))
    path = archive.store(_parcel(2, frames=5, size=100))
    (entry,) = archive.entries()  # the older one went to make room
    assert entry.parcel_id == 2
    assert entry.frame_files == ["frame-0-cam1.png", "frame-1-cam1.png"]  # the best two
    assert json.loads((path / "meta.json").read_text())["frames_dropped"] == 3


def test_leftover_of_a_crashed_store_is_ignored_then_cleaned(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=10, max_bytes=10 * MB)
    archive.store(_parcel(1))
    crashed = tmp_path / ".tmp-2-deadbeef"  # a store that died before its rename
    crashed.mkdir()
    (crashed / "frame-0-cam1.png").write_bytes(b"half a png")
    trash = tmp_path / ".del-00000000-cafe"  # a drop that died before its delete
    trash.mkdir()
    assert [e.parcel_id for e in archive.entries()] == [1]
    archive.store(_parcel(3))
    assert not crashed.exists()
    assert not trash.exists()
    assert [e.parcel_id for e in archive.entries()] == [1, 3]


def test_a_failed_store_leaves_nothing(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=10, max_bytes=10 * MB)
    broken = ArchivedParcel(parcel_id=4, disposition="NO_READ", reason="r", codes=[], at=0.0,
                            wall_time="", frames=[_frame(1), ArchivedFrame(
                                "cam1", 0, np.zeros((4, 4), dtype=np.float32))])
    with pytest.raises(ValueError, match="not a gray image"):
        archive.store(broken)
    assert list(tmp_path.iterdir()) == []


def test_foreign_and_corrupt_content_is_skipped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=3, max_bytes=10 * MB)
    archive.store(_parcel(1))
    archive.store(_parcel(2))
    (tmp_path / "README.txt").write_text("not ours")
    (tmp_path / "00000050").write_text("a file named like an entry")
    (tmp_path / "00000002" / "meta.json").write_text("{ not json")
    (tmp_path / "00000060").mkdir()  # no meta.json
    (tmp_path / "00000070").mkdir()
    (tmp_path / "00000070" / "meta.json").write_text(json.dumps({"version": 1}))
    with caplog.at_level(logging.WARNING, logger="controller.archive"):
        assert [e.parcel_id for e in archive.entries()] == [1]
    text = caplog.text
    for name in ("README.txt", "00000050", "00000002", "00000060", "00000070"):
        assert name in text
    archive.store(_parcel(3))  # pruning counts folders; foreign files are never deleted
    assert (tmp_path / "README.txt").exists()
    assert (tmp_path / "00000050").exists()


def test_export_zip_holds_frames_meta_and_an_index(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path / "arc", max_parcels=10, max_bytes=10 * MB)
    for pid in (1, 2, 3):
        archive.store(_parcel(pid, disposition="MULTI_READ" if pid == 2 else "NO_READ"))
    dest = archive.export([2, 3], tmp_path / "out" / "keying.zip")
    assert dest == tmp_path / "out" / "keying.zip"
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == [
            "00000002/frame-0-cam1.png", "00000002/frame-1-cam1.png", "00000002/meta.json",
            "00000003/frame-0-cam1.png", "00000003/frame-1-cam1.png", "00000003/meta.json",
            "index.csv"]
        rows = list(csv.DictReader(io.StringIO(zf.read("index.csv").decode())))
        png = zf.read("00000002/frame-0-cam1.png")
    assert [(r["parcel_id"], r["disposition"], r["keyed_code"]) for r in rows] == [
        ("2", "MULTI_READ", ""), ("3", "NO_READ", "")]
    assert rows[0]["codes"] == "001234567895 009876543217"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    assert np.array_equal(image, _frame(20).image)

    everything = archive.export(None, tmp_path / "all.zip")
    with zipfile.ZipFile(everything) as zf:
        assert sum(n.endswith("/meta.json") for n in zf.namelist()) == 3
    with pytest.raises(ArchiveError, match="parcel 99"):
        archive.export([1, 99], tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists()


def test_store_and_entries_from_two_threads(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=5, max_bytes=10 * MB)
    stored = 60
    problems: list[str] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for pid in range(1, stored + 1):
                archive.store(_parcel(pid, frames=2, size=48))
        except Exception as exc:  # reported below
            problems.append(f"store: {exc!r}")
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                problems.extend(
                    f"half an entry: {entry}" for entry in archive.entries()
                    if len(entry.frame_files) != 2 or entry.reason != "no acceptable code read")
        except Exception as exc:  # reported below
            problems.append(f"entries: {exc!r}")

    threads = [threading.Thread(target=writer, name="archive-writer"),
               threading.Thread(target=reader, name="archive-reader"),
               threading.Thread(target=reader, name="archive-reader2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert problems == []
    assert [e.parcel_id for e in archive.entries()] == list(range(stored - 4, stored + 1))


def test_two_threads_storing_at_once(tmp_path: Path) -> None:
    archive = NoReadArchive(tmp_path, max_parcels=8, max_bytes=10 * MB)

    def store_all(first: int) -> None:
        for pid in range(first, 41, 2):
            archive.store(_parcel(pid, frames=1, size=32))

    threads = [threading.Thread(target=store_all, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [e.parcel_id for e in archive.entries()] == list(range(33, 41))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- through the command line handlers ---------------------------------------------------


def test_archive_list_and_export_commands(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "arc"
    archive = NoReadArchive(root, max_parcels=10, max_bytes=10 * MB)
    archive.store(_parcel(3))
    archive.store(_parcel(12, frames=3, disposition="MULTI_READ"))

    assert main(["archive", "list", "--archive", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    first, second = lines
    assert first.split()[:2] == ["3", "NO_READ"]
    assert "codes: -" in first
    assert "frames: 2" in first
    assert first.endswith("2026-11-26T09:00:03+00:00")
    assert second.split()[:2] == ["12", "MULTI_READ"]
    assert "codes: 001234567895,009876543217" in second
    assert "frames: 3" in second

    assert main(["archive", "list", "--json", "--archive", str(root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["parcel_id"] for e in listed] == [3, 12]

    dest = tmp_path / "keying.zip"
    assert main(["archive", "export", "12", "--to", str(dest), "--archive", str(root)]) == 0
    assert capsys.readouterr().out.strip() == f"exported 1 parcel to {dest}"
    with zipfile.ZipFile(dest) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {"00000012", "index.csv"}

    assert main(["archive", "export", "--to", str(dest), "--archive", str(root)]) == 0
    assert capsys.readouterr().out.strip() == f"exported 2 parcels to {dest}"


def test_archive_command_errors_exit_2(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["archive", "list", "--archive", str(tmp_path / "nowhere")]) == 2
    assert "no archive at" in capsys.readouterr().err
    NoReadArchive(tmp_path, max_parcels=1, max_bytes=MB).store(_parcel(1))
    assert main(["archive", "export", "5", "--to", str(tmp_path / "x.zip"),
                 "--archive", str(tmp_path)]) == 2
    assert "parcel 5" in capsys.readouterr().err


def test_archive_location_from_the_config(tmp_path: Path) -> None:
    from .conftest import EXAMPLE_CONFIG

    line = tmp_path / "line.toml"
    text = EXAMPLE_CONFIG.read_text()
    line.write_text(text + '\n[archive]\npath = "var/no-reads"\nmax_parcels = 25\nmax_mb = 1.5\n')
    found = open_archive(load_config(line).archive)
    assert found is not None
    assert found.root == tmp_path / "var" / "no-reads"  # beside the config
    assert (found.max_parcels, found.max_bytes) == (25, int(1.5 * MB))
    line.write_text(text + f'\n[archive]\npath = "{tmp_path / "abs"}"\n')
    found = open_archive(load_config(line).archive)
    assert found is not None
    assert found.root == tmp_path / "abs"
    line.write_text(text)
    assert open_archive(load_config(line).archive) is None


def test_a_config_without_an_archive_section_is_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .conftest import EXAMPLE_CONFIG

    text = EXAMPLE_CONFIG.read_text()
    if "[archive]" in text:
        pytest.skip("the example config has an [archive] section")
    line = tmp_path / "line.toml"
    line.write_text(text)
    assert main(["archive", "list", "--config", str(line)]) == 2
    assert "[archive]" in capsys.readouterr().err
