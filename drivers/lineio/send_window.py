"""The sending half of the serial link: numbering, the window, go-back-N (docs/serial-protocol.md).

:class:`SendWindow` numbers sequenced messages, keeps each frame sent until the peer
acknowledges it, and hands back the whole window again for a resend. It knows nothing of the
handshake: :class:`~drivers.lineio.link.LinkSession` decides when it may send.
"""

from __future__ import annotations

from collections import deque

from drivers.lineio.sequence import LinkStats, SentFrame, seq_after, seq_ahead, seq_before
from drivers.lineio.wire import Message, encode_payload, frame_with_payload


class SendWindow:
    """Sequenced messages queued, sent and unacknowledged, oldest first."""

    def __init__(self, stats: LinkStats, *, from_board: bool, window: int, queue_limit: int,
                 max_resends: int, initial_seq: int) -> None:
        self.stats = stats
        self.window = window
        self.queue_limit = queue_limit
        self.max_resends = max_resends
        self.head_resends = 0
        """How often the oldest unacknowledged frame has been resent with no progress."""
        self._from_board = from_board
        self._next_seq = initial_seq
        self._unacked: deque[SentFrame] = deque()
        self._queue: deque[tuple[Message, bytes]] = deque()  # with its encoded payload
        self._timer_start = 0.0

    @property
    def pending(self) -> int:
        return len(self._unacked) + len(self._queue)

    @property
    def first_seq(self) -> int:
        """The oldest seq the peer has still to acknowledge, or the next one to be sent."""
        return self._unacked[0].seq if self._unacked else self._next_seq

    @property
    def exhausted(self) -> bool:
        return self.head_resends >= self.max_resends

    def queue(self, message: Message) -> None:
        """Queue a sequenced message; past the limit the oldest queued ones are dropped."""
        self._queue.append((message, encode_payload(message)))  # a bad field raises here
        while len(self._queue) > self.queue_limit:
            self._queue.popleft()
            self.stats.dropped += 1

    def can_send(self) -> bool:
        return bool(self._queue) and len(self._unacked) < self.window

    def flush(self, now: float, ack: int) -> bytes:
        """Frames for as much of the queue as the window takes, each carrying ``ack``."""
        out = bytearray()
        while self._queue and len(self._unacked) < self.window:
            seq = self._next_seq
            message, payload = self._queue.popleft()
            frame = frame_with_payload(seq, message, payload, ack, from_board=self._from_board)
            self._next_seq = seq_after(seq)
            if not self._unacked:
                self._timer_start = now
                self.head_resends = 0
            self._unacked.append(SentFrame(seq, frame))
            self.stats.frames_out += 1
            out += frame
        return bytes(out)

    def due(self, now: float, timeout_s: float) -> bool:
        """Whether the oldest unacknowledged frame has waited ``timeout_s`` for its ACK."""
        return bool(self._unacked) and now >= self._timer_start + timeout_s

    def due_at(self, timeout_s: float) -> float | None:
        return self._timer_start + timeout_s if self._unacked else None

    def acked_through(self, ack: int, now: float) -> None:
        """The peer has everything up to ``ack``: forget those frames, restart the timer."""
        if not self._unacked:
            return
        ahead = seq_ahead(self._unacked[0].seq, ack)
        if ahead >= len(self._unacked):
            return
        for _ in range(ahead + 1):
            self._unacked.popleft()
        self.head_resends = 0
        self._timer_start = now

    def naked(self, expect: int, now: float) -> bool:
        """The peer NAKed, expecting ``expect``: what came before it arrived; True if frames
        of the window are left to resend (a NAK for a seq outside the window is stale)."""
        if not self._unacked or expect == 0:
            return False
        ahead = seq_ahead(self._unacked[0].seq, expect)
        if ahead > len(self._unacked):
            return False
        if ahead:
            self.acked_through(seq_before(expect), now)
        return bool(self._unacked)

    def resend(self, now: float) -> bytes:
        """The whole window again, counted against the oldest frame's resend budget."""
        self.head_resends += 1
        return self._window_again(now)

    def resync(self, now: float) -> bytes:
        """The whole window again after a handshake, with a fresh resend budget."""
        self.head_resends = 0
        return self._window_again(now)

    def void(self, next_seq: int) -> None:
        """Forget every message not acknowledged and number afresh from ``next_seq``."""
        self.stats.voided += len(self._unacked) + len(self._queue)
        self._unacked.clear()
        self._queue.clear()
        self._next_seq = next_seq

    def _window_again(self, now: float) -> bytes:
        self._timer_start = now
        self.stats.resends += len(self._unacked)
        self.stats.frames_out += len(self._unacked)
        return b"".join(sent.frame for sent in self._unacked)
