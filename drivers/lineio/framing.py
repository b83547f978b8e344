"""Frames on the serial wire: ``COBS(body ‖ crc16) ‖ 0x00``, without knowing what a body says.

CRC-16/CCITT-FALSE guards the body; Consistent Overhead Byte Stuffing keeps 0x00 for the
delimiter (docs/serial-protocol.md, §1). Anything that cannot be a frame raises
:class:`~controller.errors.FrameError`.
"""

from __future__ import annotations

import binascii

from controller.errors import FrameError

MAX_BODY = 250
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_FRAME = MAX_BODY + CRC_SIZE + 1
"""The longest COBS-encoded frame, not counting its 0x00 delimiter (one COBS block)."""
_BYTES = [bytes((value,)) for value in range(256)]


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR."""
    return binascii.crc_hqx(data, 0xFFFF)


def seal(body: bytes) -> bytes:
    """The wire bytes of one body: its CRC appended, COBS-encoded, the 0x00 delimiter after."""
    return cobs_encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"


def unseal(frame: bytes) -> bytes:
    """The body between two delimiters (one trailing 0x00 is tolerated), its CRC checked."""
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
    return body


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

