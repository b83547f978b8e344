"""Where parcels ended up: bin photo-eyes, the end of the line, missing parcels, lost tracking.

A parcel's disposition is final only once it is seen somewhere (or known not to be): a
bin's photo-eye confirms a divert, the end-of-line photo-eye sees everything not diverted,
and a parcel seen nowhere well past the end is MISSORT (a bin took it unbidden) or LOST.
"""

from __future__ import annotations

import logging

from controller.clock import Clock
from controller.config import DiverterConfig, LineConfig
from controller.disposition import END_OF_LINE, Disposition
from controller.message_log import MessageLog
from controller.parcel import Belt, Finalise, ParcelState

log = logging.getLogger(__name__)

LOST_AFTER_MM = 400.0  # past the end-of-line photo-eye and not seen by it: not on the belt
END_REACH_MM = 20.0  # beyond the read tolerance, for a parcel turned or pushed aside a bit


class Confirmations:
    """Settles each parcel's disposition from what the line's sensors saw of it."""

    def __init__(self, config: LineConfig, belt: Belt, finalise: Finalise, clock: Clock, *,
                 messages: MessageLog | None = None) -> None:
        self._config = config
        self._clock = clock
        self._belt = belt
        self._finalise = finalise
        self._cpm = config.belt.encoder_counts_per_mm
        self._messages = messages if messages is not None else MessageLog()
        self._link = config.line_io.sensors if config.line_io is not None else "inprocess"

    def bin_level(self, bin_id: str, full: bool) -> None:
        """A bin's full sensor changed; an emptied bin counts from zero again."""
        state = self._belt.bins.get(bin_id)
        if state is None:
            return
        state.full_sensor = full
        if not full:
            state.confirmed = 0

    async def bin_entry(self, bin_id: str, enc: int) -> None:
        """A parcel fell into a bin: the booked divert it fits best confirms, else a stray."""
        bin_config = next((b for b in self._config.bins if b.id == bin_id), None)
        if bin_config is None:
            return
        counts_per_s = self._config.belt.speed_mm_s * self._cpm
        window = bin_config.confirm_timeout_ms / 1000 * counts_per_s
        drop = bin_config.drop_ms / 1000 * counts_per_s
        # A bin's photo-eye cannot tell parcels apart: the entry belongs to the booked divert
        # it fits best in time.
        fits = [(abs(enc - (p.command.fire_enc + drop)), p) for p in self._belt.active()
                if p.booked and p.command is not None and p.route == bin_id
                and p.command.fire_enc <= enc <= p.command.fire_enc + window]
        if not fits:
            self._belt.stats.unexpected_bin_entries += 1
            suspect = self._in_front_of(self._config.diverter_for_bin(bin_id),
                                        enc - round(drop))
            log.warning("bin %s: a parcel fell in that no divert was sent for%s", bin_id,
                        f" (parcel {suspect.parcel_id} was in front of it)" if suspect else "")
            if suspect is not None:
                suspect.strayed_into = bin_id
            return
        _, parcel = min(fits, key=lambda fit: fit[0])
        self._messages.record(parcel.parcel_id, "received", self._link, "bin_entry",
                              {"bin": bin_id, "enc": enc}, at=self._clock.now())
        self._belt.unbook(parcel, bin_id)
        self._belt.bins[bin_id].confirmed += 1
        await self._finalise(parcel, parcel.disposition or Disposition.SORTED, bin_id)

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

    async def end_arrival(self, enc: int) -> None:
        """The end-of-line photo-eye saw a parcel: sent there, fired in vain, or undecided."""
        x_end = self._config.end_of_line.position_mm
        window = self._belt.tracker.at(x_end, enc,
                                       self._config.decision.assign_tolerance_mm + END_REACH_MM)
        parcel = self._belt.parcels.get(window.parcel_id) if window else None
        if parcel is None or parcel.parcel_id in self._belt.finalising:
            self._belt.stats.unknown_end_arrivals += 1
            log.warning("end of line: a parcel arrived that is not tracked (enc %d)", enc)
            return
        self._messages.record(parcel.parcel_id, "received", self._link, "end_arrival",
                              {"enc": enc}, at=self._clock.now())
        if parcel.route == END_OF_LINE and parcel.disposition is not None:
            await self._finalise(parcel, parcel.disposition, END_OF_LINE)
        elif parcel.command is not None and parcel.route is not None:
            self._belt.unbook(parcel, parcel.route)
            parcel.reason = f"fired at {parcel.route} but arrived at the end of line"
            await self._finalise(parcel, Disposition.DIVERT_FAULT, END_OF_LINE)
        else:
            # Arrived before any decision was reached: the fail-safe route.
            parcel.reason = parcel.reason or "no decision before the end of line"
            await self._finalise(parcel, Disposition.LATE, END_OF_LINE)

    async def at_position(self, parcel: ParcelState, enc: int) -> None:
        """The position watcher's look at a parcel: its bin's window over, or missing."""
        if parcel.booked and parcel.command is not None and parcel.route is not None:
            timeout_ms = self._config.bin(parcel.route).confirm_timeout_ms
            timeout_mm = timeout_ms / 1000 * self._config.belt.speed_mm_s
            if enc > parcel.command.fire_enc + timeout_mm * self._cpm:
                # Not in its bin: it may still ride to the end of the line; keep tracking.
                self._belt.unbook(parcel, parcel.route)
        if parcel.window.trail_mm(enc) > self._config.end_of_line.position_mm + LOST_AFTER_MM:
            await self._missing(parcel)

    async def _missing(self, parcel: ParcelState) -> None:
        """A parcel not seen where it was sent: mis-sorted if a bin took it unbidden."""
        if parcel.strayed_into is not None:
            parcel.reason = f"sent to {parcel.route}, fell into {parcel.strayed_into}"
            await self._finalise(parcel, Disposition.MISSORT, parcel.strayed_into)
            return
        if parcel.command is not None:
            parcel.reason = f"fired at {parcel.route}: not confirmed there, not seen at the end"
        elif parcel.route is not None:
            parcel.reason = f"sent to {parcel.route}, not seen there"
        else:
            parcel.reason = "passed the end of line undecided and unseen"
        await self._finalise(parcel, Disposition.LOST, "UNKNOWN")

    async def lose_track(self, why: str) -> None:
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
            await self._finalise(parcel, Disposition.LOST, "UNKNOWN")
