"""How much work the locating decoder may spend on one large frame: about one plain pass.

Plain whole-image zxing-cpp costs one pass over the frame per symbology family asked for
(linear, 2-D). The locating decoder must never cost more than that, also on frames it
cannot read (a destroyed label, cardboard printed or strapped all over), so each of its
steps is charged an estimate of its cost from the pixels it handles, and a step that would
leave too little for the whole-region fallback is skipped (:class:`WorkBudget`).

The estimates are milliseconds measured on the project's 2-core reference machine
(the fastest of 7 runs on busy and on plain cardboard, 0.03 to 2 megapixels): only their
ratios matter, so a faster machine scales them all alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ._common import LINEAR_SYMBOLOGIES, MATRIX_SYMBOLOGIES

#: zxing-cpp, per megapixel and per symbology family asked for: Code 128 alone on a
#: 1080p frame 4.6 ms, QR code alone 4.8 ms, both 9.2 ms.
ZXING_MS_PER_MPX = 2.2
#: cv2.barcode's detector: in full below its downsampling threshold (0.4 ms at 0.03 Mpx,
#: 1.2 at 0.11, 3.6 at 0.31), shrunk above it (5.5 ms at 1 Mpx, 8.0 at 2 Mpx).
LOCATOR_MS_PER_MPX = 11.5
LOCATOR_SHRUNK_MS = 3.6
LOCATOR_SHRUNK_MS_PER_MPX = 2.2
#: The activity map (0.6 ms at 1080p) and the label search (1.1 to 2.1 ms) over the frame.
SURVEY_MS_PER_MPX = 1.1

_MPX = 1e-6


def families(formats: Iterable[str]) -> int:
    """How many zxing-cpp passes in one: 1 for linear only or 2-D only, 2 for both."""
    names = set(formats)
    return int(bool(names & LINEAR_SYMBOLOGIES)) + int(bool(names & MATRIX_SYMBOLOGIES))


def zxing_ms(pixels: int, formats: Iterable[str]) -> float:
    """Estimated cost of a zxing-cpp pass over ``pixels`` looking for ``formats``."""
    return ZXING_MS_PER_MPX * _MPX * pixels * max(1, families(formats))


def locator_ms(pixels: int) -> float:
    """Estimated cost of one locator pass over ``pixels``."""
    mpx = _MPX * pixels
    return min(LOCATOR_MS_PER_MPX * mpx, LOCATOR_SHRUNK_MS + LOCATOR_SHRUNK_MS_PER_MPX * mpx)


def survey_ms(pixels: int) -> float:
    """Estimated cost of the activity map and the label search over ``pixels``."""
    return SURVEY_MS_PER_MPX * _MPX * pixels


class WorkBudget:
    """The estimated work spent on one frame against a limit, with a part held back.

    ``limit_ms`` is what plain whole-image zxing-cpp would cost on the frame. The reserve
    is the whole-region fallback still to come: an optional step (a locator pass, one
    more crop) runs only if it leaves the reserve intact, so the fallback, the one step
    that reads what plain zxing-cpp reads, always runs and the frame costs at most the
    plain pass plus the survey that a frame without a label skips everything after.
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
