"""Fuzzing the link: random and mutated byte streams into FrameReader and both LinkSessions.

Bounded to a couple of seconds by default;
``FUZZ_SECONDS=600 pytest -o timeout=0 tests/test_link_fuzz.py`` runs longer (``FUZZ_SEED``
picks the stream).
"""

from __future__ import annotations

import logging
import os
import random
import time

from controller.errors import ProtocolError
from drivers.lineio.link import LinkSession
from drivers.lineio.wire import (
    Ack,
    BinEntered,
    Cancel,
    Divert,
    DivertAnswer,
    EyeEdge,
    Fault,
    FrameReader,
    Heartbeat,
    Hello,
    HelloReply,
    Message,
    Mode,
    Nak,
    NakReason,
    Packet,
    Reason,
    SetMode,
    encode_frame,
    is_sequenced,
)

log = logging.getLogger(__name__)

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "2"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))

SEEDS: list[tuple[Message, bool]] = [
    (Hello(7, 1), False), (HelloReply(9, 7, 1, Mode.RUN, 10, 0), True), (Ack(), False),
    (Ack(), True), (Nak(2, NakReason.GAP), True), (Nak(0, NakReason.NO_SESSION), True),
    (Heartbeat(5, Mode.RUN, True), True), (Heartbeat(5, Mode.SAFE), False),
    (EyeEdge("induct", True, 5), True), (BinEntered("B1", 9), True),
    (DivertAnswer(1, False, Reason.LATE), True), (Fault("io", 1, "x"), True),
    (Divert(1, 2, "D1", 99, 80), False), (Cancel(1), False), (SetMode(Mode.SAFE), False),
]


def _valid(rng: random.Random) -> bytes:
    message, from_board = rng.choice(SEEDS)
    seq = rng.randint(1, 0xFFFF) if is_sequenced(message) else 0
    return encode_frame(seq, message, rng.choice([0, 1, 2, rng.randint(0, 0xFFFF)]),
                        from_board=from_board)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(5)
        at = rng.randrange(len(raw) + 1)
        if choice == 0 and raw:
            raw[at % len(raw)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 2 and raw:
            del raw[at:at + rng.randint(1, 8)]
        elif choice == 3 and raw:
            raw[at % len(raw)] = rng.choice([0x00, 0xFF, 0x01, 0x80, 0x83, 0x03])
        else:
            raw[at:at] = _valid(rng)
    return bytes(raw)


def _stream(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 600)))
    frames = b"".join(_valid(rng) for _ in range(rng.randint(1, 12)))
    return frames if kind == 1 else _mutate(rng, frames)


def _sessions() -> list[LinkSession]:
    controller = LinkSession("controller", session=7)
    controller.connect(0.0)
    board = LinkSession("board", boot_id=9)
    synced_board = LinkSession("board", boot_id=9)
    synced_board.receive(encode_frame(0, Hello(7, 1)), 0.0)
    synced_board.reply_hello(Mode.RUN, 0, 0, 0.0)
    return [controller, board, synced_board]


def test_random_and_mutated_streams_raise_nothing() -> None:
    rng = random.Random(SEED)
    end = time.monotonic() + FUZZ_SECONDS
    streams = 0
    now = 0.0
    sessions = _sessions()
    reader = FrameReader()
    while time.monotonic() < end:
        data = _stream(rng)
        streams += 1
        now += rng.uniform(0, 0.05)
        for item in reader.feed(data):
            assert isinstance(item, Packet | ProtocolError)
        at = 0
        while at < len(data):  # in chunks, as a port delivers them
            chunk = data[at:at + rng.randint(1, 64)]
            at += len(chunk)
            for session in sessions:
                got = session.receive(chunk, now, defer_ack=rng.random() < 0.3)
                assert all(isinstance(e, ProtocolError) for e in got.errors)
                for item in FrameReader().feed(got.out):  # what it writes is well formed
                    assert isinstance(item, Packet), item
                    assert item.from_board == (session.role == "board")
        for session in sessions:
            session.poll(now)
            session.take_ack()
        if streams % 500 == 0:
            sessions = _sessions()
    log.info("fuzzed %d streams in %.1f s", streams, FUZZ_SECONDS)
    assert streams > 0
