"""The state the pipeline's stages share: each tracked parcel, the bins, the counters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from controller.archive import ArchivedFrame
from controller.codes import ParcelReads, ReadVerdict
from controller.disposition import END_OF_LINE, Disposition
from controller.journal import FinalRecord
from controller.lineio import DivertCommand
from controller.orders import Order
from controller.tracking import Tracker, TrackingWindow


@dataclass
class ParcelState:
    """Everything the controller knows about one tracked parcel."""

    window: TrackingWindow
    reads: ParcelReads
    inducted_at: float
    verdict: ReadVerdict = ReadVerdict.PENDING
    code: str | None = None
    order: Order | None = None
    disposition: Disposition | None = None
    reason: str = ""
    route: str | None = None  # a bin id or END_OF_LINE, once decided
    decided_at: float | None = None
    command: DivertCommand | None = None
    zone_exit_at: float | None = None
    booked: bool = False  # counted in its bin's in-flight parcels until confirmed or given up
    strayed_into: str | None = None  # a bin that took a parcel unbidden while it was in front
    lost_track: bool = False  # given up: its position is not known, so it is never diverted
    missing_deferred: bool = False  # past where it is called missing, while the loop lagged
    too_close: str = ""  # why it is too close to a neighbour to be diverted, if it is
    lap: int = 1  # on a loop: the pass it is on, from 1
    returning: bool = False  # on a loop: past the end of line, on its way back to PE-IN
    last_code: str | None = None  # on a loop: the code read on an earlier lap
    frames: list[tuple[bool, ArchivedFrame]] = field(default_factory=list)  # (whole, crop)

    def keep_frame(self, frame: ArchivedFrame, *, whole: bool, limit: int) -> None:
        """Keep the latest frames, those showing the whole parcel before the others."""
        self.frames.append((whole, frame))
        if len(self.frames) > limit:
            partial = next((i for i, (w, _) in enumerate(self.frames) if not w), 0)
            del self.frames[partial]

    def to_end(self, disposition: Disposition, reason: str) -> None:
        """Send it nowhere: it rides to the end of the line, where it ends ``disposition``."""
        self.disposition, self.reason, self.route = disposition, reason, END_OF_LINE

    def next_lap(self, reads: ParcelReads) -> None:
        """On a loop, at PE-IN again: a fresh chance, its reads and decision from scratch."""
        self.lap += 1
        self.returning = False
        self.last_code = self.code or self.last_code
        self.reads, self.verdict, self.code, self.order = reads, ReadVerdict.PENDING, None, None
        self.route = self.decided_at = self.command = self.zone_exit_at = None
        self.disposition, self.reason = None, ""
        self.strayed_into = None

    def final_record(self, disposition: Disposition, where: str, now: float) -> FinalRecord:
        """Its one final record: ending ``disposition`` at ``where`` (a bin, END, UNKNOWN)."""
        order = self.order
        return FinalRecord(
            parcel_id=self.parcel_id, disposition=disposition, bin=where, reason=self.reason,
            code=self.code, order_id=order.order_id if order else None,
            length_mm=self.window.length_mm, decided_at=self.decided_at, final_at=now,
            order_created_at=order.created_at if order else None, laps=self.lap)

    @property
    def parcel_id(self) -> int:
        return self.window.parcel_id


@dataclass
class BinState:
    """A dispatch bin's fill as the controller counts it, and its full sensor."""

    capacity: int
    full_sensor: bool = False
    confirmed: int = 0
    in_flight: int = 0

    @property
    def available(self) -> bool:
        return not self.full_sensor and self.confirmed + self.in_flight < self.capacity


@dataclass
class SorterStats:
    """Counters beside the dispositions: what went wrong that is not a parcel's outcome."""

    dispositions: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    frames_decoded: int = 0
    frames_undecodable: int = 0  # a camera's image that did not decode, when it was wanted
    frames_ahead_of_events: int = 0  # skipped: the line's events had not caught up with them
    reads_unassigned: int = 0
    reads_ambiguous: int = 0  # within reach of two parcels: given to neither
    duplicate_codes: int = 0
    unexpected_bin_entries: int = 0
    unknown_end_arrivals: int = 0
    spurious_edges: int = 0
    device_faults: int = 0
    tracking_lost: int = 0  # times the belt positions of all parcels on it were given up
    unanswered_diverts: int = 0
    order_store_errors: int = 0
    decision_errors: int = 0  # decisions that raised: their parcels went to the end as LATE
    too_close_decided: int = 0  # a pair too close found after one of them was decided
    recirculated: int = 0  # laps begun again on a loop (a parcel on its 3rd lap counts 2)
    returns_missed: int = 0  # parcels that went round the loop and did not come back to PE-IN
    lap_code_mismatches: int = 0  # a returning parcel read with another code than before
    archive_errors: int = 0
    loop_lag_max_ms: float = 0.0  # the event loop's worst wake-up past a watcher tick
    loop_lag_ticks: int = 0  # watcher ticks woken over LAG_TICK_MS late
    event_lag_max_ms: float = 0.0  # the oldest line event when the controller took it in
    events_late: int = 0  # line events taken in over LAG_TICK_MS after they were latched
    missing_deferred: int = 0  # parcels not yet called missing: the loop lagged behind events
    frames_by_camera: Counter[str] = field(default_factory=Counter)  # received, per camera
    decoded_by_camera: Counter[str] = field(default_factory=Counter)


Finalise = Callable[[ParcelState, Disposition, str], None]
"""Ends a parcel with its one disposition, at a bin id, END_OF_LINE or "UNKNOWN" (its record
written in the background, counted once committed)."""


@dataclass
class Belt:
    """The parcels on the belt, where they are, and the bins they are booked into."""

    tracker: Tracker
    bins: dict[str, BinState]
    stats: SorterStats = field(default_factory=SorterStats)
    parcels: dict[int, ParcelState] = field(default_factory=dict)
    finalising: set[int] = field(default_factory=set)  # being ended: no stage touches them

    def active(self) -> Iterator[ParcelState]:
        """The tracked parcels not being ended, in induction order (a snapshot)."""
        return iter([p for p in self.parcels.values() if p.parcel_id not in self.finalising])

    def book(self, parcel: ParcelState, bin_id: str) -> None:
        """Count the parcel into its bin before it is there, so decisions do not over-fill."""
        self.bins[bin_id].in_flight += 1
        parcel.booked = True

    def unbook(self, parcel: ParcelState, bin_id: str) -> None:
        if parcel.booked:
            self.bins[bin_id].in_flight -= 1
            parcel.booked = False

    def full_bins(self) -> frozenset[str]:
        return frozenset(b for b, state in self.bins.items() if not state.available)

    def track_afresh(self) -> None:
        """Forget every belt position: tracking starts again with the next parcel inducted."""
        self.tracker = Tracker(self.tracker.photo_eye_mm, self.tracker.counts_per_mm)
