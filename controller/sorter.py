"""The decision pipeline: track, read, decide, divert, confirm, journal.

One :class:`Sorter` runs a line. Its tasks: line events (photo-eyes, bins), one per camera
(decode off the loop, assign reads by position), and a position watcher that closes the read
zone, confirmation windows and lost parcels by encoder count. Every parcel ends with exactly
one final disposition, written to the journal before it is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.archive import ArchivedFrame, ArchivedParcel, ArchiveError, NoReadArchive
from controller.clock import Clock
from controller.codes import CodeRule, ParcelReads, ReadVerdict
from controller.config import CameraConfig, DiverterConfig, LabelType, LineConfig
from controller.disposition import END_OF_LINE, Disposition
from controller.encoder import EncoderHistory
from controller.errors import DriverError, DriverTimeout, OrderStoreError
from controller.journal import FinalRecord, Journal
from controller.lineio import (
    END_EYE,
    INDUCTION_EYE,
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    LineIO,
    PhotoEyeEdge,
    TrackingLost,
)
from controller.orders import Order, OrderCache, OrderStatus, OrderStore
from controller.sortplan import SortPlan
from controller.tracking import Tracker, TrackingWindow
from controller.vision import BarcodeDecoder, Camera, CameraState, Frame, GrayImage, Symbol

log = logging.getLogger(__name__)

EVENT_HORIZON_WAIT_S = 0.25
WATCH_INTERVAL_S = 0.01


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
    frames: list[tuple[bool, ArchivedFrame]] = field(default_factory=list)  # (whole, crop)

    def keep_frame(self, frame: ArchivedFrame, *, whole: bool, limit: int) -> None:
        """Keep the latest frames, those showing the whole parcel before the others."""
        self.frames.append((whole, frame))
        if len(self.frames) > limit:
            partial = next((i for i, (w, _) in enumerate(self.frames) if not w), 0)
            del self.frames[partial]

    @property
    def parcel_id(self) -> int:
        return self.window.parcel_id


@dataclass
class BinState:
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
    archive_errors: int = 0


FinalListener = Callable[[FinalRecord], None]


class Sorter:
    """Runs one sorting line against whatever LineIO, cameras and order store it is given."""

    def __init__(
        self,
        config: LineConfig,
        clock: Clock,
        *,
        line_io: LineIO,
        cameras: list[Camera],
        decoders: dict[str, BarcodeDecoder],
        order_store: OrderStore,
        journal: Journal,
        archive: NoReadArchive | None = None,
        encoder_history: EncoderHistory | None = None,
        decode_threads: int | None = None,
        decode_cost_s: float = 0.0,
    ) -> None:
        self.config = config
        self.clock = clock
        self.line_io = line_io
        self.cameras = cameras
        self.decoders = decoders
        self.order_store = order_store
        self.journal = journal
        self.archive = archive
        self._archive_writer = ThreadPoolExecutor(1, thread_name_prefix="archive")
        self._archiving: set[asyncio.Task[None]] = set()
        self.stats = SorterStats()
        self.tracker = Tracker(config.induction.photo_eye_mm, config.belt.encoder_counts_per_mm)
        self.parcels: dict[int, ParcelState] = {}
        self.bins = {b.id: BinState(b.capacity) for b in config.bins}
        self.listeners: list[FinalListener] = []
        self._camera_configs = {c.id: c for c in config.cameras}
        self._cameras_by_id = {c.camera_id: c for c in cameras}
        self._code_rule = CodeRule(config.decision)
        self._plan = SortPlan(config.sort_plan)
        self._cache = OrderCache(config.order_store.cache_size)
        # All three decoders release the GIL: a thread per core (bench/decode.py measures it).
        decode_threads = decode_threads or min(4, os.cpu_count() or 2)
        self._decode_threads = decode_threads
        self._decode_cost_s = decode_cost_s
        self._executor = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self._next_parcel_id = 1
        self._next_command_id = 1
        self._decisions: set[asyncio.Task[None]] = set()
        self._finalising: set[int] = set()
        self._cpm = config.belt.encoder_counts_per_mm
        self._camera_seen: dict[str, int] = {c.id: -1 << 62 for c in config.cameras}
        self._in_flight: dict[str, Counter[int]] = {c.id: Counter() for c in config.cameras}
        self.encoder_history = encoder_history or EncoderHistory()

    @property
    def open_parcels(self) -> int:
        return len(self.parcels)

    async def run(self) -> None:
        """Run until cancelled."""
        recovered = await self.journal.open()
        if recovered:
            log.warning("journal: %d parcels open at the last stop closed as LOST", len(recovered))
        self._next_parcel_id = await self.journal.next_parcel_id()
        await self._warm_order_cache()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._line_events(), name=f"sorter[{self.config.line.name}].line")
                tg.create_task(self._watch(), name=f"sorter[{self.config.line.name}].watch")
                for camera in self.cameras:
                    tg.create_task(self._camera(camera),
                                   name=f"sorter[{self.config.line.name}].{camera.camera_id}")
        finally:
            for task in list(self._decisions):
                task.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)

    # --- line events -----------------------------------------------------------------------

    async def _line_events(self) -> None:
        async for event in self.line_io.events():
            match event:
                case PhotoEyeEdge(eye=eye, blocked=blocked, enc=enc) if eye == INDUCTION_EYE:
                    await self._induction_edge(blocked, enc)
                case PhotoEyeEdge(eye=eye, blocked=True, enc=enc) if eye == END_EYE:
                    await self._end_arrival(enc)
                case PhotoEyeEdge():
                    pass
                case BinEntry(bin_id=bin_id, enc=enc):
                    await self._bin_entry(bin_id, enc)
                case BinLevel(bin_id=bin_id, full=full):
                    self._bin_level(bin_id, full)
                case DeviceFault(device=device, message=message):
                    self.stats.device_faults += 1
                    log.warning("device fault %s: %s", device, message)
                case TrackingLost(device=device, message=message):
                    await self._lose_track(f"{device}: {message}")

    async def _lose_track(self, why: str) -> None:
        """Give up every tracked parcel: their positions are gone, so nothing fires for them.

        Each ends LOST (it rides to the end of the line, or into a bin its divert had already
        put it in); tracking starts again with the next parcel inducted.
        """
        self.stats.tracking_lost += 1
        log.error("tracking lost (%s): %d parcels on the belt given up", why, len(self.parcels))
        given_up = list(self.parcels.values())
        for parcel in given_up:  # all at once, before a decision in flight can divert one
            parcel.lost_track = True
            parcel.reason = f"tracking lost: {why}"
            if parcel.route is not None:
                self._unbook(parcel, parcel.route)
        for parcel in given_up:
            await self._finalise(parcel, Disposition.LOST, "UNKNOWN")
        self.tracker = Tracker(self.config.induction.photo_eye_mm,
                               self.config.belt.encoder_counts_per_mm)
        self._camera_seen = dict.fromkeys(self._camera_seen, -1 << 62)

    async def _induction_edge(self, blocked: bool, enc: int) -> None:
        if blocked:
            if self.tracker.inducting is not None:
                self.stats.spurious_edges += 1
                return
            parcel_id = self._next_parcel_id
            self._next_parcel_id += 1
            window = self.tracker.blocked(parcel_id, enc)
            now = self.clock.now()
            self.parcels[parcel_id] = ParcelState(
                window, ParcelReads(self.config.decision.min_agreeing_reads), now)
            await self.journal.inducted(parcel_id, enc, now)
            return
        if self.tracker.cleared(enc) is None:
            self.stats.spurious_edges += 1

    def _bin_level(self, bin_id: str, full: bool) -> None:
        state = self.bins.get(bin_id)
        if state is None:
            return
        state.full_sensor = full
        if not full:
            state.confirmed = 0

    async def _bin_entry(self, bin_id: str, enc: int) -> None:
        bin_config = next((b for b in self.config.bins if b.id == bin_id), None)
        if bin_config is None:
            return
        counts_per_s = self.config.belt.speed_mm_s * self._cpm
        window = bin_config.confirm_timeout_ms / 1000 * counts_per_s
        drop = bin_config.drop_ms / 1000 * counts_per_s
        # A bin's photo-eye cannot tell parcels apart: the entry belongs to the booked divert
        # it fits best in time.
        fits = [(abs(enc - (p.command.fire_enc + drop)), p) for p in self.parcels.values()
                if p.booked and p.command is not None and p.route == bin_id
                and p.parcel_id not in self._finalising
                and p.command.fire_enc <= enc <= p.command.fire_enc + window]
        if not fits:
            self.stats.unexpected_bin_entries += 1
            suspect = self._in_front_of(self.config.diverter_for_bin(bin_id), enc - round(drop))
            log.warning("bin %s: a parcel fell in that no divert was sent for%s", bin_id,
                        f" (parcel {suspect.parcel_id} was in front of it)" if suspect else "")
            if suspect is not None:
                suspect.strayed_into = bin_id
            return
        _, parcel = min(fits, key=lambda fit: fit[0])
        self._unbook(parcel, bin_id)
        self.bins[bin_id].confirmed += 1
        await self._finalise(parcel, parcel.disposition or Disposition.SORTED, bin_id)

    def _in_front_of(self, diverter: DiverterConfig, enc: int) -> ParcelState | None:
        """The tracked parcel whose centre was nearest the diverter's arm at ``enc``."""
        best: tuple[float, ParcelState] | None = None
        for parcel in self.parcels.values():
            length = parcel.window.length_mm
            if length is None or parcel.parcel_id in self._finalising:
                continue
            off = abs(parcel.window.lead_mm(enc) - length / 2 - diverter.position_mm)
            if off <= diverter.window_mm and (best is None or off < best[0]):
                best = (off, parcel)
        return best[1] if best else None

    async def _end_arrival(self, enc: int) -> None:
        x_end = self.config.end_of_line.position_mm
        window = self.tracker.at(x_end, enc, self.config.decision.assign_tolerance_mm + 20)
        parcel = self.parcels.get(window.parcel_id) if window else None
        if parcel is None or parcel.parcel_id in self._finalising:
            self.stats.unknown_end_arrivals += 1
            log.warning("end of line: a parcel arrived that is not tracked (enc %d)", enc)
            return
        if parcel.route == END_OF_LINE and parcel.disposition is not None:
            await self._finalise(parcel, parcel.disposition, END_OF_LINE)
        elif parcel.command is not None and parcel.route is not None:
            self._unbook(parcel, parcel.route)
            parcel.reason = f"fired at {parcel.route} but arrived at the end of line"
            await self._finalise(parcel, Disposition.DIVERT_FAULT, END_OF_LINE)
        else:
            # Arrived before any decision was reached: the fail-safe route.
            parcel.reason = parcel.reason or "no decision before the end of line"
            await self._finalise(parcel, Disposition.LATE, END_OF_LINE)

    # --- cameras ---------------------------------------------------------------------------

    async def _camera(self, camera: Camera) -> None:
        cam = self._camera_configs[camera.camera_id]
        decoder = self.decoders[camera.camera_id]
        # Frames decode concurrently up to the pool's size; a slow decode never blocks capture.
        slots = asyncio.Semaphore(self._decode_threads)
        async with asyncio.TaskGroup() as tg:
            async for frame in camera.frames():
                self.stats.frames += 1
                self._camera_seen[cam.id] = max(self._camera_seen[cam.id], frame.enc)
                if not await self._events_reach(frame.enc):
                    # The link is behind (or down): which parcels are in view is not known.
                    self.stats.frames_ahead_of_events += 1
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
        if self.line_io.encoder() >= enc:
            return True
        until = self.clock.now() + EVENT_HORIZON_WAIT_S
        while self.clock.now() < until:
            await self.clock.sleep(0.002)
            if self.line_io.encoder() >= enc:
                return True
        return False

    def _camera_progress(self, camera_id: str) -> int:
        """The encoder count up to which this camera's frames are all in and decoded."""
        in_flight = self._in_flight[camera_id]
        seen = self._camera_seen[camera_id]
        return min(seen, min(in_flight) - 1) if in_flight else seen

    def _reads_complete(self, parcel: ParcelState) -> bool:
        """Every camera has handed in its frames of this parcel, or waiting is over."""
        now = self.clock.now()
        if parcel.zone_exit_at is None:
            parcel.zone_exit_at = now
        if now - parcel.zone_exit_at >= self.config.decision.frame_wait_ms / 1000:
            return True
        cleared = parcel.window.cleared_enc
        assert cleared is not None
        pe = self.config.induction.photo_eye_mm
        for cam in self.config.cameras:
            camera = self._cameras_by_id.get(cam.id)
            if camera is None or camera.state is CameraState.DOWN:
                continue  # its frames are not coming: the other cameras decide
            last_in_view = cleared + (cam.view_end_mm - pe - self.config.belt.speed_mm_s
                                      / cam.fps) * self._cpm
            if self._camera_progress(cam.id) < last_in_view:
                return False
        return True

    @staticmethod
    def _edges_in_view(cam: CameraConfig, window: TrackingWindow, enc: int) -> tuple[bool, bool]:
        """Whether the parcel's leading and its trailing edge are in the camera's view."""
        lead_in = cam.view_start_mm <= window.lead_mm(enc) <= cam.view_end_mm
        trail_in = window.cleared_enc is not None \
            and cam.view_start_mm <= window.trail_mm(enc) <= cam.view_end_mm
        return lead_in, trail_in

    def camera_states(self) -> dict[str, CameraState]:
        return {camera_id: camera.state for camera_id, camera in self._cameras_by_id.items()}

    def _wanted(self, cam: CameraConfig, frame: Frame) -> list[ParcelState]:
        """Undecided parcels worth decoding in this frame.

        A parcel is decoded in the frames that show it whole; one too long to be shown
        whole in enough frames for the reads to agree is decoded in every frame showing it.
        """
        step_mm = self.config.belt.speed_mm_s / cam.fps
        agree = self.config.decision.min_agreeing_reads
        wanted = []
        for window in self.tracker.in_range(cam.view_start_mm, cam.view_end_mm, frame.enc):
            parcel = self.parcels.get(window.parcel_id)
            if parcel is None or parcel.verdict is not ReadVerdict.PENDING:
                continue
            length = window.length_mm
            too_long = length is None or length > cam.fov_mm - agree * step_mm
            if too_long or all(self._edges_in_view(cam, window, frame.enc)):
                wanted.append(parcel)
        return wanted

    async def _frame(self, cam: CameraConfig, decoder: BarcodeDecoder, frame: Frame,
                     wanted: list[ParcelState]) -> None:
        tol = self.config.decision.assign_tolerance_mm
        mmpp = cam.mm_per_px
        width = frame.image.shape[1]
        crops: list[tuple[int, int]] = []
        for parcel in wanted:
            lo = (parcel.window.trail_mm(frame.enc) - tol - cam.view_start_mm) / mmpp
            hi = (parcel.window.lead_mm(frame.enc) + tol - cam.view_start_mm) / mmpp
            crops.append((max(0, int(lo)), min(width, int(hi) + 1)))
        self.stats.frames_decoded += 1
        symbols = await self.clock.offload(self._executor, _decode_crops, decoder,
                                           frame.image, _merge_spans(crops),
                                           cost=self._decode_cost_s)
        per_parcel: dict[int, tuple[dict[str, LabelType], set[str]]] = {
            p.parcel_id: ({}, set()) for p in wanted}
        for symbol in symbols:
            x_mm = cam.view_start_mm + (symbol.x + 0.5) * mmpp
            window = self.tracker.at(x_mm, frame.enc, tol)
            if window is None or window.parcel_id not in per_parcel:
                if self.tracker.ambiguous(x_mm, frame.enc, tol):
                    self.stats.reads_ambiguous += 1
                else:
                    self.stats.reads_unassigned += 1
                continue
            accepted, rejected = per_parcel[window.parcel_id]
            label = self._code_rule.classify(symbol.text, symbol.symbology)
            if label is None:
                rejected.add(symbol.text)
            else:
                accepted[symbol.text] = label
        for parcel, (lo, hi) in zip(wanted, crops, strict=True):
            accepted, rejected = per_parcel[parcel.parcel_id]
            lead_in, trail_in = self._edges_in_view(cam, parcel.window, frame.enc)
            if self.archive is not None:
                parcel.keep_frame(ArchivedFrame(cam.id, frame.enc, frame.image[:, lo:hi]),
                                  whole=lead_in and trail_in,
                                  limit=self.config.archive.frames_per_parcel)
            parcel.reads.add_frame(accepted, rejected, lead_in_view=lead_in,
                                   trail_in_view=trail_in)
            self._settle(parcel, final=False)

    # --- decisions -------------------------------------------------------------------------

    def _settle(self, parcel: ParcelState, *, final: bool) -> None:
        if parcel.verdict is not ReadVerdict.PENDING:
            return
        verdict = parcel.reads.verdict(final=final)
        if verdict is ReadVerdict.PENDING:
            return
        parcel.verdict = verdict
        parcel.code = parcel.reads.code
        if parcel.code is not None:
            twins = [p.parcel_id for p in self.parcels.values()
                     if p is not parcel and parcel.code in p.reads.codes]
            if twins:
                # The same code on two parcels: which one carries it is uncertain, so neither
                # is sorted on it (the other is caught the same way when it settles).
                self.stats.duplicate_codes += 1
                parcel.verdict, parcel.code = ReadVerdict.MULTI_READ, None
                parcel.reads.why = (f"code also read on parcel {', '.join(map(str, twins))}:"
                                    " which parcel carries it is uncertain")
        task = asyncio.create_task(self._decide(parcel), name=f"decide[{parcel.parcel_id}]")
        self._decisions.add(task)
        task.add_done_callback(self._decisions.discard)

    async def _decide(self, parcel: ParcelState) -> None:
        try:
            await self._decide_route(parcel)
        finally:
            parcel.decided_at = self.clock.now()

    async def _decide_route(self, parcel: ParcelState) -> None:
        if parcel.verdict is ReadVerdict.NO_READ:
            self._to_end(parcel, Disposition.NO_READ,
                         parcel.reads.why or "no acceptable code read")
            return
        if parcel.verdict is ReadVerdict.MULTI_READ:
            codes = ", ".join(sorted(parcel.reads.codes))
            self._to_end(parcel, Disposition.MULTI_READ,
                         parcel.reads.why or f"different codes: {codes}")
            return
        assert parcel.code is not None
        order = await self._lookup(parcel)
        if order is None:
            if not parcel.reason:
                parcel.reason = "no order for this code"
            self._to_end(parcel, Disposition.NO_ORDER, parcel.reason)
            return
        parcel.order = order
        rule, ranked = self._plan.destinations(order)
        if order.status is not OrderStatus.RELEASED:
            held = f"order {order.order_id} {order.status}"
            bin_id = next((b for b in ranked if self.bins[b].available), None)
            if bin_id is None:
                self._to_end(parcel, Disposition.ORDER_HELD,
                             held + (f": rule {rule}: every bin full" if rule else ""))
            else:
                await self._divert(parcel, bin_id, Disposition.ORDER_HELD,
                                   f"{held}: rule {rule}")
            return
        chosen = next((b for b in ranked if self.bins[b].available), None)
        if chosen is None:
            self._to_end(parcel, Disposition.DEST_FULL,
                         f"rule {rule}: every bin full ({', '.join(ranked) or 'none'})")
            return
        primary = ranked[0]
        disposition = Disposition.SORTED if chosen == primary else Disposition.DEST_FULL
        planned = f"rule {rule}" if rule else "no rule matched: overflow"
        reason = planned if chosen == primary else f"{planned}: {primary} full, sent to {chosen}"
        await self._divert(parcel, chosen, disposition, reason)

    async def _warm_order_cache(self) -> None:
        """Fill the cache with released orders, so an outage of the store does not stop us."""
        size = self.config.order_store.cache_size
        if not size:
            return
        try:
            async with asyncio.timeout(10 * self.config.order_store.timeout_ms / 1000):
                orders = await self.order_store.released(size)
        except (OrderStoreError, TimeoutError) as exc:
            self.stats.order_store_errors += 1
            log.warning("order store: cannot warm the cache: %s", exc or "timed out")
            return
        for order in reversed(orders):
            self._cache.put(order)

    async def _lookup(self, parcel: ParcelState) -> Order | None:
        """The store's answer (it knows of holds and cancellations); the cache while it fails."""
        assert parcel.code is not None
        try:
            async with asyncio.timeout(self.config.order_store.timeout_ms / 1000):
                order = await self.order_store.lookup(parcel.code)
        except (OrderStoreError, TimeoutError) as exc:
            self.stats.order_store_errors += 1
            cached = self._cache.get(parcel.code)
            log.warning("order store: %s%s", exc or "timed out",
                        "; sorting from the cache" if cached else "")
            if cached is None:
                parcel.reason = f"order store unavailable and order not cached: {exc or 'timeout'}"
            return cached
        if order is not None:
            self._cache.put(order)
        return order

    def _to_end(self, parcel: ParcelState, disposition: Disposition, reason: str) -> None:
        parcel.disposition, parcel.reason, parcel.route = disposition, reason, END_OF_LINE

    async def _divert(self, parcel: ParcelState, bin_id: str, disposition: Disposition,
                      reason: str) -> None:
        if parcel.lost_track:
            return  # decided while tracking was lost: already finalised, never fired for
        diverter = self.config.diverter_for_bin(bin_id)
        window = parcel.window
        fire_enc = window.enc_when_centre_at(diverter.position_mm)
        lead_mm = diverter.actuation_ms / 1000 * self.config.belt.speed_mm_s
        deadline_enc = fire_enc - round((lead_mm + self.config.decision.margin_mm) * self._cpm)
        if self.line_io.encoder() > deadline_enc:
            self._to_end(parcel, Disposition.LATE,
                         f"decision for {bin_id} came {self.line_io.encoder() - deadline_enc}"
                         " counts after its deadline")
            return
        command = DivertCommand(self._next_command_id, parcel.parcel_id, diverter.id,
                                fire_enc, diverter.pulse_ms)
        self._next_command_id += 1
        # Booked before the reply: a bin must not be over-booked by decisions in flight.
        self._book(parcel, bin_id)
        try:
            reply = await self.line_io.divert(command)
        except DriverTimeout as exc:
            # Sent but unanswered: the driver takes it back, yet it may have fired already.
            # Kept as sent, so the bin's photo-eye or the end of the line settles it.
            self.stats.unanswered_diverts += 1
            parcel.command, parcel.route = command, bin_id
            parcel.disposition = disposition
            parcel.reason = f"{reason}; divert unanswered ({exc}), cancelled"
            return
        except DriverError as exc:
            self._unbook(parcel, bin_id)
            self._to_end(parcel, Disposition.DIVERT_FAULT, f"divert not sent: {exc}")
            return
        if parcel.lost_track:  # given up while the answer was on its way
            self._unbook(parcel, bin_id)
            return
        if not reply.accepted:
            self._unbook(parcel, bin_id)
            late = reply.reason == "late"
            self._to_end(parcel, Disposition.LATE if late else Disposition.DIVERT_FAULT,
                         f"{diverter.id} refused the divert: {reply.reason}")
            return
        parcel.command, parcel.route = command, bin_id
        parcel.disposition, parcel.reason = disposition, reason

    def _book(self, parcel: ParcelState, bin_id: str) -> None:
        self.bins[bin_id].in_flight += 1
        parcel.booked = True

    def _unbook(self, parcel: ParcelState, bin_id: str) -> None:
        if parcel.booked:
            self.bins[bin_id].in_flight -= 1
            parcel.booked = False

    # --- positions -------------------------------------------------------------------------

    async def _watch(self) -> None:
        read_zone_end = self.config.read_zone_end_mm
        x_end = self.config.end_of_line.position_mm
        lost_after_mm = 400.0
        speed = self.config.belt.speed_mm_s
        while True:
            await self.clock.sleep(WATCH_INTERVAL_S)
            enc = self.line_io.encoder()
            self.encoder_history.record(self.clock.now(), enc)
            for parcel in list(self.parcels.values()):
                if parcel.parcel_id in self._finalising:
                    continue
                window = parcel.window
                if parcel.verdict is ReadVerdict.PENDING and window.cleared_enc is not None \
                        and window.trail_mm(enc) > read_zone_end and self._reads_complete(parcel):
                    self._settle(parcel, final=True)
                if parcel.booked and parcel.command is not None and parcel.route is not None:
                    timeout_mm = self.config.bin(parcel.route).confirm_timeout_ms / 1000 * speed
                    if enc > parcel.command.fire_enc + timeout_mm * self._cpm:
                        # Not in its bin: it may still ride to the end of the line; keep tracking.
                        self._unbook(parcel, parcel.route)
                if window.trail_mm(enc) > x_end + lost_after_mm:
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

    # --- the end of a parcel ---------------------------------------------------------------

    async def _finalise(self, parcel: ParcelState, disposition: Disposition, where: str) -> None:
        if parcel.parcel_id in self._finalising:
            return
        self._finalising.add(parcel.parcel_id)
        order = parcel.order
        record = FinalRecord(
            parcel_id=parcel.parcel_id, disposition=disposition, bin=where,
            reason=parcel.reason, code=parcel.code,
            order_id=order.order_id if order else None,
            length_mm=parcel.window.length_mm, decided_at=parcel.decided_at,
            final_at=self.clock.now(),
            order_created_at=order.created_at if order else None)
        try:
            if await self.journal.finalise(record):
                self.stats.dispositions[disposition.value] += 1
                for listener in self.listeners:
                    listener(record)
                if disposition in (Disposition.NO_READ, Disposition.MULTI_READ):
                    self._to_archive(parcel, record)
        finally:
            self.parcels.pop(parcel.parcel_id, None)
            self.tracker.forget(parcel.parcel_id)
            self._finalising.discard(parcel.parcel_id)

    def _to_archive(self, parcel: ParcelState, record: FinalRecord) -> None:
        """Keep the parcel's best frames for a person to key its code; never blocks the line."""
        if self.archive is None:
            return
        entry = ArchivedParcel(
            parcel_id=record.parcel_id, disposition=record.disposition.value,
            reason=record.reason, codes=sorted(parcel.reads.codes), at=record.final_at,
            wall_time=datetime.now(UTC).isoformat(timespec="seconds"),
            frames=[frame for _, frame in parcel.frames])
        task = asyncio.create_task(self._store(self.archive, entry),
                                   name=f"archive[{record.parcel_id}]")
        self._archiving.add(task)
        task.add_done_callback(self._archiving.discard)

    async def _store(self, archive: NoReadArchive, entry: ArchivedParcel) -> None:
        try:
            await self.clock.offload(self._archive_writer, archive.store, entry)
        except (OSError, ArchiveError) as exc:
            self.stats.archive_errors += 1
            log.warning("no-read archive: parcel %d not kept: %s", entry.parcel_id, exc)

    async def aclose(self) -> None:
        if self._archiving:
            await asyncio.gather(*self._archiving, return_exceptions=True)
        self._archive_writer.shutdown(wait=True)
        with contextlib.suppress(Exception):
            await self.order_store.close()
        await self.journal.close()


def _merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        elif hi > lo:
            merged.append((lo, hi))
    return merged


def _decode_crops(decoder: BarcodeDecoder, image: GrayImage,
                  spans: list[tuple[int, int]]) -> list[Symbol]:
    """Decode the column spans of a frame that tracked parcels occupy (runs in a thread)."""
    return [Symbol(s.text, s.symbology, s.x + lo, s.y)
            for lo, hi in spans for s in decoder.decode(image[:, lo:hi])]
