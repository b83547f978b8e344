"""One controller per line: an exclusive lock beside the journal, held for the process's life."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from controller.errors import JournalError

log = logging.getLogger(__name__)


class LineLock:
    """``<journal>.lock`` locked with flock: a second controller on the same journal is refused."""

    def __init__(self, journal_path: str | Path) -> None:
        self.path = Path(f"{journal_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise JournalError naming it and the controller that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JournalError(f"journal lock {self.path} cannot be opened: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise JournalError(f"journal lock {self.path} is held by another controller "
                               f"(pid {holder}): one controller per line") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        log.debug("holding %s", self.path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> LineLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
