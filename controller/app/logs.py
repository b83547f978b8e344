"""How the controller's log looks: readable text, or one JSON object a line; journald-aware.

Under systemd, stderr is a stream to journald, which says so in ``JOURNAL_STREAM``
(``device:inode`` of that stream). Then each line starts with the syslog priority of its
level (``<2>`` CRITICAL, ``<3>`` ERROR, ``<4>`` WARNING, ``<6>`` INFO, ``<7>`` DEBUG), which
journald strips and files the line under; the line is otherwise the same.

A log call about one parcel says which: ``log.info(..., extra={"parcel": parcel_id})``.
The JSON line carries it as ``"parcel"``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "configure_logging", "under_journald"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: syslog priorities (RFC 5424) of the logging levels, at or above each level
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def syslog_priority(levelno: int) -> int:
    """CRITICAL crit(2), ERROR err(3), WARNING warning(4), INFO info(6), below: debug(7)."""
    return next((p for level, p in _PRIORITIES if levelno >= level), _DEBUG_PRIORITY)


def under_journald(stream: TextIO) -> bool:
    """Whether ``stream`` is the journald stream ``JOURNAL_STREAM`` names."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a file (pytest's capture)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JsonFormatter(logging.Formatter):
    """One JSON object a record: time (ISO-8601, UTC), level, logger, message, parcel."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        parcel = getattr(record, "parcel", None)
        if parcel is not None:
            entry["parcel"] = parcel
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Prioritised(logging.Formatter):
    """Another formatter's line with the syslog priority prefix journald reads."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        # Each line of a traceback is its own journal entry: each gets the priority.
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def formatter(log_format: LogFormat, *, journald: bool) -> logging.Formatter:
    inner = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    return _Prioritised(inner) if journald else inner


def configure_logging(level: int, log_format: LogFormat = "text",
                      stream: TextIO | None = None) -> None:
    """Log at ``level`` and above to ``stream`` (stderr) in ``log_format``.

    Like :func:`logging.basicConfig`, whose rules it keeps: nothing changes when the root
    logger has handlers already (an embedding program's, or a test runner's).
    """
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format, journald=under_journald(stream)))
    logging.basicConfig(level=level, handlers=[handler])
