"""Located codes read from straightened crops, each attempt charged to the frame's budget.

A located box is tried as a crop at its own size, then stretched 2x along the code, then
unsharp-masked, then averaged along its bars, until one reads; each attempt (its warp and
its zxing-cpp pass) is charged to the frame's :class:`~drivers.decoders.budget.WorkBudget`.
None is skipped for it: the robustness table's 0.5 mm bars and blurred frames are read by
exactly these attempts, and the average along the bars reads a faint code under camera
noise that the other crops miss and plain zxing-cpp reads in its downscaled pass (where
3x3 pixels are averaged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt

from controller.vision import GrayImage

from ._common import Found
from .budget import WorkBudget, warp_ms, zxing_ms
from .finders import Finder
from .locator import Quad, back_to_image, crop_pixels, straighten, stretch_contrast

log = logging.getLogger(__name__)

#: Gaussian sigma (px) of the unsharp mask tried on crops that did not read.
SHARPEN_SIGMA = 1.0
#: Rows averaged along the bars in the last attempt. A code's bars are some 30 px high or
#: more in a line camera's frame; of 10 crops of a 3 px-moduled code at 40 grey levels of
#: contrast under noise sigma 16, averages of 9, 15 and 25 rows read 0, 8 and 10.
ALONG_BARS = 25
#: Codes longer than this (px) have modules wide enough not to need the 2x stretch.
MAX_STRETCHED_LENGTH = 1200.0
#: A box this many times longer than high runs along its long side: its crop holds the
#: bars upright, and is read without zxing-cpp's rotated and downscaled passes.
ELONGATED = 1.5

Crop = tuple[GrayImage, npt.NDArray[np.float64]]


def charged_find(finder: Finder, crop: GrayImage, budget: WorkBudget) -> list[Found]:
    """``finder`` on ``crop``, its pass charged to ``budget``."""
    budget.spend(zxing_ms(crop.size, finder.formats))
    return finder.find(crop)


def located_reads(finder: Finder, gray: GrayImage, quads: list[Quad], budget: WorkBudget, *,
                  stretches: tuple[float, ...], sharpen: bool,
                  upright: Finder | None = None) -> list[Found]:
    """Reads of the located boxes; a code also caught in another box's margin is kept
    only from its own box, where its centre is true (a margin read's position is poor).
    ``upright`` (if given) reads the crops of elongated boxes, whose bars stand upright."""
    on_line: list[Found] = []
    off_line: list[Found] = []
    for quad in quads:
        reader = upright if upright is not None and elongated(quad) else finder
        for found, centred in read_located(reader, gray, quad, budget, stretches=stretches,
                                            sharpen=sharpen):
            (on_line if centred else off_line).append(found)
    seen = {(f.symbol.text, f.symbol.symbology) for f in on_line}
    return on_line + [f for f in off_line if (f.symbol.text, f.symbol.symbology) not in seen]


def elongated(quad: Quad) -> bool:
    """Whether ``quad`` is ELONGATED times longer than high: a code along its long side."""
    _, (w, h), _ = cv2.minAreaRect(quad.reshape(-1, 1, 2))
    return max(w, h) >= ELONGATED * max(min(w, h), 1.0)


def read_located(finder: Finder, gray: GrayImage, quad: Quad, budget: WorkBudget, *,
                 stretches: tuple[float, ...], sharpen: bool) -> list[tuple[Found, bool]]:
    """Reads in the box around ``quad``, each flagged True if it lies on the box's
    centre line (the located code) rather than in its margin (a neighbour)."""
    length = float(np.ptp(quad[:, 0]) + np.ptp(quad[:, 1]))  # coarse, enough for a cap
    margin_only: list[tuple[Found, bool]] = []
    first: Crop | None = None
    for stretch in stretches:
        if stretch > 1 and length > MAX_STRETCHED_LENGTH:
            break
        budget.spend(warp_ms(crop_pixels(quad, stretch), stretch > 1))
        try:
            crop, back = straighten(gray, quad, stretch)
        except cv2.error:
            log.warning("straightening a located code failed", exc_info=True)
            break
        crop = stretch_contrast(crop)
        first = first or (crop, back)
        reads = [back_to_image(f, crop.shape[0], back)
                 for f in charged_find(finder, crop, budget)]
        if any(centred for _, centred in reads):
            return reads
        margin_only = margin_only or reads
    if first is None:
        return margin_only
    crop, back = first
    for filtered in _filtered(crop, sharpen):
        budget.spend(warp_ms(crop.size, True))  # a filter: about a bicubic warp
        reads = [back_to_image(f, filtered.shape[0], back)
                 for f in charged_find(finder, filtered, budget)]
        if any(centred for _, centred in reads):
            return reads
    return margin_only


def _filtered(crop: GrayImage, sharpen: bool) -> Iterator[GrayImage]:
    """The first crop filtered, each made only if the one before did not read: unsharp-
    masked (``sharpen``: blur), then averaged along its upright bars (camera noise)."""
    if sharpen:
        blurred = cv2.GaussianBlur(crop, (0, 0), SHARPEN_SIGMA)
        yield np.asarray(cv2.addWeighted(crop, 2.0, blurred, -1.0, 0.0), dtype=np.uint8)
    yield np.asarray(cv2.blur(crop, (1, ALONG_BARS)), dtype=np.uint8)
