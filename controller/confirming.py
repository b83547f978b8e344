"""Where parcels ended up: bin photo-eyes, the end of the line, missing parcels, lost tracking.

A parcel's disposition is final only once it is seen somewhere (or known not to be): a
bin's photo-eye confirms a divert, the end-of-line photo-eye sees everything not diverted,
and a parcel seen nowhere well past the end is MISSORT (a bin took it unbidden) or LOST.

A bin's drop and confirmation windows are set in milliseconds and measured in time: from the
moment the belt reached the fire's count (when the board fired) to the moment of the bin's
entry, read off the encoder history. So a slowed or stopped belt neither widens nor narrows
them. Where the history does not reach back that far, the least time the belt can have
taken counts (the distance at its nominal, fastest speed, or the history's whole span).
"""

from __future__ import annotations

import logging

from controller.clock import Clock
from controller.config import DiverterConfig, LineConfig
from controller.disposition import END_OF_LINE, Disposition
from controller.encoder import EncoderHistory
from controller.message_log import MessageLog
from controller.parcel import Belt, Finalise, ParcelState

log = logging.getLogger(__name__)

LOST_AFTER_MM = 400.0  # past the end-of-line photo-eye and not seen by it: not on the belt
END_REACH_MM = 20.0  # beyond the read tolerance, for a parcel turned or pushed aside a bit
LAG_TICK_MS = 50.0  # a watcher tick this late is counted as loop lag
LAG_DECAY = 0.998  # per tick: a lag spike widens the grace for the next seconds


