"""The I/O board's serial frame codec and message set, without any I/O.

A frame on the wire is ``COBS(body ‖ crc16) ‖ 0x00``; the body is ``version u8 | type u8 |
seq u16 | ack u16 | payload``, every integer big-endian: every frame carries its sender's
cumulative acknowledgement. The full layout, the rules around it and test
vectors are in docs/serial-protocol.md, which is the contract for the board's firmware.

Bytes from outside that do not parse raise :class:`~controller.errors.ProtocolError` (as
:class:`FrameError` when the frame was garbled in transit, :class:`MessageError` when it
arrived intact but says something invalid). Bad arguments from our own code are caught when
encoding: :class:`ValueError` for a value out of range, :class:`TypeError` for a wrong type.
"""

from __future__ import annotations

import binascii
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Literal

from controller.errors import ProtocolError

PROTOCOL_VERSION = 2
MAX_BODY = 250
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_FRAME = MAX_BODY + CRC_SIZE + 1
"""The longest COBS-encoded frame, not counting its 0x00 delimiter (one COBS block)."""
MAX_ID = 32
MAX_TEXT = 64
SEQ_MAX = 0xFFFF


class FrameError(ProtocolError):
    """The frame was damaged in transit: COBS, length or CRC is wrong."""


class MessageError(ProtocolError):
    """The frame arrived intact (CRC good) but its content is not a valid message."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message)


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
    Heartbeat: MessageSpec(0x05, False, "both", ("u32", "mode")),
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
_HEADER = struct.Struct(">BBHH")


def is_sequenced(message: Message) -> bool:
    return SPECS[type(message)].sequenced


@dataclass(frozen=True, slots=True)
class Packet:
    seq: int
    message: Message
    ack: int = 0
    """The sender's cumulative acknowledgement: every sequenced message up to and including
    this seq arrived in order; 0 when it acknowledges nothing."""


# --- encoding and decoding -----------------------------------------------------------------

_INTS: dict[str, struct.Struct] = {
    "u8": struct.Struct(">B"), "u16": struct.Struct(">H"),
    "u32": struct.Struct(">I"), "u64": struct.Struct(">Q")}
_ENUMS: dict[str, type[IntEnum]] = {"mode": Mode, "reason": Reason, "nak": NakReason}
_FIXED_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "bool": "B", "mode": "B",
                "reason": "B", "nak": "B"}
_BYTES = [bytes((value,)) for value in range(256)]
_STRINGS: dict[str, tuple[int, int]] = {"id": (1, MAX_ID), "text": (0, MAX_TEXT)}


def _encode_string(name: str, value: object, lowest: int, highest: int) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"{name} {value!r} is not printable ASCII")
    raw = value.encode("ascii")
    if not lowest <= len(raw) <= highest:
        raise ValueError(f"{name} {value!r} must be {lowest}..{highest} bytes")
    return bytes([len(raw)]) + raw


def _encode_field(name: str, kind: Kind, value: object) -> bytes:
    if kind in _INTS:
        packer = _INTS[kind]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not 0 <= value < 1 << (8 * packer.size):
            raise ValueError(f"{name} {value} does not fit {kind}")
        return packer.pack(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
        return b"\x01" if value else b"\x00"
    if kind in _STRINGS:
        return _encode_string(name, value, *_STRINGS[kind])
    enum = _ENUMS[kind]
    if not isinstance(value, int) or isinstance(value, bool) \
            or value not in enum._value2member_map_:
        raise ValueError(f"{name} {value!r} is not a {enum.__name__}")
    return bytes([value])


def _check_bool(value: int, seq: int) -> bool:
    if value > 1:
        raise MessageError(f"boolean byte {value}", seq)
    return value == 1


def _check_enum(enum: type[IntEnum]) -> Callable[[int, int], IntEnum]:
    members: dict[int, IntEnum] = dict(enum._value2member_map_)

    def check(value: int, seq: int) -> IntEnum:
        member = members.get(value)
        if member is None:
            raise MessageError(f"{value} is not a {enum.__name__}", seq)
        return member
    return check


_CHECKS: dict[str, Callable[[int, int], object]] = {
    "bool": _check_bool, **{kind: _check_enum(enum) for kind, enum in _ENUMS.items()}}
_EXACT_TYPES: dict[str, type] = {"u8": int, "u16": int, "u32": int, "u64": int, "bool": bool,
                                 **_ENUMS}


@dataclass(frozen=True, slots=True)
class _Run:
    """Consecutive integer fields (booleans and enums included), packed by one struct."""

    packer: struct.Struct
    start: int
    stop: int
    checks: tuple[tuple[int, Callable[[int, int], object]], ...]
    """Where in the run a decoded integer must be checked and converted, and how."""


@dataclass(frozen=True, slots=True)
class _String:
    index: int
    lowest: int
    highest: int


class _Codec:
    """One message type's payload codec, built once from its layout.

    Each run of integer fields is one struct call. Encoding a message whose values all have
    their field's exact type takes the fast path; anything else goes field by field, which
    is also what names a bad field in the error it raises.
    """

    def __init__(self, cls: type[Message], spec: MessageSpec) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.layout = tuple(zip((f.name for f in fields(cls)), spec.kinds, strict=True))
        names = [name for name, _ in self.layout]
        self._get: Callable[[Message], tuple[object, ...]]
        if len(names) > 1:
            self._get = operator.attrgetter(*names)
        elif names:
            get_one = operator.attrgetter(names[0])
            self._get = lambda message: (get_one(message),)
        else:
            self._get = lambda message: ()
        parts: list[_Run | _String] = []
        index = 0
        kinds = spec.kinds
        while index < len(kinds):
            if kinds[index] in _STRINGS:
                parts.append(_String(index, *_STRINGS[kinds[index]]))
                index += 1
                continue
            stop = index
            while stop < len(kinds) and kinds[stop] in _FIXED_CODES:
                stop += 1
            run = kinds[index:stop]
            parts.append(_Run(
                struct.Struct(">" + "".join(_FIXED_CODES[kind] for kind in run)), index, stop,
                tuple((at, _CHECKS[kind]) for at, kind in enumerate(run) if kind in _CHECKS)))
            index = stop
        self.parts = tuple(parts)
        self.types = tuple(str if kind in _STRINGS else _EXACT_TYPES[kind] for kind in kinds)
        """The exact type of each value that may skip the field-by-field checks."""
        only = parts[0] if len(parts) == 1 and isinstance(parts[0], _Run) else None
        self.fixed: _Run | None = only

    def encode(self, message: Message) -> bytes:
        values = self._get(message)
        if tuple(map(type, values)) != self.types:
            return self._encode_checked(message)
        try:
            if self.fixed is not None:
                return self.fixed.packer.pack(*values)
            out: list[bytes] = []
            for part in self.parts:
                if isinstance(part, _Run):
                    out.append(part.packer.pack(*values[part.start:part.stop]))
                    continue
                text: str = values[part.index]  # type: ignore[assignment]
                if not text.isascii() or not text.isprintable() \
                        or not part.lowest <= len(text) <= part.highest:
                    return self._encode_checked(message)
                out.append(_BYTES[len(text)] + text.encode("ascii"))
            return b"".join(out)
        except struct.error:
            return self._encode_checked(message)

    def _encode_checked(self, message: Message) -> bytes:
        """Field by field: raises naming the first bad field, or encodes as :meth:`encode`."""
        return b"".join([_encode_field(name, kind, getattr(message, name))
                         for name, kind in self.layout])

    def decode(self, body: bytes, seq: int) -> Message:
        """The message from ``body[HEADER_SIZE:]``, all of which it must use."""
        fixed = self.fixed
        make: Callable[..., Message] = self.cls
        if fixed is not None:
            extra = len(body) - HEADER_SIZE - fixed.packer.size
            if extra < 0:
                raise MessageError("payload too short", seq)
            if extra > 0:
                raise MessageError(f"{extra} bytes after a {self.name}", seq)
            raw = fixed.packer.unpack_from(body, HEADER_SIZE)
            if not fixed.checks:
                return make(*raw)
            values = list(raw)
            for at, check in fixed.checks:
                values[at] = check(values[at], seq)
            return make(*values)
        decoded: list[object] = []
        at = HEADER_SIZE
        end = len(body)
        for part in self.parts:
            if isinstance(part, _Run):
                if at + part.packer.size > end:
                    raise MessageError("payload too short", seq)
                run: list[object] = list(part.packer.unpack_from(body, at))
                at += part.packer.size
                for index, check in part.checks:
                    run[index] = check(run[index], seq)  # type: ignore[arg-type]
                decoded += run
                continue
            if at >= end:
                raise MessageError("payload too short", seq)
            size = body[at]
            if not part.lowest <= size <= part.highest:
                raise MessageError(f"string of {size} bytes, want {part.lowest}..{part.highest}",
                                   seq)
            raw_text = body[at + 1:at + 1 + size]
            if len(raw_text) < size:
                raise MessageError("payload too short", seq)
            text = raw_text.decode("ascii") if raw_text.isascii() else ""
            if len(text) != size or not text.isprintable():
                raise MessageError(f"string {raw_text!r} is not printable ASCII", seq)
            decoded.append(text)
            at += 1 + size
        if at != end:
            raise MessageError(f"{end - at} bytes after a {self.name}", seq)
        return make(*decoded)


_CODECS: dict[type[Message], _Codec] = {cls: _Codec(cls, spec) for cls, spec in SPECS.items()}
_BY_CODE: dict[int, tuple[type[Message], MessageSpec, _Codec]] = {
    spec.code: (cls, spec, _CODECS[cls]) for cls, spec in SPECS.items()}


def encode_payload(message: Message) -> bytes:
    return _CODECS[type(message)].encode(message)


def encode_frame(seq: int, message: Message, ack: int = 0) -> bytes:
    """The complete wire bytes of one frame, trailing 0x00 included.

    ``seq`` must be 1..65535 for a sequenced message and 0 for any other, ``ack`` 0..65535;
    a field out of its range raises :class:`ValueError`.
    """
    spec = SPECS[type(message)]
    if spec.sequenced and not 1 <= seq <= SEQ_MAX:
        raise ValueError(f"seq {seq} of a sequenced {type(message).__name__} not in 1..65535")
    if not spec.sequenced and seq != 0:
        raise ValueError(f"an unsequenced {type(message).__name__} carries seq 0, not {seq}")
    if not 0 <= ack <= SEQ_MAX:
        raise ValueError(f"ack {ack} not in 0..65535")
    return frame_with_payload(seq, message, encode_payload(message), ack)


def frame_with_payload(seq: int, message: Message, payload: bytes, ack: int = 0) -> bytes:
    """:func:`encode_frame` for a payload already encoded by :func:`encode_payload`."""
    body = _HEADER.pack(PROTOCOL_VERSION, SPECS[type(message)].code, seq, ack) + payload
    if len(body) > MAX_BODY:
        raise ValueError(f"{type(message).__name__} body of {len(body)} bytes > {MAX_BODY}")
    return cobs_encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR."""
    return binascii.crc_hqx(data, 0xFFFF)


