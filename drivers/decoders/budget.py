"""How much work the locating decoder may spend on one large frame: about one plain pass.

Plain whole-image zxing-cpp costs one pass over the frame per symbology family asked for
(linear, 2-D). The locating decoder must never cost more than that, also on frames it
cannot read (a destroyed label, cardboard printed or strapped all over), so each of its
steps is charged an estimate of its cost from the pixels it handles, and a step that would
leave too little for the whole-region fallback is skipped (:class:`WorkBudget`).

The estimates are milliseconds measured on the project's 2-core reference machine
(CPU time of the thread, the median of 15 to 30 runs on busy and on plain cardboard,
0.015 to 2 megapixels, the machine shared): only their ratios matter, so a faster machine
scales them all alike. Every step is charged, the locator's and the warps' own work as
well as zxing-cpp's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ._common import LINEAR_SYMBOLOGIES, MATRIX_SYMBOLOGIES
from .locator import locator_threshold

#: zxing-cpp, per megapixel and per symbology family asked for, plus a fixed cost per call
#: and family: Code 128 alone on a 1080p frame 4.6 ms, QR code alone 5.0 ms, both 10.8 ms;
#: Code 128 on 0.06 Mpx 0.2 ms, on 0.24 Mpx 0.6 to 1.0 ms.
ZXING_MS_PER_MPX = 2.5
ZXING_CALL_MS = 0.15
#: cv2.barcode's detector works on the image shrunk to a shorter side of its downsampling
#: threshold (:func:`~drivers.decoders.locator.locator_threshold`): a fixed cost per call,
#: then per megapixel it works on, plus the shrinking per megapixel shrunk. So a wide strip
#: costs more than a frame: 200x300 1.3 ms, 400x600 3.1, 700x1000 5.4 (shrunk to 0.37
#: Mpx), 515x1157 7.9 (barely shrunk), 540x1920 11.9 (not shrunk), 1080x1920 8.2.
LOCATOR_CALL_MS = 0.8
LOCATOR_MS_PER_MPX = 11.5
LOCATOR_SHRINK_MS_PER_MPX = 0.7
#: cv2.warpAffine into a crop: bilinear (a label, a code at its own size) 0.75 ms per Mpx
#: of crop, bicubic (a code stretched 2x along its bars) 3.9 ms; plus, per crop, its
#: geometry and the handling of its reads (0.1 ms: 0.9 ms a frame with a destroyed label).
WARP_CALL_MS = 0.12
WARP_MS_PER_MPX = 0.75
STRETCHED_WARP_MS_PER_MPX = 3.9
#: The activity map (0.9 to 1.1 ms at 1080p, the frame's first read from memory) and the
#: label search (0.3 to 0.8 ms, the most on busy cardboard): together a sixth of a plain
#: pass.
ACTIVITY_MS_PER_MPX = 0.5
LABEL_SEARCH_MS_PER_MPX = 0.4
#: The bar map of a squared-up label (:func:`~drivers.decoders.activity.bar_runs`).
BAR_RUNS_MS_PER_MPX = 1.0

_MPX = 1e-6


def families(formats: Iterable[str]) -> int:
    """How many zxing-cpp passes in one: 1 for linear only or 2-D only, 2 for both."""
    names = set(formats)
    return int(bool(names & LINEAR_SYMBOLOGIES)) + int(bool(names & MATRIX_SYMBOLOGIES))


def zxing_ms(pixels: int, formats: Iterable[str]) -> float:
    """Estimated cost of a zxing-cpp pass over ``pixels`` looking for ``formats``."""
    return (ZXING_CALL_MS + ZXING_MS_PER_MPX * _MPX * pixels) * max(1, families(formats))


def locator_ms(shape: tuple[int, ...], frame: tuple[int, ...] | None = None) -> float:
    """Estimated cost of one locator pass over an image of ``shape`` (rows, columns), a part
    of an image of shape ``frame`` if given (:func:`~.locator.locator_threshold`)."""
    mpx = _MPX * shape[0] * shape[1]
    shrink = locator_threshold(shape, frame) / min(shape[0], shape[1])
    if shrink >= 1:
        return LOCATOR_CALL_MS + LOCATOR_MS_PER_MPX * mpx
    return (LOCATOR_CALL_MS + LOCATOR_SHRINK_MS_PER_MPX * mpx
            + LOCATOR_MS_PER_MPX * mpx * shrink * shrink)


def warp_ms(pixels: int, stretched: bool = False) -> float:
    """Estimated cost of warping a crop of ``pixels`` out of the frame."""
    per_mpx = STRETCHED_WARP_MS_PER_MPX if stretched else WARP_MS_PER_MPX
    return WARP_CALL_MS + per_mpx * _MPX * pixels


def activity_ms(pixels: int) -> float:
    """Estimated cost of the activity map over ``pixels``."""
    return ACTIVITY_MS_PER_MPX * _MPX * pixels


def label_search_ms(pixels: int) -> float:
    """Estimated cost of the label search over ``pixels``."""
    return LABEL_SEARCH_MS_PER_MPX * _MPX * pixels


def bar_runs_ms(pixels: int) -> float:
    """Estimated cost of the bar map over a label crop of ``pixels``."""
    return BAR_RUNS_MS_PER_MPX * _MPX * pixels


def survey_ms(pixels: int) -> float:
    """Estimated cost of the activity map and the label search over ``pixels``."""
    return activity_ms(pixels) + label_search_ms(pixels)


class WorkBudget:
    """The estimated work spent on one frame against a limit, with a part held back.

    ``limit_ms`` is what plain whole-image zxing-cpp would cost on the frame. The reserve
    is the whole-region fallback still to come: an optional step (the locator over the
    region, a label read whole a second time) runs only if it leaves the reserve intact,
    so the fallback, the one step that reads what plain zxing-cpp reads, always runs.
    The work on and around the labels (their crops, the locator near them, the crops it
    finds) is charged but never refused: the robustness table's reads of 0.5 mm bars,
    blurred and rotated labels depend on it. Where the labels stand for the locator's
    frame-wide search (clean rectangles, nothing barcode-like off them) a label that does
    not read costs its crop, its bar map and the crops of the runs of bars it finds, and
    only the 2-D search beside the labels follows: three labels that do not read cost
    about one plain pass.
    """

    def __init__(self, limit_ms: float = math.inf) -> None:
        self.limit_ms = limit_ms
        self.spent_ms = 0.0
        self.reserve_ms = 0.0

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.limit_ms)

    def spend(self, ms: float) -> None:
        self.spent_ms += ms

    def affords(self, ms: float) -> bool:
        """Whether an optional step of ``ms`` leaves the reserve intact."""
        return self.spent_ms + ms + self.reserve_ms <= self.limit_ms
