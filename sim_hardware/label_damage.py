"""Damage printed labels suffer: scuffs, a smear, a covering sticker, a torn-off edge.

:func:`apply_damage` marks a rendered label image the way its spec's ``damage`` names;
:func:`torn_mask` says which of a torn label's pixels are still there. Layout and symbols
are :mod:`sim_hardware.labels`'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sim_hardware.labels import LabelSpec, _Layout

__all__ = ["apply_damage", "torn_mask"]

STICKER = 212
TORN_AWAY = 150
#: A sticker over the bars hides this share of their height (the upper part).
COVERED_SHARE = (0.35, 0.45)
#: A tear reaches at most this share of the bars' height into them.
TORN_SHARE = (0.15, 0.35)

FloatImage = npt.NDArray[np.float32]


def apply_damage(
    img: FloatImage, lay: _Layout, spec: LabelSpec, ppm: float, *, paper: float,
    bar_h_mm: float,
) -> None:
    """Mark img (the label's float image, in place) with the damage spec names, if any."""
    rng = np.random.default_rng((spec.seed, 0x5CAFF))
    if spec.damage == "scuffed":
        _scuff(img, lay, rng, ppm, paper=paper, bar_h_mm=bar_h_mm)
    elif spec.damage == "destroyed":
        _destroy(img, lay, spec, rng, ppm, bar_h_mm=bar_h_mm)
    elif spec.damage == "covered":
        _cover(img, lay, rng, ppm, bar_h_mm)
    elif spec.damage == "torn_edge":
        kept = torn_mask((img.shape[0], img.shape[1]), lay, spec, ppm, bar_h_mm)
        img[...] = img * kept + TORN_AWAY * (1.0 - kept)


def _scuff(
    img: FloatImage, lay: _Layout, rng: np.random.Generator, ppm: float, *, paper: float,
    bar_h_mm: float,
) -> None:
    """Light scratches and faded streaks that a decoder reads through."""
    w = img.shape[1]
    marks = np.zeros(img.shape, dtype=np.uint8)
    for _ in range(5):
        y0 = rng.uniform(lay.bar_y, lay.bar_y + bar_h_mm) * ppm
        p0 = (round(rng.uniform(0, w)), round(y0 + rng.uniform(-20, 20) * ppm))
        p1 = (round(rng.uniform(0, w)), round(y0 + rng.uniform(-20, 20) * ppm))
        cv2.line(marks, p0, p1, 255, max(1, round(0.25 * ppm)), cv2.LINE_AA)
    img -= marks.astype(np.float32) * (45.0 / 255.0)
    fade = np.zeros(img.shape, dtype=np.uint8)
    for _ in range(2):
        y = round(rng.uniform(lay.bar_y + 3, lay.bar_y + bar_h_mm - 3) * ppm)
        y1 = y + round(rng.uniform(-4, 4) * ppm)
        cv2.line(fade, (0, y), (w - 1, y1), 255, max(1, round(0.8 * ppm)), cv2.LINE_AA)
    img += (paper - img) * fade.astype(np.float32) * (0.35 / 255.0)


def _destroy(
    img: FloatImage, lay: _Layout, spec: LabelSpec, rng: np.random.Generator, ppm: float,
    *, bar_h_mm: float,
) -> None:
    """A dark smear over the middle of the barcode (full bar height) and most of the QR."""

    def smear(x0: float, y0: float, x1: float, y1: float) -> None:
        xs = np.linspace(x0, x1, 7)
        top = [(x, y0 + rng.uniform(-1.5, 0.0)) for x in xs]
        bottom = [(x, y1 + rng.uniform(0.0, 1.5)) for x in xs[::-1]]
        poly = np.array([(px * ppm, py * ppm) for px, py in top + bottom], dtype=np.float64)
        mask8 = np.zeros(img.shape, dtype=np.uint8)
        cv2.fillPoly(mask8, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        mask = mask8.astype(np.float32) / 255.0
        tone = 40.0 + rng.uniform(0.0, 12.0, size=img.shape).astype(np.float32)
        img[...] = img * (1.0 - mask) + tone * mask

    span = lay.bar_w * 0.45
    left = lay.bar_x + (lay.bar_w - span) / 2 + rng.uniform(-0.1, 0.1) * lay.bar_w
    smear(left, lay.bar_y - 2.0, left + span, lay.bar_y + bar_h_mm + 2.0)
    if spec.qr_text is not None:
        q = lay.qr_size
        smear(lay.qr_x + 0.15 * q, lay.qr_y - 1.0, lay.qr_x + 0.85 * q, lay.qr_y + q + 1.0)


def _cover(
    img: FloatImage, lay: _Layout, rng: np.random.Generator, ppm: float, bar_h_mm: float
) -> None:
    """An opaque sticker across the upper part of the bars; the rest of them stays clear."""
    share = rng.uniform(*COVERED_SHARE)
    x0 = lay.bar_x - rng.uniform(3.0, 8.0)
    x1 = lay.bar_x + lay.bar_w + rng.uniform(3.0, 8.0)
    top = lay.bar_y - rng.uniform(2.0, 6.0)
    bottom = lay.bar_y + share * bar_h_mm
    slope = rng.uniform(-0.5, 0.5)  # mm over the sticker's length: it is stuck on a bit askew
    corners = [(x0, top), (x1, top), (x1, bottom + slope / 2), (x0, bottom - slope / 2)]
    poly = np.array([(x * ppm, y * ppm) for x, y in corners])
    mask8 = np.zeros(img.shape, dtype=np.uint8)
    cv2.fillPoly(mask8, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    mask = mask8.astype(np.float32) / 255.0
    img[...] = img * (1.0 - mask) + STICKER * mask


def torn_mask(
    shape: tuple[int, int], lay: _Layout, spec: LabelSpec, ppm: float, bar_h_mm: float
) -> FloatImage:
    """1.0 where paper is left, 0.0 where a corner or the top strip was torn away."""
    rng = np.random.default_rng((spec.seed, 0x7EA2))
    deepest = lay.bar_y + rng.uniform(*TORN_SHARE) * bar_h_mm
    if rng.random() < 0.5:  # the top strip, down into the bars' upper part
        xs = np.linspace(-1.0, lay.width + 1.0, 40)
        ys = deepest - rng.uniform(0.0, 0.3, size=len(xs)) * (deepest - lay.bar_y) \
            - rng.uniform(0.0, 0.8, size=len(xs))
        line = list(zip(xs, ys, strict=True))
        poly = [(-1.0, -1.0), *line, (lay.width + 1.0, -1.0)]
    else:  # a corner: from the top edge down to ``deepest`` at the bars' end, and on
        right = rng.random() < 0.5
        start = lay.bar_x + lay.bar_w * rng.uniform(0.55, 0.8)
        end = lay.bar_x + lay.bar_w
        if not right:
            start, end = lay.width - start, lay.width - end
        edge = lay.width + 1.0 if right else -1.0
        ts = np.linspace(0.0, (edge - start) / (end - start), 30)
        xs = start + (end - start) * ts
        ys = -1.0 + (deepest + 1.0) * ts - rng.uniform(0.0, 0.8, size=len(ts))
        poly = [*zip(xs, ys, strict=True), (edge, -1.0)]
    pts = np.array([(x * ppm, y * ppm) for x, y in poly])
    mask8 = np.full(shape, 255, dtype=np.uint8)
    cv2.fillPoly(mask8, [np.round(pts * 16).astype(np.int32)], 0, cv2.LINE_AA, shift=4)
    return np.asarray(mask8, dtype=np.float32) / 255.0