def decode_body(body: bytes) -> Packet:
    """A packet from a body whose CRC has already been checked."""
    if len(body) < HEADER_SIZE:
        raise FrameError(f"body of {len(body)} bytes is shorter than the header")
    version, code, seq, ack = _HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise MessageError(f"protocol version {version}, want {PROTOCOL_VERSION}", seq)
    known = _BY_CODE.get(code)
    if known is None:
        raise MessageError(f"unknown message type 0x{code:02x}", seq)
    cls, spec, codec = known
    if spec.sequenced:
        if seq == 0:
            raise MessageError(f"sequenced {cls.__name__} with seq 0", seq)
    elif seq != 0:
        raise MessageError(f"unsequenced {cls.__name__} with seq {seq}", seq)
    return Packet(seq, codec.decode(body, seq), ack)


def decode_frame(frame: bytes) -> Packet:
    """Decode the bytes between two delimiters (one trailing 0x00 is tolerated)."""
    if frame.endswith(b"\x00"):
        frame = frame[:-1]
    if not frame:
        raise FrameError("empty frame")
    if len(frame) > MAX_FRAME:
        raise FrameError(f"frame of {len(frame)} bytes > {MAX_FRAME}")
    raw = cobs_decode(frame)
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"frame of {len(raw)} bytes is too short")
    body = raw[:-CRC_SIZE]
    if crc16(body) != int.from_bytes(raw[-CRC_SIZE:], "big"):
        raise FrameError("CRC mismatch")
    return decode_body(body)


