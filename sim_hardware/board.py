"""The line's I/O board at the far end of a serial cable, on a pseudo-terminal.

It speaks docs/serial-protocol.md for the physical line: photo-eye edges, encoder, bin
sensors and diverter commands. Like the firmware it stands in for, it fires only on a
scheduled command, refuses one it can no longer carry out in time, and drops every
scheduled divert when the controller's heartbeat stops (fail-safe).

The emulated wire can be slowed to a baud rate (a pty has none), and made bad: flipped and
lost bytes, late or missing ACKs, and a cable pulled out and plugged back in. The port is
reached through a stable symlink, as ``/dev/serial/by-id/…`` is on a real machine, because a
replugged pty gets a new ``/dev/pts/N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.clock import Clock
from controller.errors import ProtocolError
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
from sim_hardware.line import Fire, PhysicalLine

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10  # start, 8 data, stop
_REASONS = {"": wire.Reason.OK, "late": wire.Reason.LATE, "busy": wire.Reason.BUSY,
            "unknown_diverter": wire.Reason.UNKNOWN_DIVERTER, "fault": wire.Reason.FAULT}


@dataclass
class WireFaults:
    """What goes wrong on the cable, per byte or per ACK, from a seeded random stream."""

    garble: float = 0.0  # a byte arrives with one bit flipped (both directions)
    drop: float = 0.0  # a byte is lost (both directions)
    drop_acks: float = 0.0  # an ACK the board sends is lost
    ack_delay_s: float = 0.0  # every ACK the board sends leaves this late
    seed: int = 0


@dataclass
class BoardStats:
    bytes_in: int = 0
    bytes_out: int = 0
    garbled: int = 0
    dropped: int = 0
    acks_dropped: int = 0
    diverts: int = 0
    refused: int = 0
    cancels: int = 0
    failsafes: int = 0
    sessions: int = 0
    unplugs: int = 0
    restarts: int = 0
    wire_busy_s: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})


class IoBoard:
    """An emulated I/O board serving a :class:`PhysicalLine` on a pty."""

    def __init__(self, line: PhysicalLine, clock: Clock, *, baudrate: int | None = None,
                 faults: WireFaults | None = None, diverters: Sequence[str] | None = None,
                 heartbeat_ms: float = 100.0, encoder_ms: float = 10.0,
                 failsafe_ms: float = 500.0, link_path: Path | None = None,
                 on_port: Callable[[str], None] | None = None) -> None:
        self.line = line
        self.clock = clock
        self.baudrate = baudrate
        self.faults = faults or WireFaults()
        self.stats = BoardStats()
        self.link_path = link_path
        self.on_port = on_port
        self.mode = wire.Mode.SAFE  # until a controller says HELLO
        self.controller_seen = asyncio.Event()
        self._served = None if diverters is None else list(diverters)
        self._heartbeat_s = heartbeat_ms / 1000
        self._encoder_s = encoder_ms / 1000
        self._failsafe_s = failsafe_ms / 1000
        self._rng = random.Random(self.faults.seed)
        self._session = LinkSession("board", boot_id=random.getrandbits(32))
        self._controller_session: int | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self.port = ""
        self._last_rx = clock.now()
        self._tx_free_at = 0.0
        self._rx_free_at = 0.0
        self._tx_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._started = clock.now()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_enc = -1
        self._enc_base = 0  # the line's count when the board's own count began
        self._batch: bytearray | None = None  # replies gathered while handling received bytes
        line.event_sinks.append(self._line_event)
        line.fire_sinks.append(self._fired)

    # --- lifetime --------------------------------------------------------------------------

    async def start(self) -> str:
        """Plug the cable in; return the pty's path."""
        self._plug()
        self._tasks = [
            asyncio.create_task(self._transmitter(), name="board.tx"),
            asyncio.create_task(self._ticker(), name="board.tick"),
        ]
        return self.port

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._unplug_port()
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
        while not self._tx_queue.empty():
            self._tx_queue.get_nowait()
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

    # --- the pty ---------------------------------------------------------------------------

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # the slave stays open: see FACTS.md
        self.port = os.ttyname(slave)
        if self.link_path is not None:
            tmp = self.link_path.with_name(self.link_path.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.port)
            tmp.replace(self.link_path)
        asyncio.get_running_loop().add_reader(master, self._readable)
        if self.on_port is not None:
            self.on_port(self.port)

    def _unplug_port(self) -> None:
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        if self.link_path is not None:
            self.link_path.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self._master = self._slave = None

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # no controller has the port open
        data = self._spoil(data)
        self.stats.bytes_in += len(data)
        if self.baudrate is None:
            self._receive(data)
            return
        # The bytes are on the wire until their last bit has arrived.
        now = self.clock.now()
        wire_s = len(data) * BITS_PER_BYTE / self.baudrate
        self._rx_free_at = max(self._rx_free_at, now) + wire_s
        self.stats.wire_busy_s["down"] += wire_s
        asyncio.get_running_loop().call_later(self._rx_free_at - now, self._receive, data)

    def _spoil(self, data: bytes) -> bytes:
        faults = self.faults
        if not (faults.garble or faults.drop):
            return data
        out = bytearray()
        for byte in data:
            if faults.drop and self._rng.random() < faults.drop:
                self.stats.dropped += 1
                continue
            flip = 0
            if faults.garble and self._rng.random() < faults.garble:
                flip = 1 << self._rng.randrange(8)
                self.stats.garbled += 1
            out.append(byte ^ flip)
        return bytes(out)

    async def _transmitter(self) -> None:
        while True:
            data = await self._tx_queue.get()
            if self.baudrate is not None:
                wire_s = len(data) * BITS_PER_BYTE / self.baudrate
                self._tx_free_at = max(self._tx_free_at, self.clock.now()) + wire_s
                self.stats.wire_busy_s["up"] += wire_s
                await self.clock.sleep_until(self._tx_free_at)
            self._put_on_wire(data)

    def _put_on_wire(self, data: bytes) -> None:
        data = self._spoil(data)
        if self._master is None or not data:
            return
        self.stats.bytes_out += len(data)
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def _transmit(self, data: bytes) -> None:
        if not data:
            return
        if self.faults.drop_acks or self.faults.ack_delay_s:
            data = self._hold_back_acks(data)
        if self.baudrate is None:
            self._put_on_wire(data)
        elif data:
            self._tx_queue.put_nowait(data)

    def _hold_back_acks(self, data: bytes) -> bytes:
        """Lose or delay the acknowledgements the frames carry, as a bad wire would.

        A lost ACK is the header's ``ack`` gone from a frame (it goes out with 0, or not at
        all if it is an Ack frame); a late one goes out ``ack_delay_s`` later in an Ack frame.
        """
        keep = bytearray()
        for frame in data.split(b"\x00"):
            if not frame:
                continue
            try:
                packet = wire.decode_frame(frame)
            except ProtocolError:
                packet = None
            if packet is None or not packet.ack:
                keep += frame + b"\x00"
                continue
            lost = self._rng.random() < self.faults.drop_acks
            if not lost and not self.faults.ack_delay_s:
                keep += frame + b"\x00"
                continue
            if not isinstance(packet.message, wire.Ack):
                keep += wire.encode_frame(packet.seq, packet.message)  # without its ack
            if lost:
                self.stats.acks_dropped += 1
            else:
                asyncio.get_running_loop().call_later(
                    self.faults.ack_delay_s, self._put_on_wire,
                    wire.encode_frame(0, wire.Ack(), packet.ack))
        return bytes(keep)

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
                self._send(wire.Heartbeat(uptime, self.mode))
                next_heartbeat = now + self._heartbeat_s
            if self.mode is wire.Mode.RUN and self.controller_seen.is_set() \
                    and now - self._last_rx > self._failsafe_s:
                self._failsafe(now - self._last_rx)
            self._transmit(self._session.poll(now))
            await self.clock.sleep(self._encoder_s)

    def _failsafe(self, silent_s: float) -> None:
        self.mode = wire.Mode.SAFE
        self.stats.failsafes += 1
        dropped = self.line.cancel_diverts(self._served)
        log.warning("board: no controller for %.2f s: fail-safe, %d scheduled diverts dropped",
                    silent_s, dropped)
        self._send(wire.Fault("io-board", 1,
                              f"controller heartbeat lost: {dropped} diverts dropped"[:64]))
