"""The reliable link: two sessions joined by an in-memory serial line on a fake clock."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

from drivers.lineio.link import LinkSession
from drivers.lineio.sequence import Received, seq_after, seq_before
from drivers.lineio.wire import (
    Ack,
    Cancel,
    Divert,
    EyeEdge,
    FrameReader,
    Heartbeat,
    Hello,
    HelloReply,
    Message,
    Mode,
    Nak,
    NakReason,
    Packet,
    cobs_encode,
    crc16,
    encode_frame,
    is_sequenced,
)

TICK = 0.001


class Line:
    """One direction of a serial line: bytes stay in order; frames may be lost, doubled or
    garbled byte by byte on the way, like a noisy RS-485 pair."""

    def __init__(self, rng: random.Random, *, garble: float = 0.0, drop: float = 0.0,
                 dup: float = 0.0, latency: float = 0.003) -> None:
        self.rng = rng
        self.garble = garble
        self.drop = drop
        self.dup = dup
        self.latency = latency
        self.cut = False
        self._flight: deque[tuple[float, bytes]] = deque()

    def put(self, data: bytes, now: float) -> None:
        if self.cut or not data:
            return
        for frame in data.split(b"\x00"):
            if not frame:
                continue
            if self.rng.random() < self.drop:
                continue
            for _ in range(2 if self.rng.random() < self.dup else 1):
                sent = bytes(self.rng.randrange(256) if self.rng.random() < self.garble else b
                             for b in frame + b"\x00")
                self._flight.append((now + self.latency, sent))

    def take(self, now: float) -> list[bytes]:
        """The bytes due by ``now``, split into chunks at random places."""
        data = bytearray()
        while self._flight and self._flight[0][0] <= now:
            data += self._flight.popleft()[1]
        chunks = []
        while data:
            size = self.rng.randint(1, 40)
            chunks.append(bytes(data[:size]))
            del data[:size]
        return chunks


class Pair:
    """A controller and a board session, each with an app that records what it was given."""

    def __init__(self, seed: int = 0, *, controller: LinkSession | None = None,
                 board: LinkSession | None = None, **impairments: float) -> None:
        rng = random.Random(seed)
        self.now = 0.0
        self.controller = controller or LinkSession("controller", session=1)
        self.board = board or LinkSession("board", boot_id=100)
        self.down = Line(rng, **impairments)
        self.up = Line(rng, **impairments)
        self.at_controller: list[Message] = []
        self.at_board: list[Message] = []
        self.hellos_at_board: list[Hello] = []
        self.replies_at_controller: list[HelloReply] = []

    def connect(self) -> None:
        self.down.put(self.controller.connect(self.now), self.now)

    def step(self, dt: float = TICK) -> None:
        self.now += dt
        now = self.now
        for chunk in self.up.take(now):
            got = self.controller.receive(chunk, now)
            self.down.put(got.out, now)
            self._record(got, self.at_controller)
            self.replies_at_controller += [m for m in got.messages if isinstance(m, HelloReply)]
        for chunk in self.down.take(now):
            got = self.board.receive(chunk, now)
            self.up.put(got.out, now)
            self._record(got, self.at_board)
            for message in got.messages:
                if isinstance(message, Hello):
                    self.hellos_at_board.append(message)
                    self.up.put(self.board.reply_hello(Mode.RUN, 1234, 0, now), now)
        self.down.put(self.controller.poll(now), now)
        self.up.put(self.board.poll(now), now)

    @staticmethod
    def _record(got: Received, into: list[Message]) -> None:
        into += [m for m in got.messages if is_sequenced(m)]

    def to_board(self, message: Message) -> None:
        self.down.put(self.controller.send(message, self.now), self.now)

    def to_controller(self, message: Message) -> None:
        self.up.put(self.board.send(message, self.now), self.now)

    def run_until(self, done: Callable[[], bool], limit_s: float = 5.0) -> None:
        end = self.now + limit_s
        while not done():
            assert self.now < end, "the link did not settle"
            self.step()

    def settle(self) -> None:
        self.run_until(lambda: self.controller.synced and self.board.synced
                       and self.controller.pending == 0 and self.board.pending == 0)


def synced_pair(*, controller: LinkSession | None = None,
                board: LinkSession | None = None) -> Pair:
    pair = Pair(controller=controller, board=board)
    pair.connect()
    pair.settle()
    return pair


def cancels(first: int, count: int) -> list[Message]:
    return [Cancel(i) for i in range(first, first + count)]


def edges(first: int, count: int) -> list[Message]:
    return [EyeEdge("induct", i % 2 == 0, i) for i in range(first, first + count)]


# --- the whole thing under noise -----------------------------------------------------------

BURSTS = (0,) * 92 + (1,) * 6 + (2, 4)
"""Messages sent per millisecond: 0.12 on average (several times a busy line), some bursts.

