"""Which decoded texts are parcel codes, and when a parcel's reads settle on one code."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from controller.config import DecisionConfig


def gs1_check_digit(body: str) -> int:
    """GS1 mod-10 check digit of a digit string (weights 3,1,3,… from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def with_check_digit(body: str) -> str:
    return body + str(gs1_check_digit(body))


class CodeRule:
    """Accepts a decoded text as a parcel code if it matches the pattern and its check digit."""

    def __init__(self, config: DecisionConfig) -> None:
        self._pattern = re.compile(config.code_pattern)
        self._check = config.check_digit

    def accepts(self, text: str) -> bool:
        if not self._pattern.fullmatch(text):
            return False
        if self._check == "gs1-mod10":
            return text.isdigit() and len(text) > 1 and gs1_check_digit(text[:-1]) == int(text[-1])
        return True


class ReadVerdict(StrEnum):
    PENDING = "PENDING"
    ONE_CODE = "ONE_CODE"
    NO_READ = "NO_READ"
    MULTI_READ = "MULTI_READ"


@dataclass
class ParcelReads:
    """The reads assigned to one parcel, frame by frame, and how much of it was seen.

    Frames of a parcel are decoded in a run (all frames wholly showing it, or every frame
    of a parcel too long for that), so once one showed its leading edge and a later one
    its trailing edge, every part of its top face has been in a decoded frame.
    """

    min_agreeing: int
    codes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    lead_seen: bool = False
    trail_seen: bool = False

    def add_frame(self, accepted: set[str], rejected: set[str], *, lead_in_view: bool,
                  trail_in_view: bool) -> None:
        """Record one decoded frame's reads (each code counts once per frame)."""
        self.frames += 1
        self.lead_seen |= lead_in_view
        self.trail_seen |= trail_in_view and self.lead_seen
        self.codes.update(accepted)
        self.rejected.update(rejected)

    @property
    def whole_parcel_seen(self) -> bool:
        return self.lead_seen and self.trail_seen

    def verdict(self, *, final: bool) -> ReadVerdict:
        """Settle early only once the whole parcel was seen and the reads agree enough."""
        if len(self.codes) > 1:
            return ReadVerdict.MULTI_READ if final or self.whole_parcel_seen \
                else ReadVerdict.PENDING
        if len(self.codes) == 1:
            (count,) = self.codes.values()
            if final or (count >= self.min_agreeing and self.whole_parcel_seen):
                return ReadVerdict.ONE_CODE
            return ReadVerdict.PENDING
        return ReadVerdict.NO_READ if final else ReadVerdict.PENDING

    @property
    def code(self) -> str | None:
        return next(iter(self.codes)) if len(self.codes) == 1 else None
