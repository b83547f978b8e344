"""Messages to and from frame bodies: the payload codec of every message type.

Bytes from outside that do not parse raise :class:`~controller.errors.MessageError` (or
:class:`~controller.errors.FrameError` for a body shorter than the header). Bad arguments
from our own code are caught when encoding: :class:`ValueError` for a value out of range,
:class:`TypeError` for a wrong type.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum

from controller.errors import FrameError, MessageError
from drivers.lineio.framing import HEADER_SIZE, MAX_BODY, seal, unseal
from drivers.lineio.messages import (
    FROM_BOARD,
    MAX_ID,
    MAX_TEXT,
    PROTOCOL_VERSION,
    SEQ_MAX,
    SPECS,
    Kind,
    Message,
    MessageSpec,
    Mode,
    NakReason,
    Packet,
    Reason,
)

_HEADER = struct.Struct(">BBHH")
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


def encode_frame(seq: int, message: Message, ack: int = 0, *,
                 from_board: bool | None = None) -> bytes:
    """The complete wire bytes of one frame, trailing 0x00 included.

    ``seq`` must be 1..65535 for a sequenced message and 0 for any other, ``ack`` 0..65535;
    a field out of its range raises :class:`ValueError`. ``from_board`` says who sends it:
    a message only one side sends may leave it out, Ack, Nak and Heartbeat may not.
    """
    spec = SPECS[type(message)]
    if spec.sequenced and not 1 <= seq <= SEQ_MAX:
        raise ValueError(f"seq {seq} of a sequenced {type(message).__name__} not in 1..65535")
    if not spec.sequenced and seq != 0:
        raise ValueError(f"an unsequenced {type(message).__name__} carries seq 0, not {seq}")
    if not 0 <= ack <= SEQ_MAX:
        raise ValueError(f"ack {ack} not in 0..65535")
    return frame_with_payload(seq, message, encode_payload(message), ack,
                              from_board=sender_is_board(message, from_board))


def sender_is_board(message: Message, from_board: bool | None) -> bool:
    """Who sends ``message``: as given, or as its direction says when only one side sends it."""
    direction = SPECS[type(message)].direction
    if from_board is None:
        if direction == "both":
            raise ValueError(f"say who sends a {type(message).__name__}: both sides do")
        return direction == "up"
    if direction != "both" and from_board != (direction == "up"):
        raise ValueError(f"a {type(message).__name__} goes {direction} only")
    return from_board


def frame_with_payload(seq: int, message: Message, payload: bytes, ack: int = 0, *,
                       from_board: bool) -> bytes:
    """:func:`encode_frame` for a payload already encoded by :func:`encode_payload`."""
    version = PROTOCOL_VERSION | FROM_BOARD if from_board else PROTOCOL_VERSION
    body = _HEADER.pack(version, SPECS[type(message)].code, seq, ack) + payload
    if len(body) > MAX_BODY:
        raise ValueError(f"{type(message).__name__} body of {len(body)} bytes > {MAX_BODY}")
    return seal(body)


def decode_body(body: bytes) -> Packet:
    """A packet from a body whose CRC has already been checked."""
    if len(body) < HEADER_SIZE:
        raise FrameError(f"body of {len(body)} bytes is shorter than the header")
    version, code, seq, ack = _HEADER.unpack_from(body)
    from_board = bool(version & FROM_BOARD)
    version &= ~FROM_BOARD
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
    if spec.direction != "both" and from_board != (spec.direction == "up"):
        raise MessageError(f"a {cls.__name__} marked as sent by the "
                           f"{'board' if from_board else 'controller'}", seq)
    return Packet(seq, codec.decode(body, seq), ack, from_board)


def decode_frame(frame: bytes) -> Packet:
    """Decode the bytes between two delimiters (one trailing 0x00 is tolerated)."""
    return decode_body(unseal(frame))
