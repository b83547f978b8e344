"""How the serial driver reaches its port: one small seam, a real serial port by default.

:data:`OpenTransport` is all the driver needs of a port: given the protocol that takes the
port's bytes, an open asyncio transport. The default, :func:`open_serial_port`, opens the
configured device with pyserial-asyncio-fast, exclusively (so a second controller cannot
open the same board), or the in-memory :class:`~drivers.lineio.nullmodem.NullModem` an
emulated board in this process has registered under that name.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable

from controller.config import SerialLinkConfig
from controller.errors import DriverUnavailable
from drivers.lineio import nullmodem

log = logging.getLogger(__name__)

OpenTransport = Callable[[asyncio.Protocol], Awaitable[asyncio.Transport]]
"""Open the port for this protocol; raise OSError (or ValueError) when it cannot be opened
now, :class:`~controller.errors.DriverUnavailable` when it never can (library missing)."""


async def open_serial_port(config: SerialLinkConfig, protocol: asyncio.Protocol,
                           *, device: str = "io-board") -> asyncio.Transport:
    """The configured port, opened exclusively; see :data:`OpenTransport`."""
    modem = nullmodem.lookup(config.port)
    if modem is not None:
        return modem.open(protocol)
    try:
        import serial
        import serial_asyncio_fast
    except ImportError as exc:
        raise DriverUnavailable(device, f"pyserial-asyncio-fast is not installed: {exc}") \
            from exc
    try:
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            asyncio.get_running_loop(), lambda: protocol, config.port,
            baudrate=config.baudrate, exclusive=True)
    except serial.SerialException as exc:
        if "exclusively lock" in str(exc):
            raise OSError(errno.EBUSY, f"{config.port} is already open in another program "
                                       f"(a second controller?): {exc}") from exc
        raise
    return transport


class PortProtocol(asyncio.Protocol):
    """Hands the port's bytes and its loss to the driver's two callbacks; the loss comes with
    the protocol, so a driver can tell the loss of a port it already gave up."""

    def __init__(self, on_data: Callable[[bytes], None],
                 on_lost: Callable[[PortProtocol, Exception | None], None]) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self, exc)
