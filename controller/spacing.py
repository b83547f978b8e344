"""Gap control: parcels inducted closer than a diverter can push apart are never diverted.

A pusher or a sliding shoe that fires at one parcel moves whatever is in front of it; with
too small a gap (trailing edge to the next leading edge) or pitch (leading edge to leading
edge) its neighbour goes too. PE-IN measures both as each parcel blocks it; both parcels of
a pair too close end ``TOO_CLOSE`` at the end of the line (or go round a loop again).

Whatever the configured minimum, a divert is also checked against its arm's reach when it is
decided: an arm pushes every parcel whose centre is within half its ``window_mm`` when it
fires, so a neighbour that close at the fire count (give or take the encoder's resolution)
would go into the bin too, and the parcel is not diverted (TOO_CLOSE) rather than push both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.config import InductionConfig
from controller.disposition import END_OF_LINE
from controller.parcel import ParcelState
from controller.tracking import TrackingWindow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TooClose:
    """Two parcels inducted too close: the one before and the one just inducted."""

    before: int
    after: int
    reason: str


class Spacing:
    """Measures each new parcel's gap and pitch to the one before it at PE-IN."""

    def __init__(self, induction: InductionConfig) -> None:
        self._min_gap_mm = induction.min_gap_mm
        self._min_pitch_mm = induction.min_pitch_mm
        self._previous: TrackingWindow | None = None

    def inducted(self, window: TrackingWindow) -> TooClose | None:
        """A new parcel blocked PE-IN; the pair it makes with the one before, if too close."""
        previous, self._previous = self._previous, window
        if previous is None or not (self._min_gap_mm or self._min_pitch_mm):
            return None
        pitch = (window.blocked_enc - previous.blocked_enc) / window.counts_per_mm
        gap = (None if previous.cleared_enc is None
               else (window.blocked_enc - previous.cleared_enc) / window.counts_per_mm)
        if gap is not None and gap < self._min_gap_mm:
            why = f"gap {gap:.0f} mm, the diverters need {self._min_gap_mm:g}"
        elif pitch < self._min_pitch_mm:
            why = f"pitch {pitch:.0f} mm, the diverters need {self._min_pitch_mm:g}"
        else:
            return None
        return TooClose(previous.parcel_id, window.parcel_id,
                        f"parcels {previous.parcel_id} and {window.parcel_id} inducted too "
                        f"close: {why}")


def mark_too_close(pair: TooClose, parcels: Mapping[int, ParcelState]) -> int:
    """Mark both parcels of the pair, so neither is diverted; returns how many of them were
    already sent to a bin (the config keeps the gap shorter than PE-IN to the read zone's
    end, so that needs a belt that ran backwards or a bad encoder)."""
    late = 0
    for parcel_id in (pair.before, pair.after):
        parcel = parcels.get(parcel_id)
        if parcel is None:
            continue
        parcel.too_close = pair.reason
        if parcel.decided_at is not None and parcel.route not in (None, END_OF_LINE):
            late += 1
            log.warning("parcel %d: %s, found after it was sent to %s", parcel_id,
                        pair.reason, parcel.route, extra={"parcel": parcel_id})
    return late


def neighbour_in_reach(target: TrackingWindow, others: Iterable[TrackingWindow], arm_mm: float,
                       reach_mm: float, fire_enc: int) -> TrackingWindow | None:
    """A parcel other than ``target`` whose centre may be within ``reach_mm`` of the arm at
    ``arm_mm`` when it fires at ``fire_enc``: the push would move it too.

    One still at PE-IN has no centre yet: it is taken as no further on than its leading edge.
    """
    for window in others:
        if window.parcel_id == target.parcel_id:
            continue
        lead = window.lead_mm(fire_enc)
        length = window.length_mm
        if length is None:
            if lead >= arm_mm - reach_mm:
                return window
        elif abs(lead - length / 2 - arm_mm) <= reach_mm:
            return window
    return None
