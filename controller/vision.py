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


class Frame:
    """One camera frame with the encoder count at its capture.

    A source may hand over the pixels as ``render`` instead of ``image``: they are made the
    first time :attr:`image` is read (possibly in a decoding thread), so a frame nobody
    looks at costs nothing to make. The emulator's cameras do this.
    """

    __slots__ = ("_image", "_render", "camera_id", "captured_at", "enc")

    def __init__(self, camera_id: str, image: GrayImage | None, enc: int, captured_at: float,
                 *, render: Callable[[], GrayImage] | None = None) -> None:
        if (image is None) == (render is None):
            raise ValueError("a frame has either its image or a way to render it")
        self.camera_id = camera_id
        self.enc = enc
        self.captured_at = captured_at
        self._image = image
        self._render = render

    @property
    def image(self) -> GrayImage:
        image = self._image
        if image is None:
            assert self._render is not None
            image = self._image = self._render()
            self._render = None
        return image

    def __repr__(self) -> str:
        return f"Frame({self.camera_id!r}, enc={self.enc}, captured_at={self.captured_at})"


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