With 1 % of bytes garbled a 24-byte frame is lost one time in five, and go-back-N then
resends whatever followed it: about two resends per message. Much more traffic than this
at that loss rate and the windows fill and resends snowball (the queue bound then drops).
"""


def test_exactly_once_in_order_over_a_noisy_line() -> None:
    pair = Pair(7, garble=0.01, drop=0.01, dup=0.01)
    pair.connect()
    down, up = cancels(0, 2000), edges(0, 2000)
    rng = random.Random(8)
    sent_down = sent_up = 0
    while sent_down < len(down) or sent_up < len(up):
        for _ in range(rng.choice(BURSTS)):
            if sent_down < len(down):
                pair.to_board(down[sent_down])
                sent_down += 1
        for _ in range(rng.choice(BURSTS)):
            if sent_up < len(up):
                pair.to_controller(up[sent_up])
                sent_up += 1
        if round(pair.now / TICK) % 100 == 0:
            pair.to_board(Heartbeat(round(pair.now * 1000), Mode.RUN))
            pair.to_controller(Heartbeat(round(pair.now * 1000), Mode.RUN))
        pair.step()
    pair.settle()

    assert pair.at_board == down
    assert pair.at_controller == up
    for session in (pair.controller, pair.board):
        stats = session.stats
        assert session.failed is None
        assert stats.bad_frames > 50
        assert stats.gaps > 20
        assert stats.duplicates > 20
        assert stats.naks_sent > 20
        assert stats.naks_received > 20
        assert 0 < stats.resends < 4 * 2000
        assert stats.dropped == 0


# --- reconnects and restarts ---------------------------------------------------------------

def test_reconnect_with_unacked_messages_both_ways_loses_and_doubles_nothing() -> None:
    pair = synced_pair()
    for message in cancels(0, 100):
        pair.to_board(message)
    for message in edges(0, 100):
        pair.to_controller(message)
    pair.settle()

    pair.up.cut = True  # the board hears everything but its ACKs and edges are lost
    for message in cancels(100, 50):
        pair.to_board(message)
    for message in edges(100, 30):
        pair.to_controller(message)
    for _ in range(1200):  # resends, then HELLOs, then both give up
        pair.step()
    assert pair.at_board == cancels(0, 150)
    assert pair.controller.pending == 50
    assert pair.board.pending == 30
    assert pair.controller.failed
    assert pair.board.failed
    assert pair.controller.next_deadline() is None

    pair.up.cut = False
    pair.connect()
    assert pair.controller.failed is None
    assert not pair.controller.synced
    pair.to_board(Cancel(150))  # queued until the board answers HELLO
    assert pair.controller.pending == 51
    pair.settle()

    assert pair.at_board == cancels(0, 151)
    assert pair.at_controller == edges(0, 130)
    assert pair.board.stats.duplicates >= 50
    assert pair.board.failed is None
    assert pair.hellos_at_board[-1] == Hello(1, 101)
    assert pair.replies_at_controller[-1].first_seq == 101


def test_board_reboot_resets_the_controllers_expectation() -> None:
    pair = synced_pair()
    for message in cancels(0, 100):
        pair.to_board(message)
    for message in edges(0, 100):
        pair.to_controller(message)
    pair.settle()

    pair.board = LinkSession("board", boot_id=200)  # it starts again from seq 1
    pair.to_controller(edges(100, 1)[0])  # queued: the new board has no controller yet
    for message in cancels(100, 20):
        pair.to_board(message)
    pair.settle()

    assert pair.controller.boot_id == 200
    assert pair.at_controller == edges(0, 101)
    # Sent to the old boot, never acknowledged: void, not resent to the new one.
    assert pair.at_board == cancels(0, 100)
    assert pair.controller.stats.voided == 20
    assert pair.replies_at_controller[-1].boot_id == 200
    assert pair.board.stats.naks_sent >= 1  # NO_SESSION made the controller say HELLO again

    for message in cancels(120, 5):  # numbered on from what the HELLO announced: no gap
        pair.to_board(message)
    pair.settle()
    assert pair.at_board == cancels(0, 100) + cancels(120, 5)
    assert pair.board.stats.gaps == 0


def test_a_board_restart_during_an_outage_voids_what_it_never_acknowledged() -> None:
    pair = synced_pair()
    for message in cancels(0, 10):
        pair.to_board(message)
    pair.settle()
    pair.down.cut = True  # the old boot hears nothing more
    for message in cancels(10, 5):
        pair.to_board(message)
    for _ in range(50):
        pair.step()
    pair.down.cut = False
    pair.board = LinkSession("board", boot_id=300)
    pair.connect()
    pair.settle()
    assert pair.at_board == cancels(0, 10)
    assert pair.controller.stats.voided == 5
    pair.to_board(Cancel(99))
    pair.settle()
    assert pair.at_board[-1] == Cancel(99)
    assert pair.board.stats.gaps == 0


def test_board_with_no_controller_answers_nak_no_session() -> None:
    board = LinkSession("board", boot_id=5)
    beat = encode_frame(0, Heartbeat(1, Mode.RUN), from_board=False)
    got = board.receive(encode_frame(9, Cancel(1)) + beat, 0.0)
    assert got.messages == [Heartbeat(1, Mode.RUN)]
    assert FrameReader().feed(got.out) == [Packet(0, Nak(0, NakReason.NO_SESSION), 0, True)]


def test_new_controller_session_resets_the_boards_expectation() -> None:
    pair = synced_pair()
    for message in cancels(0, 100):
        pair.to_board(message)
    pair.settle()
    pair.up.cut = True
    for message in edges(0, 10):  # lost with the old controller; must reach the new one
        pair.to_controller(message)
    pair.step()
    pair.up.cut = False

    pair.controller = LinkSession("controller", session=2)
    pair.connect()
    for message in cancels(1000, 20):
        pair.to_board(message)
    pair.settle()

    assert pair.at_board == cancels(0, 100) + cancels(1000, 20)
    assert pair.at_controller == edges(0, 10)
    assert pair.board.session == 2


# --- the sender's limits -------------------------------------------------------------------

def test_failed_after_max_resends_to_a_dead_board() -> None:
    pair = synced_pair()
    pair.down.cut = True
    pair.to_board(Cancel(1))
    start = pair.now
    resends = []
    while not pair.controller.failed:
        assert pair.now < start + 1.0
        before = pair.controller.stats.resends
        pair.step()
        if pair.controller.stats.resends > before:
            resends.append(pair.now - start)
    assert len(resends) == 8
    assert resends[0] == pytest.approx(0.04, abs=2 * TICK)
    assert "HELLO" in pair.controller.failed  # after its resends it asked the board again
    assert pair.controller.poll(pair.now + 1) == b""
    assert pair.controller.next_deadline() is None
    assert pair.controller.pending == 1

    pair.down.cut = False
    pair.connect()
    pair.settle()
    assert pair.at_board == [Cancel(1)]


def test_hello_gives_up_without_a_board() -> None:
    controller = LinkSession("controller", session=3, max_resends=3)
    hellos = [controller.connect(0.0)]
    now = 0.0
    while controller.failed is None:
        deadline = controller.next_deadline()
        assert deadline is not None
        assert deadline > now
        now = deadline
        hellos.append(controller.poll(now))
    assert [h for h in hellos if h] == hellos[:4]
    assert "HELLO" in controller.failed


def test_window_full_queues_and_sends_later() -> None:
    pair = synced_pair(controller=LinkSession("controller", session=1, window=4))
    pair.down.cut = True
    frames = [pair.controller.send(m, pair.now) for m in cancels(0, 10)]
    assert [bool(f) for f in frames] == [True] * 4 + [False] * 6
    assert pair.controller.pending == 10
    pair.down.cut = False
    pair.down.put(b"".join(frames), pair.now)
    pair.settle()
    assert pair.at_board == cancels(0, 10)


def test_nothing_sequenced_goes_out_before_the_handshake() -> None:
    pair = Pair()
    assert pair.controller.send(Cancel(1), 0.0) == b""
    assert pair.board.send(edges(0, 1)[0], 0.0) == b""
    assert pair.board.send(Heartbeat(0, Mode.SAFE), 0.0) != b""
    assert pair.controller.next_deadline() is None
    pair.connect()
    pair.settle()
    assert pair.at_board == [Cancel(1)]
    assert pair.at_controller == edges(0, 1)


def test_the_queue_is_bounded_dropping_the_oldest() -> None:
    board = LinkSession("board", boot_id=1, queue_limit=5)
    pair = Pair(board=board)
    for message in edges(0, 8):
        pair.to_controller(message)
    assert board.pending == 5
    assert board.stats.dropped == 3
    pair.connect()
    pair.settle()
    assert pair.at_controller == edges(3, 5)


def test_sequence_numbers_wrap_past_65535_to_1() -> None:
    pair = synced_pair(controller=LinkSession("controller", session=1, initial_seq=65530),
                       board=LinkSession("board", boot_id=1, initial_seq=65530))
    seen: list[int] = []
    reader = FrameReader()
    for message in cancels(0, 20):
        for packet in reader.feed(pair.controller.send(message, pair.now)):
            assert isinstance(packet, Packet)
            seen.append(packet.seq)
        pair.down.put(encode_frame(seen[-1], message), pair.now)
    for message in edges(0, 20):
        pair.to_controller(message)
    pair.settle()
    assert seen == [*range(65530, 65536), *range(1, 15)]
    assert pair.at_board == cancels(0, 20)
    assert pair.at_controller == edges(0, 20)
    assert seq_after(65535) == 1
    assert seq_before(1) == 65535


# --- the receiver's rules, frame by frame --------------------------------------------------

def _board_expecting_1() -> LinkSession:
    board = LinkSession("board", boot_id=1)
    got = board.receive(encode_frame(0, Hello(9, 1)), 0.0)
    assert got.messages == [Hello(9, 1)]
    board.reply_hello(Mode.RUN, 0, 0, 0.0)
    return board


def _packets(data: bytes) -> list[Message]:
    out = []
    for item in FrameReader().feed(data):
        assert isinstance(item, Packet)
        out.append(item.message)
    return out


def _acks(data: bytes) -> list[tuple[Message, int]]:
    """Each frame's message with the acknowledgement its header carries."""
    out = []
    for item in FrameReader().feed(data):
        assert isinstance(item, Packet)
        out.append((item.message, item.ack))
    return out


