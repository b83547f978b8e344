"""Tracking parcels by encoder position from the induction photo-eye.

A parcel is a window ``[trailing edge, leading edge]`` in line millimetres that starts when
PE-IN is blocked and ends when it clears; its position at any encoder count is the travel
since then. Reads, diverts and confirmations are located by position, never by queue order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class TrackingWindow:
    """Where one parcel is on the belt, from the encoder counts at its PE-IN edges."""

    parcel_id: int
    blocked_enc: int
    photo_eye_mm: float
    counts_per_mm: float
    cleared_enc: int | None = None

    @property
    def length_mm(self) -> float | None:
        if self.cleared_enc is None:
            return None
        return (self.cleared_enc - self.blocked_enc) / self.counts_per_mm

    def lead_mm(self, enc: int) -> float:
        """Leading edge position at encoder count ``enc``."""
        return self.photo_eye_mm + (enc - self.blocked_enc) / self.counts_per_mm

    def trail_mm(self, enc: int) -> float:
        """Trailing edge position; while PE-IN is still blocked it is at the photo-eye."""
        if self.cleared_enc is None:
            return min(self.photo_eye_mm, self.lead_mm(enc))
        return self.photo_eye_mm + (enc - self.cleared_enc) / self.counts_per_mm

    def covers(self, x_mm: float, enc: int, tolerance_mm: float = 0.0) -> bool:
        return self.trail_mm(enc) - tolerance_mm <= x_mm <= self.lead_mm(enc) + tolerance_mm

    def enc_when_centre_at(self, x_mm: float) -> int:
        """Encoder count at which the parcel's centre reaches ``x_mm`` (length must be known)."""
        length = self.length_mm
        assert length is not None, "centre is unknown until PE-IN clears"
        lead_target = x_mm + length / 2
        return self.blocked_enc + round((lead_target - self.photo_eye_mm) * self.counts_per_mm)

    def enc_when_lead_at(self, x_mm: float) -> int:
        return self.blocked_enc + round((x_mm - self.photo_eye_mm) * self.counts_per_mm)

    def carry_round(self, loop_mm: float) -> None:
        """On a loop: the same parcel one lap on, a loop's length upstream of where it was."""
        shift = round(loop_mm * self.counts_per_mm)
        self.blocked_enc += shift
        if self.cleared_enc is not None:
            self.cleared_enc += shift

    def inducted_again(self, enc: int) -> None:
        """PE-IN is blocked by this returning parcel: its window starts afresh at ``enc``."""
        self.blocked_enc, self.cleared_enc = enc, None


@dataclass
class Tracker:
    """The parcels on the belt, in induction order, located by encoder position."""

    photo_eye_mm: float
    counts_per_mm: float
    _windows: dict[int, TrackingWindow] = field(default_factory=dict)
    _open: TrackingWindow | None = None

    def blocked(self, parcel_id: int, enc: int) -> TrackingWindow:
        window = TrackingWindow(parcel_id, enc, self.photo_eye_mm, self.counts_per_mm)
        self._windows[parcel_id] = window
        self._open = window
        return window

    def cleared(self, enc: int) -> TrackingWindow | None:
        """Close the window PE-IN opened; None if it saw no block (a spurious edge)."""
        window, self._open = self._open, None
        if window is not None:
            window.cleared_enc = enc
        return window

    def returned(self, window: TrackingWindow, enc: int) -> None:
        """A tracked parcel coming round a loop blocks PE-IN again: it is inducting."""
        window.inducted_again(enc)
        self._windows[window.parcel_id] = window
        self._open = window

    @property
    def inducting(self) -> TrackingWindow | None:
        return self._open

    def get(self, parcel_id: int) -> TrackingWindow | None:
        return self._windows.get(parcel_id)

    def forget(self, parcel_id: int) -> None:
        self._windows.pop(parcel_id, None)

    def __iter__(self) -> Iterator[TrackingWindow]:
        return iter(list(self._windows.values()))

    def __len__(self) -> int:
        return len(self._windows)

    def at(self, x_mm: float, enc: int, tolerance_mm: float = 0.0) -> TrackingWindow | None:
        """The one parcel whose window, widened by the tolerance, covers ``x_mm`` at ``enc``.

        None if no window does, or if two do: a read that could belong to either of two
        parcels belongs to neither.
        """
        found = [w for w in self._windows.values() if w.covers(x_mm, enc, tolerance_mm)]
        return found[0] if len(found) == 1 else None

    def leading_at(self, x_mm: float, enc: int, tolerance_mm: float) -> TrackingWindow | None:
        """The one parcel whose leading edge is within the tolerance of ``x_mm`` at ``enc``:
        a photo-eye's blocking edge, told apart from a parcel just before it by its leading
        edge, however small the gap between them. None if none is, or two are."""
        found = [w for w in self._windows.values()
                 if abs(w.lead_mm(enc) - x_mm) <= tolerance_mm]
        return found[0] if len(found) == 1 else None

    def ambiguous(self, x_mm: float, enc: int, tolerance_mm: float) -> bool:
        """Whether ``x_mm`` lies within the tolerance of two parcels' windows."""
        return sum(w.covers(x_mm, enc, tolerance_mm) for w in self._windows.values()) > 1

    def in_range(self, start_mm: float, end_mm: float, enc: int) -> list[TrackingWindow]:
        """Parcels overlapping the stretch ``[start_mm, end_mm]`` at ``enc``."""
        return [w for w in self._windows.values()
                if w.lead_mm(enc) >= start_mm and w.trail_mm(enc) <= end_mm]
