"""The emulated loop: parcels not diverted come back round to the induction.

On a line whose end of line recirculates (``end_of_line.role = "recirculate"``), the belt
is a loop of ``loop_length_mm``: a parcel that passes the end-of-line photo-eye undiverted
is carried back round and blocks PE-IN again a loop's length of travel after it first did,
in the same slot of the loop, then passes the read zone and the diverters again. Its lap
count (``SimParcel.laps``, from 1) is the truth the controller's is held against. After
``max_laps`` laps the loop's exit gate lets it off at the end of line (``actual = "END"``);
the controller's decision to send it to an exception bin is a divert like any other.

The induction merges new parcels onto the loop as a real merge does: a new parcel is held
back, and the parcels queued behind it with it (their gaps kept), until the slot of the
loop arriving at PE-IN is free of returning parcels by :func:`merge_gap_mm` on both sides.
A returning parcel is never held: it is already on the loop.
"""

from __future__ import annotations

import logging

from controller.config import LineConfig
from controller.lineio import END_EYE, INDUCTION_EYE, PhotoEyeEdge
from sim_hardware.line_state import LineState
from sim_hardware.scenario import SPACING_MARGIN_MM, SimParcel

log = logging.getLogger(__name__)

MERGE_GAP_MM = 150.0  # the least gap the merge leaves to a returning parcel


def merge_gap_mm(config: LineConfig) -> float:
    """The gap the merge keeps between a new parcel and a returning one, either side."""
    induction = config.induction
    return max(MERGE_GAP_MM, induction.min_gap_mm + SPACING_MARGIN_MM,
               induction.min_pitch_mm + SPACING_MARGIN_MM)


class LoopLine(LineState):
    """The induction and the end of line of a loop: merges, laps, the exit gate."""

    _merge_held = 0.0  # how long the merge has held the queue, all told (mm of belt)

    def _init_loop(self) -> None:
        if self.config.end_of_line.recirculates:
            self.parcels.on_reach = self._held_at_merge

    async def _loop_induction(self) -> None:
        pe = self.config.induction.photo_eye_mm
        reader = self._induction_reader
        while reader:
            i, parcel = reader.index, reader.current()
            held = self._merge_delay(parcel)
            if held > 0:
                parcel.events.append(f"held at the merge for {held:.0f} mm of belt")
                parcel.offset_mm += held
                self._keep_queue(i, held)
            await self.clock.sleep_until(self.belt.time_at(parcel.offset_mm + pe))
            self._inducted(parcel)
            reader.advance()
            parcel.induct_enc = self.belt.enc_at_travel(parcel.offset_mm + pe)
            await self._pass_induction(parcel)
            self._spawn(self._laps(parcel), f"sim.loop[{parcel.sim_id}]")

    def _keep_queue(self, i: int, held: float) -> None:
        """The parcels queued behind a held one move up behind it, their gaps kept: every
        one still to come is held as long, those the line has yet to reach once it does."""
        for j in range(i + 1, self.parcels.reached):
            self.parcels[j].offset_mm += held
        self._merge_held += held

    def _held_at_merge(self, parcel: SimParcel) -> None:
        parcel.offset_mm += self._merge_held

    def _merge_delay(self, parcel: SimParcel) -> float:
        """How much belt travel the parcel waits for a slot free of returning parcels."""
        loop = self.config.end_of_line.loop_length_mm
        assert loop is not None
        gap = merge_gap_mm(self.config)
        delay = 0.0
        for _ in range(len(self.on_belt) + 1):
            start = parcel.offset_mm + delay
            stream = self.config.end_of_line.position_mm - self.config.induction.photo_eye_mm
            step = max((self._wait_for(parcel, start, p, loop=loop, gap=gap, stream=stream)
                        for p in self.on_belt.values()), default=0.0)
            if step <= 0:
                return delay
            delay += step
        return delay

    @staticmethod
    def _wait_for(parcel: SimParcel, start: float, other: SimParcel, *, loop: float,
                  gap: float, stream: float) -> float:
        """How long ``parcel`` inducted at ``start`` must wait for ``other``'s slot to pass.

        ``other`` is ``ahead`` mm ahead of it round the loop. One that is still on its way
        from PE-IN to the end of line (``stream``) when this one is inducted is ahead by the
        stream's own gap (the scenario's, a pair too close included): only its coming back
        round behind matters. Any other must clear the merge gap either side.
        """
        ahead = (start - other.offset_mm) % loop
        in_stream = other.laps == 1 and 0 <= start - other.offset_mm < stream
        if not in_stream and ahead < other.length_mm + gap:
            return other.length_mm + gap - ahead
        if loop - ahead < parcel.length_mm + gap:  # it comes round into this slot
            return (loop - ahead) + other.length_mm + gap
        return 0.0

    async def _pass_induction(self, parcel: SimParcel) -> None:
        pe = self.config.induction.photo_eye_mm
        blocked_at = parcel.offset_mm + pe
        self._emit(PhotoEyeEdge(INDUCTION_EYE, True, self.belt.enc_at_travel(blocked_at)))
        cleared_at = blocked_at + parcel.length_mm
        await self.clock.sleep_until(self.belt.time_at(cleared_at))
        self._emit(PhotoEyeEdge(INDUCTION_EYE, False, self.belt.enc_at_travel(cleared_at)))

    async def _laps(self, parcel: SimParcel) -> None:
        """One parcel round the loop until a diverter takes it or the exit gate lets it off."""
        end = self.config.end_of_line
        assert end.loop_length_mm is not None
        pe = self.config.induction.photo_eye_mm
        while True:
            arrival = parcel.offset_mm + end.position_mm
            await self.clock.sleep_until(self.belt.time_at(arrival))
            if parcel.sim_id not in self.on_belt:
                return  # diverted, or lifted off
            self._emit(PhotoEyeEdge(END_EYE, True, self.belt.enc_at_travel(arrival)))
            if parcel.laps >= end.max_laps:
                del self.on_belt[parcel.sim_id]
                parcel.events.append(f"off the loop at the exit gate after lap {parcel.laps}")
                self._settle(parcel, "END")
                return
            parcel.offset_mm += end.loop_length_mm
            parcel.laps += 1
            parcel.events.append(f"round the loop: lap {parcel.laps}")
            await self.clock.sleep_until(self.belt.time_at(parcel.offset_mm + pe))
            if parcel.sim_id not in self.on_belt:
                return
            await self._pass_induction(parcel)
