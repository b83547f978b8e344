"""A serial cable in memory: the board's end and the controller's, with no pty and no real time.

Like pymodbus's NullModem, it joins two ends inside one event loop: bytes written at one end
reach the other on the loop's next turn, in order, one write at a time. So the real serial
driver and an emulated board can run together on the virtual clock, where a pty cannot (its
bytes move in real time, while virtual time jumps).

A board plugs a :class:`NullModem` in under the name a line config gives as its serial
``port``; :func:`drivers.lineio.port.open_serial_port` looks that name up here before it
tries a device of that name, so a controller reaches an in-process board exactly as it
reaches a real one. Opening follows a real port: refused while unplugged (no such device)
and while another controller holds it (the port is opened exclusively).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_PLUGGED: dict[str, NullModem] = {}
"""The null modems of this process by port name: one per emulated board."""


def lookup(port: str) -> NullModem | None:
    """The null modem registered as ``port``, or None when no board in this process is."""
    return _PLUGGED.get(port)


class NullModem:
    """One cable: the board's end is this object, the controller's a transport it opens."""

    def __init__(self, port: str) -> None:
        self.port = port
        self.plugged = False
        self.on_board_bytes: Callable[[bytes], None] | None = None
        """Called with each write of the controller, on the loop's next turn."""
        self._controller: NullModemTransport | None = None

    def register(self) -> None:
        """Make the cable reachable under its port name (a board's cable, until it closes)."""
        other = _PLUGGED.get(self.port)
        if other is not None and other is not self:
            raise ValueError(f"a null modem is already registered as {self.port}")
        _PLUGGED[self.port] = self

    def unregister(self) -> None:
        self.unplug()
        if _PLUGGED.get(self.port) is self:
            del _PLUGGED[self.port]

    def plug(self) -> None:
        self.plugged = True

    def unplug(self) -> None:
        """Pull the cable: the controller's end is lost, and it cannot be opened again until
        :meth:`plug`."""
        self.plugged = False
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.lose(OSError(errno.EIO, f"{self.port}: the cable was pulled"))

    @property
    def connected(self) -> bool:
        return self._controller is not None

    def open(self, protocol: asyncio.Protocol) -> NullModemTransport:
        """The controller's end, as a serial port opened exclusively; raises OSError when it
        is unplugged or already open."""
        if not self.plugged:
            raise FileNotFoundError(errno.ENOENT, "no such device (unplugged)", self.port)
        if self._controller is not None:
            raise OSError(errno.EBUSY, f"Could not exclusively lock port {self.port}: "
                                       "it is open in another controller")
        transport = NullModemTransport(self, protocol)
        self._controller = transport
        return transport

    def write(self, data: bytes) -> None:
        """The board writes: the controller's end gets it, if one is open (else it is lost,
        as bytes into a pty nobody reads are flushed when a controller opens it)."""
        controller = self._controller
        if controller is not None and data:
            controller.deliver(bytes(data))

    def _from_controller(self, transport: NullModemTransport, data: bytes) -> None:
        if transport is self._controller and self.on_board_bytes is not None:
            self.on_board_bytes(data)

    def _closed(self, transport: NullModemTransport) -> None:
        if self._controller is transport:
            self._controller = None


class NullModemTransport(asyncio.Transport):
    """The controller's end of a :class:`NullModem`, as an asyncio transport."""

    def __init__(self, modem: NullModem, protocol: asyncio.Protocol) -> None:
        super().__init__({"port": modem.port})
        self._modem = modem
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._loop.call_soon(protocol.connection_made, self)

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if self._closing or not data:
            return
        self._loop.call_soon(self._modem._from_controller, self, bytes(data))

    def deliver(self, data: bytes) -> None:
        """Bytes from the board, handed to the protocol on the loop's next turn."""
        if not self._closing:
            self._loop.call_soon(self._received, data)

    def _received(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self.lose(None)

    def abort(self) -> None:
        self.lose(None)

    def lose(self, exc: Exception | None) -> None:
        """Close this end: the protocol hears of it on the loop's next turn."""
        if self._closing:
            return
        self._closing = True
        self._modem._closed(self)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
