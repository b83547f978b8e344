"""What the locating decoder reads crops and regions with: whole-image finders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from controller.vision import GrayImage, Symbol

from ._common import LINEAR_SYMBOLOGIES, MATRIX_SYMBOLOGIES, Found, check_formats

Box = tuple[int, int, int, int]


class Finder(Protocol):
    """A whole-image decoder that also reports code sizes (ZxingDecoder, PyzbarDecoder)."""

    formats: tuple[str, ...]

    def find(self, gray: GrayImage) -> list[Found]: ...


class EmptyFinder:
    """Looks for nothing: the linear finder of a decoder asked for 2-D formats only."""

    formats: tuple[str, ...] = ()

    def find(self, gray: GrayImage) -> list[Found]:
        return []


def find_in(finder: Finder, gray: GrayImage, box: Box) -> list[Found]:
    """``finder``'s reads in the (x0, y0, x1, y1) ``box`` of ``gray``, in ``gray``'s pixels."""
    x0, y0, x1, y1 = box
    if (x0, y0, x1, y1) == (0, 0, gray.shape[1], gray.shape[0]):
        return finder.find(gray)
    return [Found(Symbol(f.symbol.text, f.symbol.symbology, f.symbol.x + x0, f.symbol.y + y0),
                  f.size) for f in finder.find(gray[y0:y1, x0:x1])]


def split_formats(formats: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``formats`` checked and split into the linear and the 2-D ones."""
    names = check_formats(formats)
    return (
        tuple(f for f in names if f in LINEAR_SYMBOLOGIES),
        tuple(f for f in names if f in MATRIX_SYMBOLOGIES),
    )
