"""Tracking arithmetic and code-to-parcel assignment by position."""

from __future__ import annotations

import pytest

from controller.tracking import Tracker, TrackingWindow


def test_window_positions_follow_the_encoder() -> None:
    window = TrackingWindow(1, blocked_enc=1000, photo_eye_mm=50.0, counts_per_mm=2.0)
    assert window.lead_mm(1000) == 50.0
    assert window.trail_mm(1400) == 50.0  # still blocking PE-IN: trail is at the eye
    assert window.length_mm is None
    window.cleared_enc = 1800  # 400 mm long
    assert window.length_mm == 400.0
    assert window.lead_mm(3000) == pytest.approx(1050.0)
    assert window.trail_mm(3000) == pytest.approx(650.0)
    # centre reaches 2000 mm when the lead is at 2200 mm: (2200 - 50) * 2 + 1000 counts
    assert window.enc_when_centre_at(2000.0) == 5300
    assert window.enc_when_lead_at(2000.0) == 4900


def test_centre_unknown_until_photo_eye_clears() -> None:
    window = TrackingWindow(1, 0, 0.0, 1.0)
    with pytest.raises(AssertionError):
        window.enc_when_centre_at(100.0)


def _two_parcels_in_view() -> Tracker:
    tracker = Tracker(photo_eye_mm=0.0, counts_per_mm=2.0)
    tracker.blocked(1, 0)
    tracker.cleared(800)  # parcel 1: 400 mm
    tracker.blocked(2, 1000)  # 100 mm gap
    tracker.cleared(1600)  # parcel 2: 300 mm
    return tracker


def test_two_parcels_in_view_are_never_swapped() -> None:
    tracker = _two_parcels_in_view()
    enc = 3000  # parcel 1 spans [1100, 1500] mm, parcel 2 spans [700, 1000] mm
    assert tracker.at(1300.0, enc).parcel_id == 1  # type: ignore[union-attr]
    assert tracker.at(1101.0, enc).parcel_id == 1  # type: ignore[union-attr]
    assert tracker.at(999.0, enc).parcel_id == 2  # type: ignore[union-attr]
    assert tracker.at(750.0, enc).parcel_id == 2  # type: ignore[union-attr]
    assert tracker.at(1050.0, enc) is None  # the gap belongs to nobody
    assert tracker.at(1600.0, enc) is None


def test_a_read_within_reach_of_two_parcels_belongs_to_neither() -> None:
    tracker = _two_parcels_in_view()
    enc = 3000  # parcel 1 spans [1100, 1500] mm, parcel 2 spans [700, 1000] mm
    # With 60 mm tolerance both windows reach 1040-1060 mm: nobody's read.
    assert tracker.at(1050.0, enc, tolerance_mm=60) is None
    assert tracker.ambiguous(1050.0, enc, tolerance_mm=60)
    assert tracker.at(1170.0, enc, tolerance_mm=60).parcel_id == 1  # type: ignore[union-attr]
    assert tracker.at(930.0, enc, tolerance_mm=60).parcel_id == 2  # type: ignore[union-attr]
    assert not tracker.ambiguous(1170.0, enc, tolerance_mm=60)


def test_in_range_lists_parcels_overlapping_a_stretch() -> None:
    tracker = _two_parcels_in_view()
    assert [w.parcel_id for w in tracker.in_range(1200, 2000, 3000)] == [1]
    assert sorted(w.parcel_id for w in tracker.in_range(900, 1200, 3000)) == [1, 2]
    tracker.forget(1)
    assert [w.parcel_id for w in tracker.in_range(900, 1200, 3000)] == [2]


def test_spurious_clear_edge_is_reported() -> None:
    tracker = Tracker(0.0, 1.0)
    assert tracker.cleared(10) is None
    tracker.blocked(1, 20)
    assert tracker.cleared(30) is not None
    assert tracker.cleared(40) is None
