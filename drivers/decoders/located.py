"""The locate-then-decode pipeline: codes and labels found, straightened, read by a decoder.

Whole-image linear decoding fails between about 30° and 60° of rotation. The locator
(:mod:`drivers.decoders.locator`) finds linear codes and labels at any angle and
straightens each into an upright crop with a margin for the quiet zone; an ordinary
decoder reads the crop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from controller.vision import GrayImage, Symbol

from ._common import LINEAR_SYMBOLOGIES, Found, as_gray, dedupe
from .activity import Activity, BarRun, Box, bar_runs, frame_activity
from .budget import (
    WorkBudget,
    activity_ms,
    bar_runs_ms,
    label_search_ms,
    locator_ms,
    warp_ms,
    zxing_ms,
)
from .crops import charged_find, located_reads
from .finders import EmptyFinder, Finder, find_in, split_formats
from .locator import (
    CodeLocator,
    Quad,
    centre_across,
    crop_pixels,
    label_candidates,
    locate_labels,
    mapped,
    matrix_regions,
    straighten,
    stretch_contrast,
)
from .zxing import ZxingDecoder

__all__ = [
    "LABELS_FIRST_SIDE",
    "LABEL_CROP_GROWTH",
    "LABEL_REACH",
    "MATRIX_REACH",
    "LocatedPyzbarDecoder",
    "LocatedZxingDecoder",
    "LocatingDecoder",
]

log = logging.getLogger(__name__)


#: Labels are read first only in images with a longer side above this (px), and only
#: while they cover less than 1 / LABEL_CROP_GROWTH of the image: below that, one code
#: locator pass over the image costs no more than one per label.
LABELS_FIRST_SIDE = 1024
LABEL_CROP_GROWTH = 6.0
#: A 2-D code is looked for within this many code lengths of a located code's centre.
MATRIX_REACH = 1.0
#: A located label holds its codes: its half-diagonal plus a margin is enough.
LABEL_REACH = 0.65


class LocatingDecoder:
    """Locate linear codes, decode each straightened crop with ``inner``.

    ``matrix`` (zxing-cpp by default) reads the 2-D formats from the whole image, where
    they are rotation-invariant. When no crop yields a linear read (the locator found
    nothing or only texture), ``inner`` reads the whole image as a fallback.

    A large frame with nothing barcode-like in it (:mod:`drivers.decoders.activity`: an
    empty belt, a bare parcel) gives no reads at once; otherwise the locator and the
    whole-image passes look only inside its active region. There, a large frame's work is
    held to about one plain zxing-cpp pass (:mod:`drivers.decoders.budget`): the
    frame-wide locator pass is left out where the budget cannot afford it and nothing in
    the frame is label-like, or narrowed to the labels where something is. Where every
    label-like region is a clean rectangle and nothing barcode-like lies off them, the
    labels stand for that pass: each is read squared up, and where it does not read, its
    runs of bars (:func:`~drivers.decoders.activity.bar_runs`; the locator in its crop
    where it has none) are read from the frame's own pixels; when none reads, only the 2-D
    codes on them are looked for, with no linear pass over the region.
    """

    name = "located"
    #: crop stretch factors tried in turn until one reads
    stretches: tuple[float, ...] = (1.0, 2.0)
    #: last, an unsharp-masked crop: it read every frame of a 1 px defocus blur that the
    #: plain crops read 40 % of
    sharpen: bool = True

    def __init__(self, inner: Finder, matrix: Finder | None = None, *, name: str = "",
                 whole: Finder | None = None, small_matrix: Finder | None = None,
                 upright: Finder | None = None) -> None:
        self.inner = inner
        #: reads ``inner``'s formats in a crop whose bars stand upright, for less than
        #: ``inner`` (no rotated pass)
        self.upright = upright
        self.matrix = matrix
        self.formats = tuple(dict.fromkeys(inner.formats + (matrix.formats if matrix else ())))
        #: reads inner's and matrix's formats in one pass, when a large frame needs both
        self.whole = whole
        #: reads the 2-D formats in images no larger than LABELS_FIRST_SIDE (photographs,
        #: close crops) instead of ``matrix``: there light-on-dark codes occur, and the
        #: pass is cheap
        self.small_matrix = small_matrix or matrix
        if name:
            self.name = name
        self._locator = CodeLocator()

    def locate(self, gray: GrayImage, frame: tuple[int, ...] | None = None) -> list[Quad]:
        """Quadrilaterals (4x2, float32) around linear codes in ``gray`` (a part of an image
        of shape ``frame``, if given, searched at its scale); [] on failure."""
        return self._locator.locate(gray, frame)

    def decode(self, image: GrayImage) -> list[Symbol]:
        gray = as_gray(image)
        if gray is None:
            return []
        activity = frame_activity(gray)
        h, w = gray.shape
        region = activity.region() if activity is not None else (0, 0, w, h)
        if region is None:  # a large frame with nothing barcode-like: belt, bare cardboard
            return []
        budget = self._budget(gray, region)
        found: list[Found] = []
        boxes: list[tuple[Quad, float]] = []
        matrix_read = False
        if self.inner.formats:
            linear, boxes, matrix_read = self._linear(gray, region, activity, budget)
            found += linear
        if self.matrix is not None and not matrix_read:
            found += self._matrix(gray, boxes, region, budget)
        return dedupe(found)

    def _budget(self, gray: GrayImage, region: Box) -> WorkBudget:
        """A large frame's budget: what plain zxing-cpp would spend on it, the activity
        map already spent, the region's last pass held back.
        Smaller images (photographs, parcel crops) are cheap whatever is tried: no limit."""
        if max(gray.shape) <= LABELS_FIRST_SIDE:
            return WorkBudget()
        budget = WorkBudget(zxing_ms(gray.size, self.formats))
        budget.spend(activity_ms(gray.size))
        x0, y0, x1, y1 = region
        budget.reserve_ms = zxing_ms((x1 - x0) * (y1 - y0), self.formats)
        return budget

    def _find_in(self, finder: Finder, gray: GrayImage, box: Box,
                 budget: WorkBudget) -> list[Found]:
        """A last pass over ``box``: what the reserve was held back for."""
        budget.reserve_ms = 0.0
        x0, y0, x1, y1 = box
        budget.spend(zxing_ms((x1 - x0) * (y1 - y0), finder.formats))
        return find_in(finder, gray, box)

    def _locate(self, crop: GrayImage, budget: WorkBudget,
                frame: tuple[int, ...] | None = None) -> list[Quad]:
        budget.spend(locator_ms(crop.shape, frame))
        return self.locate(crop, frame)

    def _matrix(self, gray: GrayImage, boxes: list[tuple[Quad, float]],
                region: Box, budget: WorkBudget) -> list[Found]:
        """2-D codes near the located linear codes once one was read, else in the region."""
        # A label's 2-D code sits beside its linear one; a whole 1080p pass costs about 4 ms.
        assert self.matrix is not None
        assert self.small_matrix is not None
        regions = matrix_regions(gray.shape, boxes)
        if regions is None:
            small = max(gray.shape) <= LABELS_FIRST_SIDE
            return self._find_in(self.small_matrix if small else self.matrix, gray, region,
                                 budget)
        found: list[Found] = []
        for box in regions:
            found += self._find_in(self.matrix, gray, box, budget)
        return found

    def _linear(self, gray: GrayImage, region: Box, activity: Activity | None,
                budget: WorkBudget) -> tuple[list[Found], list[tuple[Quad, float]], bool]:
        """Linear reads, the boxes searched with the reach (box lengths) for 2-D codes ([]:
        the whole region), and whether the 2-D formats were read too (by :attr:`whole`, on
        the active region)."""
        # Labels first: when every label-like region is a clean rectangle, the code locator
        # (about 8 ms on a whole 1080p frame) runs on the labels only. Each label is read
        # whole, squared up; where one does not read, the runs of bars in its crop (or the
        # codes the locator finds there, where it has none) are read from the frame's own
        # pixels.
        # Anything else (a torn label, labels touching, a code the crops did not find, a
        # label that did not read beside something barcode-like off the labels) takes the
        # whole-image path, so the shortcut loses no code.
        big = max(gray.shape) > LABELS_FIRST_SIDE
        labels: list[Quad] | None = None
        odd_blobs = torn = 0
        label_boxes: list[tuple[Quad, float]] = []
        #: each label's whole reads once made, for the second label pass below
        whole_reads: dict[int, list[Found]] = {}
        if big:
            # made even where the budget cannot afford it (busy all over): a label read
            # whole is what the shortcut below reads rotated codes by
            budget.spend(label_search_ms(gray.size))
            labels, odd_blobs, torn = label_candidates(gray)
            label_boxes = _reach(labels, LABEL_REACH)
            label_px = sum(abs(float(cv2.contourArea(q))) for q in labels)
            if labels and not odd_blobs and LABEL_CROP_GROWTH * label_px < gray.size:
                shortcut = self._on_labels(gray, labels, activity, budget, whole_reads)
                if shortcut is not None:
                    # read, or located and read from the frame without a read while
                    # nothing off the labels is barcode-like: what a whole pass could still
                    # read is a 2-D code on them (the located codes lie on them too)
                    return shortcut, label_boxes, False
        quads = self._search(gray, region, budget, labels or [], torn)
        reads = self._located_reads(gray, quads, budget)
        # a small image is searched whole for 2-D codes: that costs little
        boxes = _reach(quads, MATRIX_REACH) + label_boxes if big else []
        if reads:
            return reads, boxes, False
        if labels is None:
            labels = locate_labels(gray)
        reads = self._labels(gray, labels, budget, whole_reads)
        if reads:
            return reads, boxes, False
        if self.whole is not None and big:
            return self._find_in(self.whole, gray, region, budget), boxes, True
        # no linear read: the 2-D codes are looked for in the whole region
        reads = self._find_in(self.inner, gray, region, budget)
        return reads, boxes if reads else [], False

    def _search(self, gray: GrayImage, region: Box, budget: WorkBudget, labels: list[Quad],
                torn: int) -> list[Quad]:
        """The locator over the region, if the budget affords it; else over the labels
        only, or nowhere when nothing is label-like (cardboard printed or strapped all
        over): the region's whole pass then reads what plain zxing-cpp would."""
        # A label is searched again here even if its crop was: on the frame's own pixels,
        # bars resampled once only read where the crop's failed (0.5 mm bars: 74 % of
        # frames without this pass, 80 % needed).
        big = max(gray.shape) > LABELS_FIRST_SIDE
        x0, y0, x1, y1 = region
        if not big or torn or budget.affords(locator_ms((y1 - y0, x1 - x0), gray.shape)):
            return self._locate_in(gray, region, budget)
        near = matrix_regions(gray.shape, _reach(labels, LABEL_REACH)) if labels else []
        if near is None:  # labels nearly as large as the region: its pass reads them
            return []
        return [q for box in near for q in self._locate_in(gray, box, budget)]

    def _locate_in(self, gray: GrayImage, region: Box, budget: WorkBudget) -> list[Quad]:
        """Located codes in the region of ``gray``, in ``gray``'s pixels."""
        x0, y0, x1, y1 = region
        offset = np.array((x0, y0), dtype=np.float32)
        return [q + offset for q in self._locate(gray[y0:y1, x0:x1], budget, gray.shape)]

    def _located_reads(self, gray: GrayImage, quads: list[Quad],
                       budget: WorkBudget) -> list[Found]:
        return located_reads(self.inner, gray, quads, budget, stretches=self.stretches,
                             sharpen=self.sharpen, upright=self.upright)

    @staticmethod
    def _squared_label(gray: GrayImage, quad: Quad, budget: WorkBudget
                       ) -> tuple[GrayImage, npt.NDArray[np.float64], list[BarRun]] | None:
        """A label straightened square to the image, its contrast stretched, turned so its
        codes run along the rows where every run of bars in it runs one way; the inverse;
        and its runs of bars."""
        budget.spend(warp_ms(crop_pixels(quad)))
        try:
            crop, back = straighten(gray, quad)
        except cv2.error:
            log.warning("straightening a located label failed", exc_info=True)
            return None
        crop = stretch_contrast(crop)
        budget.spend(bar_runs_ms(crop.size))
        runs = bar_runs(crop)
        if runs and not any(r.along for r in runs):
            # transposed: crop pixel (x, y) is the old (y, x)
            crop = np.ascontiguousarray(crop.T)
            back = np.ascontiguousarray(back[:, [1, 0, 2]])
            runs = [r.transposed() for r in runs]
        return crop, back, runs

    def _whole_reads(self, crop: GrayImage, runs: list[BarRun],
                     budget: WorkBudget) -> list[Found]:
        """The inner decoder on a whole label crop, linear reads centred across their bars;
        without the rotated pass where all the label's bars stand upright."""
        finder = (self.upright if self.upright is not None and runs
                  and all(r.along for r in runs) else self.inner)
        return [Found(centre_across(crop, f) if f.symbol.symbology in LINEAR_SYMBOLOGIES
                      else f.symbol, f.size) for f in charged_find(finder, crop, budget)]

    def _on_labels(self, gray: GrayImage, labels: list[Quad], activity: Activity | None,
                   budget: WorkBudget, whole_reads: dict[int, list[Found]]
                   ) -> list[Found] | None:
        """The labels' reads, those that did not read whole read where their codes lie;
        None when the whole-image path must search: a label that did not read where no
        code was found on it, or beside something barcode-like off the labels."""
        found: list[Found] = []
        located: list[Quad] = []
        for i, quad in enumerate(labels):
            reads, codes = self._read_label(gray, quad, budget, whole_reads, i)
            found += reads
            if not reads:
                if not codes:
                    return None
                located += codes
        if not located:
            return found
        if activity is not None and activity.beyond(labels):
            return None
        return found + self._located_reads(gray, located, budget)

    def _read_label(self, gray: GrayImage, quad: Quad, budget: WorkBudget,
                    whole_reads: dict[int, list[Found]],
                    index: int) -> tuple[list[Found], list[Quad]]:
        """Codes on one label, read whole in its straightened crop, the bars left unread
        read where they lie; and, when nothing read, where its codes lie (frame pixels)."""
        squared = self._squared_label(gray, quad, budget)
        if squared is None:
            return [], []
        crop, back, runs = squared
        # Squared up, the label's codes lie along a crop axis, where a whole read finds
        # them for a third of the locator's cost, and a bar map finds what it left unread.
        reads = self._whole_reads(crop, runs, budget)
        whole_reads[index] = [mapped(f, back) for f in reads]
        unread = [r for r in runs
                  if not any(r.holds(f.symbol.x, f.symbol.y) for f in reads)]
        if reads and not unread:
            return [mapped(f, back) for f in reads], []
        # the bars not read, where the bar map sees any, else where the locator finds codes;
        # read from the frame's own pixels: bars resampled twice (label crop, code crop)
        # read less often than once (0.5 mm bars)
        codes = [np.asarray(cv2.transform(q.reshape(-1, 1, 2), back),
                            dtype=np.float32).reshape(4, 2)
                 for q in [r.quad() for r in unread] or self._locate(crop, budget)]
        if reads:
            return [mapped(f, back) for f in reads] + self._located_reads(gray, codes, budget), []
        return [], codes

    def _labels(self, gray: GrayImage, labels: list[Quad], budget: WorkBudget,
                whole_reads: dict[int, list[Found]]) -> list[Found]:
        """Second locator: white labels, straightened square to the image, read whole
        (the labels the first pass read whole already are not read again; a crop the
        budget cannot afford is left to the region's whole pass).

        Marks across a code's bars defeat OpenCV's locator at most angles, while a
        scuffed label squared up still reads; labels stand out from cardboard and belt.
        """
        found: list[Found] = []
        for i, quad in enumerate(labels):
            if i in whole_reads:
                found += whole_reads[i]
                continue
            pixels = crop_pixels(quad)
            if not budget.affords(warp_ms(pixels) + zxing_ms(pixels, self.inner.formats)):
                continue
            squared = self._squared_label(gray, quad, budget)
            if squared is not None:
                crop, back, runs = squared
                found += [mapped(f, back) for f in self._whole_reads(crop, runs, budget)]
        return found


