"""The in-memory serial cable: bytes in order both ways, opened like a real port (exclusively,
not while unplugged), and a pulled cable is a lost connection."""

from __future__ import annotations

import asyncio

import pytest

from controller.clock import VirtualClock, run_virtual
from drivers.lineio import nullmodem
from drivers.lineio.nullmodem import NullModem


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.made = False
        self.lost: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def test_bytes_cross_in_order_and_the_port_opens_like_a_serial_port() -> None:
    async def main(clock: VirtualClock) -> None:
        modem = NullModem("/dev/ttyTEST0")
        modem.register()
        try:
            assert nullmodem.lookup("/dev/ttyTEST0") is modem
            assert nullmodem.lookup("/dev/ttyTEST1") is None
            board_got = bytearray()
            modem.on_board_bytes = board_got.extend
            with pytest.raises(FileNotFoundError):
                modem.open(Recorder())  # not plugged in yet
            modem.plug()
            modem.write(b"before anyone listens")  # lost, as a pty flushes it on open
            controller = Recorder()
            transport = modem.open(controller)
            with pytest.raises(OSError, match="exclusively"):
                modem.open(Recorder())
            for chunk in (b"\x01\x02", b"\x03", b"\x04\x05\x06"):
                transport.write(chunk)
                modem.write(chunk[::-1])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert controller.made
            assert bytes(board_got) == b"\x01\x02\x03\x04\x05\x06"
            assert bytes(controller.data) == b"\x02\x01\x03\x06\x05\x04"

            modem.unplug()
            await asyncio.sleep(0)
            assert len(controller.lost) == 1
            assert isinstance(controller.lost[0], OSError)
            assert transport.is_closing()
            transport.write(b"into the void")
            await asyncio.sleep(0)
            assert bytes(board_got) == b"\x01\x02\x03\x04\x05\x06"
            with pytest.raises(FileNotFoundError):
                modem.open(Recorder())

            modem.plug()  # back in: a new controller end opens, the old one stays closed
            again = Recorder()
            modem.open(again)
            modem.write(b"hello")
            await asyncio.sleep(0)
            assert bytes(again.data) == b"hello"
            assert bytes(controller.data) == b"\x02\x01\x03\x06\x05\x04"
        finally:
            modem.unregister()
        assert nullmodem.lookup("/dev/ttyTEST0") is None

    run_virtual(main)


def test_closing_the_controller_end_frees_the_port() -> None:
    async def main(clock: VirtualClock) -> None:
        modem = NullModem("/dev/ttyTEST2")
        modem.register()
        try:
            modem.plug()
            first = Recorder()
            modem.open(first).close()
            await asyncio.sleep(0)
            assert first.lost == [None]
            assert not modem.connected
            modem.open(Recorder())  # a second controller may open it now
            assert modem.connected
            with pytest.raises(ValueError, match="already registered"):
                NullModem("/dev/ttyTEST2").register()
        finally:
            modem.unregister()

    run_virtual(main)
