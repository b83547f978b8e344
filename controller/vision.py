"""What the controller needs from a barcode decoder, and what a decoder returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

GrayImage = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Symbol:
    """One decoded barcode: its text, symbology and centre in image pixels (x, y)."""

    text: str
    symbology: str
    x: float
    y: float


class BarcodeDecoder(Protocol):
    """Decodes every barcode it can find in a grayscale image. Must be thread-safe."""

    name: str

    def decode(self, image: GrayImage) -> list[Symbol]: ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame with the encoder count at its capture."""

    camera_id: str
    image: GrayImage
    enc: int
    captured_at: float


class Camera(Protocol):
    """A source of frames."""

    camera_id: str

    def frames(self) -> AsyncIterator[Frame]: ...
