"""The serial link's sequence numbers, counters and records (docs/serial-protocol.md, §4).

Sequence numbers count 1..65535 and wrap to 1: 0 is never used, it means "none".
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.errors import ProtocolError
from drivers.lineio.messages import SEQ_MAX, Message

HALF_RANGE = SEQ_MAX // 2
"""A sequence number up to this far ahead of the expected one is a gap; further is old."""


def seq_after(seq: int) -> int:
    """The next sequence number: 1..65535, wrapping from 65535 to 1 (0 is never used)."""
    return seq % SEQ_MAX + 1


def seq_before(seq: int) -> int:
    return (seq - 2) % SEQ_MAX + 1


def seq_ahead(base: int, seq: int) -> int:
    """How many steps after ``base`` ``seq`` is, counted forward through the wrap."""
    return (seq - base) % SEQ_MAX


@dataclass(slots=True)
class LinkStats:
    frames_in: int = 0
    frames_out: int = 0
    bad_frames: int = 0
    naks_sent: int = 0
    naks_received: int = 0
    resends: int = 0
    duplicates: int = 0
    gaps: int = 0
    dropped: int = 0
    """Queued messages thrown away, oldest first, because the queue was over its limit."""
    echoes: int = 0
    """Frames marked as sent by this very side (the wire echoing us back): discarded."""
    voided: int = 0
    """Messages never acknowledged by a board that then restarted: not sent to the new boot."""


@dataclass(frozen=True, slots=True)
class SentFrame:
    """A sequenced frame sent and not yet acknowledged, kept to resend as it was."""

    seq: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """What one ``LinkSession.receive`` produced: messages for the app, bytes to write."""

    messages: list[Message]
    out: bytes
    errors: list[ProtocolError]


def later_of(expect: int, first_seq: int) -> int:
    """Keep what we expect unless the peer says it starts later (it cannot resend older)."""
    ahead = seq_ahead(expect, first_seq)
    return first_seq if 0 < ahead <= HALF_RANGE else expect
