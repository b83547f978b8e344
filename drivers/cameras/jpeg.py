"""What the controller needs of a JPEG without a library's full decode: its size from the
frame header, and its pixels straight to gray when they are wanted."""

from __future__ import annotations

import cv2
import numpy as np

from controller.vision import GrayImage

__all__ = ["decode_gray", "jpeg_size"]


def decode_gray(jpeg: bytes) -> GrayImage | None:
    """A JPEG decoded straight to gray, or None if it does not decode."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None or image.ndim != 2:
        return None
    return np.ascontiguousarray(image, dtype=np.uint8)


# Start-of-frame markers (baseline, progressive, ...): not DHT 0xC4, JPG 0xC8, DAC 0xCC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length follows


def jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header, without decoding it; None if
    there is none before the image data."""
    at, end = 2, len(jpeg)  # after SOI
    while at + 4 <= end:
        if jpeg[at] != 0xFF:
            return None
        marker = jpeg[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before the data
            return None
        length = int.from_bytes(jpeg[at + 2:at + 4], "big")
        if marker in _SOF:
            if at + 9 > end or length < 7:
                return None
            height = int.from_bytes(jpeg[at + 5:at + 7], "big")
            width = int.from_bytes(jpeg[at + 7:at + 9], "big")
            return (width, height) if width and height else None
        at += 2 + length
    return None
