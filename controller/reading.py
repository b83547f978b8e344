"""Reading parcels: frames to crops, decoded off the loop, reads given to parcels by position.

A frame is judged only once the line's events up to it are in; each read goes to the parcel
whose window covers its belt position; a parcel settles on a verdict once it has been seen
whole and its reads agree, or once every camera has handed in its frames of it after the
read zone. A code read on two parcels is sorted on by neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from controller.archive import ArchivedFrame
from controller.clock import Clock
from controller.codes import CodeRule, ReadVerdict
from controller.config import CameraConfig, LabelType, LineConfig
from controller.errors import ImageError
from controller.lineio import LineIO
from controller.parcel import Belt, ParcelState
from controller.tracking import TrackingWindow
from controller.vision import BarcodeDecoder, Camera, CameraState, Frame, GrayImage, Symbol

log = logging.getLogger(__name__)

EVENT_HORIZON_WAIT_S = 0.25
EVENT_POLL_S = 0.002
NOT_YET = -1 << 62  # a camera's progress before its first frame

Settled = Callable[[ParcelState], None]


class ReadZone:
    """The cameras' frames of the parcels in view, decoded and settled into read verdicts.

    ``on_settled`` is called once per parcel, when its verdict is no longer PENDING;
    ``on_code`` with a parcel's code after each frame whose reads name one code to sort on,
    before its verdict settles (for the order to be looked up early).
    """

    def __init__(self, config: LineConfig, clock: Clock, line_io: LineIO, belt: Belt, *,
                 cameras: list[Camera], decoders: dict[str, BarcodeDecoder],
                 on_settled: Settled, keep_frames: bool,
                 on_code: Callable[[str], None] | None = None,
                 decode_threads: int | None = None, decode_cost_s: float = 0.0) -> None:
        self._config = config
        self._clock = clock
        self._line_io = line_io
        self._belt = belt
        self._decoders = decoders
        self._on_settled = on_settled
        self._on_code = on_code
        self._keep_frames = keep_frames
        self._camera_configs = {c.id: c for c in config.cameras}
        self._cameras_by_id = {c.camera_id: c for c in cameras}
        self._code_rule = CodeRule(config.decision)
        self._cpm = config.belt.encoder_counts_per_mm
        # All three decoders release the GIL: a thread per core (bench/decode.py measures it).
        self._decode_threads = decode_threads or min(4, os.cpu_count() or 2)
        self._decode_cost_s = decode_cost_s
        self._executor = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="decode")
        self._camera_seen: dict[str, int] = dict.fromkeys(self._camera_configs, NOT_YET)
        self._in_flight: dict[str, Counter[int]] = {c: Counter() for c in self._camera_configs}
        self._delivered: set[str] = set()  # cameras that have handed in a frame

    def camera_states(self) -> dict[str, CameraState]:
        return {camera_id: camera.state for camera_id, camera in self._cameras_by_id.items()}

    def cameras_without_frames(self) -> list[str]:
        """The cameras that have not handed in a frame yet."""
        return [c for c in self._cameras_by_id if c not in self._delivered]

    def forget_progress(self) -> None:
        """Tracking starts afresh: no camera has handed in frames of the new positions yet."""
        self._camera_seen = dict.fromkeys(self._camera_seen, NOT_YET)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- frames ----------------------------------------------------------------------------

    async def run_camera(self, camera: Camera) -> None:
        """Take a camera's frames until it ends, decoding those that show undecided parcels."""
        cam = self._camera_configs[camera.camera_id]
        decoder = self._decoders[camera.camera_id]
        stats = self._belt.stats
        # Frames decode concurrently up to the pool's size; a slow decode never blocks capture.
        slots = asyncio.Semaphore(self._decode_threads)
        async with asyncio.TaskGroup() as tg:
            async for frame in camera.frames():
                stats.frames += 1
                stats.frames_by_camera[cam.id] += 1
                self._delivered.add(cam.id)
                self._camera_seen[cam.id] = max(self._camera_seen[cam.id], frame.enc)
                if not await self._events_reach(frame.enc):
                    # The link is behind (or down): which parcels are in view is not known.
                    stats.frames_ahead_of_events += 1
                    continue
                wanted = self._wanted(cam, frame)
                if not wanted:
                    continue
                await slots.acquire()
                self._in_flight[cam.id][frame.enc] += 1
                tg.create_task(self._decode_frame(slots, cam, decoder, frame, wanted))

    async def _decode_frame(self, slots: asyncio.Semaphore, cam: CameraConfig,
                            decoder: BarcodeDecoder, frame: Frame,
                            wanted: list[ParcelState]) -> None:
        try:
            await self._frame(cam, decoder, frame, wanted)
        finally:
            slots.release()
            self._in_flight[cam.id][frame.enc] -= 1
            if not self._in_flight[cam.id][frame.enc]:
                del self._in_flight[cam.id][frame.enc]

    async def _events_reach(self, enc: int) -> bool:
        """Whether the line's events up to ``enc`` are in, waiting a little for them.

        A remote link delivers photo-eye edges a little after the belt passed them, and all
        at once after an outage. A frame judged before its edges are in would see a parcel
        still inducting, its tail unknown, and take the reads of the parcels behind it.
        """
        if self._line_io.encoder() >= enc:
            # Events already queued are taken in first: the line's task takes them all at once.
            await asyncio.sleep(0)
            return True
        until = self._clock.now() + EVENT_HORIZON_WAIT_S
        while self._clock.now() < until:
            await self._clock.sleep(EVENT_POLL_S)
            if self._line_io.encoder() >= enc:
                return True
        return False

    def _wanted(self, cam: CameraConfig, frame: Frame) -> list[ParcelState]:
        """Undecided parcels worth decoding in this frame.

        A parcel is decoded in the frames that show it whole; one too long to be shown
        whole in enough frames for the reads to agree is decoded in every frame showing it.
        """
        step_mm = self._config.belt.speed_mm_s / cam.fps
        agree = self._config.decision.min_agreeing_reads
        wanted = []
        for window in self._belt.tracker.in_range(cam.view_start_mm, cam.view_end_mm,
                                                  frame.enc):
            parcel = self._belt.parcels.get(window.parcel_id)
            if parcel is None or parcel.verdict is not ReadVerdict.PENDING:
                continue
            length = window.length_mm
            too_long = length is None or length > cam.fov_mm - agree * step_mm
            if too_long or all(edges_in_view(cam, window, frame.enc)):
                wanted.append(parcel)
        return wanted

    async def _frame(self, cam: CameraConfig, decoder: BarcodeDecoder, frame: Frame,
                     wanted: list[ParcelState]) -> None:
        """Decode the parcels' crops of one frame and give each read to its parcel."""
        tol = self._config.decision.assign_tolerance_mm
        mmpp = cam.mm_per_px
        width = cam.resolution[0]  # not frame.image: an emulated frame renders when decoded
        stats = self._belt.stats
        crops: list[tuple[int, int]] = []
        for parcel in wanted:
            lo = (parcel.window.trail_mm(frame.enc) - tol - cam.view_start_mm) / mmpp
            hi = (parcel.window.lead_mm(frame.enc) + tol - cam.view_start_mm) / mmpp
            crops.append((max(0, int(lo)), min(width, int(hi) + 1)))
        stats.frames_decoded += 1
        stats.decoded_by_camera[cam.id] += 1
        symbols = await self._clock.offload(self._executor, decode_frame_crops, decoder,
                                            frame, merge_spans(crops),
                                            cost=self._decode_cost_s)
        if symbols is None:  # its pixels never came: the parcels wait for the next frame
            stats.frames_undecodable += 1
            return
        tracker = self._belt.tracker
        per_parcel: dict[int, tuple[dict[str, LabelType], set[str]]] = {
            p.parcel_id: ({}, set()) for p in wanted}
        for symbol in symbols:
            x_mm = cam.view_start_mm + (symbol.x + 0.5) * mmpp
            window = tracker.at(x_mm, frame.enc, tol)
            if window is None or window.parcel_id not in per_parcel:
                if tracker.ambiguous(x_mm, frame.enc, tol):
                    stats.reads_ambiguous += 1
                else:
                    stats.reads_unassigned += 1
                continue
            accepted, rejected = per_parcel[window.parcel_id]
            label = self._code_rule.classify(symbol.text, symbol.symbology)
            if label is None:
                rejected.add(symbol.text)
            else:
                accepted[symbol.text] = label
        for parcel, (lo, hi) in zip(wanted, crops, strict=True):
            accepted, rejected = per_parcel[parcel.parcel_id]
            lead_in, trail_in = edges_in_view(cam, parcel.window, frame.enc)
            if self._keep_frames and hi > lo:  # none of it in view: nothing to keep
                parcel.keep_frame(ArchivedFrame(cam.id, frame.enc, frame.image[:, lo:hi]),
                                  whole=lead_in and trail_in,
                                  limit=self._config.archive.frames_per_parcel)
            parcel.reads.add_frame(accepted, rejected, lead_in_view=lead_in,
                                   trail_in_view=trail_in)
            if accepted and self._on_code is not None and parcel.verdict is ReadVerdict.PENDING:
                code = parcel.reads.code
                if code is not None:
                    self._on_code(code)
            self.settle(parcel, final=False)

    # --- verdicts --------------------------------------------------------------------------

    def at_position(self, parcel: ParcelState, enc: int) -> None:
        """The position watcher's look at a parcel: past the read zone, it settles now."""
        window = parcel.window
        if parcel.verdict is ReadVerdict.PENDING and window.cleared_enc is not None \
                and window.trail_mm(enc) > self._config.read_zone_end_mm \
                and self._reads_complete(parcel):
            self.settle(parcel, final=True)

    def settle(self, parcel: ParcelState, *, final: bool) -> None:
        """Settle a pending parcel's verdict if its reads allow it (at the end they must)."""
        if parcel.verdict is not ReadVerdict.PENDING:
            return
        verdict = parcel.reads.verdict(final=final)
        if verdict is ReadVerdict.PENDING:
            return
        parcel.verdict = verdict
        parcel.code = parcel.reads.code
        if parcel.code is not None and parcel.last_code not in (None, parcel.code):
            # Back round a loop with another code: which parcel came round is uncertain.
            self._belt.stats.lap_code_mismatches += 1
            parcel.verdict, parcel.code = ReadVerdict.MULTI_READ, None
            parcel.reads.why = (f"read {parcel.reads.code} on lap {parcel.lap}, "
                                f"{parcel.last_code} before: which parcel came round is uncertain")
        elif parcel.code is not None:
            twins = [p.parcel_id for p in self._belt.parcels.values()
                     if p is not parcel and parcel.code in p.reads.codes]
            if twins:
                # The same code on two parcels: which one carries it is uncertain, so neither
                # is sorted on it (the other is caught the same way when it settles).
                self._belt.stats.duplicate_codes += 1
                parcel.verdict, parcel.code = ReadVerdict.MULTI_READ, None
                parcel.reads.why = (f"code also read on parcel {', '.join(map(str, twins))}:"
                                    " which parcel carries it is uncertain")
        self._on_settled(parcel)

    def _camera_progress(self, camera_id: str) -> int:
        """The encoder count up to which this camera's frames are all in and decoded."""
        in_flight = self._in_flight[camera_id]
        seen = self._camera_seen[camera_id]
        return min(seen, min(in_flight) - 1) if in_flight else seen

    def _reads_complete(self, parcel: ParcelState) -> bool:
        """Every camera has handed in its frames of this parcel, or waiting is over."""
        now = self._clock.now()
        if parcel.zone_exit_at is None:
            parcel.zone_exit_at = now
        if now - parcel.zone_exit_at >= self._config.decision.frame_wait_ms / 1000:
            return True
        cleared = parcel.window.cleared_enc
        assert cleared is not None
        pe = self._config.induction.photo_eye_mm
        for cam in self._config.cameras:
            camera = self._cameras_by_id.get(cam.id)
            if camera is None or camera.state is CameraState.DOWN:
                continue  # its frames are not coming: the other cameras decide
            last_in_view = cleared + (cam.view_end_mm - pe - self._config.belt.speed_mm_s
                                      / cam.fps) * self._cpm
            if self._camera_progress(cam.id) < last_in_view:
                return False
        return True


