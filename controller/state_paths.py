"""The line's state paths checked before ``run`` uses them: journal, order book, archive, secrets.

Checking only looks, so ``check-config`` can tell everything ``run`` would refuse without
creating a folder or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from controller.config import LineConfig
from controller.errors import ConfigError

#: what a path must be: a database written to (and its folder, for SQLite's side files), a
#: database looked up in, a folder written to, a file read
_Kind = Literal["db", "store", "folder", "read"]


def check_paths(config: LineConfig) -> list[tuple[str, str]]:
    """(field, reason) for each state path ``run`` could not use; looks only, creates nothing."""
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
    check("order_store.path", config.order_store.path, "store")
    check("archive.path", config.archive.path, "folder")
    if config.line_io is not None and config.line_io.mqtt is not None:
        check("line_io.mqtt.password_file", config.line_io.mqtt.password_file, "read")
    return problems


def require_paths(config: LineConfig, source: str = "<config>") -> None:
    """Raise ConfigError naming every state path ``run`` could not use (creates nothing)."""
    problems = check_paths(config)
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
    if path.is_dir():
        return f"{path} is a directory, not a database file"
    if kind == "store" and path.exists():  # looked up only: the folder need not be writable
        return None if os.access(path, os.R_OK) else f"{path} is not readable"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
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
