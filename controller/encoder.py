"""Encoder history: the encoder count at any recent moment, for frames stamped only by time."""

from __future__ import annotations

import bisect
from collections import deque


class EncoderHistory:
    """Samples of ``(time, count)``; counts between samples are interpolated."""

    def __init__(self, span_s: float = 10.0) -> None:
        self._span = span_s
        self._times: deque[float] = deque()
        self._counts: deque[int] = deque()

    def record(self, at: float, count: int) -> None:
        if self._times and at <= self._times[-1]:
            return
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
