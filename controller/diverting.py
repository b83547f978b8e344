"""Carrying out a route: the deadline check, the bin booking, the divert command and its answer."""

from __future__ import annotations

import logging

from controller.clock import Clock
from controller.config import LineConfig
from controller.disposition import Disposition
from controller.errors import DriverError, DriverTimeout
from controller.lineio import DivertCommand, LineIO
from controller.message_log import MessageLog
from controller.parcel import Belt, ParcelState
from controller.routing import Route
from controller.spacing import neighbour_in_reach
from controller.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

REACH_MARGIN_COUNTS = 2


class DivertScheduler:
    """Schedules a parcel's divert for when its centre is at the diverter, if still in time.

    A divert that cannot be sent in time, that would push a neighbour too, or that the line's
    I/O side refuses, is not retried: the parcel rides to the end of the line (LATE,
    TOO_CLOSE or DIVERT_FAULT). Each command,
    its answer (with its latency) or its lack of one is written to ``messages``.
    """

    def __init__(self, config: LineConfig, line_io: LineIO, belt: Belt, clock: Clock, *,
                 telemetry: Telemetry = NO_TELEMETRY, messages: MessageLog | None = None) -> None:
        self._config = config
        self._clock = clock
        self._telemetry = telemetry
        self._line_io = line_io
        self._belt = belt
        self._cpm = config.belt.encoder_counts_per_mm
        self._next_command_id = 1
        self._messages = messages if messages is not None else MessageLog()
        self._links = {d.id: config.diverter_link(d) if config.line_io is not None
                       else "inprocess" for d in config.diverters}

    def next_command_id(self) -> int:
        """A command id no other divert of this controller has (a test fire's too)."""
        command_id, self._next_command_id = self._next_command_id, self._next_command_id + 1
        return command_id

    async def divert(self, parcel: ParcelState, route: Route) -> None:
        """Send the divert the route asks for; the parcel's route and reason say what came of it."""
        if parcel.lost_track:
            return  # decided while tracking was lost: already finalised, never fired for
        bin_id = route.bin
        diverter = self._config.diverter_for_bin(bin_id)
        fire_enc = parcel.window.enc_when_centre_at(diverter.position_mm)
        # the arm's half span, widened by the encoder's resolution: each edge is known to a
        # count, so a centre to a count and a half
        reach_mm = diverter.window_mm / 2 + REACH_MARGIN_COUNTS / self._cpm
        on_belt = (w for w in self._belt.tracker if w.parcel_id not in self._belt.finalising)
        neighbour = neighbour_in_reach(parcel.window, on_belt, diverter.position_mm, reach_mm,
                                       fire_enc)
        if neighbour is not None:
            parcel.to_end(Disposition.TOO_CLOSE,
                          f"parcel {neighbour.parcel_id} would be within {diverter.id}'s reach "
                          f"({reach_mm:g} mm of the arm) when it fired for {bin_id}")
            return
        # At the nominal speed, the fastest: the belt may speed up to it during the actuation.
        lead_mm = diverter.actuation_ms / 1000 * self._config.belt.speed_mm_s
        deadline_enc = fire_enc - round((lead_mm + self._config.decision.margin_mm) * self._cpm)
        if self._line_io.encoder() > deadline_enc:
            parcel.to_end(Disposition.LATE,
                          f"decision for {bin_id} came {self._line_io.encoder() - deadline_enc}"
                          " counts after its deadline")
            return
        command = DivertCommand(self.next_command_id(), parcel.parcel_id, diverter.id,
                                fire_enc, diverter.pulse_ms)
        # Booked before the reply: a bin must not be over-booked by decisions in flight.
        self._belt.book(parcel, bin_id)
        sent_at = self._clock.now()
        link, messages = self._links[diverter.id], self._messages
        messages.record(parcel.parcel_id, "sent", link, "divert",
                        {"command": command.command_id, "diverter": diverter.id,
                         "fire_enc": fire_enc}, at=sent_at)
        try:
            reply = await self._line_io.divert(command)
        except DriverError as exc:
            messages.record(parcel.parcel_id, "received", link, "divert_unanswered"
                            if isinstance(exc, DriverTimeout) else "divert_not_sent",
                            {"command": command.command_id, "error": str(exc)},
                            at=self._clock.now())
            self._failed(parcel, route, command, exc)
            return
        except BaseException:
            # Not known whether it went out: the decision fails and the parcel goes to the end.
            self._belt.unbook(parcel, bin_id)
            raise
        answered_at = self._clock.now()
        messages.record(parcel.parcel_id, "received", link, "divert_answer",
                        {"command": command.command_id, "accepted": reply.accepted}
                        if reply.accepted else
                        {"command": command.command_id, "accepted": False,
                         "reason": reply.reason}, at=answered_at, latency_s=answered_at - sent_at)
        self._telemetry.observe_divert(answered_at - sent_at)
        if parcel.lost_track:  # given up while the answer was on its way
            self._belt.unbook(parcel, bin_id)
            return
        if not reply.accepted:
            self._belt.unbook(parcel, bin_id)
            late = reply.reason == "late"
            parcel.to_end(Disposition.LATE if late else Disposition.DIVERT_FAULT,
                          f"{diverter.id} refused the divert: {reply.reason}")
            return
        parcel.command, parcel.route = command, bin_id
        parcel.disposition, parcel.reason = route.disposition, route.reason

    def _failed(self, parcel: ParcelState, route: Route, command: DivertCommand,
                exc: DriverError) -> None:
        bin_id = route.bin
        if isinstance(exc, DriverTimeout):
            # Sent but unanswered: the driver takes it back, yet it may have fired already.
            # Kept as sent, so the bin's photo-eye or the end of the line settles it.
            self._belt.stats.unanswered_diverts += 1
            parcel.command, parcel.route = command, bin_id
            parcel.disposition = route.disposition
            parcel.reason = f"{route.reason}; divert unanswered ({exc}), cancelled"
            return
        # LinkDown and the like: never sent
        self._belt.unbook(parcel, bin_id)
        parcel.to_end(Disposition.DIVERT_FAULT, f"divert not sent: {exc}")
