"""bench/board_stub.c on its own: frames written by hand to its pty, its answers read back and
checked against docs/serial-protocol.md (session, NO_SESSION, in-order delivery, GAP NAKs,
duplicates, go-back-N on the ACK timeout, the fail-safe)."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.lineio import wire
from tests.c_board import build_stub

pytestmark = pytest.mark.wallclock


@pytest.fixture(scope="module")
def stub_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = build_stub(tmp_path_factory.mktemp("board_stub"))
    if binary is None:
        pytest.skip("no C compiler (cc): the board firmware in C cannot be built")
    return binary


class Stub:
    """The stub's process and our end of its pty, read frame by frame."""

    def __init__(self, binary: Path) -> None:
        self.process = subprocess.Popen([str(binary), "board", "D1=100"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)
        self.reader = wire.FrameReader()

    def input(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def send(self, seq: int, message: wire.Message, ack: int = 0, *,
             from_board: bool = False) -> None:
        os.write(self.fd, wire.encode_frame(seq, message, ack, from_board=from_board))

    def packets(self, seconds: float, *, beats: bool = False) -> list[wire.Packet]:
        """Every frame the stub sends for ``seconds`` (heartbeats and encoder reports left out,
        heartbeats kept with ``beats``)."""
        until = time.monotonic() + seconds
        out: list[wire.Packet] = []
        while (left := until - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                break
            for item in self.reader.feed(os.read(self.fd, 4096)):
                assert isinstance(item, wire.Packet), item
                assert item.from_board
                if isinstance(item.message, wire.Encoder):
                    continue
                if beats or not isinstance(item.message, wire.Heartbeat):
                    out.append(item)
        return out

    def output(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        os.close(self.fd)
        self.process.kill()  # by its PID
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def stub(stub_binary: Path) -> Iterator[Stub]:
    running = Stub(stub_binary)
    try:
        yield running
    finally:
        with contextlib.suppress(OSError):
            running.close()


def test_the_stub_speaks_the_documented_link(stub: Stub) -> None:
    stub.input("enc 5000")
    time.sleep(0.05)
    divert = wire.Divert(1001, 42, "D1", 1_000_000, 80)
    # No Hello yet: every frame but Hello gets Nak(0, NO_SESSION).
    stub.send(1, divert)
    (nak,) = stub.packets(0.1)
    assert nak.message == wire.Nak(0, wire.NakReason.NO_SESSION)

    stub.send(0, wire.Hello(0x1A2B3C4D, 1))
    (reply,) = stub.packets(0.1)
    assert isinstance(reply.message, wire.HelloReply)
    assert (reply.message.session, reply.message.first_seq, reply.message.mode,
            reply.message.enc, reply.message.scheduled) == (0x1A2B3C4D, 1, wire.Mode.RUN, 5000, 0)

    stub.send(1, divert)
    (answer,) = stub.packets(0.02)  # answered at once, within the ACK timeout
    assert answer.message == wire.DivertAnswer(1001, True, wire.Reason.OK)
    assert (answer.seq, answer.ack) == (1, 1)  # the answer acknowledges the divert
    assert stub.output() == "hold 1001 42 D1 1000000 80"

    # Not acknowledged: resent whole, same seq, every 40 ms ACK timeout.
    again = stub.packets(0.1)
    assert 1 <= len(again) <= 3
    assert {(p.seq, p.message) for p in again} == {(1, answer.message)}

    stub.send(1, divert, ack=1)  # a duplicate (and our ACK of its answer): acknowledged only
    (ack,) = stub.packets(0.1)
    assert (ack.message, ack.ack) == (wire.Ack(), 1)

    stub.send(3, wire.Cancel(1001), ack=1)  # seq 2 never came: a gap
    (gap,) = stub.packets(0.1)
    assert gap.message == wire.Nak(2, wire.NakReason.GAP)

    stub.send(2, wire.Divert(1002, 43, "D1", 5000, 80), ack=1)  # past fire_enc - lead
    stub.send(3, wire.Divert(1003, 44, "D9", 1_000_000, 80), ack=1)
    answers = [p.message for p in stub.packets(0.02)]
    assert answers == [wire.DivertAnswer(1002, False, wire.Reason.LATE),
                       wire.DivertAnswer(1003, False, wire.Reason.UNKNOWN_DIVERTER)]

    stub.send(0, wire.Ack(), ack=3)
    stub.input("eye induct 1 5123")
    edges = {(p.seq, p.message) for p in stub.packets(0.1)}
    assert edges == {(4, wire.EyeEdge("induct", True, 5123))}  # sent, and resent unacknowledged

    stub.send(0, wire.Ack(), ack=4)  # all acknowledged: nothing left to resend
    assert stub.packets(0.1) == []
    # Silence from the controller for 500 ms: SAFE, the held divert dropped, a Fault sent.
    faults = {(p.seq, p.message) for p in stub.packets(0.6)}
    assert faults == {(5, wire.Fault("io-board", 1, "controller heartbeat lost"))}
    assert stub.output() == "drop 1001"


def _beats(packets: list[wire.Packet]) -> list[bool]:
    return [p.message.failed for p in packets if isinstance(p.message, wire.Heartbeat)]


def test_the_stub_says_its_session_failed_and_ignores_its_own_frames(stub: Stub) -> None:
    assert set(_beats(stub.packets(0.25, beats=True))) == {True}  # no Hello yet
    stub.send(0, wire.Hello(7, 1))
    stub.send(1, wire.Divert(1, 1, "D1", 10**9, 80))
    got = stub.packets(0.03, beats=True)
    assert any(isinstance(p.message, wire.DivertAnswer) for p in got)
    # Our own side's Ack echoed back acknowledges nothing: the answer is still resent.
    stub.send(0, wire.Ack(), ack=1, from_board=True)
    again = stub.packets(0.1)
    assert {p.seq for p in again} == {1}
    # Never acknowledged: after 8 resends it gives up and says so in its heartbeats.
    assert _beats(stub.packets(0.45, beats=True))[-1] is True
    stub.send(0, wire.Hello(7, 2), ack=1)  # the controller's answer to it
    after = stub.packets(0.25, beats=True)
    assert any(isinstance(p.message, wire.HelloReply) for p in after)
    assert _beats(after)[-1] is False