def _reach(quads: list[Quad], factor: float) -> list[tuple[Quad, float]]:
    return [(q, factor) for q in quads]


class LocatedZxingDecoder(LocatingDecoder):
    """Locate with OpenCV, decode crops with zxing-cpp; 2-D formats by zxing-cpp."""

    def __init__(self, formats: Sequence[str] = ("code128", "qrcode")) -> None:
        linear, matrix = split_formats(formats)
        super().__init__(
            ZxingDecoder(linear) if linear else EmptyFinder(),
            ZxingDecoder(matrix) if matrix else None,
            name="located-zxing",
            whole=ZxingDecoder(linear + matrix) if linear and matrix else None,
            small_matrix=ZxingDecoder(matrix, try_invert=True) if matrix else None,
            upright=ZxingDecoder(linear, try_rotate=False, try_downscale=False)
            if linear else None,
        )


class LocatedPyzbarDecoder(LocatingDecoder):
    """Locate with OpenCV, decode crops with pyzbar; 2-D formats by zxing-cpp."""

    def __init__(self, formats: Sequence[str] = ("code128", "qrcode")) -> None:
        from .pyzbar import PyzbarDecoder

        linear, matrix = split_formats(formats)
        super().__init__(
            PyzbarDecoder(linear) if linear else EmptyFinder(),
            ZxingDecoder(matrix) if matrix else None,
            name="located-pyzbar",
            small_matrix=ZxingDecoder(matrix, try_invert=True) if matrix else None,
        )
