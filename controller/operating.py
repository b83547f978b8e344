"""The line's operating state, the technicians' commands on it, and the notices it raises.

:class:`OperatingMode` is the state diagnostics publish (docs/diagnostics-protocol.md,
"status"): only a RUNNING line inducts new parcels. :class:`LineControls` is the part of the
Sorter a command handler calls (pause, resume, maintenance, test-fire, bin emptied, a new
sort plan); it refuses what the line's state does not allow with a :class:`ModeRefused`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from controller.clock import Clock
from controller.config import LineConfig, SortPlanConfig, parse_config
from controller.lineio import (
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    LineEvent,
    LineIO,
    TrackingLost,
)
from controller.message_log import DEFAULT_LIMIT, MessageLog
from controller.parcel import BinState, ParcelState
from controller.sortplan import SortPlan

if TYPE_CHECKING:
    from controller.diverting import DivertScheduler
    from controller.routing import Router

log = logging.getLogger(__name__)

TEST_FIRE_PARCEL = 0
"""The parcel id of a technician's test fire: no parcel is behind it."""


class LineState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    MAINTENANCE = "maintenance"
    FAULTED = "faulted"
    STOPPING = "stopping"
    OFFLINE = "offline"


_S = LineState
_LEGAL: dict[LineState, frozenset[LineState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.FAULTED, _S.STOPPING, _S.OFFLINE}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.MAINTENANCE, _S.FAULTED, _S.STOPPING, _S.OFFLINE}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.MAINTENANCE, _S.FAULTED, _S.STOPPING, _S.OFFLINE}),
    _S.MAINTENANCE: frozenset({_S.RUNNING, _S.PAUSED, _S.FAULTED, _S.STOPPING, _S.OFFLINE}),
    _S.STOPPING: frozenset({_S.FAULTED, _S.OFFLINE}),
    _S.FAULTED: frozenset({_S.OFFLINE}),
    _S.OFFLINE: frozenset(),
}
_WHY_NOT: dict[LineState, str] = {
    _S.STARTING: "the line is still starting ({reason}); wait until it is running",
    _S.FAULTED: "the line is faulted ({reason}); it must be restarted, not resumed",
    _S.STOPPING: "the line is stopping ({reason}); nothing more can be done with it",
    _S.OFFLINE: "the line is offline",
}


class ModeRefused(ValueError):
    """A command the line's operating state does not allow; the message says why."""


class NoSuchDevice(ValueError):
    """A command naming a diverter or bin the line does not have."""


@dataclass(frozen=True)
class Notice:
    """Something a technician should hear of at once (docs: events/<kind>)."""

    kind: str
    device: str
    message: str
    at: float


ModeListener = Callable[["OperatingMode"], None]
NoticeListener = Callable[[Notice], None]


class OperatingMode:
    """The line's state and why, since when, and who to tell when it changes.

    Moving to the same state with another reason is a change (a starting line's reason
    names what it still waits for); STOPPING and FAULTED lead only to OFFLINE.
    """

    def __init__(self, clock: Clock, state: LineState = LineState.STARTING,
                 reason: str = "starting") -> None:
        self._clock = clock
        self.state = state
        self.reason = reason
        self.since = clock.now()
        self.since_wall = datetime.now(UTC)
        self.changes = 0
        self.listeners: list[ModeListener] = []

    @property
    def inducting(self) -> bool:
        """Whether a parcel reaching the induction photo-eye now is sorted."""
        return self.state is LineState.RUNNING

    def allows(self, state: LineState) -> bool:
        return state is self.state or state in _LEGAL[self.state]

    def refusal(self, state: LineState) -> str:
        """Why the line cannot go to ``state`` now, in a technician's words."""
        why = _WHY_NOT.get(self.state, "the line is {state}: it cannot go to {to} from there")
        return why.format(reason=self.reason, state=self.state.value, to=state.value)

    def set(self, state: LineState, reason: str) -> bool:
        """Change state; False if it is the same state and reason. Illegal: ModeRefused."""
        if state is self.state and reason == self.reason:
            return False
        if not self.allows(state):
            raise ModeRefused(self.refusal(state))
        if state is not self.state:
            self.since, self.since_wall = self._clock.now(), datetime.now(UTC)
        self.state, self.reason = state, reason
        self.changes += 1
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:  # a listener's bug must not stop the line
                log.exception("operating mode listener failed")
        return True


def tell(listeners: list[NoticeListener], notice: Notice) -> None:
    """Hand a notice to each listener; one that fails is logged, the others still hear it."""
    for listener in list(listeners):
        try:
            listener(notice)
        except Exception:
            log.exception("notice listener failed")