def test_one_coalesced_ack_per_chunk() -> None:
    board = _board_expecting_1()
    chunk = b"".join(encode_frame(seq, Cancel(seq)) for seq in range(1, 6))
    got = board.receive(chunk, 0.01)
    assert got.messages == cancels(1, 5)
    assert _acks(got.out) == [(Ack(), 5)]


def test_duplicates_are_reacked_not_delivered() -> None:
    board = _board_expecting_1()
    board.receive(encode_frame(1, Cancel(1)) + encode_frame(2, Cancel(2)), 0.01)
    got = board.receive(encode_frame(1, Cancel(1)), 0.02)
    assert got.messages == []
    assert _acks(got.out) == [(Ack(), 2)]
    assert board.stats.duplicates == 1


def test_a_gap_is_naked_once_per_ack_timeout() -> None:
    board = _board_expecting_1()
    got = board.receive(encode_frame(3, Cancel(3)) + encode_frame(4, Cancel(4)), 0.01)
    assert got.messages == []
    assert _acks(got.out) == [(Nak(1, NakReason.GAP), 65535), (Ack(), 65535)]
    assert _acks(board.receive(encode_frame(5, Cancel(5)), 0.02).out) == [(Ack(), 65535)]
    later = board.receive(encode_frame(6, Cancel(6)), 0.06)
    assert _acks(later.out) == [(Nak(1, NakReason.GAP), 65535)]
    assert board.stats.gaps == 4
    assert board.stats.naks_sent == 2