# --- COBS ----------------------------------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result has no 0x00 byte."""
    if len(data) < 0xFE:
        # Every run between zeros is shorter than a block: one code byte per run.
        return b"".join([_BYTES[len(piece) + 1] + piece for piece in data.split(b"\x00")])
    out = bytearray()
    pieces = data.split(b"\x00")
    for index, piece in enumerate(pieces):
        full = len(piece) - len(piece) % 0xFE
        for at in range(0, full, 0xFE):
            out.append(0xFF)
            out += piece[at:at + 0xFE]
        if full == len(piece) and full and index == len(pieces) - 1:
            break  # data ending in a full block needs no empty block after it
        out.append(len(piece) - full + 1)
        out += piece[full:]
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Undo :func:`cobs_encode`; anything that encoder could not have produced raises."""
    if not data:
        raise FrameError("empty COBS data")
    if 0 in data:
        raise FrameError("0x00 inside COBS data")
    end = len(data)
    if 0xFF not in data:
        # No full block: every code byte but the last stands for a zero.
        pieces = []
        at = 0
        while at < end:
            stop = at + data[at]
            pieces.append(data[at + 1:stop])
            at = stop
        if at > end:
            raise FrameError("COBS block runs past the end of the frame")
        return b"\x00".join(pieces)
    out = bytearray()
    at = 0
    while at < end:
        code = data[at]
        stop = at + code
        if stop > end:
            raise FrameError("COBS block runs past the end of the frame")
        out += data[at + 1:stop]
        at = stop
        if code != 0xFF and at < end:
            out.append(0)
    return bytes(out)


# --- the incremental reader ----------------------------------------------------------------

@dataclass(slots=True)
class ReaderStats:
    frames: int = 0
    errors: int = 0
    bytes_discarded: int = 0


class FrameReader:
    """Splits a byte stream into packets, resynchronising at the next 0x00 after garbage.

    Memory stays bounded: a run of more than :data:`MAX_FRAME` bytes without a delimiter
    cannot be a frame, so it is dropped as it arrives and reported once. Empty frames
    (consecutive delimiters) are ignored: a sender may write a 0x00 at any time to end
    whatever partial frame the receiver holds.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self.stats = ReaderStats()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet | ProtocolError]:
        """Never raises: damaged frames come back as ProtocolError values, in stream order."""
        out: list[Packet | ProtocolError] = []
        if not self._buffer and not self._discarding and data.endswith(b"\x00"):
            # The usual read: whole frames only.
            for frame in data[:-1].split(b"\x00"):
                if frame:
                    self._decode_into(frame, out)
            return out
        start = 0
        while True:
            end = data.find(0, start)
            self._take(data[start:] if end < 0 else data[start:end], out)
            if end < 0:
                return out
            self._finish(out)
            start = end + 1

    def _take(self, chunk: bytes, out: list[Packet | ProtocolError]) -> None:
        if self._discarding:
            self.stats.bytes_discarded += len(chunk)
        elif len(self._buffer) + len(chunk) > MAX_FRAME:
            self.stats.bytes_discarded += len(self._buffer) + len(chunk)
            self.stats.errors += 1
            self._buffer.clear()
            self._discarding = True
            out.append(FrameError(f"more than {MAX_FRAME} bytes without a delimiter"))
        else:
            self._buffer += chunk

    def _finish(self, out: list[Packet | ProtocolError]) -> None:
        if self._discarding:
            self._discarding = False
            return
        if not self._buffer:
            return
        frame = bytes(self._buffer)
        self._buffer.clear()
        self._decode_into(frame, out)

    def _decode_into(self, frame: bytes, out: list[Packet | ProtocolError]) -> None:
        if len(frame) > MAX_FRAME:
            self.stats.errors += 1
            self.stats.bytes_discarded += len(frame)
            out.append(FrameError(f"more than {MAX_FRAME} bytes without a delimiter"))
            return
        try:
            packet = decode_frame(frame)
        except ProtocolError as exc:
            self.stats.errors += 1
            self.stats.bytes_discarded += len(frame)
            out.append(exc)
        else:
            self.stats.frames += 1
            out.append(packet)
