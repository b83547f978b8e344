"""The physical line: belt, encoder, photo-eyes, cameras, diverters and bins.

Event-driven on the injected clock: every edge, frame and push happens at the exact moment
the belt's travel says, so a shift runs as fast as the machine can render frames. The line
knows the truth for every parcel, including where it really went. Its parts live beside
it: :mod:`sim_hardware.belt`, :mod:`sim_hardware.line_cameras` and
:mod:`sim_hardware.line_diverters`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from controller.clock import Clock
from controller.config import DiverterConfig, LineConfig
from controller.lineio import END_EYE, INDUCTION_EYE, PhotoEyeEdge
from sim_hardware.belt import Belt
from sim_hardware.line_cameras import LineCameras
from sim_hardware.line_diverters import BinModel, Fire, LineDiverters
from sim_hardware.line_state import EventSink, FrameSink, LineCounters
from sim_hardware.loop import LoopLine
from sim_hardware.scenario import Case, ScenarioSpec, SimParcel

__all__ = ["Belt", "BinModel", "EventSink", "Fire", "FrameSink", "LineCounters",
           "PhysicalLine"]

log = logging.getLogger(__name__)


class PhysicalLine(LineCameras, LineDiverters, LoopLine):
    """Runs a scenario's parcels down a configured line and records where each one went.

    On a loop (``end_of_line.role = "recirculate"``) parcels not diverted come round again,
    and new ones merge into free slots only (:mod:`sim_hardware.loop`).
    """

    def __init__(self, config: LineConfig, scenario: ScenarioSpec, parcels: Iterable[SimParcel],
                 clock: Clock, *, render: bool = True, free_running: bool = False,
                 truth_frames: bool = False) -> None:
        super().__init__(config, scenario, parcels, clock)
        self._init_cameras(render=render, free_running=free_running,
                           truth_frames=truth_frames)
        self._init_diverters()
        self._init_loop()

    # --- running ---------------------------------------------------------------------------

    async def run(self, infeed: asyncio.Event | None = None) -> None:
        """Run the whole stream until every parcel is in a bin or past the end of the line.

        With ``infeed``, the belt stands still and nothing is inducted until it is set (a
        real infeed waits for "sorter ready"); free-running cameras stream meanwhile,
        triggered ones start with the belt, and the shift counts from then.
        """
        if not self.parcels:
            self.done.set()
            return
        if infeed is not None:
            self.hold_belt()
        try:
            async with asyncio.TaskGroup() as tg:
                if self.free_running:
                    self._start_cameras(tg)
                if infeed is not None:
                    await infeed.wait()
                    self.start_belt()
                if not self.free_running:
                    self._start_cameras(tg)
                if self.config.end_of_line.recirculates:
                    tg.create_task(self._loop_induction(), name="sim.induction")
                    tg.create_task(self._wait_settled(), name="sim.end_of_line")
                else:
                    tg.create_task(self._induction(), name="sim.induction")
                    tg.create_task(self._end_of_line(), name="sim.end_of_line")
                await self.done.wait()
                if self.task_failures:  # the group's tasks are cancelled, the errors raised
                    raise ExceptionGroup("the emulated line's own tasks failed",
                                         self.task_failures)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def _start_cameras(self, tg: asyncio.TaskGroup) -> None:
        for camera in self.config.cameras:
            tg.create_task(self._camera(camera), name=f"sim.{camera.id}")

    def hold_belt(self) -> None:
        """Stand the belt still (encoder 0) until :meth:`start_belt`."""
        never = 1e9  # a moving stretch so far off that no parcel leaves a view meanwhile
        self.belt = Belt(self.clock, 0.0, self.config.belt.encoder_counts_per_mm,
                         [(never, self.config.belt.speed_mm_s)])

    async def _induction(self) -> None:
        pe = self.config.induction.photo_eye_mm
        reader = self._induction_reader
        while reader:
            parcel = reader.current()
            blocked_at = parcel.offset_mm + pe
            await self.clock.sleep_until(self.belt.time_at(blocked_at))
            self._inducted(parcel)
            reader.advance()
            parcel.induct_enc = self.belt.enc_at_travel(blocked_at)
            self._emit(PhotoEyeEdge(INDUCTION_EYE, True, parcel.induct_enc))
            cleared_at = blocked_at + parcel.length_mm
            await self.clock.sleep_until(self.belt.time_at(cleared_at))
            self._emit(PhotoEyeEdge(INDUCTION_EYE, False, self.belt.enc_at_travel(cleared_at)))

    async def _end_of_line(self) -> None:
        x_end = self.config.end_of_line.position_mm
        reader = self._end_reader
        assert reader is not None
        while reader:
            parcel = reader.current()
            arrival = parcel.offset_mm + x_end
            await self.clock.sleep_until(self.belt.time_at(arrival))
            reader.advance()
            if parcel.sim_id in self.on_belt:
                del self.on_belt[parcel.sim_id]
                self._emit(PhotoEyeEdge(END_EYE, True, self.belt.enc_at_travel(arrival)))
                self._settle(parcel, "END")
        await self._wait_settled()

    async def _wait_settled(self) -> None:
        while self._settled < len(self.parcels):
            await self.clock.sleep(0.1)
        self.done.set()

    # --- faults ----------------------------------------------------------------------------

    def _inducted(self, parcel: SimParcel) -> None:
        """On the belt; a stray push or a lift off it waits for its own moment on the belt."""
        super()._inducted(parcel)
        if parcel.stray_diverter is not None and parcel.case is Case.STRAY_PUSH:
            self._spawn(self._stray_push(parcel, self._diverters[parcel.stray_diverter]),
                        f"sim.stray[{parcel.sim_id}]")
        elif parcel.case is Case.PICKED_OFF:
            self._spawn(self._lift_off(parcel), f"sim.lift[{parcel.sim_id}]")

    async def _stray_push(self, parcel: SimParcel, diverter: DiverterConfig) -> None:
        await self._sleep_until_centre(parcel, diverter.position_mm)
        if parcel.sim_id in self.on_belt:
            parcel.events.append(f"stray push by {diverter.id}")
            await self._push(parcel, diverter)

    async def _lift_off(self, parcel: SimParcel) -> None:
        await self._sleep_until_centre(parcel, self.config.read_zone_end_mm + 300.0)
        if self.on_belt.pop(parcel.sim_id, None) is not None:
            parcel.events.append("lifted off the belt")
            self._settle(parcel, "REMOVED")

    async def _sleep_until_centre(self, parcel: SimParcel, x_mm: float) -> None:
        """Until the parcel's centre is at ``x_mm``, though a loop's merge holds it back."""
        while True:
            offset = parcel.offset_mm
            await self.clock.sleep_until(
                self.belt.time_at(offset + x_mm + parcel.length_mm / 2))
            if parcel.offset_mm == offset:
                return