def test_bad_and_malformed_frames_are_naked_with_their_reason() -> None:
    board = _board_expecting_1()
    garbled = bytearray(encode_frame(1, Cancel(1)))
    garbled[3] ^= 0x10
    got = board.receive(bytes(garbled), 0.01)
    assert len(got.errors) == 1
    assert _packets(got.out) == [Nak(1, NakReason.BAD_FRAME)]

    body = bytes([1, 0x22, 0, 1, 0, 0, 0])  # Cancel with a 3-byte command id
    intact = cobs_encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"
    got = board.receive(intact, 0.1)
    assert _packets(got.out) == [Nak(1, NakReason.MALFORMED)]
    assert board.stats.bad_frames == 2


def test_nak_resends_go_back_n_from_expect() -> None:
    pair = synced_pair()
    pair.down.cut = True
    for message in cancels(0, 5):
        pair.to_board(message)
    assert pair.controller.pending == 5
    got = pair.controller.receive(encode_frame(0, Nak(3, NakReason.GAP), from_board=True), pair.now)
    assert _packets(got.out) == cancels(2, 3)
    assert pair.controller.pending == 3
    assert pair.controller.stats.naks_received == 1


def test_ack_timer_resends_everything_unacked() -> None:
    pair = synced_pair()
    pair.down.cut = True
    for message in cancels(0, 3):
        pair.to_board(message)
    deadline = pair.controller.next_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(pair.now + 0.04)
    assert pair.controller.poll(deadline - 0.001) == b""
    assert _packets(pair.controller.poll(deadline)) == cancels(0, 3)
    assert pair.controller.stats.resends == 3


