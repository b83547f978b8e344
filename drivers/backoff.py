"""Reconnect backoff shared by every driver that keeps a link to a device alive."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling, capped at ``cap`` seconds."""

    def __init__(self, initial: float = 0.2, cap: float = 5.0, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._next = initial

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._next = self.initial

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the base up to the cap."""
        base = self._next
        self._next = min(self.cap, base * 2)
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))
