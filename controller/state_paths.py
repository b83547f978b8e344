"""What ``run`` refuses before it opens anything: its state paths and its devices.

The state paths: journal, order book, archive, secrets. For ``run`` (not ``sim``) also: a
camera whose source is the emulator, a config without ``[line_io]``, an order book that
does not exist (it is never created empty). Checking only looks, so ``check-config`` can
tell everything ``run`` would refuse without creating a folder or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from controller.config import LineConfig
from controller.errors import ConfigError

#: what a path must be: a database written to (and its folder, for SQLite's side files), a
#: database looked up in, a folder written to, a file read
_Kind = Literal["db", "store", "folder", "read", "book"]
Purpose = Literal["run", "sim"]
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def check_line(config: LineConfig, purpose: Purpose = "run") -> list[tuple[str, str]]:
    """(field, reason) for each thing ``purpose`` could not use; looks only, creates nothing."""
    problems: list[tuple[str, str]] = []
    if purpose == "run":
        for i, camera in enumerate(config.cameras):
            if camera.source == "emulator":
                problems.append((f"cameras[{i}].source", f"camera {camera.id} is the emulator's: "
                                 "only `sim` has one; name the real camera's source"))
        if config.line_io is None:
            problems.append(("line_io", "[line_io] absent: `run` needs the line's I/O board "
                                        "or nodes (only `sim` runs without)"))
    return problems + check_paths(config, purpose)


def check_paths(config: LineConfig, purpose: Purpose = "sim") -> list[tuple[str, str]]:
    """(field, reason) for each state path that cannot be used; looks only, creates nothing.

    For ``run`` the order book must exist: an order store created empty would make every
    parcel NO_ORDER.
    """
    problems: list[tuple[str, str]] = []

    def check(field: str, value: str | None, kind: _Kind) -> None:
        if value is None or value == ":memory:":
            return
        path = Path(value)
        try:
            problem = _path_problem(path, kind)
        except OSError as exc:
            problem = f"{path} cannot be checked: {exc.strerror or exc}"
        if problem:
            problems.append((field, problem))

    check("journal.path", config.journal.path, "db")
    check("order_store.path", config.order_store.path, "book" if purpose == "run" else "store")
    check("archive.path", config.archive.path, "folder")
    if config.line_io is not None and config.line_io.mqtt is not None:
        check("line_io.mqtt.password_file", config.line_io.mqtt.password_file, "read")
    return problems


def require_paths(config: LineConfig, source: str = "<config>",
                  purpose: Purpose = "sim") -> None:
    """Raise ConfigError naming everything ``purpose`` could not use (creates nothing)."""
    problems = check_line(config, purpose)
    if problems:
        raise ConfigError(source, problems)


def _path_problem(path: Path, kind: _Kind) -> str | None:
    """Why ``path`` cannot serve as what ``kind`` says; None if it can."""
    if kind == "read":
        if not path.is_file():
            return f"{path} is not a file" if path.exists() else f"no such file: {path}"
        return None if os.access(path, os.R_OK) else f"{path} is not readable"
    if kind == "folder":
        if path.exists() and not path.is_dir():
            return f"{path} is not a directory"
        return _folder_problem(path)
    if kind == "book" and not path.is_file():
        return (f"no such order database: {path} (never created empty: import the orders "
                "into it first)")
    if kind == "book":
        kind = "store"
    if path.is_dir():
        return f"{path} is a directory, not a database file"
    if kind == "store" and path.exists():  # looked up only: the folder need not be writable
        return None if os.access(path, os.R_OK) else f"{path} is not readable"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
    for suffix in SQLITE_SIDE_FILES:  # a database half there: its side files must be too
        side = Path(f"{path}{suffix}")
        if side.exists() and not os.access(side, os.R_OK | os.W_OK):
            return f"{side} (the database's side file) is not writable"
    return _folder_problem(path.parent)


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` neither is a writable directory nor could be made one; None if fine."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"folder {folder} cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == folder:
            return f"folder {folder} is not writable"
        return f"folder {folder} cannot be created: {existing} is not writable"
    return None
