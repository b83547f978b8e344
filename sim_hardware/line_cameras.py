"""The emulated line's cameras: frames captured as parcels pass, stalls and outages."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

from controller.config import CameraConfig
from controller.vision import Frame, GrayImage
from sim_hardware.line_state import FrameSink, LineState
from sim_hardware.parcel_window import Reader
from sim_hardware.render import FrameRenderer, ParcelTop
from sim_hardware.scenario import Case, SimParcel
from sim_hardware.truth_frames import truth_frame

log = logging.getLogger(__name__)


class LineCameras(LineState):
    """The cameras over the belt, each rendering what is in its view at its frame times."""

    free_running: bool
    render: bool
    truth_frames: bool
    frame_sinks: dict[str, list[FrameSink]]
    _renderers: dict[str, FrameRenderer]
    _backlogs: dict[str, list[Frame]]
    _stalled: set[tuple[str, int]]  # (camera, parcel) stalls already had
    _camera_readers: dict[str, Reader]

    def _init_cameras(self, *, render: bool, free_running: bool,
                      truth_frames: bool = False) -> None:
        self.render = render
        # Frames marked with the truth of the labels in view (sim_hardware.truth_frames)
        # instead of their pixels: for shifts too long to render.
        self.truth_frames = truth_frames
        # Triggered cameras capture only while a parcel is in view (cheap to simulate);
        # free-running ones, like IP cameras streaming to a controller, capture always.
        self.free_running = free_running
        self.frame_sinks = {c.id: [] for c in self.config.cameras}
        self._renderers = {c.id: FrameRenderer(c.resolution[0], c.resolution[1], c.mm_per_px,
                                               seed=self.scenario.seed + i)
                           for i, c in enumerate(self.config.cameras)}
        self._backlogs = {}
        self._stalled = set()
        # parcels before a reader's index have left that camera's view for good
        self._camera_readers = {c.id: self.parcels.reader() for c in self.config.cameras}
        self.settled_sinks.append(self._forget_stalls)

    async def _camera(self, camera: CameraConfig) -> None:
        period = 1.0 / camera.fps
        renderer = self._renderers[camera.id]
        t: float | None = self.clock.now()
        passed = self._camera_readers[camera.id]
        while t is not None:
            while passed and self._leaves_view(camera, passed.current()) < t:
                passed.advance()
            t = self._next_trigger(camera, passed, t, period)
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

    def _next_trigger(self, camera: CameraConfig, passed: Reader, t: float,
                      period: float) -> float | None:
        """The next frame time: the next period, or for a triggered camera, a parcel in view.

        On a loop, parcels come round again (their ``offset_mm`` a loop further on): the
        cameras keep going while any parcel is on the belt or still to come, and a parcel
        past the view is due back in it a loop later.
        """
        loop = self.config.end_of_line.loop_length_mm
        if not passed and not (loop and self.on_belt):
            return None
        if self.free_running:
            return t
        if loop is None:
            enter = self.belt.time_at(passed.current().offset_mm + camera.view_start_mm)
        else:
            coming = ([passed.current()] if passed else []) + list(self.on_belt.values())
            enter = min(self._next_entry(camera, p, t, loop) for p in coming)
        if enter <= t:
            return t
        return t + math.ceil((enter - t) / period - 1e-9) * period

    def _next_entry(self, camera: CameraConfig, parcel: SimParcel, t: float,
                    loop: float) -> float:
        """When a parcel enters the view next: this lap, or (past it) the next one round."""
        lap_ahead = loop if self._leaves_view(camera, parcel) < t else 0.0
        return self.belt.time_at(parcel.offset_mm + lap_ahead + camera.view_start_mm)

    def _in_view(self, camera: CameraConfig, travel: float) -> list[SimParcel]:
        return [p for p in self.on_belt.values()
                if self.lead_mm(p, travel) >= camera.view_start_mm
                and self.lead_mm(p, travel) - p.length_mm <= camera.view_end_mm]

    def _capture(self, camera: CameraConfig, renderer: FrameRenderer, travel: float,
                 parcels: list[SimParcel]) -> None:
        tops = [ParcelTop(self.lead_mm(p, travel), p.length_mm, p.width_mm, p.y_mm, p.shade,
                          () if p.case is Case.HIDDEN_LABEL and p.laps == 1 else p.labels)
                for p in parcels]
        render: Callable[[], GrayImage]
        if self.truth_frames:
            marks = tuple((p.sim_id, top) for p, top in zip(parcels, tops, strict=True))
            render = partial(truth_frame, renderer, camera.view_start_mm, marks)
        else:
            render = renderer.deferred(camera.view_start_mm, tops if self.render else [])
        frame = Frame(camera.id, None, self.belt.enc_at_travel(travel), self.clock.now(),
                      render=render)
        self.counters.frames += 1
        backlog = self._backlogs.setdefault(camera.id, [])
        hits = self.scenario.stall_cameras
        stalls = {(camera.id, p.sim_id) for p in parcels if p.case is Case.CAMERA_STALL
                  and (hits is None or camera.id in hits)} - self._stalled
        if stalls and self.scenario.camera_stall_s > 0 and not backlog:
            # A camera hiccup: frames are buffered and handed over late, still in order.
            self._stalled.update(stalls)
            backlog.append(frame)
            self._spawn(self._flush_after(camera.id, self.scenario.camera_stall_s),
                        f"sim.{camera.id}.stall")
        elif backlog:
            backlog.append(frame)
        else:
            self._deliver(camera.id, frame)

    def _forget_stalls(self, parcel: SimParcel) -> None:
        if parcel.case is Case.CAMERA_STALL:
            self._stalled -= {(camera.id, parcel.sim_id) for camera in self.config.cameras}

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
