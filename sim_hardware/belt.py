"""The emulated belt: travel over time at a piecewise constant speed, an encoder on its shaft."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence

from controller.clock import Clock

log = logging.getLogger(__name__)


class Belt:
    """Belt travel over time, an encoder on its shaft.

    The speed is piecewise constant: ``speed_mm_s`` from the start, then each
    ``(seconds after start, speed)`` of ``changes`` in turn; a speed of 0 is a stop.
    """

    def __init__(self, clock: Clock, speed_mm_s: float, counts_per_mm: float,
                 changes: Sequence[tuple[float, float]] = ()) -> None:
        self.clock = clock
        self.counts_per_mm = counts_per_mm
        self.start = clock.now()
        # (start time, travel at that time, speed) for each stretch of constant speed
        self._segments: list[tuple[float, float, float]] = [(self.start, 0.0, speed_mm_s)]
        for at, speed in sorted(changes):
            t0, d0, v0 = self._segments[-1]
            t = self.start + at
            self._segments.append((t, d0 + (t - t0) * v0, speed))
        self._times = [s[0] for s in self._segments]
        moving = [s for s in self._segments if s[2] > 0]
        self._moving = moving
        self._moving_travel = [s[1] for s in moving]

    @property
    def speed(self) -> float:
        """The speed now."""
        return self._segments[bisect.bisect_right(self._times, self.clock.now()) - 1][2]

    def travel(self, at: float | None = None) -> float:
        t = self.clock.now() if at is None else at
        if t <= self.start:
            return 0.0
        t0, d0, v = self._segments[bisect.bisect_right(self._times, t) - 1]
        return d0 + (t - t0) * v

    def time_at(self, travel_mm: float) -> float:
        """The first moment the belt has travelled ``travel_mm``."""
        t0, d0, v = self._moving[max(0, bisect.bisect_left(self._moving_travel, travel_mm) - 1)]
        return t0 + max(0.0, travel_mm - d0) / v

    def enc_at_travel(self, travel_mm: float) -> int:
        return math.floor(travel_mm * self.counts_per_mm)

    def encoder(self) -> int:
        return self.enc_at_travel(self.travel())

