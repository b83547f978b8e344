"""The serial driver's counters, for diagnostics and the shift reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SerialStats:
    """Counters of the serial link for diagnostics."""

    opens: int = 0
    reconnects: int = 0
    open_failures: int = 0
    commands: int = 0
    answers: int = 0
    timeouts: int = 0
    cancels: int = 0
    bad_frames: int = 0
    board_restarts: int = 0
    board_failsafes: int = 0
    restored: int = 0  # diverts sent again after a resync, the board having dropped them
    fired: int = 0
    last_error: str | None = None
