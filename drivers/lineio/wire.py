"""The I/O board's serial frames and messages, without any I/O: the names everyone imports.

A frame on the wire is ``COBS(body ‖ crc16) ‖ 0x00``; the body is ``version u8 | type u8 |
seq u16 | ack u16 | payload``, every integer big-endian: every frame carries its sender's
cumulative acknowledgement. The full layout, the rules around it and test
vectors are in docs/serial-protocol.md, which is the contract for the board's firmware.

The parts live apart: :mod:`~drivers.lineio.framing` (COBS and CRC),
:mod:`~drivers.lineio.messages` (the message set and its layouts) and
:mod:`~drivers.lineio.codec` (messages to and from bodies); this module re-exports them and
adds the incremental :class:`FrameReader`.

Bytes from outside that do not parse raise :class:`~controller.errors.ProtocolError` (as
:class:`FrameError` when the frame was garbled in transit, :class:`MessageError` when it
arrived intact but says something invalid). Bad arguments from our own code are caught when
encoding: :class:`ValueError` for a value out of range, :class:`TypeError` for a wrong type.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.errors import FrameError, MessageError, ProtocolError
from drivers.lineio.codec import (
    decode_body,
    decode_frame,
    encode_frame,
    encode_payload,
    frame_with_payload,
    sender_is_board,
)
from drivers.lineio.framing import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_BODY,
    MAX_FRAME,
    cobs_decode,
    cobs_encode,
    crc16,
)
from drivers.lineio.messages import (
    FROM_BOARD,
    MAX_ID,
    MAX_TEXT,
    PROTOCOL_VERSION,
    SEQ_MAX,
    SPECS,
    Ack,
    BinEntered,
    BinLevelChanged,
    Cancel,
    Direction,
    Divert,
    DivertAnswer,
    Encoder,
    EyeEdge,
    Fault,
    Fired,
    Heartbeat,
    Hello,
    HelloReply,
    Kind,
    Message,
    MessageSpec,
    Mode,
    Nak,
    NakReason,
    Packet,
    Reason,
    ReasonText,
    SetMode,
    is_sequenced,
)

__all__ = [
    "CRC_SIZE",
    "FROM_BOARD",
    "HEADER_SIZE",
    "MAX_BODY",
    "MAX_FRAME",
    "MAX_ID",
    "MAX_TEXT",
    "PROTOCOL_VERSION",
    "SEQ_MAX",
    "SPECS",
    "Ack",
    "BinEntered",
    "BinLevelChanged",
    "Cancel",
    "Direction",
    "Divert",
    "DivertAnswer",
    "Encoder",
    "EyeEdge",
    "Fault",
    "Fired",
    "FrameError",
    "FrameReader",
    "Heartbeat",
    "Hello",
    "HelloReply",
    "Kind",
    "Message",
    "MessageError",
    "MessageSpec",
    "Mode",
    "Nak",
    "NakReason",
    "Packet",
    "ProtocolError",
    "ReaderStats",
    "Reason",
    "ReasonText",
    "SetMode",
    "cobs_decode",
    "cobs_encode",
    "crc16",
    "decode_body",
    "decode_frame",
    "encode_frame",
    "encode_payload",
    "frame_with_payload",
    "is_sequenced",
    "sender_is_board",
]


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
