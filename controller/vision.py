"""What the controller needs from a barcode decoder, and what a decoder returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
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


class CameraState(StrEnum):
    """How a camera link is doing, as diagnostics show it."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    DOWN = "down"  # lost; reconnecting with backoff


class Camera(Protocol):
    """A source of frames; ``frames()`` runs until cancelled, reconnecting by itself."""

    camera_id: str

    @property
    def state(self) -> CameraState: ...

    @property
    def dropped(self) -> int:
        """Frames thrown away because the controller lagged."""
        ...

    def frames(self) -> AsyncIterator[Frame]: ...


EncoderAt = Callable[[float], int]
"""The encoder count at a moment of the controller's clock (interpolated from history)."""
