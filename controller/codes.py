"""Which decoded texts are parcel codes, and when a parcel's reads settle on one code."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from controller.config import DecisionConfig, LabelType


def gs1_check_digit(body: str) -> int:
    """GS1 mod-10 check digit of a digit string (weights 3,1,3,… from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def with_check_digit(body: str) -> str:
    return body + str(gs1_check_digit(body))


def _check_digit_ok(label: LabelType, text: str) -> bool:
    if label.check_digit == "gs1-mod10":
        return text.isdigit() and len(text) > 1 and gs1_check_digit(text[:-1]) == int(text[-1])
    return True


class CodeRule:
    """Classifies a decoded text as a code of one of the line's label types, or says why not."""

    def __init__(self, config: DecisionConfig) -> None:
        self._types = [(label, re.compile(label.pattern)) for label in config.label_types]

    def classify(self, text: str, symbology: str) -> LabelType | None:
        """The first label type the read is a valid code of, or None."""
        for label, pattern in self._types:
            if label.symbologies and symbology not in label.symbologies:
                continue
            if pattern.fullmatch(text) and _check_digit_ok(label, text):
                return label
        return None

    def why_rejected(self, text: str, symbology: str) -> str | None:
        """None if accepted; else the reason the nearest label type gives."""
        if self.classify(text, symbology) is not None:
            return None
        reasons = []
        for label, pattern in self._types:
            if label.symbologies and symbology not in label.symbologies:
                reasons.append(f"{label.name}: not printed as {symbology}")
            elif not pattern.fullmatch(text):
                reasons.append(f"{label.name}: does not match {label.pattern}")
            else:
                return f"{label.name}: bad check digit"
        return "; ".join(reasons)

    def accepts(self, text: str, symbology: str = "code128") -> bool:
        return self.classify(text, symbology) is not None


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
    types: dict[str, LabelType] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    lead_seen: bool = False
    trail_seen: bool = False
    why: str = ""

    def add_frame(self, accepted: dict[str, LabelType], rejected: set[str], *,
                  lead_in_view: bool, trail_in_view: bool) -> None:
        """Record one decoded frame's reads (each code counts once per frame)."""
        self.frames += 1
        self.lead_seen |= lead_in_view
        self.trail_seen |= trail_in_view and self.lead_seen
        self.codes.update(accepted.keys())
        self.types.update(accepted)
        self.rejected.update(rejected)

    @property
    def whole_parcel_seen(self) -> bool:
        return self.lead_seen and self.trail_seen

    def _winners(self) -> list[str]:
        """The codes of the best-priority label type read on the parcel."""
        if not self.codes:
            return []
        best = min(self.types[c].priority for c in self.codes)
        return sorted(c for c in self.codes if self.types[c].priority == best)

    def verdict(self, *, final: bool) -> ReadVerdict:
        """Settle early only once the whole parcel was seen and the reads agree enough.

        At the end of the read zone a single read is enough only for a label type with a
        check digit: one unconfirmed read of a code without one is no sort decision.
        """
        settled = final or self.whole_parcel_seen
        winners = self._winners()
        if len(winners) > 1:
            return ReadVerdict.MULTI_READ if settled else ReadVerdict.PENDING
        if not winners:
            return ReadVerdict.NO_READ if final else ReadVerdict.PENDING
        code = winners[0]
        label, count = self.types[code], self.codes[code]
        if count >= self.min_agreeing and self.whole_parcel_seen:
            return self._one(label)
        if not final:
            return ReadVerdict.PENDING
        if count >= self.min_agreeing or label.check_digit != "none":
            return self._one(label)
        self.why = f"one unconfirmed read of a {label.name} code without a check digit"
        return ReadVerdict.NO_READ

    def _one(self, label: LabelType) -> ReadVerdict:
        if label.sorts:
            return ReadVerdict.ONE_CODE
        self.why = f"only a {label.name} label, which is not routed on"
        return ReadVerdict.NO_READ

    @property
    def code(self) -> str | None:
        winners = self._winners()
        return winners[0] if len(winners) == 1 and self.types[winners[0]].sorts else None

    @property
    def label_type(self) -> str | None:
        code = self.code
        return self.types[code].name if code else None
