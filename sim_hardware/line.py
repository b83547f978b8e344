"""The physical line: belt, encoder, photo-eyes, cameras, diverters and bins.

Event-driven on the injected clock: every edge, frame and push happens at the exact moment
the belt's travel says, so a shift runs as fast as the machine can render frames. The line
knows the truth for every parcel, including where it really went.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.clock import Clock
from controller.config import CameraConfig, DiverterConfig, LineConfig
from controller.lineio import (
    END_EYE,
    INDUCTION_EYE,
    BinEntry,
    BinLevel,
    DivertCommand,
    DivertReply,
    LineEvent,
    PhotoEyeEdge,
)
from controller.vision import Frame
from sim_hardware.render import FrameRenderer, ParcelTop
from sim_hardware.scenario import Case, ScenarioSpec, SimParcel

log = logging.getLogger(__name__)


class Belt:
    """Belt travel over time, an encoder on its shaft.

    The speed is piecewise constant: ``speed_mm_s`` from the start, then each
    ``(seconds after start, speed)`` of ``changes`` in turn; a speed of 0 is a stop.
    """

    def __init__(self, clock: Clock, speed_mm_s: float, counts_per_mm: float,
                 changes: Sequence[tuple[float, float]] = ()) -> None:
        self.clock = clock
        self.counts_per_mm = counts_per_mm
        self.start = clock.now()
        # (start time, travel at that time, speed) for each stretch of constant speed
        self._segments: list[tuple[float, float, float]] = [(self.start, 0.0, speed_mm_s)]
        for at, speed in sorted(changes):
            t0, d0, v0 = self._segments[-1]
            t = self.start + at
            self._segments.append((t, d0 + (t - t0) * v0, speed))
        self._times = [s[0] for s in self._segments]
        moving = [s for s in self._segments if s[2] > 0]
        self._moving = moving
        self._moving_travel = [s[1] for s in moving]

    @property
    def speed(self) -> float:
        """The speed now."""
        return self._segments[bisect.bisect_right(self._times, self.clock.now()) - 1][2]

    def travel(self, at: float | None = None) -> float:
        t = self.clock.now() if at is None else at
        if t <= self.start:
            return 0.0
        t0, d0, v = self._segments[bisect.bisect_right(self._times, t) - 1]
        return d0 + (t - t0) * v

    def time_at(self, travel_mm: float) -> float:
        """The first moment the belt has travelled ``travel_mm``."""
        t0, d0, v = self._moving[max(0, bisect.bisect_left(self._moving_travel, travel_mm) - 1)]
        return t0 + max(0.0, travel_mm - d0) / v

    def enc_at_travel(self, travel_mm: float) -> int:
        return math.floor(travel_mm * self.counts_per_mm)

    def encoder(self) -> int:
        return self.enc_at_travel(self.travel())


@dataclass
class BinModel:
    bin_id: str
    capacity: int
    fill: int = 0
    full: bool = False
    overfilled: int = 0
    parcels: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Fire:
    """A diverter fired: for which controller parcel, and which emulated parcel it pushed."""

    command_id: int
    parcel_id: int
    diverter_id: str
    pushed: int | None  # the emulated parcel's sim_id; None for an empty or jammed push
    enc: int = 0


@dataclass
class LineCounters:
    empty_fires: int = 0
    glancing_fires: int = 0
    late_commands: int = 0
    cancelled_commands: int = 0
    jammed_fires: int = 0
    frames: int = 0
    frames_lost_in_outages: int = 0


EventSink = Callable[[LineEvent], None]
FrameSink = Callable[[Frame], None]


class PhysicalLine:
    """Runs a scenario's parcels down a configured line and records where each one went."""

    def __init__(self, config: LineConfig, scenario: ScenarioSpec, parcels: list[SimParcel],
                 clock: Clock, *, render: bool = True, free_running: bool = False) -> None:
        self.config = config
        self.scenario = scenario
        self.parcels = parcels
        self.clock = clock
        self.render = render
        # Triggered cameras capture only while a parcel is in view (cheap to simulate);
        # free-running ones, like IP cameras streaming to a controller, capture always.
        self.free_running = free_running
        self.belt = Belt(clock, config.belt.speed_mm_s, config.belt.encoder_counts_per_mm,
                         scenario.speed_changes)
        self.bins = {b.id: BinModel(b.id, b.capacity) for b in config.bins}
        self.counters = LineCounters()
        self.on_belt: dict[int, SimParcel] = {}
        self.event_sinks: list[EventSink] = []
        self.frame_sinks: dict[str, list[FrameSink]] = {c.id: [] for c in config.cameras}
        self.done = asyncio.Event()
        self._diverters = {d.id: d for d in config.diverters}
        self._renderers = {c.id: FrameRenderer(c.resolution[0], c.resolution[1], c.mm_per_px,
                                               seed=scenario.seed + i)
                           for i, c in enumerate(config.cameras)}
        self._settled = 0
        self._backlogs: dict[str, list[Frame]] = {}
        self._stalled: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled: dict[int, tuple[str, asyncio.Task[None]]] = {}
        self.jammed: set[str] = set()  # diverters whose arm is stuck: they fire, nothing moves
        self.fires: list[Fire] = []
        self.fire_sinks: list[Callable[[Fire], None]] = []

    def start_belt(self) -> None:
        """Start the belt now: the shift's parcels and speed changes count from here."""
        self.belt = Belt(self.clock, self.config.belt.speed_mm_s,
                         self.config.belt.encoder_counts_per_mm, self.scenario.speed_changes)

    # --- geometry --------------------------------------------------------------------------

    def lead_mm(self, parcel: SimParcel, travel: float | None = None) -> float:
        return (self.belt.travel() if travel is None else travel) - parcel.offset_mm

    def _emit(self, event: LineEvent) -> None:
        for sink in self.event_sinks:
            sink(event)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the whole stream until every parcel is in a bin or past the end of the line."""
        if not self.parcels:
            self.done.set()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._induction(), name="sim.induction")
            tg.create_task(self._end_of_line(), name="sim.end_of_line")
            tg.create_task(self._faults(), name="sim.faults")
            for camera in self.config.cameras:
                tg.create_task(self._camera(camera), name=f"sim.{camera.id}")
            await self.done.wait()
        for task in list(self._tasks):
            task.cancel()

    async def _induction(self) -> None:
        pe = self.config.induction.photo_eye_mm
        for parcel in self.parcels:
            blocked_at = parcel.offset_mm + pe
            await self.clock.sleep_until(self.belt.time_at(blocked_at))
            self.on_belt[parcel.sim_id] = parcel
            parcel.induct_enc = self.belt.enc_at_travel(blocked_at)
            self._emit(PhotoEyeEdge(INDUCTION_EYE, True, parcel.induct_enc))
            cleared_at = blocked_at + parcel.length_mm
            await self.clock.sleep_until(self.belt.time_at(cleared_at))
            self._emit(PhotoEyeEdge(INDUCTION_EYE, False, self.belt.enc_at_travel(cleared_at)))

    async def _end_of_line(self) -> None:
        x_end = self.config.end_of_line.position_mm
        for parcel in self.parcels:
            arrival = parcel.offset_mm + x_end
            await self.clock.sleep_until(self.belt.time_at(arrival))
            if parcel.sim_id in self.on_belt:
                del self.on_belt[parcel.sim_id]
                self._emit(PhotoEyeEdge(END_EYE, True, self.belt.enc_at_travel(arrival)))
                self._settle(parcel, "END")
        await self._wait_settled()

    async def _wait_settled(self) -> None:
        while self._settled < len(self.parcels):
            await self.clock.sleep(0.1)
        self.done.set()

    def _settle(self, parcel: SimParcel, where: str) -> None:
        parcel.actual = where
        self._settled += 1

    # --- faults ----------------------------------------------------------------------------

    async def _faults(self) -> None:
        """Stray pushes and parcels lifted off the belt, each at its own moment on the belt."""
        diverters = {d.id: d for d in self.config.diverters}
        async with asyncio.TaskGroup() as tg:
            for parcel in self.parcels:
                if parcel.stray_diverter is not None and parcel.case is Case.STRAY_PUSH:
                    tg.create_task(self._stray_push(parcel, diverters[parcel.stray_diverter]))
                elif parcel.case is Case.PICKED_OFF:
                    tg.create_task(self._lift_off(parcel))

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
        await self.clock.sleep_until(
            self.belt.time_at(parcel.offset_mm + x_mm + parcel.length_mm / 2))

    # --- cameras ---------------------------------------------------------------------------

    async def _camera(self, camera: CameraConfig) -> None:
        period = 1.0 / camera.fps
        renderer = self._renderers[camera.id]
        t: float | None = self.clock.now()
        first = 0  # parcels before this index have left this camera's view for good
        while t is not None:
            while first < len(self.parcels) and self._leaves_view(camera, self.parcels[first]) < t:
                first += 1
            t = self._next_trigger(camera, first, t, period)
            if t is None:
                return
            await self.clock.sleep_until(t)
            travel = self.belt.travel()
            in_view = self._in_view(camera, travel)
            if in_view or self.free_running:
                self._capture(camera, renderer, travel, in_view)
            t += period

    def _leaves_view(self, camera: CameraConfig, parcel: SimParcel) -> float:
        return self.belt.time_at(parcel.offset_mm + camera.view_end_mm + parcel.length_mm)

    def _next_trigger(self, camera: CameraConfig, first: int, t: float,
                      period: float) -> float | None:
        """The next frame time: the next period, or for a triggered camera, a parcel in view."""
        if first >= len(self.parcels):
            return None
        if self.free_running:
            return t
        enter = self.belt.time_at(self.parcels[first].offset_mm + camera.view_start_mm)
        if enter <= t:
            return t
        return t + math.ceil((enter - t) / period - 1e-9) * period

    def _in_view(self, camera: CameraConfig, travel: float) -> list[SimParcel]:
        return [p for p in self.on_belt.values()
                if self.lead_mm(p, travel) >= camera.view_start_mm
                and self.lead_mm(p, travel) - p.length_mm <= camera.view_end_mm]

    def _capture(self, camera: CameraConfig, renderer: FrameRenderer, travel: float,
                 parcels: list[SimParcel]) -> None:
        tops = [ParcelTop(self.lead_mm(p, travel), p.length_mm, p.width_mm, p.y_mm, p.shade,
                          p.labels) for p in parcels]
        image = renderer.render(camera.view_start_mm, tops) if self.render else \
            renderer.render(camera.view_start_mm, [])
        frame = Frame(camera.id, image, self.belt.enc_at_travel(travel), self.clock.now())
        self.counters.frames += 1
        backlog = self._backlogs.setdefault(camera.id, [])
        stalling = any(p.case is Case.CAMERA_STALL and p.sim_id not in self._stalled
                       for p in parcels)
        if stalling and self.scenario.camera_stall_s > 0 and not backlog:
            # A camera hiccup: frames are buffered and handed over late, still in order.
            self._stalled.update(p.sim_id for p in parcels if p.case is Case.CAMERA_STALL)
            backlog.append(frame)
            self._spawn(self._flush_after(camera.id, self.scenario.camera_stall_s),
                        f"sim.{camera.id}.stall")
        elif backlog:
            backlog.append(frame)
        else:
            self._deliver(camera.id, frame)

    def camera_down(self, camera_id: str) -> bool:
        """Whether the camera is in one of the scenario's outages now."""
        t = self.clock.now() - self.belt.start
        return any(cam == camera_id and start <= t < end
                   for cam, start, end in self.scenario.camera_outages)

    def _deliver(self, camera_id: str, frame: Frame) -> None:
        if self.camera_down(camera_id):
            self.counters.frames_lost_in_outages += 1
            return
        for sink in self.frame_sinks[camera_id]:
            sink(frame)

    async def _flush_after(self, camera_id: str, delay: float) -> None:
        await self.clock.sleep(delay)
        backlog = self._backlogs[camera_id]
        while backlog:
            self._deliver(camera_id, backlog.pop(0))

    # --- diverters and bins ----------------------------------------------------------------

    def accept_divert(self, command: DivertCommand) -> DivertReply:
        """The I/O side: take a scheduled divert if it can still be carried out in time."""
        diverter = self._diverters.get(command.diverter_id)
        if diverter is None:
            return DivertReply(command.command_id, False, "unknown_diverter")
        if command.command_id in self._scheduled:
            return DivertReply(command.command_id, True)  # a resent command: already held
        lead_counts = diverter.actuation_ms / 1000 * self.belt.speed * self.belt.counts_per_mm
        if self.belt.encoder() > command.fire_enc - lead_counts:
            self.counters.late_commands += 1
            return DivertReply(command.command_id, False, "late")
        task = asyncio.create_task(self._fire(diverter, command),
                                   name=f"sim.{diverter.id}.fire[{command.command_id}]")
        self._tasks.add(task)
        self._scheduled[command.command_id] = (diverter.id, task)

        def _done(t: asyncio.Task[None], command_id: int = command.command_id) -> None:
            self._tasks.discard(t)
            self._scheduled.pop(command_id, None)

        task.add_done_callback(_done)
        return DivertReply(command.command_id, True)

    def cancel_divert(self, command_id: int) -> bool:
        """Drop a scheduled divert that has not fired; False if there is none."""
        held = self._scheduled.pop(command_id, None)
        if held is None:
            return False
        held[1].cancel()
        self.counters.cancelled_commands += 1
        return True

    def cancel_diverts(self, diverter_ids: Sequence[str] | None = None) -> int:
        """Drop every scheduled divert (of these diverters): the fail-safe of a lost controller."""
        dropped = [cid for cid, (did, _) in self._scheduled.items()
                   if diverter_ids is None or did in diverter_ids]
        return sum(self.cancel_divert(cid) for cid in dropped)

    def scheduled_diverts(self, diverter_ids: Sequence[str] | None = None) -> int:
        return sum(1 for did, _ in self._scheduled.values()
                   if diverter_ids is None or did in diverter_ids)

    async def _fire(self, diverter: DiverterConfig, command: DivertCommand) -> None:
        # A board fires on an encoder compare, in hardware: the push happens at the commanded
        # count whenever this task wakes (on the real clock it may wake late under load).
        travel = command.fire_enc / self.belt.counts_per_mm
        await self.clock.sleep_until(self.belt.time_at(travel))
        self._scheduled.pop(command.command_id, None)
        hit: SimParcel | None = None
        for parcel in self.on_belt.values():
            lead = self.lead_mm(parcel, travel)
            centre = lead - parcel.length_mm / 2
            if abs(centre - diverter.position_mm) <= diverter.window_mm / 2:
                hit = parcel
            elif lead - parcel.length_mm <= diverter.position_mm <= lead:
                self.counters.glancing_fires += 1
                parcel.events.append(f"glanced by {diverter.id}")
        jammed = hit is not None and (hit.case is Case.JAMMED_DIVERTER
                                      or diverter.id in self.jammed)
        fire = Fire(command.command_id, command.parcel_id, diverter.id,
                    hit.sim_id if hit is not None and not jammed else None, command.fire_enc)
        self.fires.append(fire)
        for sink in self.fire_sinks:
            sink(fire)
        if hit is None:
            self.counters.empty_fires += 1
            return
        hit.events.append(f"fired at by {diverter.id} for controller parcel {command.parcel_id}")
        if jammed:
            self.counters.jammed_fires += 1
            hit.events.append(f"{diverter.id} jammed")
            return
        await self._push(hit, diverter)

    async def _push(self, parcel: SimParcel, diverter: DiverterConfig) -> None:
        del self.on_belt[parcel.sim_id]
        await self.clock.sleep(self.scenario.drop_time_s)
        self._land(parcel, self.bins[diverter.bin])

    def _land(self, parcel: SimParcel, bin_model: BinModel) -> None:
        if bin_model.full:
            bin_model.overfilled += 1
        bin_model.fill += 1
        bin_model.parcels.append(parcel.sim_id)
        self._settle(parcel, bin_model.bin_id)
        self._emit(BinEntry(bin_model.bin_id, self.belt.encoder()))
        if not bin_model.full and bin_model.fill >= bin_model.capacity:
            bin_model.full = True
            self._emit(BinLevel(bin_model.bin_id, True))
            if self.scenario.bin_empty_after_s is not None:
                self._spawn(self._operator_empties(bin_model), f"sim.{bin_model.bin_id}.empty")

    async def _operator_empties(self, bin_model: BinModel) -> None:
        assert self.scenario.bin_empty_after_s is not None
        await self.clock.sleep(self.scenario.bin_empty_after_s)
        bin_model.fill = 0
        bin_model.full = False
        self._emit(BinLevel(bin_model.bin_id, False))

    def encoder(self) -> int:
        return self.belt.encoder()