def edges_in_view(cam: CameraConfig, window: TrackingWindow, enc: int) -> tuple[bool, bool]:
    """Whether the parcel's leading and its trailing edge are in the camera's view."""
    lead_in = cam.view_start_mm <= window.lead_mm(enc) <= cam.view_end_mm
    trail_in = window.cleared_enc is not None \
        and cam.view_start_mm <= window.trail_mm(enc) <= cam.view_end_mm
    return lead_in, trail_in


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Column spans sorted and joined where they overlap or touch; empty ones dropped."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        elif hi > lo:
            merged.append((lo, hi))
    return merged


def decode_frame_crops(decoder: BarcodeDecoder, frame: Frame,
                       spans: list[tuple[int, int]]) -> list[Symbol] | None:
    """:func:`decode_crops` of a frame, whose pixels may be made only now (in the thread);
    None if they cannot be (a camera's JPEG that does not decode): no evidence either way."""
    try:
        image = frame.image
    except ImageError:
        return None
    return decode_crops(decoder, image, spans)


def decode_crops(decoder: BarcodeDecoder, image: GrayImage,
                 spans: list[tuple[int, int]]) -> list[Symbol]:
    """Decode the column spans of a frame that tracked parcels occupy (runs in a thread)."""
    return [Symbol(s.text, s.symbology, s.x + lo, s.y)
            for lo, hi in spans for s in decoder.decode(image[:, lo:hi])]
