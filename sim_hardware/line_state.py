"""What every part of the emulated line shares: config, clock, belt, the parcels on it.

The parts (:mod:`sim_hardware.line_cameras`, :mod:`sim_hardware.line_diverters`) build on
this state; :class:`sim_hardware.line.PhysicalLine` assembles them. The parcels to come are a
:class:`sim_hardware.parcel_window.ParcelWindow`: a list the line keeps, or a stream it lets
go of behind it, each parcel handed to the ``settled_sinks`` as it settles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from controller.clock import Clock
from controller.config import LineConfig
from controller.lineio import LineEvent
from controller.vision import Frame
from sim_hardware.belt import Belt
from sim_hardware.parcel_window import ParcelWindow
from sim_hardware.scenario import ScenarioSpec, SimParcel

log = logging.getLogger(__name__)


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


class LineState:
    """The belt and the parcels on it, the line's event sinks and its background tasks."""

    def __init__(self, config: LineConfig, scenario: ScenarioSpec, parcels: Iterable[SimParcel],
                 clock: Clock) -> None:
        self.config = config
        self.scenario = scenario
        # A list is kept whole (a test reads it back); any other iterable holds
        # scenario.parcels parcels, taken as the line reaches them and let go behind it.
        self.parcels = ParcelWindow(parcels, scenario.parcels)
        self.clock = clock
        self.belt = Belt(clock, config.belt.speed_mm_s, config.belt.encoder_counts_per_mm,
                         scenario.speed_changes)
        self.counters = LineCounters()
        self.on_belt: dict[int, SimParcel] = {}
        self.live: dict[int, SimParcel] = {}  # inducted and not settled: on the belt or falling
        self.settled_sinks: list[Callable[[SimParcel], None]] = []
        self._induction_reader = self.parcels.reader()
        self._end_reader = None if config.end_of_line.recirculates else self.parcels.reader()
        self.event_sinks: list[EventSink] = []
        self.done = asyncio.Event()
        self._settled = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: what the line's own spawned tasks (fires, faults, laps) raised: it ends the run
        self.task_failures: list[Exception] = []

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

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[None]) -> None:
        """A spawned task is done: one that raised ends the run, which then raises it."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, Exception):
            self.task_failures.append(error)
            self.done.set()

    def _inducted(self, parcel: SimParcel) -> None:
        self.on_belt[parcel.sim_id] = parcel
        self.live[parcel.sim_id] = parcel

    def _settle(self, parcel: SimParcel, where: str) -> None:
        parcel.actual = where
        # Off the belt for good: no camera sees its labels again (their code is its truth).
        parcel.labels = ()
        self._settled += 1
        del self.live[parcel.sim_id]
        for sink in self.settled_sinks:
            sink(parcel)

    def unsettled(self) -> Iterator[SimParcel]:
        """The parcels that have not settled (at a shift's end: cut short, or never inducted)."""
        yield from list(self.live.values())
        yield from self.parcels.rest(self._induction_reader)

    def encoder(self) -> int:
        return self.belt.encoder()
