"""Encoder history: the count at a recent moment, and the moment the belt reached a count.

Frames stamped only by time get their count from it (:meth:`EncoderHistory.at`); windows set
in milliseconds are measured in it at the belt's real speed (:meth:`first_reached`), so a
slowed or stopped belt neither widens nor narrows them.
"""

from __future__ import annotations

import bisect
from collections import deque


class EncoderHistory:
    """Samples of ``(time, count)``; counts between samples are interpolated.

    A count lower than the one before it is an encoder that started again (a board
    restarted): times of counts are only looked up from that sample on.
    """

    def __init__(self, span_s: float = 10.0) -> None:
        self._span = span_s
        self._times: deque[float] = deque()
        self._counts: deque[int] = deque()
        self._counting_since: float | None = None  # the first sample since the last restart

    def record(self, at: float, count: int) -> None:
        if self._times and at <= self._times[-1]:
            return
        if not self._counts or count < self._counts[-1]:
            self._counting_since = at
        self._times.append(at)
        self._counts.append(count)
        while self._times and self._times[0] < at - self._span:
            self._times.popleft()
            self._counts.popleft()

    def at(self, when: float) -> int:
        """The count at ``when``: interpolated, or the nearest end's when outside the history."""
        if not self._times:
            raise LookupError("no encoder samples yet")
        i = bisect.bisect_left(self._times, when)
        if i == 0:
            return self._counts[0]
        if i >= len(self._times):
            return self._counts[-1]
        t0, t1 = self._times[i - 1], self._times[i]
        c0, c1 = self._counts[i - 1], self._counts[i]
        return round(c0 + (c1 - c0) * (when - t0) / (t1 - t0))

    @property
    def latest(self) -> tuple[float, int] | None:
        """The newest sample, ``(time, count)``."""
        return (self._times[-1], self._counts[-1]) if self._times else None

    @property
    def since(self) -> float | None:
        """The time of the oldest sample counts are looked up in (None: no samples)."""
        if not self._times or self._counting_since is None:
            return None
        return max(self._times[0], self._counting_since)

    def first_reached(self, count: int) -> float | None:
        """The first moment the encoder reached ``count``, interpolated between samples.

        On a stopped belt that is when it stopped there. None when the history does not
        say: ``count`` is older than its oldest sample, or newer than its latest.
        """
        since = self.since
        if since is None or count > self._counts[-1]:
            return None
        lo = bisect.bisect_left(self._times, since)
        i = bisect.bisect_left(self._counts, count, lo=lo)
        if i == lo:  # reached before the history began
            return None
        t0, t1 = self._times[i - 1], self._times[i]
        c0, c1 = self._counts[i - 1], self._counts[i]
        return t0 + (t1 - t0) * (count - c0) / (c1 - c0)
