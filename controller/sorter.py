"""The decision pipeline's coordinator: track, read, decide, divert, confirm, journal.

One :class:`Sorter` runs a line by wiring its stages: :mod:`controller.reading` (frames to
read verdicts), :mod:`controller.lookup` and :mod:`controller.routing` (verdict and order to
a route), :mod:`controller.diverting` (the divert command against its deadline) and
:mod:`controller.confirming` (where each parcel ended up). Its tasks: line events
(photo-eyes, bins), one per camera, a position watcher, and a decision per settled parcel.
Every parcel ends with exactly one final disposition, written to the journal before it is
counted; on a loop, after however many laps :mod:`controller.recirculation` gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from controller.archive import NoReadArchive
from controller.archiving import ArchiveKeeper
from controller.clock import Clock
from controller.codes import ParcelReads, ReadVerdict
from controller.config import LineConfig
from controller.confirming import Confirmations
from controller.disposition import Disposition
from controller.diverting import DivertScheduler
from controller.encoder import EncoderHistory
from controller.errors import ConfigError, JournalError
from controller.journal import FinalRecord, Journal
from controller.journal_writes import JournalWrites
from controller.lineio import (
    END_EYE,
    INDUCTION_EYE,
    BinEntry,
    BinLevel,
    DeviceFault,
    LineIO,
    PhotoEyeEdge,
    TrackingLost,
)
from controller.lookup import OrderLookup
from controller.operating import LineControls
from controller.orders import OrderStore
from controller.parcel import Belt, BinState, ParcelState, SorterStats
from controller.readiness import Readiness
from controller.reading import ReadZone
from controller.recirculation import Recirculation
from controller.routing import Route, Router
from controller.sortplan import SortPlan
from controller.spacing import Spacing, mark_too_close
from controller.telemetry import NO_TELEMETRY, Telemetry
from controller.tracking import Tracker
from controller.vision import BarcodeDecoder, Camera, CameraState

__all__ = ["BinState", "FinalListener", "ParcelState", "Sorter", "SorterStats"]

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.01

FinalListener = Callable[[FinalRecord], None]


class Sorter(LineControls):
    """Runs one sorting line against whatever LineIO, cameras and order store it is given.

    ``mode`` is STARTING until ready, then RUNNING; a parcel inducted while a technician has
    the line paused or in maintenance (:class:`LineControls`) is not sorted (NOT_READY).

    A decision that raises an unexpected error (the order store or the plan failing in a
    way that is not an OrderStoreError) is logged with its traceback and counted in
    ``stats.decision_errors``; its parcel takes the fail-safe route: nothing is fired, and
    it ends LATE at the end of the line with the reason "decision failed: <error>" (LATE,
    not DIVERT_FAULT: no decision was reached in time and no diverter was involved).

    A journal write that fails (:class:`JournalError`) faults the line: it is logged once,
    no divert is sent from then on, no parcel inducted after it is tracked, and :meth:`run`
    raises the error, so whoever runs the line stops it (closing its links, whose fail-safe
    drops any divert still scheduled). What was journaled before stays.
    """

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
        telemetry: Telemetry = NO_TELEMETRY,
        wait_for_frames: bool = False,
        prerequisites: Callable[[], list[str]] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.line_io = line_io
        self.cameras = cameras
        self.decoders = decoders
        self.order_store = order_store
        self.journal = journal
        journal.telemetry = self.telemetry = telemetry
        self.archive = archive
        self.encoder_history = encoder_history or EncoderHistory()
        self.listeners: list[FinalListener] = []
        self._init_controls()
        self._belt = Belt(
            Tracker(config.induction.photo_eye_mm, config.belt.encoder_counts_per_mm),
            {b.id: BinState(b.capacity) for b in config.bins})
        self.stats: SorterStats = self._belt.stats
        self.parcels: dict[int, ParcelState] = self._belt.parcels
        self.bins: dict[str, BinState] = self._belt.bins
        self._lookup = OrderLookup(order_store, config.order_store, self.stats, now=clock.now)
        self._reading = ReadZone(config, clock, line_io, self._belt, cameras=cameras,
                                 decoders=decoders, on_settled=self._start_decision,
                                 on_code=self._lookup.read_early,
                                 keep_frames=archive is not None,
                                 decode_threads=decode_threads, decode_cost_s=decode_cost_s)
        self._router = Router(SortPlan(config.sort_plan))
        self._spacing = Spacing(config.induction)
        self._loop = Recirculation(config, self._belt)
        self._diverting = DivertScheduler(config, line_io, self._belt, clock,
                                          telemetry=telemetry, messages=self.messages)
        self._confirming = Confirmations(config, self._belt, self._finalise, clock,
                                         messages=self.messages,
                                         history=self.encoder_history)
        self._archiving = ArchiveKeeper(archive, clock, self.stats)
        self._decisions: set[asyncio.Task[None]] = set()
        self._writes = JournalWrites(on_failure=self._journal_fault)
        self._next_parcel_id = 1
        self.fault: JournalError | None = None  # set once: the line is stopped safely
        self.faulted_at: float | None = None
        self._readiness = Readiness(
            config.order_store, order_store, self._lookup, self.stats, clock,
            cameras_without_frames=self._reading.cameras_without_frames
            if wait_for_frames else None, prerequisites=prerequisites)
        self.ready = self._readiness.ready
        self._stopping = False

    @property
    def tracker(self) -> Tracker:
        return self._belt.tracker

    @property
    def open_parcels(self) -> int:
        return len(self.parcels)

    def camera_states(self) -> dict[str, CameraState]:
        return self._reading.camera_states()

    def waiting_for(self) -> list[str]:
        """What the line still waits for before it sorts (empty once ready)."""
        return self._readiness.waiting_for()

    async def run(self) -> None:
        """Run until cancelled."""
        recovered = await self.journal.open()
        if recovered:
            log.warning("journal: %d parcels open at the last stop closed as LOST", len(recovered))
        self._next_parcel_id = await self.journal.next_parcel_id()
        name = f"sorter[{self.config.line.name}]"
        try:
            async with asyncio.TaskGroup() as tg:
                # the change feed listens before the cache is warmed: no change falls between
                tg.create_task(self._lookup.follow(), name=f"{name}.order-changes")
                tg.create_task(self._become_ready(), name=f"{name}.ready")
                tg.create_task(self._line_events(), name=f"{name}.line")
                tg.create_task(self._watch(), name=f"{name}.watch")
                tg.create_task(self._stop_on_fault(), name=f"{name}.journal")
                for camera in self.cameras:
                    tg.create_task(self._reading.run_camera(camera),
                                   name=f"{name}.{camera.camera_id}")
        except BaseExceptionGroup as group:
            if self.fault is not None and group.subgroup(JournalError) is not None:
                raise self.fault from None
            refused = group.subgroup(ConfigError)
            if refused is not None:  # a device that does not match its config: a refusal
                raise _first(refused) from None
            raise
        finally:
            for task in list(self._decisions):
                task.cancel()
            self._reading.shutdown()

    async def _become_ready(self) -> None:
        await self._readiness.become_ready(self.starting)
        log.info("line %s ready: sorting", self.config.line.name)

    async def finish(self, timeout_s: float) -> int:
        """Stop inducting; let the parcels on the belt end, up to ``timeout_s``.

        Parcels arriving at PE-IN from now on are not tracked. Those still open when the
        time is up are closed LOST (their outcome cannot be known); returns how many.
        """
        self._stopping = True
        self.stopping()
        until = self.clock.now() + timeout_s
        while self.parcels and self.clock.now() < until and self.fault is None:
            await self.clock.sleep(WATCH_INTERVAL_S)
        left = [p for p in self.parcels.values() if p.parcel_id not in self._belt.finalising]
        for parcel in left:
            parcel.reason = f"controller stopped before its outcome was known ({timeout_s:g} s)"
            self._finalise(parcel, Disposition.LOST, "UNKNOWN")
        await self._writes.drain()
        return len(left)

    # --- line events -----------------------------------------------------------------------

    async def _line_events(self) -> None:
        async for event in self.line_io.events():
            self.notice_of(event)
            if isinstance(event, PhotoEyeEdge | BinEntry):
                # How long ago the line latched it: the loop's lag plus the link's and the
                # line's own, at the belt's nominal speed (so at most that old).
                self._confirming.event_late((self.line_io.encoder() - event.enc) / (
                    self.config.belt.encoder_counts_per_mm * self.config.belt.speed_mm_s))
            match event:
                case PhotoEyeEdge(eye=eye, blocked=blocked, enc=enc) if eye == INDUCTION_EYE:
                    self._induction_edge(blocked, enc)
                case PhotoEyeEdge(eye=eye, blocked=True, enc=enc) if eye == END_EYE:
                    if not self._loop.at_end(enc):  # on a loop it may go round again
                        self._confirming.end_arrival(enc)
                case PhotoEyeEdge():
                    pass
                case BinEntry(bin_id=bin_id, enc=enc):
                    self._confirming.bin_entry(bin_id, enc)
                case BinLevel(bin_id=bin_id, full=full):
                    self._confirming.bin_level(bin_id, full)
                case DeviceFault(device=device, message=message):
                    self.stats.device_faults += 1
                    log.warning("device fault %s: %s", device, message)
                case TrackingLost(device=device, message=message):
                    self._confirming.lose_track(f"{device}: {message}")
                    self._belt.track_afresh()
                    self._reading.forget_progress()

    def _journal_fault(self, exc: JournalError) -> None:
        """Fault the line once: nothing fired from now on; the error ends :meth:`run`."""
        self.fault, self.faulted_at = exc, self.clock.now()
        log.error("line %s stopped: %s; no divert is sent from now on, parcels on the belt "
                  "ride to the end", self.config.line.name, exc)
        self.faulted(exc)

    async def _stop_on_fault(self) -> None:
        raise await self._writes.failed()

    def _induction_edge(self, blocked: bool, enc: int) -> None:
        if self.fault is not None:
            return  # faulted: nothing new is tracked, so nothing is decided for it
        if blocked and self.tracker.inducting is None \
                and (returning := self._loop.returning_at(enc)) is not None:
            self._loop.inducted_again(returning, enc)  # tracked already, stopping or not
            self._admit(returning)
            return
        if blocked and self._stopping:
            return  # stopping: parcels inducted now are not tracked
        if blocked:
            if self.tracker.inducting is not None:
                self.stats.spurious_edges += 1
                return
            parcel_id = self._next_parcel_id
            self._next_parcel_id += 1
            window = self.tracker.blocked(parcel_id, enc)
            now = self.clock.now()
            parcel = self.parcels[parcel_id] = ParcelState(
                window, ParcelReads(self.config.decision.min_agreeing_reads), now)
            self._admit(parcel)
            self._writes.start(self._write_induction(parcel_id, enc, now),
                               f"journal.inducted[{parcel_id}]", induction_of=parcel_id)
            return
        if self.tracker.cleared(enc) is None and not self._stopping:
            self.stats.spurious_edges += 1

    async def _write_induction(self, parcel_id: int, enc: int, now: float) -> None:
        try:
            await self.journal.inducted(parcel_id, enc, now)
        except JournalError:
            # Never journaled, so never sorted: it rides to the end of the line untracked.
            self.parcels.pop(parcel_id, None)
            self.tracker.forget(parcel_id)
            raise

    def _admit(self, parcel: ParcelState) -> None:
        """A parcel at PE-IN (new, or back round a loop): its gap, and whether it is sorted."""
        if (pair := self._spacing.inducted(parcel.window)) is not None:
            self.stats.too_close_decided += mark_too_close(pair, self.parcels)
        waiting = ", ".join(self.waiting_for()) or "nothing"
        why = None if self.ready.is_set() else \
            f"inducted before the line was ready (waiting for {waiting})"
        if (why := why or self.held_by_mode()) is not None:
            # Not sorted, never fired at, not counted against the line: it rides to the end.
            parcel.verdict, parcel.decided_at = ReadVerdict.NO_READ, self.clock.now()
            parcel.to_end(Disposition.NOT_READY, why)

    async def _watch(self) -> None:
        """By encoder count: the read zone's end, confirmation windows, missing parcels."""
        last = self.clock.now()
        while True:
            await self.clock.sleep(WATCH_INTERVAL_S)
            now = self.clock.now()
            self._confirming.loop_lagged(now - last - WATCH_INTERVAL_S)
            last = now
            enc = self.line_io.encoder()
            self.encoder_history.record(self.clock.now(), enc)
            for parcel in list(self.parcels.values()):
                if parcel.parcel_id in self._belt.finalising:
                    continue
                if self._loop.missed(parcel, enc):
                    self._finalise(parcel, Disposition.LOST, "UNKNOWN")
                    continue
                self._reading.at_position(parcel, enc)
                self._confirming.at_position(parcel, enc)

    # --- decisions -------------------------------------------------------------------------

    def _start_decision(self, parcel: ParcelState) -> None:
        task = asyncio.create_task(self._decide(parcel), name=f"decide[{parcel.parcel_id}]")
        self._decisions.add(task)
        task.add_done_callback(self._decisions.discard)

    async def _decide(self, parcel: ParcelState) -> None:
        """Route a settled parcel and send its divert; a failure sends it to the end."""
        started = self.clock.now()
        try:
            lap = parcel.lap
            route = self._loop.route(parcel, await self._route(parcel))
            if self._loop.overtaken(parcel, lap):
                return  # past the end of line while deciding: round again, decided afresh
            await self._writes.inducted(parcel.parcel_id)  # nothing fired for an unjournaled one
            if self.fault is not None:
                parcel.to_end(Disposition.LATE, f"line faulted: {self.fault}")
            elif route.diverts and parcel.too_close:
                parcel.to_end(Disposition.TOO_CLOSE, f"{parcel.too_close}; it would have "
                                                     f"gone to {route.bin}")
            elif route.diverts:
                await self._diverting.divert(parcel, route)
            else:
                parcel.to_end(route.disposition, route.reason)
        except Exception as exc:  # any failure: the fail-safe route, once
            self.stats.decision_errors += 1
            log.exception("parcel %d: decision failed", parcel.parcel_id,
                          extra={"parcel": parcel.parcel_id})
            parcel.to_end(Disposition.LATE, f"decision failed: {type(exc).__name__}: {exc}")
        finally:
            parcel.decided_at = self.clock.now()
            self.telemetry.observe_decision(parcel.decided_at - started)

    async def _route(self, parcel: ParcelState) -> Route:
        route = self._router.for_reads(parcel.verdict, why=parcel.reads.why,
                                       codes=parcel.reads.codes)
        if route is not None:
            return route
        assert parcel.code is not None
        order, no_order_reason = await self._lookup.order(parcel.code)
        parcel.order = order
        return self._router.for_order(order, self._belt.full_bins(),
                                      no_order_reason=no_order_reason,
                                      length_mm=parcel.window.length_mm)

    # --- the end of a parcel ---------------------------------------------------------------

    def _finalise(self, parcel: ParcelState, disposition: Disposition, where: str) -> None:
        """End ``parcel`` now (no stage touches it again); count it once its record is written."""
        finalising = self._belt.finalising
        if parcel.parcel_id in finalising:
            return
        finalising.add(parcel.parcel_id)
        record = parcel.final_record(disposition, where, self.clock.now())
        self._writes.start(self._write_final(parcel, record), f"journal.final[{parcel.parcel_id}]")

    async def _write_final(self, parcel: ParcelState, record: FinalRecord) -> None:
        try:
            if await self.journal.finalise(record):
                self.stats.dispositions[record.disposition.value] += 1
                for listener in self.listeners:
                    listener(record)
                if record.disposition in (Disposition.NO_READ, Disposition.MULTI_READ):
                    self._archiving.keep(parcel, record)
        finally:
            self.parcels.pop(parcel.parcel_id, None)
            self.tracker.forget(parcel.parcel_id)
            self._belt.finalising.discard(parcel.parcel_id)

    async def aclose(self) -> None:
        await self._lookup.aclose()
        await self._writes.drain()
        await self._archiving.aclose()
        with contextlib.suppress(Exception):
            await self.order_store.close()
        await self.journal.close()


def _first(group: BaseExceptionGroup[ConfigError]) -> ConfigError:
    for exc in group.exceptions:
        return exc if isinstance(exc, ConfigError) else _first(exc)
    raise AssertionError("an empty exception group")
