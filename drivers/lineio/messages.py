"""The I/O board's message set: what each message says and how its fields sit on the wire.

The layouts (:data:`SPECS`) are shared by the codec (:mod:`drivers.lineio.codec`) and the
protocol doc's tests; docs/serial-protocol.md, §2-3, is the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

PROTOCOL_VERSION = 3
FROM_BOARD = 0x80
"""The version byte's top bit: set on every frame the board sends, clear on the controller's."""
MAX_ID = 32
MAX_TEXT = 64
SEQ_MAX = 0xFFFF


class Mode(IntEnum):
    SAFE = 0
    RUN = 1
    MAINTENANCE = 2


ReasonText = Literal["", "late", "busy", "unknown_diverter", "fault"]


class Reason(IntEnum):
    """Why a divert was refused, in the wire's numbering."""

    OK = 0
    LATE = 1
    BUSY = 2
    UNKNOWN_DIVERTER = 3
    FAULT = 4

    @property
    def text(self) -> ReasonText:
        """The reason as :class:`controller.lineio.DivertReply` spells it."""
        return _REASON_TEXT[self]

    @classmethod
    def from_text(cls, text: ReasonText) -> Reason:
        return _TEXT_REASON[text]


_REASON_TEXT: dict[Reason, ReasonText] = {
    Reason.OK: "", Reason.LATE: "late", Reason.BUSY: "busy",
    Reason.UNKNOWN_DIVERTER: "unknown_diverter", Reason.FAULT: "fault"}
_TEXT_REASON = {text: reason for reason, text in _REASON_TEXT.items()}


class NakReason(IntEnum):
    BAD_FRAME = 1
    GAP = 2
    MALFORMED = 3
    NO_SESSION = 4
    """Sent by a board that has had no HELLO since it booted, with ``expect`` 0."""


# --- link messages (unsequenced) -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """Controller → board after (re)connecting: who is talking and where its sequence is."""

    session: int
    first_seq: int


@dataclass(frozen=True, slots=True)
class HelloReply:
    """Board → controller: the board's identity and state, so the controller can resync."""

    boot_id: int
    session: int
    first_seq: int
    mode: Mode
    enc: int
    scheduled: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Nothing to say but the header's ``ack``: sent when an acknowledgement is owed and no
    other frame goes out to carry it."""


@dataclass(frozen=True, slots=True)
class Nak:
    """Resend from ``expect`` on; everything before ``expect`` arrived."""

    expect: int
    reason: NakReason


@dataclass(frozen=True, slots=True)
class Heartbeat:
    uptime_ms: int
    mode: Mode
    failed: bool = False
    """The sender's session gave up (or it has none): the controller must say HELLO again."""


# --- board → controller --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Encoder:
    enc: int


@dataclass(frozen=True, slots=True)
class EyeEdge:
    eye: str
    blocked: bool
    enc: int


@dataclass(frozen=True, slots=True)
class BinEntered:
    bin_id: str
    enc: int


@dataclass(frozen=True, slots=True)
class BinLevelChanged:
    bin_id: str
    full: bool


@dataclass(frozen=True, slots=True)
class DivertAnswer:
    command_id: int
    accepted: bool
    reason: Reason


@dataclass(frozen=True, slots=True)
class Fired:
    command_id: int
    diverter_id: str
    enc: int


@dataclass(frozen=True, slots=True)
class Fault:
    device: str
    code: int
    text: str


# --- controller → board --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Divert:
    command_id: int
    parcel_id: int
    diverter_id: str
    fire_enc: int
    pulse_ms: int


@dataclass(frozen=True, slots=True)
class Cancel:
    command_id: int


@dataclass(frozen=True, slots=True)
class SetMode:
    mode: Mode


Message = (Hello | HelloReply | Ack | Nak | Heartbeat | Encoder | EyeEdge | BinEntered
           | BinLevelChanged | DivertAnswer | Fired | Fault | Divert | Cancel | SetMode)

Kind = Literal["u8", "u16", "u32", "u64", "bool", "id", "text", "mode", "reason", "nak"]
Direction = Literal["up", "down", "both"]


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """How one message type sits on the wire; the codec and the protocol doc share it."""

    code: int
    sequenced: bool
    direction: Direction
    kinds: tuple[Kind, ...]


SPECS: dict[type[Message], MessageSpec] = {
    Hello: MessageSpec(0x01, False, "down", ("u32", "u16")),
    HelloReply: MessageSpec(0x02, False, "up", ("u32", "u32", "u16", "mode", "u64", "u16")),
    Ack: MessageSpec(0x03, False, "both", ()),
    Nak: MessageSpec(0x04, False, "both", ("u16", "nak")),
    Heartbeat: MessageSpec(0x05, False, "both", ("u32", "mode", "bool")),
    Encoder: MessageSpec(0x10, False, "up", ("u64",)),
    EyeEdge: MessageSpec(0x11, True, "up", ("id", "bool", "u64")),
    BinEntered: MessageSpec(0x12, True, "up", ("id", "u64")),
    BinLevelChanged: MessageSpec(0x13, True, "up", ("id", "bool")),
    DivertAnswer: MessageSpec(0x14, True, "up", ("u32", "bool", "reason")),
    Fired: MessageSpec(0x15, True, "up", ("u32", "id", "u64")),
    Fault: MessageSpec(0x16, True, "up", ("id", "u8", "text")),
    Divert: MessageSpec(0x21, True, "down", ("u32", "u32", "id", "u64", "u16")),
    Cancel: MessageSpec(0x22, True, "down", ("u32",)),
    SetMode: MessageSpec(0x23, True, "down", ("mode",)),
}


def is_sequenced(message: Message) -> bool:
    return SPECS[type(message)].sequenced


@dataclass(frozen=True, slots=True)
class Packet:
    seq: int
    message: Message
    ack: int = 0
    """The sender's cumulative acknowledgement: every sequenced message up to and including
    this seq arrived in order; 0 when it acknowledges nothing."""
    from_board: bool = False
    """Which side sent the frame: the version byte's :data:`FROM_BOARD` bit."""

