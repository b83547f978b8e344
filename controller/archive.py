"""The no-read archive: frames of NO_READ and MULTI_READ parcels, kept for keying by hand.

Each parcel is one folder ``<root>/<parcel_id:08d>/`` holding ``meta.json`` and its frames
as ``frame-<n>-<camera_id>.png``. A folder appears under its final name only once complete
(written beside it under a dot-name, then renamed), and leaves by being renamed away before
it is deleted, so a reader or a crash never sees half an entry. After each store the
oldest entries (lowest parcel ids) go until both the count and the byte bound hold.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import threading
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from controller.config import ArchiveConfig
from controller.errors import ArchiveError
from controller.vision import GrayImage

log = logging.getLogger(__name__)

META = "meta.json"
META_VERSION = 1
_ENTRY_NAME = re.compile(r"^[0-9]{8,}$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".del-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_META_RESERVE = 4096  # bytes of the byte bound kept for meta.json


@dataclass(frozen=True, slots=True)
class ArchivedFrame:
    """One camera frame of an archived parcel."""

    camera_id: str
    enc: int
    image: GrayImage


@dataclass(frozen=True, slots=True)
class ArchivedFacts:
    """What is known of an archived parcel: its id, outcome, why, and what was read."""

    parcel_id: int
    disposition: str
    reason: str
    codes: list[str]
    at: float
    wall_time: str


@dataclass(frozen=True, slots=True)
class ArchivedParcel(ArchivedFacts):
    """What the controller hands the archive for one parcel; frames best first."""

    frames: list[ArchivedFrame]


@dataclass(frozen=True, slots=True)
class ArchiveEntry(ArchivedFacts):
    """One stored parcel as read back from disk."""

    frame_files: list[str]
    size_bytes: int
    path: Path


class _FrameMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    file: str
    camera_id: str
    enc: int


class _Meta(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int
    parcel_id: int
    disposition: str
    reason: str
    codes: list[str]
    at: float
    wall_time: str
    frames: list[_FrameMeta]
    frames_dropped: int = 0


class NoReadArchive:
    """A bounded folder of parcels that did not read; safe to share between threads.

    Stores are serialised by a lock; readers take no lock, since entries appear and vanish
    by rename. One process writes an archive; any number may read it.
    """

    def __init__(self, root: Path, *, max_parcels: int, max_bytes: int) -> None:
        """Open (not create) the archive at ``root``; it is created by the first store."""
        if max_parcels < 1 or max_bytes < 1:
            raise ValueError("max_parcels and max_bytes must be positive")
        self.root = Path(root)
        self.max_parcels = max_parcels
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    # -- writing ----------------------------------------------------------------------

    def store(self, entry: ArchivedParcel) -> Path:
        """Write one parcel's entry atomically, then drop the oldest beyond the bounds."""
        import cv2

        if entry.parcel_id < 0:
            raise ValueError(f"parcel id {entry.parcel_id} is negative")
        self.root.mkdir(parents=True, exist_ok=True)
        temp_name = f"{_TEMP_PREFIX}{entry.parcel_id}-{uuid.uuid4().hex}"
        with self._lock:
            self._in_flight.add(temp_name)
        temp = self.root / temp_name
        try:
            temp.mkdir()
            budget = self.max_bytes - _META_RESERVE
            frames: list[_FrameMeta] = []
            dropped = 0
            for n, frame in enumerate(entry.frames):
                image = np.asarray(frame.image)
                if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
                    raise ValueError(f"frame {n} of parcel {entry.parcel_id} is not a gray image")
                ok, png = cv2.imencode(".png", image)
                if not ok:
                    raise ValueError(f"frame {n} of parcel {entry.parcel_id} did not encode")
                data = png.tobytes()
                if len(data) > budget:  # keep the best frames that fit in the byte bound
                    dropped += 1
                    continue
                budget -= len(data)
                name = f"frame-{n}-{_UNSAFE.sub('_', frame.camera_id)}.png"
                _write_synced(temp / name, data)
                frames.append(_FrameMeta(file=name, camera_id=frame.camera_id, enc=frame.enc))
            meta = _Meta(version=META_VERSION, parcel_id=entry.parcel_id,
                         disposition=entry.disposition, reason=entry.reason,
                         codes=list(entry.codes), at=entry.at, wall_time=entry.wall_time,
                         frames=frames, frames_dropped=dropped)
            _write_synced(temp / META, meta.model_dump_json(indent=2).encode())
            if dropped:
                log.warning("archive: parcel %d kept %d of %d frames (max_bytes %d)",
                            entry.parcel_id, len(frames), len(entry.frames), self.max_bytes)
            final = self.root / f"{entry.parcel_id:08d}"
            with self._lock:
                if final.exists():
                    log.warning("archive: replacing the entry of parcel %d", entry.parcel_id)
                    self._discard(final)
                temp.rename(final)
                _sync_dir(self.root)
                self._prune()
            return final
        finally:
            with self._lock:
                self._in_flight.discard(temp_name)
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)

    def _discard(self, path: Path) -> None:
        """Rename an entry away (atomically gone for readers), then delete it."""
        trash = self.root / f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex}"
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _prune(self) -> None:
        """Drop leftovers of crashed stores, then the oldest entries beyond the bounds."""
        sizes: list[tuple[int, Path, int]] = []
        with os.scandir(self.root) as it:
            for item in it:
                if item.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                    if item.name not in self._in_flight and item.is_dir(follow_symlinks=False):
                        log.info("archive: removing leftover %s", item.name)
                        shutil.rmtree(item.path, ignore_errors=True)
                elif _ENTRY_NAME.match(item.name) and item.is_dir(follow_symlinks=False):
                    sizes.append((int(item.name), Path(item.path), _dir_bytes(Path(item.path))))
        sizes.sort()
        count = len(sizes)
        total = sum(size for _, _, size in sizes)
        for parcel_id, path, size in sizes:
            if count <= self.max_parcels and total <= self.max_bytes:
                break
            log.debug("archive: dropping parcel %d (%d bytes)", parcel_id, size)
            try:
                self._discard(path)
            except OSError as exc:
                log.warning("archive: could not drop %s: %s", path, exc)
                continue
            count -= 1
            total -= size

    # -- reading ----------------------------------------------------------------------

    def entries(self) -> list[ArchiveEntry]:
        """Every complete entry, oldest first; foreign or corrupt content is skipped."""
        if not self.root.is_dir():
            return []
        found: list[ArchiveEntry] = []
        with os.scandir(self.root) as it:
            names = sorted((item.name for item in it), key=_sort_key)
        for name in names:
            if name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                continue
            if not _ENTRY_NAME.match(name):
                log.warning("archive: skipping foreign item %s", self.root / name)
                continue
            entry = self._read(self.root / name)
            if entry is not None:
                found.append(entry)
        return found

    def _read(self, path: Path) -> ArchiveEntry | None:
        """One entry from its folder, or None (with a warning) if it is not a sound one."""
        try:
            raw = (path / META).read_bytes()
        except FileNotFoundError:
            if path.exists():  # not dropped by a store meanwhile: really broken
                log.warning("archive: skipping %s: no %s", path, META)
            return None
        except OSError as exc:  # e.g. a stray file named like an entry
            log.warning("archive: skipping %s: %s", path, exc)
            return None
        try:
            meta = _Meta.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("archive: skipping %s: corrupt %s (%d problems)", path, META,
                        exc.error_count())
            return None
        if meta.parcel_id != int(path.name):
            log.warning("archive: skipping %s: it holds parcel %d", path, meta.parcel_id)
            return None
        files = [f.file for f in meta.frames if _safe_member(f.file)]
        try:
            size = _dir_bytes(path)
        except OSError:
            return None
        return ArchiveEntry(parcel_id=meta.parcel_id, disposition=meta.disposition,
                            reason=meta.reason, codes=list(meta.codes), at=meta.at,
                            wall_time=meta.wall_time, frame_files=files, size_bytes=size,
                            path=path)

    def export(self, parcel_ids: Sequence[int] | None, dest: Path) -> Path:
        """Write the chosen entries (all when None) and an index.csv to the zip ``dest``."""
        entries = self.entries()
        if parcel_ids is not None:
            wanted = set(parcel_ids)
            missing = sorted(wanted - {e.parcel_id for e in entries})
            if missing:
                raise ArchiveError(f"not in the archive {self.root}: parcel "
                                   + ", ".join(str(p) for p in missing))
            entries = [e for e in entries if e.parcel_id in wanted]
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        index = io.StringIO()
        writer = csv.writer(index)
        writer.writerow(["parcel_id", "disposition", "reason", "codes", "wall_time", "at",
                         "frames", "keyed_code"])
        try:
            with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as zf:
                for entry in entries:
                    folder = entry.path.name
                    try:
                        zf.write(entry.path / META, f"{folder}/{META}")
                        for name in entry.frame_files:
                            zf.write(entry.path / name, f"{folder}/{name}")
                    except FileNotFoundError:  # dropped by a store since it was listed
                        log.warning("archive: parcel %d vanished during export",
                                    entry.parcel_id)
                        continue
                    writer.writerow([entry.parcel_id, entry.disposition, entry.reason,
                                     " ".join(entry.codes), entry.wall_time, f"{entry.at:.3f}",
                                     " ".join(f"{folder}/{n}" for n in entry.frame_files), ""])
                zf.writestr("index.csv", index.getvalue())
            temp.replace(dest)
        finally:
            temp.unlink(missing_ok=True)
        return dest


def _sort_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (-1, name)


def _safe_member(name: str) -> bool:
    """A frame file name from meta.json that stays inside its entry's folder."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _dir_bytes(path: Path) -> int:
    with os.scandir(path) as it:
        return sum(item.stat(follow_symlinks=False).st_size for item in it)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entry_as_json(entry: ArchiveEntry) -> dict[str, object]:
    """An entry as a JSON-ready mapping."""
    return {"parcel_id": entry.parcel_id, "disposition": entry.disposition,
            "reason": entry.reason, "codes": entry.codes, "at": entry.at,
            "wall_time": entry.wall_time, "frames": entry.frame_files,
            "bytes": entry.size_bytes, "path": str(entry.path)}


__all__ = ["ArchiveEntry", "ArchiveError", "ArchivedFrame", "ArchivedParcel", "NoReadArchive",
           "entry_as_json"]


def open_archive(config: ArchiveConfig) -> NoReadArchive | None:
    """The archive a line's ``[archive]`` section names (its path already resolved), if any."""
    if not config.path:
        return None
    return NoReadArchive(Path(config.path), max_parcels=config.max_parcels,
                         max_bytes=int(config.max_mb * 1024 * 1024))
