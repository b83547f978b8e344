"""Both LinkSessions through random loss, delay, duplication, reordering and echo: the link
always comes back to delivering everything in order, once, within the documented bound."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.lineio.link import LinkSession
from drivers.lineio.wire import Cancel, EyeEdge, Heartbeat, Hello, Message, Mode

TICK = 0.002
HEARTBEAT_S = 0.1
LATENCY_S = 0.002
RECOVERY_BOUND_S = 0.2
"""docs/serial-protocol.md, §6: delivering again within 200 ms once the faults stop."""


@dataclass(frozen=True, slots=True)
class Faults:
    loss: float
    duplicate: float
    echo: float
    max_delay_s: float


@dataclass(order=True, slots=True)
class _InFlight:
    due: float
    order: int
    frame: bytes = field(compare=False)
    to_board: bool = field(compare=False)


class Wire:
    """Frames both ways, each one lost, doubled, delayed (so reordered) or echoed at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.faults: Faults | None = None
        self._flight: list[_InFlight] = []
        self._order = 0

    def put(self, data: bytes, now: float, *, to_board: bool) -> None:
        for frame in data.split(b"\x00"):
            if frame:
                self._one(frame + b"\x00", now, to_board)

    def _one(self, frame: bytes, now: float, to_board: bool) -> None:
        faults = self.faults
        if faults is None:
            self._push(frame, now + LATENCY_S, to_board)
            return
        if self.rng.random() < faults.echo:
            self._push(frame, now + LATENCY_S, not to_board)  # heard back by its sender
        if self.rng.random() < faults.loss:
            return
        copies = 2 if self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            self._push(frame, now + LATENCY_S + self.rng.uniform(0, faults.max_delay_s), to_board)

    def _push(self, frame: bytes, due: float, to_board: bool) -> None:
        self._order += 1
        heapq.heappush(self._flight, _InFlight(due, self._order, frame, to_board))

    def due(self, now: float) -> list[_InFlight]:
        out = []
        while self._flight and self._flight[0].due <= now:
            out.append(heapq.heappop(self._flight))
        return out


class Line:
    """A controller and a board app around their sessions, heartbeating as the drivers do."""

    def __init__(self, seed: int) -> None:
        self.wire = Wire(random.Random(seed))
        self.now = 0.0
        self.controller = LinkSession("controller", session=7)
        self.board = LinkSession("board", boot_id=9)
        self.at_board: list[Message] = []
        self.at_controller: list[Message] = []
        self._beat_at = 0.0
        self._down(self.controller.connect(self.now))

    def _down(self, data: bytes) -> None:
        self.wire.put(data, self.now, to_board=True)

    def _up(self, data: bytes) -> None:
        self.wire.put(data, self.now, to_board=False)

    def step(self) -> None:
        self.now += TICK
        now = self.now
        for item in self.wire.due(now):
            if item.to_board:
                got = self.board.receive(item.frame, now)
                self._up(got.out)
                for message in got.messages:
                    if isinstance(message, Hello):
                        self._up(self.board.reply_hello(Mode.RUN, 0, 0, now))
                    elif isinstance(message, Cancel):
                        self.at_board.append(message)
            else:
                got = self.controller.receive(item.frame, now)
                self._down(got.out)
                self.at_controller += [m for m in got.messages if isinstance(m, EyeEdge)]
        if self.controller.failed is not None:
            self._down(self.controller.connect(now))  # the driver reopens the port
        if now >= self._beat_at + HEARTBEAT_S:
            self._beat_at = now
            uptime = round(now * 1000)
            self._down(self.controller.send(
                Heartbeat(uptime, Mode.RUN, self.controller.gave_up), now))
            self._up(self.board.send(Heartbeat(uptime, Mode.RUN, self.board.gave_up), now))
        self._down(self.controller.poll(now))
        self._up(self.board.poll(now))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step()


def _cancels(start: int, count: int) -> list[Message]:
    return [Cancel(n) for n in range(start, start + count)]


def _edges(start: int, count: int) -> list[Message]:
    return [EyeEdge("induct", n % 2 == 0, n) for n in range(start, start + count)]


faults = st.builds(Faults, loss=st.floats(0, 0.6), duplicate=st.floats(0, 0.3),
                   echo=st.floats(0, 0.3), max_delay_s=st.floats(0, 0.03))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), bad=faults,
       rounds=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6),
                                 st.floats(0.005, 0.6)), min_size=1, max_size=6),
       stall_s=st.floats(0, 0.6))
def test_the_link_always_recovers_in_order_and_exactly_once(
        seed: int, bad: Faults, rounds: list[tuple[int, int, float]], stall_s: float) -> None:
    line = Line(seed)
    line.run(0.05)
    down: list[Message] = []
    up: list[Message] = []
    line.wire.faults = bad
    for downs, ups, seconds in rounds:
        for message in _cancels(len(down), downs):
            down.append(message)
            line._down(line.controller.send(message, line.now))
        for message in _edges(len(up), ups):
            up.append(message)
            line._up(line.board.send(message, line.now))
        line.run(seconds)
        assert line.at_board == down[:len(line.at_board)]  # in order, none twice
        assert line.at_controller == up[:len(line.at_controller)]
    # A stall: the controller's frames and the board's ACKs all lost for a while.
    line.wire.faults = Faults(loss=1.0, duplicate=0, echo=0, max_delay_s=0)
    line.run(stall_s)
    line.wire.faults = None
    line.run(bad.max_delay_s + LATENCY_S)  # what the faults delayed has landed
    line.run(RECOVERY_BOUND_S)
    assert line.at_board == down
    assert line.at_controller == up
    # And the link goes on delivering.
    line._down(line.controller.send(Cancel(len(down)), line.now))
    line._up(line.board.send(_edges(len(up), 1)[0], line.now))
    line.run(0.05)
    assert line.at_board == [*down, Cancel(len(down))]
    assert line.at_controller == [*up, *_edges(len(up), 1)]
