"""The emulated I/O board's cable: a pty or an in-memory null modem, paced and made bad.

A pty (the real clock) is reached through a stable symlink, as ``/dev/serial/by-id/…`` is on
a real machine, because a replugged pty gets a new ``/dev/pts/N``. A null modem (any clock,
the virtual one above all) is registered under the same name, where the serial driver finds
it. Either way the wire can be slowed to a baud rate (neither has one), and made bad: flipped
and lost bytes, late or missing ACKs, all drawn from one seeded random stream, so a shift on
the virtual clock goes the same way every time for one seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from controller.clock import Clock
from controller.errors import ProtocolError
from drivers.lineio import wire
from drivers.lineio.nullmodem import NullModem

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10  # start, 8 data, stop


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
    hellos: int = 0
    gave_up: int = 0
    """Times the board's session gave up resending (and heartbeated ``failed``)."""
    unplugs: int = 0
    restarts: int = 0
    wire_busy_s: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})


class Cable(Protocol):
    """The board's end of the cable: bytes in through ``on_bytes``, out through write."""

    port: str

    def plug(self, on_bytes: Callable[[bytes], None]) -> None: ...

    def unplug(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class PtyCable:
    """A pseudo-terminal's master; the slave is what a controller opens."""

    def __init__(self, link_path: Path | None) -> None:
        self.link_path = link_path
        self.port = ""
        self._master: int | None = None
        self._slave: int | None = None
        self._on_bytes: Callable[[bytes], None] = lambda _: None

    def plug(self, on_bytes: Callable[[bytes], None]) -> None:
        self._on_bytes = on_bytes
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

    def unplug(self) -> None:
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        if self.link_path is not None:
            self.link_path.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self._master = self._slave = None

    def close(self) -> None:
        self.unplug()

    def write(self, data: bytes) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.write(self._master, data)

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # no controller has the port open
        self._on_bytes(data)


class NullModemCable:
    """A :class:`~drivers.lineio.nullmodem.NullModem` registered under the port's name."""

    def __init__(self, port: str) -> None:
        self.port = port
        self.modem = NullModem(port)
        self.modem.register()

    def plug(self, on_bytes: Callable[[bytes], None]) -> None:
        self.modem.on_board_bytes = on_bytes
        self.modem.plug()

    def unplug(self) -> None:
        self.modem.unplug()

    def close(self) -> None:
        self.modem.unregister()

    def write(self, data: bytes) -> None:
        self.modem.write(data)


class BoardWire:
    """The wire between board and controller: pacing each way, and its faults."""

    def __init__(self, cable: Cable, clock: Clock, *, baudrate: int | None,
                 faults: WireFaults, stats: BoardStats,
                 receive: Callable[[bytes], None]) -> None:
        self.cable = cable
        self.clock = clock
        self.baudrate = baudrate
        self.faults = faults
        self.stats = stats
        self._receive = receive
        self._rng = random.Random(faults.seed)
        self._plugged = False
        self._tx_free_at = 0.0
        self._rx_free_at = 0.0
        self._tx_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> str:
        return self.cable.port

    def start(self) -> None:
        self._task = asyncio.create_task(self._transmitter(), name="board.tx")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.unplug()
        self.cable.close()

    def plug(self) -> None:
        self._plugged = True
        self.cable.plug(self._arrived)

    def unplug(self) -> None:
        self._plugged = False
        self.cable.unplug()

    def discard_queued(self) -> None:
        """Forget what waits to go out (the board lost power)."""
        while not self._tx_queue.empty():
            self._tx_queue.get_nowait()

    def _arrived(self, data: bytes) -> None:
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
        if not self._plugged or not data:
            return
        self.stats.bytes_out += len(data)
        self.cable.write(data)

    def transmit(self, data: bytes) -> None:
        """Send the board's bytes: at once, or paced at the baud rate."""
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
                keep += wire.encode_frame(packet.seq, packet.message,  # without its ack
                                          from_board=packet.from_board)
            if lost:
                self.stats.acks_dropped += 1
            else:
                asyncio.get_running_loop().call_later(
                    self.faults.ack_delay_s, self._put_on_wire,
                    wire.encode_frame(0, wire.Ack(), packet.ack, from_board=packet.from_board))
        return bytes(keep)