class LineControls:
    """The Sorter's commands a technician gives (mixed into :class:`controller.sorter.Sorter`)."""

    config: LineConfig
    clock: Clock
    line_io: LineIO
    mode: OperatingMode
    parcels: dict[int, ParcelState]
    bins: dict[str, BinState]
    notices: list[NoticeListener]
    messages: MessageLog
    _router: Router
    _diverting: DivertScheduler

    def _init_controls(self) -> None:
        """The mode (starting), no notice listeners yet, and an empty message log."""
        self.mode = OperatingMode(self.clock)
        self.notices = []
        diagnostics = self.config.diagnostics
        self.messages = MessageLog(diagnostics.trace_messages if diagnostics else DEFAULT_LIMIT)

    def starting(self, reason: str, state: LineState = LineState.STARTING) -> None:
        """What a starting line waits for, or that it is ready (not once stopped or faulted)."""
        if self.mode.state is LineState.STARTING:
            self.mode.set(state, reason)

    def notify(self, kind: str, device: str, message: str) -> None:
        tell(self.notices, Notice(kind, device, message, self.clock.now()))

    def notice_of(self, event: LineEvent) -> None:
        """The notice a line event is worth, if any."""
        match event:
            case BinLevel(bin_id=bin_id, full=True):
                self.notify("bin_full", bin_id, f"bin {bin_id} is full")
            case DeviceFault(device=device, message=message):
                self.notify("device_fault", device, message)
            case TrackingLost(device=device, message=message):
                self.notify("tracking_lost", device, message)

    def faulted(self, error: Exception) -> None:
        """The journal failed: the line is stopped safely."""
        if self.mode.allows(LineState.FAULTED):
            self.mode.set(LineState.FAULTED, str(error))
        self.notify("line_fault", "journal", str(error))

    def stopping(self) -> None:
        if self.mode.allows(LineState.STOPPING):
            self.mode.set(LineState.STOPPING, "a graceful stop: the belt being emptied")

    def held_by_mode(self) -> str | None:
        """Why a parcel reaching the induction eye now is not sorted (None: it is)."""
        if self.mode.inducting:
            return None
        if self.mode.state is LineState.PAUSED:
            return "inducted while the line was paused"
        return "inducted while the line was in maintenance"

    def pause(self, reason: str | None = None) -> LineState:
        """Stop inducting; the parcels on the belt are finished."""
        self.mode.set(LineState.PAUSED, reason or "paused by a technician")
        return self.mode.state

    def resume(self) -> LineState:
        """Induct again, from paused or maintenance."""
        if self.mode.state not in (LineState.PAUSED, LineState.MAINTENANCE, LineState.RUNNING):
            raise ModeRefused(self.mode.refusal(LineState.RUNNING))
        self.mode.set(LineState.RUNNING, "sorting")
        return self.mode.state

    def set_maintenance(self, on: bool) -> LineState:
        """On: induction stopped and test-fire allowed; off: back to running."""
        if on:
            self.mode.set(LineState.MAINTENANCE, "maintenance by a technician")
        elif self.mode.state is LineState.MAINTENANCE:
            self.mode.set(LineState.RUNNING, "sorting")
        elif self.mode.state is not LineState.RUNNING:
            raise ModeRefused(f"the line is {self.mode.state.value}, not in maintenance")
        return self.mode.state

    async def test_fire(self, diverter_id: str, pulse_ms: float | None = None) -> DivertReply:
        """Fire one diverter once, just ahead of the belt's position; maintenance only."""
        diverter = next((d for d in self.config.diverters if d.id == diverter_id), None)
        if diverter is None:
            raise NoSuchDevice(f"no diverter {diverter_id!r} on this line (it has "
                               f"{', '.join(d.id for d in self.config.diverters)})")
        if self.mode.state is not LineState.MAINTENANCE:
            raise ModeRefused(f"test-fire needs maintenance; the line is {self.mode.state.value}")
        if self.parcels:
            raise ModeRefused(f"test-fire needs a clear belt; {len(self.parcels)} parcels are "
                              "still on it")
        belt, cpm = self.config.belt, self.config.belt.encoder_counts_per_mm
        lead_mm = diverter.actuation_ms / 1000 * belt.speed_mm_s + self.config.decision.margin_mm
        command = DivertCommand(self._diverting.next_command_id(), TEST_FIRE_PARCEL, diverter.id,
                                self.line_io.encoder() + round(lead_mm * cpm),
                                pulse_ms if pulse_ms is not None else diverter.pulse_ms)
        link = self.config.diverter_link(diverter)
        sent_at = self.clock.now()
        self.messages.record(TEST_FIRE_PARCEL, "sent", link, "test_fire",
                             {"command": command.command_id, "diverter": diverter.id,
                              "fire_enc": command.fire_enc, "pulse_ms": command.pulse_ms},
                             at=sent_at)
        reply = await self.line_io.divert(command)
        self.messages.record(TEST_FIRE_PARCEL, "received", link, "divert_answer",
                             {"command": command.command_id, "accepted": reply.accepted,
                              "reason": reply.reason},
                             at=self.clock.now(), latency_s=self.clock.now() - sent_at)
        log.info("test-fire %s: %s", diverter.id, "accepted" if reply.accepted else reply.reason)
        return reply

    def bin_emptied(self, bin_id: str) -> int:
        """A technician emptied the bin: its count starts from 0 again; returns the count before.

        A full sensor still on keeps the bin full: the sensor, not the command, says so.
        """
        state = self.bins.get(bin_id)
        if state is None:
            raise NoSuchDevice(f"no bin {bin_id!r} on this line (it has "
                               f"{', '.join(self.bins)})")
        was, state.confirmed = state.confirmed, 0
        return was

    def replace_plan(self, plan: SortPlanConfig) -> int:
        """Check a new sort plan against the whole line, then sort by it; returns its rules.

        A plan the line cannot use raises ConfigError naming each problem; the running
        plan stays.
        """
        candidate = self.config.model_copy(update={"sort_plan": plan})
        config = parse_config(candidate.model_dump(), "sort plan")
        self._router.plan = SortPlan(config.sort_plan)
        self.config = self.config.model_copy(update={"sort_plan": config.sort_plan})
        log.info("sort plan replaced: %d rules", len(config.sort_plan.rules))
        return len(config.sort_plan.rules)
