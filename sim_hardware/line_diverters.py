"""The emulated line's diverters and bins: diverts held and fired, pushes, bins that fill."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from controller.config import DiverterConfig
from controller.lineio import BinEntry, BinLevel, DivertCommand, DivertReply
from sim_hardware.line_state import LineState
from sim_hardware.scenario import Case, SimParcel

log = logging.getLogger(__name__)


@dataclass
class BinModel:
    bin_id: str
    capacity: int
    fill: int = 0
    full: bool = False
    overfilled: int = 0
    received: int = 0
    parcels: list[int] = field(default_factory=list)  # sim_ids, on a line that keeps its truth


@dataclass(frozen=True, slots=True)
class Fire:
    """A diverter fired: for which controller parcel, and which emulated parcel it pushed."""

    command_id: int
    parcel_id: int
    diverter_id: str
    pushed: int | None  # the emulated parcel's sim_id; None for an empty or jammed push
    enc: int = 0


def _note(text: str) -> str:
    """A parcel's event note, one string per distinct text however many parcels hold it."""
    return _NOTES.setdefault(text, text)


_NOTES: dict[str, str] = {}


class LineDiverters(LineState):
    """Pusher diverters that fire on an encoder count, and the bins they push into."""

    bins: dict[str, BinModel]
    jammed: set[str]  # diverters whose arm is stuck: they fire, nothing moves
    fires: list[Fire]  # every fire, on a line that keeps its truth (the fire_sinks see all)
    fire_sinks: list[Callable[[Fire], None]]
    _diverters: dict[str, DiverterConfig]
    _scheduled: dict[int, tuple[str, asyncio.Task[None]]]

    def _init_diverters(self) -> None:
        self.bins = {b.id: BinModel(b.id, b.capacity) for b in self.config.bins}
        self._diverters = {d.id: d for d in self.config.diverters}
        self._scheduled = {}
        self.jammed = set()
        self.fires = []
        self.fire_sinks = []

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
        task = self._spawn(self._fire(diverter, command),
                           f"sim.{diverter.id}.fire[{command.command_id}]")
        self._scheduled[command.command_id] = (diverter.id, task)

        def _done(_: asyncio.Task[None], command_id: int = command.command_id) -> None:
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
        in_reach: list[tuple[float, SimParcel]] = []
        for parcel in self.on_belt.values():
            lead = self.lead_mm(parcel, travel)
            off = abs(lead - parcel.length_mm / 2 - diverter.position_mm)
            if off <= diverter.window_mm / 2:
                in_reach.append((off, parcel))
            elif lead - parcel.length_mm <= diverter.position_mm <= lead:
                self.counters.glancing_fires += 1
                parcel.events.append(_note(f"glanced by {diverter.id}"))
        in_reach.sort(key=lambda item: item[0])
        hit = in_reach[0][1] if in_reach else None
        jammed = hit is not None and (hit.case is Case.JAMMED_DIVERTER
                                      or diverter.id in self.jammed)
        fire = Fire(command.command_id, command.parcel_id, diverter.id,
                    hit.sim_id if hit is not None and not jammed else None, command.fire_enc)
        if self.parcels.keeps_all:
            self.fires.append(fire)
        for sink in self.fire_sinks:
            sink(fire)
        if hit is None:
            self.counters.empty_fires += 1
            return
        # Which controller parcel it was fired for is the Fire's: the note is shared text.
        hit.events.append(_note(f"fired at by {diverter.id}"))
        if jammed:
            self.counters.jammed_fires += 1
            hit.events.append(_note(f"{diverter.id} jammed"))
            return
        # The arm moves whatever is in its reach: a neighbour that close goes into the bin too.
        along = [p for _, p in in_reach[1:]]
        for parcel in along:
            parcel.events.append(_note(f"pushed along by {diverter.id}"))
        pushed_at = self.belt.time_at(travel)
        await asyncio.gather(*(self._push(p, diverter, pushed_at) for p in [hit, *along]))

    async def _push(self, parcel: SimParcel, diverter: DiverterConfig,
                    pushed_at: float | None = None) -> None:
        del self.on_belt[parcel.sim_id]
        # It lands a drop time after the push, however late this task wakes; the bin's eye
        # latches the count of that moment, as a board's input capture does.
        landed_at = (self.clock.now() if pushed_at is None else pushed_at) \
            + self.scenario.drop_time_s
        await self.clock.sleep_until(landed_at)
        self._land(parcel, self.bins[diverter.bin],
                   self.belt.enc_at_travel(self.belt.travel(landed_at)))

    def _land(self, parcel: SimParcel, bin_model: BinModel, enc: int) -> None:
        if bin_model.full:
            bin_model.overfilled += 1
        bin_model.fill += 1
        bin_model.received += 1
        if self.parcels.keeps_all:
            bin_model.parcels.append(parcel.sim_id)
        self._settle(parcel, bin_model.bin_id)
        self._emit(BinEntry(bin_model.bin_id, enc))
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
