"""A bounded in-memory log of the line I/O messages sent and received for each parcel.

It answers a technician's ``trace`` (docs/diagnostics-protocol.md): the divert commands, their
answers and latencies, the sensor events attributed to one parcel. Only the latest ``limit``
messages are kept; recording one is O(1), so it can run on every parcel of a busy line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Direction = Literal["sent", "received"]
DEFAULT_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    parcel_id: int
    direction: Direction
    link: str
    kind: str
    detail: Mapping[str, object]
    at: float  # clock time
    latency_s: float | None = None


class MessageLog:
    """The latest ``limit`` messages, in order, and an index of them per parcel."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("a message log keeps at least one message")
        self.limit = limit
        self._log: deque[LoggedMessage] = deque()
        # A parcel has a few messages: a list each (a deque is ~600 bytes even when short).
        self._by_parcel: dict[int, list[LoggedMessage]] = {}

    def __len__(self) -> int:
        return len(self._log)

    def record(self, parcel_id: int, direction: Direction, link: str, kind: str,
               detail: Mapping[str, object], *, at: float,
               latency_s: float | None = None) -> None:
        message = LoggedMessage(parcel_id, direction, link, kind, detail, at, latency_s)
        self._log.append(message)
        own = self._by_parcel.get(parcel_id)
        if own is None:
            own = self._by_parcel[parcel_id] = []
        own.append(message)
        if len(self._log) > self.limit:
            oldest = self._log.popleft()
            theirs = self._by_parcel[oldest.parcel_id]
            del theirs[0]  # a parcel's entries are in log order: its oldest is this one
            if not theirs:
                del self._by_parcel[oldest.parcel_id]

    def for_parcel(self, parcel_id: int) -> list[LoggedMessage]:
        """The parcel's messages still in the log, oldest first."""
        return list(self._by_parcel.get(parcel_id, ()))

    def parcels(self) -> int:
        """How many parcels have messages in the log."""
        return len(self._by_parcel)