class Confirmations:
    """Settles each parcel's disposition from what the line's sensors saw of it."""

    def __init__(self, config: LineConfig, belt: Belt, finalise: Finalise, clock: Clock, *,
                 messages: MessageLog | None = None,
                 history: EncoderHistory | None = None) -> None:
        self._config = config
        self._clock = clock
        self._belt = belt
        self._finalise = finalise
        self._cpm = config.belt.encoder_counts_per_mm
        self._nominal_counts_per_s = config.belt.speed_mm_s * self._cpm
        # Fed by at_position too: without the coordinator's history it keeps its own.
        self._history = history if history is not None else EncoderHistory()
        self._messages = messages if messages is not None else MessageLog()
        self._link = config.line_io.sensors if config.line_io is not None else "inprocess"
        self._lag_s = 0.0  # recent worst loop lag: line events that old may not be in yet

    def loop_lagged(self, lag_s: float) -> None:
        """The watcher woke ``lag_s`` late: the line's events of that long may still be
        queued, so nothing is called missing, or unconfirmed, until they can have come in."""
        stats = self._belt.stats
        stats.loop_lag_max_ms = max(stats.loop_lag_max_ms, lag_s * 1000)
        if lag_s * 1000 > LAG_TICK_MS:
            stats.loop_lag_ticks += 1
        self._lag_s = max(lag_s, self._lag_s * LAG_DECAY, 0.0)

    def event_late(self, age_s: float) -> None:
        """A line event came in ``age_s`` after it was latched: later ones may be as late."""
        stats = self._belt.stats
        stats.event_lag_max_ms = max(stats.event_lag_max_ms, age_s * 1000)
        if age_s * 1000 > LAG_TICK_MS:
            stats.events_late += 1
        self._lag_s = max(self._lag_s, age_s)

    def bin_level(self, bin_id: str, full: bool) -> None:
        """A bin's full sensor changed; an emptied bin counts from zero again."""
        state = self._belt.bins.get(bin_id)
        if state is None:
            return
        state.full_sensor = full
        if not full:
            state.confirmed = 0

    def bin_entry(self, bin_id: str, enc: int) -> None:
        """A parcel fell into a bin: the booked divert it fits best confirms, else a stray."""
        bin_config = next((b for b in self._config.bins if b.id == bin_id), None)
        if bin_config is None:
            return
        timeout_s = bin_config.confirm_timeout_ms / 1000
        drop_s = bin_config.drop_ms / 1000
        now = self._clock.now()
        entered_at = self._entered_at(enc, now)
        # A bin's photo-eye cannot tell parcels apart: the entry belongs to the booked divert
        # it fits best in time.
        fits: list[tuple[float, ParcelState]] = []
        for p in self._belt.active():
            if p.booked and p.command is not None and p.route == bin_id \
                    and p.command.fire_enc <= enc:
                since_fire = self._seconds_since(p.command.fire_enc, enc, entered_at)
                if since_fire <= timeout_s:
                    fits.append((abs(since_fire - drop_s), p))
        if not fits:
            self._belt.stats.unexpected_bin_entries += 1
            suspect = self._in_front_of(self._config.diverter_for_bin(bin_id),
                                        self._count_at(entered_at - drop_s, enc, drop_s))
            log.warning("bin %s: a parcel fell in that no divert was sent for%s", bin_id,
                        f" (parcel {suspect.parcel_id} was in front of it)" if suspect else "")
            if suspect is not None:
                suspect.strayed_into = bin_id
            return
        _, parcel = min(fits, key=lambda fit: fit[0])
        self._messages.record(parcel.parcel_id, "received", self._link, "bin_entry",
                              {"bin": bin_id, "enc": enc}, at=now)
        self._belt.unbook(parcel, bin_id)
        self._belt.bins[bin_id].confirmed += 1
        self._finalise(parcel, parcel.disposition or Disposition.SORTED, bin_id)

    def _entered_at(self, enc: int, now: float) -> float:
        """When a bin entry stamped ``enc`` happened: the last moment the belt was at ``enc``
        (on a stopped belt, or an event just in, that is now)."""
        moved_on = self._history.first_reached(enc + 1)
        return now if moved_on is None else min(now, moved_on)

    def _seconds_since(self, count: int, enc: int, at: float) -> float:
        """How long the belt took from ``count`` to ``enc``, which it was at at ``at``.

        Where the history does not say when it reached ``count``: the least it can have
        taken, at the nominal (fastest) speed or, before the history, its whole span.
        """
        reached = self._history.first_reached(count)
        if reached is not None:
            return max(0.0, at - reached)
        least = max(0.0, (enc - count) / self._nominal_counts_per_s)
        latest, since = self._history.latest, self._history.since
        if latest is None or since is None or count > latest[1]:
            return least  # no samples, or reached after the newest one
        return max(least, at - since)

    def _count_at(self, when: float, enc: int, before_s: float) -> int:
        """The count at ``when``, ``before_s`` before the belt was at ``enc``; at the nominal
        speed where the history does not reach back."""
        since = self._history.since
        if since is None or when < since:
            return enc - round(before_s * self._nominal_counts_per_s)
        return min(enc, self._history.at(when))

    def _in_front_of(self, diverter: DiverterConfig, enc: int) -> ParcelState | None:
        """The tracked parcel whose centre was nearest the diverter's arm at ``enc``."""
        best: tuple[float, ParcelState] | None = None
        for parcel in self._belt.active():
            length = parcel.window.length_mm
            if length is None:
                continue
            off = abs(parcel.window.lead_mm(enc) - length / 2 - diverter.position_mm)
            if off <= diverter.window_mm and (best is None or off < best[0]):
                best = (off, parcel)
        return best[1] if best else None

    def end_arrival(self, enc: int) -> None:
        """The end-of-line photo-eye saw a parcel: sent there, fired in vain, or undecided."""
        x_end = self._config.end_of_line.position_mm
        # The eye is blocked by a leading edge: with gaps shorter than the tolerance, the
        # parcel before it still covers the eye, so the window is found by its leading edge.
        window = self._belt.tracker.leading_at(
            x_end, enc, self._config.decision.assign_tolerance_mm + END_REACH_MM)
        parcel = self._belt.parcels.get(window.parcel_id) if window else None
        if parcel is None or parcel.parcel_id in self._belt.finalising:
            self._belt.stats.unknown_end_arrivals += 1
            log.warning("end of line: a parcel arrived that is not tracked (enc %d)", enc)
            return
        self._messages.record(parcel.parcel_id, "received", self._link, "end_arrival",
                              {"enc": enc}, at=self._clock.now())
        if parcel.route == END_OF_LINE and parcel.disposition is not None:
            self._finalise(parcel, parcel.disposition, END_OF_LINE)
        elif parcel.command is not None and parcel.route is not None:
            self._belt.unbook(parcel, parcel.route)
            parcel.reason = f"fired at {parcel.route} but arrived at the end of line"
            self._finalise(parcel, Disposition.DIVERT_FAULT, END_OF_LINE)
        else:
            # Arrived before any decision was reached: the fail-safe route.
            parcel.reason = parcel.reason or "no decision before the end of line"
            self._finalise(parcel, Disposition.LATE, END_OF_LINE)

    def at_position(self, parcel: ParcelState, enc: int) -> None:
        """The position watcher's look at a parcel: its bin's window over, or missing."""
        now = self._clock.now()
        self._history.record(now, enc)
        if parcel.booked and parcel.command is not None and parcel.route is not None:
            timeout_s = self._config.bin(parcel.route).confirm_timeout_ms / 1000
            fire_enc = parcel.command.fire_enc
            if enc >= fire_enc and \
                    self._seconds_since(fire_enc, enc, now) > timeout_s + 2 * self._lag_s:
                # Not in its bin: it may still ride to the end of the line; keep tracking.
                self._belt.unbook(parcel, parcel.route)
        past_end_mm = parcel.window.trail_mm(enc) - self._config.end_of_line.position_mm
        if past_end_mm > LOST_AFTER_MM:
            # An end-of-line edge latched this long ago may still wait behind a lagging loop.
            if past_end_mm <= LOST_AFTER_MM + 2 * self._lag_s * self._config.belt.speed_mm_s:
                if not parcel.missing_deferred:
                    parcel.missing_deferred = True
                    self._belt.stats.missing_deferred += 1
                return
            self._missing(parcel)

    def _missing(self, parcel: ParcelState) -> None:
        """A parcel not seen where it was sent: mis-sorted if a bin took it unbidden."""
        if parcel.strayed_into is not None:
            parcel.reason = f"sent to {parcel.route}, fell into {parcel.strayed_into}"
            self._finalise(parcel, Disposition.MISSORT, parcel.strayed_into)
            return
        if parcel.command is not None:
            parcel.reason = f"fired at {parcel.route}: not confirmed there, not seen at the end"
        elif parcel.route is not None:
            parcel.reason = f"sent to {parcel.route}, not seen there"
        else:
            parcel.reason = "passed the end of line undecided and unseen"
        self._finalise(parcel, Disposition.LOST, "UNKNOWN")

    def lose_track(self, why: str) -> None:
        """Give up every tracked parcel: their positions are gone, so nothing fires for them.

        Each ends LOST (it rides to the end of the line, or into a bin its divert had already
        put it in); the coordinator then tracks afresh from the next parcel inducted.
        """
        self._belt.stats.tracking_lost += 1
        given_up = list(self._belt.parcels.values())
        log.error("tracking lost (%s): %d parcels on the belt given up", why, len(given_up))
        for parcel in given_up:  # all at once, before a decision in flight can divert one
            parcel.lost_track = True
            parcel.reason = f"tracking lost: {why}"
            if parcel.route is not None:
                self._belt.unbook(parcel, parcel.route)
        for parcel in given_up:
            self._finalise(parcel, Disposition.LOST, "UNKNOWN")
