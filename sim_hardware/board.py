"""The line's I/O board at the far end of a serial cable (a pty, or a null modem in memory).

It speaks docs/serial-protocol.md for the physical line: photo-eye edges, encoder, bin
sensors and diverter commands. Like the firmware it stands in for, it fires only on a
scheduled command, refuses one it can no longer carry out in time, and drops every
scheduled divert when the controller's heartbeat stops (fail-safe).

The cable is a pty on the real clock and an in-memory null modem on the virtual one
(:mod:`sim_hardware.board_wire`), either paced like a baud rate and made bad: flipped and
lost bytes, late or missing ACKs; it can be pulled out and plugged back in, and the board
power-cycled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from controller.clock import Clock, VirtualTimeEventLoop
from controller.lineio import (
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    LineEvent,
    PhotoEyeEdge,
)
from drivers.lineio import wire
from drivers.lineio.link import LinkSession
from sim_hardware.board_wire import (
    BITS_PER_BYTE,
    BoardStats,
    BoardWire,
    Cable,
    NullModemCable,
    PtyCable,
    WireFaults,
)
from sim_hardware.line import Fire, PhysicalLine

__all__ = ["BITS_PER_BYTE", "BoardStats", "CableKind", "IoBoard", "WireFaults"]

log = logging.getLogger(__name__)

_REASONS = {"": wire.Reason.OK, "late": wire.Reason.LATE, "busy": wire.Reason.BUSY,
            "unknown_diverter": wire.Reason.UNKNOWN_DIVERTER, "fault": wire.Reason.FAULT}


CableKind = Literal["auto", "pty", "nullmodem"]
"""``auto``: a null modem on the virtual clock (a pty's bytes move in real time), else a pty."""


class IoBoard:
    """An emulated I/O board serving a :class:`PhysicalLine` over its cable."""

    def __init__(self, line: PhysicalLine, clock: Clock, *, baudrate: int | None = None,
                 faults: WireFaults | None = None, diverters: Sequence[str] | None = None,
                 heartbeat_ms: float = 100.0, encoder_ms: float = 10.0,
                 failsafe_ms: float = 500.0, link_path: Path | None = None,
                 on_port: Callable[[str], None] | None = None, cable: CableKind = "auto",
                 ) -> None:
        self.line = line
        self.clock = clock
        self.baudrate = baudrate
        self.faults = faults or WireFaults()
        self.stats = BoardStats()
        self.link_path = link_path
        self.on_port = on_port
        self.cable_kind = cable
        self.mode = wire.Mode.SAFE  # until a controller says HELLO
        self.controller_seen = asyncio.Event()
        self.sorter_ready = asyncio.Event()  # a controller set mode RUN: it is ready to sort
        self._served = None if diverters is None else list(diverters)
        self._heartbeat_s = heartbeat_ms / 1000
        self._encoder_s = encoder_ms / 1000
        self._failsafe_s = failsafe_ms / 1000
        self._session = LinkSession("board", boot_id=random.getrandbits(32))
        self._controller_session: int | None = None
        self._wire: BoardWire | None = None
        self._last_rx = clock.now()
        self._started = clock.now()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_enc = -1
        self._enc_base = 0  # the line's count when the board's own count began
        self._batch: bytearray | None = None  # replies gathered while handling received bytes
        line.event_sinks.append(self._line_event)
        line.fire_sinks.append(self._fired)

    # --- lifetime --------------------------------------------------------------------------

    @property
    def port(self) -> str:
        """Where a controller opens the board: the pty's path, or the null modem's name."""
        return self._wire.port if self._wire is not None else ""

    async def start(self) -> str:
        """Plug the cable in; return the port."""
        self._wire = BoardWire(self._cable(), self.clock, baudrate=self.baudrate,
                               faults=self.faults, stats=self.stats, receive=self._receive)
        self._wire.start()
        self._plug()
        self._tasks = [asyncio.create_task(self._ticker(), name="board.tick")]
        return self.port

    def _cable(self) -> Cable:
        kind = self.cable_kind
        if kind == "auto":
            virtual = isinstance(asyncio.get_running_loop(), VirtualTimeEventLoop)
            kind = "nullmodem" if virtual else "pty"
        if kind == "pty":
            return PtyCable(self.link_path)
        return NullModemCable(str(self.link_path) if self.link_path is not None
                              else f"nullmodem:{id(self):x}")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._wire is not None:
            await self._wire.close()
        with contextlib.suppress(ValueError):
            self.line.event_sinks.remove(self._line_event)
        with contextlib.suppress(ValueError):
            self.line.fire_sinks.remove(self._fired)

    async def __aenter__(self) -> IoBoard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def unplug(self, seconds: float) -> None:
        """Pull the cable: the port disappears for ``seconds``, then comes back."""
        self.stats.unplugs += 1
        self._unplug_port()
        await self.clock.sleep(seconds)
        self._plug()

    async def restart(self, seconds: float, *, count_restarts: bool = False) -> None:
        """Power-cycle the board: it drops off the bus for ``seconds`` and boots again.

        It comes back with a new boot id, in SAFE, holding no divert and none of the events
        it had not yet sent. Its encoder count carries on (the line's encoder is absolute)
        or, with ``count_restarts``, begins again at 0 as a counter in the board's own RAM
        would.
        """
        self.stats.restarts += 1
        self._unplug_port()
        dropped = self.line.cancel_diverts(self._served)
        log.warning("board: restarting (%d scheduled diverts lost)", dropped)
        self.mode = wire.Mode.SAFE
        self.controller_seen.clear()
        self._controller_session = None
        if self._wire is not None:
            self._wire.discard_queued()
        await self.clock.sleep(seconds)
        self._session = LinkSession("board", boot_id=random.getrandbits(32))
        if count_restarts:
            self._enc_base = self.line.encoder()
        self._last_enc = -1
        self._last_rx = self.clock.now()
        self._plug()

    def _enc(self, line_enc: int) -> int:
        """The board's count for the line's."""
        return line_enc - self._enc_base

    def count(self) -> int:
        """The board's encoder count now."""
        return self._enc(self.line.encoder())

    # --- the cable -------------------------------------------------------------------------

    def _plug(self) -> None:
        assert self._wire is not None
        self._wire.plug()
        if self.on_port is not None:
            self.on_port(self.port)

    def _unplug_port(self) -> None:
        if self._wire is not None:
            self._wire.unplug()

    def _transmit(self, data: bytes) -> None:
        if self._wire is not None:
            self._wire.transmit(data)

    # --- the protocol ----------------------------------------------------------------------

    def _send(self, message: wire.Message) -> None:
        self._out(self._session.send(message, self.clock.now()))

    def _out(self, data: bytes) -> None:
        """Into the reply being gathered for received bytes, or onto the wire now."""
        if self._batch is not None:
            self._batch += data
        else:
            self._transmit(data)

    def _receive(self, data: bytes) -> None:
        """Answer what came in in one write, as firmware would: the answers carry the
        acknowledgement, and an Ack frame goes out only when nothing else does."""
        now = self.clock.now()
        received = self._session.receive(data, now, defer_ack=True)
        if received.messages:
            self._last_rx = now
        self._batch = bytearray(received.out)
        try:
            for message in received.messages:
                self._handle(message)
            self._batch += self._session.take_ack()
        finally:
            batch, self._batch = self._batch, None
        self._transmit(bytes(batch))

    def _handle(self, message: wire.Message) -> None:
        match message:
            case wire.Hello(session=session):
                self.stats.hellos += 1
                if session != self._controller_session:
                    # A new controller: its predecessor's commands are void.
                    self.stats.sessions += 1
                    self._controller_session = session
                    self.line.cancel_diverts(self._served)
                self.mode = wire.Mode.RUN
                self.controller_seen.set()
                self._out(self._session.reply_hello(
                    self.mode, self._enc(self.line.encoder()),
                    self.line.scheduled_diverts(self._served), self.clock.now()))
            case wire.Divert():
                self._divert(message)
            case wire.Cancel(command_id=command_id):
                self.stats.cancels += 1
                self.line.cancel_divert(command_id)
            case wire.SetMode(mode=mode):
                self.mode = mode
                if mode is wire.Mode.RUN:
                    self.sorter_ready.set()  # the controller says it sorts: the infeed may feed
                if mode is wire.Mode.SAFE:
                    self.line.cancel_diverts(self._served)

    def _divert(self, message: wire.Divert) -> None:
        self.stats.diverts += 1
        if self._served is not None and message.diverter_id not in self._served:
            reason = "unknown_diverter"
        elif self.mode is not wire.Mode.RUN:
            reason = "fault"
        else:
            reason = self.line.accept_divert(DivertCommand(
                message.command_id, message.parcel_id, message.diverter_id,
                message.fire_enc + self._enc_base, float(message.pulse_ms))).reason
        if reason:
            self.stats.refused += 1
        self._send(wire.DivertAnswer(message.command_id, not reason, _REASONS[reason]))

    def _line_event(self, event: LineEvent) -> None:
        match event:
            case PhotoEyeEdge(eye=eye, blocked=blocked, enc=enc):
                self._send(wire.EyeEdge(eye, blocked, self._enc(enc)))
            case BinEntry(bin_id=bin_id, enc=enc):
                self._send(wire.BinEntered(bin_id, self._enc(enc)))
            case BinLevel(bin_id=bin_id, full=full):
                self._send(wire.BinLevelChanged(bin_id, full))
            case DeviceFault(device=device, message=text):
                self._send(wire.Fault(device, 0, text[:64]))

    def _fired(self, fire: Fire) -> None:
        if self._served is None or fire.diverter_id in self._served:
            self._send(wire.Fired(fire.command_id, fire.diverter_id, self._enc(fire.enc)))

    async def _ticker(self) -> None:
        """Encoder reports, heartbeats, resends and the fail-safe watchdog."""
        next_heartbeat = self.clock.now()
        while True:
            now = self.clock.now()
            enc = self._enc(self.line.encoder())
            if enc != self._last_enc or now >= next_heartbeat:
                self._last_enc = enc
                self._send(wire.Encoder(enc))
            if now >= next_heartbeat:
                uptime = round((now - self._started) * 1000) & 0xFFFFFFFF
                self._send(wire.Heartbeat(uptime, self.mode, self._session.gave_up))
                next_heartbeat = now + self._heartbeat_s
            if self.mode is wire.Mode.RUN and self.controller_seen.is_set() \
                    and now - self._last_rx > self._failsafe_s:
                self._failsafe(now - self._last_rx)
            was_failed = self._session.failed is not None
            self._transmit(self._session.poll(now))
            if self._session.failed is not None and not was_failed:
                self.stats.gave_up += 1
                log.warning("board: %s; heartbeats say so until a HELLO",
                            self._session.failed)
            await self.clock.sleep(self._encoder_s)

    def _failsafe(self, silent_s: float) -> None:
        self.mode = wire.Mode.SAFE
        self.stats.failsafes += 1
        dropped = self.line.cancel_diverts(self._served)
        log.warning("board: no controller for %.2f s: fail-safe, %d scheduled diverts dropped",
                    silent_s, dropped)
        self._send(wire.Fault("io-board", 1,
                              f"controller heartbeat lost: {dropped} diverts dropped"[:64]))