def test_messages_from_the_wrong_side_are_errors() -> None:
    controller = LinkSession("controller", session=1)
    got = controller.receive(encode_frame(0, Hello(1, 1)), 0.0)
    assert got.messages == []
    assert got.errors == []
    assert controller.stats.echoes == 1  # a frame from its own side: its own, echoed
    with pytest.raises(TypeError):
        controller.send(Ack(), 0.0)
    with pytest.raises(TypeError):
        controller.send(EyeEdge("x", True, 1), 0.0)
    with pytest.raises(ValueError, match="pulse_ms"):
        controller.send(Divert(1, 1, "D1", 10, 70_000), 0.0)
    with pytest.raises(ValueError, match="no HELLO"):
        LinkSession("board").reply_hello(Mode.RUN, 0, 0, 0.0)


def test_an_answer_carries_the_acknowledgement_and_no_ack_frame_is_needed() -> None:
    pair = synced_pair()
    controller, board = pair.controller, pair.board
    sent = b"".join(controller.send(message, 0.0) for message in cancels(0, 3))
    last_seq = [item.seq for item in FrameReader().feed(sent) if isinstance(item, Packet)][-1]
    got = board.receive(sent, 0.01, defer_ack=True)
    assert got.messages == cancels(0, 3)
    assert got.out == b""
    assert board.ack_owed
    answer = board.send(edges(0, 1)[0], 0.01)
    assert _acks(answer) == [(edges(0, 1)[0], last_seq)]
    assert not board.ack_owed
    assert board.take_ack() == b""
    assert controller.pending == 3
    controller.receive(answer, 0.02, defer_ack=True)
    assert controller.pending == 0  # acknowledged by the answer's header
    assert controller.ack_owed  # and the answer itself is owed an acknowledgement
    edge_seq = next(item.seq for item in FrameReader().feed(answer) if isinstance(item, Packet))
    assert _acks(controller.take_ack()) == [(Ack(), edge_seq)]

