"""The reliable link between the controller and the I/O board, without any I/O.

:class:`LinkSession` is one end of the link. It never touches a port or the event loop: the
caller hands it the bytes that arrived and the time, and writes out whatever bytes it returns.
That keeps the go-back-N rules testable with a fake clock and lets the emulated board run the
very same code as the controller. The rules are written down in docs/serial-protocol.md.
"""

from __future__ import annotations

import random
from typing import Literal

from controller.errors import ProtocolError
from drivers.lineio.send_window import SendWindow
from drivers.lineio.sequence import (
    HALF_RANGE,
    LinkStats,
    Received,
    later_of,
    seq_after,
    seq_ahead,
    seq_before,
)
from drivers.lineio.wire import (
    SEQ_MAX,
    SPECS,
    Ack,
    FrameReader,
    Heartbeat,
    Hello,
    HelloReply,
    Message,
    MessageError,
    Mode,
    Nak,
    NakReason,
    encode_frame,
)

Role = Literal["controller", "board"]
_SESSION_OWN = frozenset({Hello, HelloReply, Ack, Nak})


class LinkSession:
    """One end of the link: in-order, exactly-once delivery of sequenced messages.

    The controller calls :meth:`connect` after opening the port; its sequenced messages are
    queued until the board's :class:`~drivers.lineio.wire.HelloReply` arrives. The board
    delivers every :class:`~drivers.lineio.wire.Hello` to its app, which must answer it with
    :meth:`reply_hello` (only the app knows its mode, encoder and scheduled diverts, and it
    may first cancel a previous controller's diverts); the board sends no sequenced message
    until it has answered. Both sides keep unacknowledged messages across a reconnect and
    resend them once synced again, except that a controller voids them when the HelloReply
    shows the board restarted (a new boot id).

    ``failed`` is set when the oldest unacknowledged message (or the controller's HELLO) has
    been resent ``max_resends`` times with no progress; the session then stops resending
    until :meth:`connect` (controller) or the next HELLO (board).
    """

    def __init__(self, role: Role, *, boot_id: int | None = None, session: int | None = None,
                 ack_timeout_s: float = 0.04, window: int = 64, max_resends: int = 8,
                 queue_limit: int = 512, initial_seq: int = 1) -> None:
        if role not in ("controller", "board"):
            raise ValueError(f"role {role!r} is neither 'controller' nor 'board'")
        if role == "controller" and boot_id is not None:
            raise ValueError("boot_id is the board's own; the controller learns it")
        if role == "board" and session is not None:
            raise ValueError("session is the controller's own; the board learns it")
        if not 1 <= window <= HALF_RANGE:
            raise ValueError(f"window {window} not in 1..{HALF_RANGE}")
        if not 1 <= initial_seq <= SEQ_MAX:
            raise ValueError(f"initial_seq {initial_seq} not in 1..{SEQ_MAX}")
        self.role: Role = role
        self._sends = "down" if role == "controller" else "up"
        self._is_board = role == "board"
        self.boot_id: int | None = boot_id
        """The board's boot id: the board's own, or the one the controller last heard."""
        self.session: int | None = session
        """The controller's session id: its own, or the one the board last heard."""
        if role == "board" and boot_id is None:
            self.boot_id = random.getrandbits(32)
        if role == "controller" and session is None:
            self.session = random.getrandbits(32)
        self.ack_timeout_s = ack_timeout_s
        self.max_resends = max_resends
        self.synced = False
        self.failed: str | None = None
        self.ack_owed = False  # a deferred ACK is due (receive(defer_ack=True))
        self.stats = LinkStats()
        self._reader = FrameReader()
        self._tx = SendWindow(self.stats, from_board=self._is_board, window=window,
                              queue_limit=queue_limit, max_resends=max_resends,
                              initial_seq=initial_seq)
        self._expect: int | None = None
        self._nak_expect: int | None = None
        self._nak_at = 0.0
        self._connected = False
        self._hello_at = 0.0
        self._hello_first = initial_seq  # the first_seq our latest HELLO announced
        self._hellos = 0

    @property
    def gave_up(self) -> bool:
        """What this end's Heartbeat says as ``failed``: its session failed, or it has none."""
        return self.failed is not None or (self._is_board and self.session is None)

    @property
    def pending(self) -> int:
        return self._tx.pending

    # --- the app's calls -------------------------------------------------------------------

    def connect(self, now: float) -> bytes:
        """Start (again) after the port opened: the controller's HELLO; the board's is b"".

        The leading 0x00 ends whatever partial frame the peer's reader still holds.
        """
        self.failed = None
        self._reader = FrameReader()
        if self.role == "board":
            return b""
        self.synced = False
        self._connected = True
        self._hellos = 0
        return b"\x00" + self._hello(now)

    def send(self, message: Message, now: float) -> bytes:
        """Bytes to write now for ``message``, or b"" when it had to be queued.

        A sequenced message is queued while the window is full, the link is not synced or
        has failed, and goes out later from :meth:`receive` or :meth:`poll`. HELLO, its
        reply, ACK and NAK are the session's own, and a message of the peer's direction is
        a mistake: both raise :class:`TypeError`.
        """
        if type(message) in _SESSION_OWN:
            raise TypeError(f"{type(message).__name__} is sent by the session itself")
        spec = SPECS[type(message)]
        if spec.direction not in (self._sends, "both"):
            raise TypeError(f"the {self.role} does not send {type(message).__name__}")
        if not spec.sequenced:
            return self._frame(message)
        self._tx.queue(message)
        return self._flush(now)

    def reply_hello(self, mode: Mode, enc: int, scheduled: int, now: float) -> bytes:
        """Board: answer the latest HELLO, then resend what the controller has not acked."""
        if self.role != "board":
            raise ValueError("only the board answers HELLO")
        if self.session is None:
            raise ValueError("no HELLO to answer yet")
        frame = self._frame(HelloReply(self._own_id(), self.session, self._tx.first_seq, mode,
                                       enc, scheduled))
        self.synced = True
        self.failed = None
        return frame + self._resync(now)

    def receive(self, data: bytes, now: float, *, defer_ack: bool = False) -> Received:
        """Take bytes from the port; ACKs are coalesced into one per call.

        Every frame the session makes carries the latest acknowledgement. With ``defer_ack``
        no Ack frame is added for what arrived: :attr:`ack_owed` says one is due until a frame
        goes out (an answer, say) or :meth:`take_ack` makes one, so a caller can let its next
        message carry it, or coalesce the ACKs of several calls.
        """
        messages: list[Message] = []
        errors: list[ProtocolError] = []
        out = bytearray()
        for item in self._reader.feed(data):
            if isinstance(item, ProtocolError):
                self.stats.bad_frames += 1
                errors.append(item)
                reason = NakReason.MALFORMED if isinstance(item, MessageError) \
                    else NakReason.BAD_FRAME
                if self._receiving and self._expect is not None:
                    out += self._nak(self._expect, reason, now)
                continue
            if item.from_board == self._is_board:
                self.stats.echoes += 1
                continue
            self.stats.frames_in += 1
            message = item.message
            spec = SPECS[type(message)]
            if spec.direction == self._sends:
                errors.append(ProtocolError(
                    f"the {self.role} got a {type(message).__name__}, which it sends itself"))
                continue
            if item.ack:
                self._tx.acked_through(item.ack, now)
            if self.role == "board" and self.session is None and not isinstance(message, Hello):
                out += self._nak(0, NakReason.NO_SESSION, now)
                if spec.sequenced:
                    continue
            if spec.sequenced:
                if self._receiving:
                    self.ack_owed = True  # a NAK it may cause carries the acknowledgement
                    if self._accept(item.seq, now, out):
                        messages.append(message)
                continue
            out += self._on_link_message(message, now)
            messages.append(message)
        out += self._flush(now)  # a frame sent carries the acknowledgement
        if self.ack_owed and not defer_ack:
            out += self._frame(Ack())
        return Received(messages, bytes(out), errors)

    def take_ack(self) -> bytes:
        """An Ack frame for the acknowledgement owed, or b"" if none is (any frame the
        session makes meanwhile carries it)."""
        if not self.ack_owed or self._expect is None:
            return b""
        return self._frame(Ack())

    def poll(self, now: float) -> bytes:
        """Whatever is due by ``now``: HELLO retries and go-back-N resends on ACK timeout."""
        if self.failed is not None:
            return b""
        if self.role == "controller" and self._connected and not self.synced:
            if now < self._hello_at + self.ack_timeout_s:
                return b""
            if self._hellos > self.max_resends:
                self.failed = f"no HELLO reply after {self._hellos} HELLOs"
                return b""
            return self._hello(now)
        out = b""
        if self.synced and self._tx.due(now, self.ack_timeout_s):
            out = self._resend(now)
        return out + self._flush(now)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work, or None while it has none."""
        if self.failed is not None:
            return None
        if self.role == "controller" and self._connected and not self.synced:
            return self._hello_at + self.ack_timeout_s
        return self._tx.due_at(self.ack_timeout_s) if self.synced else None

    # --- receiving -------------------------------------------------------------------------

    @property
    def _receiving(self) -> bool:
        """Whether this end knows which sequence number to expect from the peer."""
        if self.role == "controller":
            return self.synced
        return self.session is not None

    def _accept(self, seq: int, now: float, out: bytearray) -> bool:
        assert self._expect is not None
        ahead = seq_ahead(self._expect, seq)
        if ahead == 0:
            self._expect = seq_after(seq)
            return True
        if ahead <= HALF_RANGE:
            self.stats.gaps += 1
            out += self._nak(self._expect, NakReason.GAP, now)
        else:
            self.stats.duplicates += 1
        return False

    def _nak(self, expect: int, reason: NakReason, now: float) -> bytes:
        """At most one NAK per expected seq per ACK timeout: one loss, one resend."""
        if expect == self._nak_expect and now - self._nak_at < self.ack_timeout_s:
            return b""
        self._nak_expect = expect
        self._nak_at = now
        self.stats.naks_sent += 1
        return self._frame(Nak(expect, reason))

    def _on_link_message(self, message: Message, now: float) -> bytes:
        match message:
            case Nak(expect=expect, reason=reason):
                self.stats.naks_received += 1
                return self._on_nak(expect, reason, now)
            case Hello() if self.role == "board":
                self._on_hello(message)
            case HelloReply() if self.role == "controller":
                return self._on_hello_reply(message, now)
            case Heartbeat(failed=True) if self.role == "controller":
                return self._rehello(now)
        return b""

    def _rehello(self, now: float) -> bytes:
        """Controller: the board's session gave up (or it lost ours): handshake again."""
        if not self.synced or self.failed is not None:
            return b""
        self.synced = False
        self._hellos = 0
        return self._hello(now)

    def _on_nak(self, expect: int, reason: NakReason, now: float) -> bytes:
        if reason is NakReason.NO_SESSION:
            return self._rehello(now) if self.role == "controller" else b""
        if self._tx.naked(expect, now) and self.synced and self.failed is None:
            return self._resend(now)
        return b""

    def _on_hello(self, hello: Hello) -> None:
        if hello.session != self.session or self._expect is None:
            self.session = hello.session
            self._expect = hello.first_seq
        else:
            self._expect = later_of(self._expect, hello.first_seq)
        self.synced = False
        self._nak_expect = None

    def _on_hello_reply(self, reply: HelloReply, now: float) -> bytes:
        if not self._connected or self.synced or self.failed is not None \
                or reply.session != self.session:
            return b""
        if reply.boot_id != self.boot_id or self._expect is None:
            if self.boot_id is not None and reply.boot_id != self.boot_id:
                self._void_unacknowledged()
            self.boot_id = reply.boot_id
            self._expect = reply.first_seq
        else:
            self._expect = later_of(self._expect, reply.first_seq)
        self.synced = True
        self._nak_expect = None
        return self._resync(now)

    def _void_unacknowledged(self) -> None:
        """The board restarted: what its previous boot never acknowledged is void.

        A restarted board holds nothing, and a command from before (a divert at an encoder
        count of the old boot, above all) may no longer mean what it meant; the app decides
        what still needs sending. Numbering restarts at the seq our HELLO announced.
        """
        self._tx.void(self._hello_first)

    # --- sending ---------------------------------------------------------------------------

    def _own_id(self) -> int:
        assert self.boot_id is not None
        return self.boot_id

    def _frame(self, message: Message) -> bytes:
        self.stats.frames_out += 1
        return encode_frame(0, message, self._ack(), from_board=self._is_board)

    def _ack(self) -> int:
        """The header's ack for a frame going out now: 0 while we expect nothing (§5)."""
        if self._expect is None or not self._receiving:
            return 0
        self.ack_owed = False
        return seq_before(self._expect)

    def _hello(self, now: float) -> bytes:
        assert self.session is not None
        self._hellos += 1
        self._hello_at = now
        self._hello_first = self._tx.first_seq
        return self._frame(Hello(self.session, self._hello_first))

    def _resync(self, now: float) -> bytes:
        """Once synced: the whole unacked window again, with a fresh resend budget."""
        return self._tx.resync(now) + self._flush(now)

    def _resend(self, now: float) -> bytes:
        if self._tx.exhausted:
            if self.role == "controller":
                return self._rehello(now)  # the board may have given up: ask where it is
            self.failed = (f"seq {self._tx.first_seq} resent {self._tx.head_resends} times "
                           f"without an ACK")
            return b""
        return self._tx.resend(now)

    def _flush(self, now: float) -> bytes:
        if not self.synced or self.failed is not None or not self._tx.can_send():
            return b""
        return self._tx.flush(now, self._ack())
