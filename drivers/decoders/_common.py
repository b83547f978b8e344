"""Helpers shared by the decoder backends: symbology names, input checks, de-duplication."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from controller.errors import ConfigError
from controller.vision import GrayImage, Symbol

#: Every symbology name the project uses, lowercase.
SYMBOLOGIES: tuple[str, ...] = (
    "code128",
    "code39",
    "code93",
    "codabar",
    "ean13",
    "ean8",
    "upca",
    "upce",
    "itf",
    "qrcode",
    "datamatrix",
    "pdf417",
    "aztec",
    "maxicode",
)
#: Symbologies read from the whole image by the locating decoder (rotation-invariant in zxing).
MATRIX_SYMBOLOGIES: frozenset[str] = frozenset(
    {"qrcode", "datamatrix", "pdf417", "aztec", "maxicode"}
)
LINEAR_SYMBOLOGIES: frozenset[str] = frozenset(SYMBOLOGIES) - MATRIX_SYMBOLOGIES

_GRAY_NDIM = 2
_COLOUR_NDIM = 3


def check_formats(formats: Sequence[str], every: Sequence[str] = SYMBOLOGIES) -> tuple[str, ...]:
    """Normalise ``formats`` to lowercase known names; raise ConfigError on unknown ones.

    No formats at all means any: ``every`` symbology the decoder reads.
    """
    if isinstance(formats, str):  # a lone "code128" would otherwise become c, o, d, e ...
        formats = (formats,)
    names = tuple(dict.fromkeys(f.strip().lower() for f in formats)) or tuple(every)
    problems = [
        (f"formats[{i}]", f"unknown symbology {name!r}; known: {', '.join(SYMBOLOGIES)}")
        for i, name in enumerate(names)
        if name not in SYMBOLOGIES
    ]
    if problems:
        raise ConfigError("decoder formats", problems)
    if not names:
        raise ConfigError("decoder formats", [("formats", "at least one symbology is needed")])
    return names


def as_gray(image: object) -> GrayImage | None:
    """Return ``image`` as a contiguous 2-D uint8 array, or None if it is not an image.

    3-channel input is taken as BGR and 4-channel as BGRA (OpenCV's order).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        return None
    if image.ndim == _COLOUR_NDIM and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == _COLOUR_NDIM:
        channels = image.shape[2]
        if channels == 3:
            return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
        if channels == 4:
            return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY), dtype=np.uint8)
        return None
    if image.ndim != _GRAY_NDIM:
        return None
    return np.ascontiguousarray(image)


def decode_text(data: bytes) -> str:
    """Bytes from a decoder as text: UTF-8, or Latin-1 when that fails."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@dataclass(frozen=True, slots=True)
class Found:
    """A symbol plus its size in pixels (quadrilateral diagonal), used to merge duplicates."""

    symbol: Symbol
    size: float


def quad_found(text: str, symbology: str, points: Iterable[tuple[float, float]]) -> Found:
    """A Found whose centre is the mean of the quadrilateral's corners."""
    pts = list(points)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    size = math.hypot(max(xs) - min(xs), max(ys) - min(ys))
    return Found(Symbol(text, symbology, sum(xs) / len(xs), sum(ys) / len(ys)), size)


def dedupe(found: Iterable[Found]) -> list[Symbol]:
    """Merge reads of the same text and symbology whose centres are within half a code size."""
    kept: list[Found] = []
    for item in found:
        s = item.symbol
        duplicate = any(
            k.symbol.text == s.text
            and k.symbol.symbology == s.symbology
            and math.hypot(k.symbol.x - s.x, k.symbol.y - s.y) <= max(k.size, item.size, 20.0) / 2
            for k in kept
        )
        if not duplicate:
            kept.append(item)
    return [k.symbol for k in kept]


def decode_with(find: Callable[[GrayImage], list[Found]], image: GrayImage) -> list[Symbol]:
    """``find`` on ``image`` made gray, de-duplicated; [] for an image that is not one."""
    gray = as_gray(image)
    return [] if gray is None else dedupe(find(gray))
