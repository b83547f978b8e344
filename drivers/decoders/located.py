"""Locate linear codes with OpenCV, straighten each one, then decode the crop.

Whole-image linear decoding fails between about 30° and 60° of rotation (see
shared/FACTS.md). ``cv2.barcode.BarcodeDetector.detect`` finds linear codes at any
angle; each found quadrilateral is rotated to horizontal with a margin for the quiet
zone and decoded by an ordinary decoder. The detector's own decode is never used: it
cannot read Code 128 and invents EAN codes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from controller.vision import GrayImage, Symbol

from ._common import (
    LINEAR_SYMBOLOGIES,
    MATRIX_SYMBOLOGIES,
    Found,
    as_gray,
    check_formats,
    dedupe,
)
from .zxing import ZxingDecoder

log = logging.getLogger(__name__)

Quad = npt.NDArray[np.float32]


class Finder(Protocol):
    """A whole-image decoder that also reports code sizes (ZxingDecoder, PyzbarDecoder)."""

    formats: tuple[str, ...]

    def find(self, gray: GrayImage) -> list[Found]: ...


class _PerThread(threading.local):
    detector: cv2.barcode.BarcodeDetector | None = None
    threshold: float = 0.0


#: The locator shrinks images whose longer side exceeds its downsampling threshold
#: (512 px by default). With 2 px modules it found every label in 1080p frames (3.75x
#: shrink) but only half of them at 2448x2048 (4.8x); capping the shrink at 3.5x found
#: all at 2448x2048 for about 20 ms a frame.
MAX_LOCATOR_SHRINK = 3.5
MIN_LOCATOR_THRESHOLD = 512.0
#: Gaussian sigma (px) of the unsharp mask tried on crops that did not read.
SHARPEN_SIGMA = 1.0
#: At most this many located boxes are decoded per image (largest first): clutter bound.
MAX_BOXES = 16
#: Codes longer than this (px) have modules wide enough not to need the 2x stretch.
MAX_STRETCHED_LENGTH = 1200.0


def straighten(
    gray: GrayImage, quad: Quad, stretch: float = 1.0
) -> tuple[GrayImage, npt.NDArray[np.float64]]:
    """Rotate the code inside ``quad`` to horizontal, with margins; return crop and inverse.

    The inverse is a 2x3 affine matrix mapping crop pixels back to ``gray`` pixels.
    The margins take in the quiet zone and any bars the locator's box cut off.
    ``stretch`` scales the crop along the code: 2 resamples thin bars that a 45° warp
    blurred into a width zxing-cpp reads again.
    """
    (cx, cy), (w, h), angle = cv2.minAreaRect(quad.reshape(-1, 1, 2))
    box = cv2.boxPoints(((cx, cy), (w, h), angle))
    e0 = box[1] - box[0]
    e1 = box[2] - box[1]
    long_edge = e0 if np.hypot(*e0) >= np.hypot(*e1) else e1
    length = max(float(np.hypot(*long_edge)), 1.0)
    short = max(min(w, h), 1.0)
    ux, uy = float(long_edge[0]) / length, float(long_edge[1]) / length
    vx, vy = -uy, ux  # (u, v) keeps the handedness: a rotation, never a mirror image
    crop_w = round((length * 1.3 + 24) * stretch)
    crop_h = round(short * 1.5 + 16)
    fwd = np.array(
        [
            [stretch * ux, stretch * uy, crop_w / 2 - stretch * (ux * cx + uy * cy)],
            [vx, vy, crop_h / 2 - (vx * cx + vy * cy)],
        ],
        dtype=np.float64,
    )
    crop = cv2.warpAffine(
        gray,
        fwd,
        (crop_w, crop_h),
        flags=cv2.INTER_CUBIC if stretch > 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    back = np.asarray(cv2.invertAffineTransform(fwd), dtype=np.float64)
    return np.asarray(crop, dtype=np.uint8), back


class LocatingDecoder:
    """Locate linear codes, decode each straightened crop with ``inner``.

    ``matrix`` (zxing-cpp by default) reads the 2-D formats from the whole image, where
    they are rotation-invariant. When no crop yields a linear read (the locator found
    nothing or only texture), ``inner`` reads the whole image as a fallback.
    """

    name = "located"
    #: crop stretch factors tried in turn until one reads
    stretches: tuple[float, ...] = (1.0, 2.0)
    #: last, an unsharp-masked crop: it read every frame of a 1 px defocus blur that the
    #: plain crops read 40 % of
    sharpen: bool = True

    def __init__(self, inner: Finder, matrix: Finder | None = None, *, name: str = "") -> None:
        self.inner = inner
        self.matrix = matrix
        self.formats = tuple(dict.fromkeys(inner.formats + (matrix.formats if matrix else ())))
        if name:
            self.name = name
        self._local = _PerThread()

    def _detector(self) -> cv2.barcode.BarcodeDetector:
        # One detector per thread: OpenCV does not document the detector as re-entrant.
        det = self._local.detector
        if det is None:
            det = self._local.detector = cv2.barcode.BarcodeDetector()
        return det

    def locate(self, gray: GrayImage) -> list[Quad]:
        """Quadrilaterals (4x2, float32) around linear codes in ``gray``; [] on failure."""
        threshold = max(MIN_LOCATOR_THRESHOLD, max(gray.shape) / MAX_LOCATOR_SHRINK)
        try:
            detector = self._detector()
            if threshold != self._local.threshold:
                detector.setDownsamplingThreshold(threshold)
                self._local.threshold = threshold
            ok, points = detector.detect(gray)
        except cv2.error:
            log.warning("cv2.barcode detect failed on a %s image", gray.shape, exc_info=True)
            return []
        if not ok or points is None:
            return []
        quads = [np.asarray(q, dtype=np.float32).reshape(4, 2) for q in points]
        quads.sort(key=lambda q: -abs(float(cv2.contourArea(q))))
        return quads[:MAX_BOXES]

    def decode(self, image: GrayImage) -> list[Symbol]:
        gray = as_gray(image)
        if gray is None:
            return []
        found: list[Found] = []
        boxes: list[tuple[Quad, float]] = []
        if self.inner.formats:
            linear, boxes = self._linear(gray)
            found += linear
            if not linear:
                boxes = []
        if self.matrix is not None:
            found += self._matrix(gray, boxes)
        return dedupe(found)

    def _matrix(self, gray: GrayImage, boxes: list[tuple[Quad, float]]) -> list[Found]:
        """2-D codes near the located linear codes once one was read, else in the whole image."""
        # A label's 2-D code sits beside its linear one; a whole 1080p pass costs about 4 ms.
        assert self.matrix is not None
        regions = matrix_regions(gray.shape, boxes)
        if regions is None:
            return self.matrix.find(gray)
        found: list[Found] = []
        for x0, y0, x1, y1 in regions:
            for f in self.matrix.find(gray[y0:y1, x0:x1]):
                s = f.symbol
                found.append(Found(Symbol(s.text, s.symbology, s.x + x0, s.y + y0), f.size))
        return found

    def _linear(self, gray: GrayImage) -> tuple[list[Found], list[tuple[Quad, float]]]:
        """Linear reads, and the boxes searched with the reach (box lengths) for 2-D codes."""
        # Labels first: when every label-like region is a clean rectangle and each one
        # reads, the code locator (about 7 ms on a whole 1080p frame) runs on the labels
        # only. Anything else (a torn label, labels touching, a code printed straight on
        # cardboard, nothing read) takes the whole-image path, so the shortcut loses no code.
        big = max(gray.shape) > LABELS_FIRST_SIDE
        labels: list[Quad] | None = None
        label_boxes: list[tuple[Quad, float]] = []
        if big:
            labels, odd_blobs = label_candidates(gray)
            label_boxes = _reach(labels, LABEL_REACH)
            label_px = sum(abs(float(cv2.contourArea(q))) for q in labels)
            if labels and not odd_blobs and LABEL_CROP_GROWTH * label_px < gray.size:
                per_label = [self._read_label(gray, quad) for quad in labels]
                if all(per_label):
                    return [f for reads in per_label for f in reads], label_boxes
        quads = self.locate(gray)
        reads = self._located_reads(gray, quads)
        # a small image is searched whole for 2-D codes: that costs little
        boxes = _reach(quads, MATRIX_REACH) + label_boxes if big else []
        if not reads:
            if labels is None:
                labels = locate_labels(gray)
            return self._labels(gray, labels) or self.inner.find(gray), boxes
        return reads, boxes

    def _located_reads(self, gray: GrayImage, quads: list[Quad]) -> list[Found]:
        """Reads of the located boxes; a code also caught in another box's margin is kept
        only from its own box, where its centre is true (a margin read's position is poor)."""
        on_line: list[Found] = []
        off_line: list[Found] = []
        for quad in quads:
            for found, centred in self._read_located(gray, quad):
                (on_line if centred else off_line).append(found)
        seen = {(f.symbol.text, f.symbol.symbology) for f in on_line}
        return on_line + [f for f in off_line if (f.symbol.text, f.symbol.symbology) not in seen]

    @staticmethod
    def _squared_label(
            gray: GrayImage, quad: Quad) -> tuple[GrayImage, npt.NDArray[np.float64]] | None:
        """A label straightened square to the image, its contrast stretched; and the inverse."""
        try:
            crop, back = straighten(gray, quad)
        except cv2.error:
            log.warning("straightening a located label failed", exc_info=True)
            return None
        return stretch_contrast(crop), back

    def _whole_reads(self, crop: GrayImage) -> list[Found]:
        """The inner decoder on a whole label crop, linear reads centred across their bars."""
        return [Found(centre_across(crop, f) if f.symbol.symbology in LINEAR_SYMBOLOGIES
                      else f.symbol, f.size) for f in self.inner.find(crop)]

    def _read_label(self, gray: GrayImage, quad: Quad) -> list[Found]:
        """Codes on one label, located in its straightened crop or else read whole."""
        squared = self._squared_label(gray, quad)
        if squared is None:
            return []
        crop, back = squared
        reads = self._located_reads(crop, self.locate(crop)) or self._whole_reads(crop)
        return [_mapped(f, back) for f in reads]

    def _labels(self, gray: GrayImage, labels: list[Quad]) -> list[Found]:
        """Second locator: white labels, straightened square to the image, read whole.

        Marks across a code's bars defeat OpenCV's locator at most angles, while a
        scuffed label squared up still reads; labels stand out from cardboard and belt.
        """
        found: list[Found] = []
        for quad in labels:
            squared = self._squared_label(gray, quad)
            if squared is not None:
                crop, back = squared
                found += [_mapped(f, back) for f in self._whole_reads(crop)]
        return found

    def _read_located(self, gray: GrayImage, quad: Quad) -> list[tuple[Found, bool]]:
        """Reads in the box around ``quad``, each flagged True if it lies on the box's
        centre line (the located code) rather than in its margin (a neighbour)."""
        length = float(np.ptp(quad[:, 0]) + np.ptp(quad[:, 1]))  # coarse, enough for a cap
        margin_only: list[tuple[Found, bool]] = []
        first: tuple[GrayImage, npt.NDArray[np.float64]] | None = None
        for stretch in self.stretches:
            if stretch > 1 and length > MAX_STRETCHED_LENGTH:
                break
            try:
                crop, back = straighten(gray, quad, stretch)
            except cv2.error:
                log.warning("straightening a located code failed", exc_info=True)
                break
            first = first or (crop, back)
            reads = [_back_to_image(f, crop.shape[0], back) for f in self.inner.find(crop)]
            if any(centred for _, centred in reads):
                return reads
            margin_only = margin_only or reads
        if self.sharpen and first is not None:
            crop, back = first
            blurred = cv2.GaussianBlur(crop, (0, 0), SHARPEN_SIGMA)
            sharp = np.asarray(cv2.addWeighted(crop, 2.0, blurred, -1.0, 0.0), dtype=np.uint8)
            reads = [_back_to_image(f, sharp.shape[0], back) for f in self.inner.find(sharp)]
            if any(centred for _, centred in reads):
                return reads
        return margin_only


#: Labels are looked for on an image shrunk to this longer side (px).
LABEL_SEARCH_SIDE = 480
#: A label candidate's area, as a share of the searched image, must lie in this range.
LABEL_AREA_SHARE = (0.004, 0.5)
#: Labels are rectangles: a candidate must fill this much of its rotated bounding box
#: (blobs of bright cardboard texture fill far less).
LABEL_RECTANGULARITY = 0.8
MAX_LABELS = 4
#: Labels are read first only in images with a longer side above this (px), and only
#: while they cover less than 1 / LABEL_CROP_GROWTH of the image: below that, one code
#: locator pass over the image costs no more than one per label.
LABELS_FIRST_SIDE = 1024
LABEL_CROP_GROWTH = 6.0


def locate_labels(gray: GrayImage) -> list[Quad]:
    """Boxes (4x2, float32, image pixels) around bright label-like regions, largest first."""
    return label_candidates(gray)[0]


def label_candidates(gray: GrayImage) -> tuple[list[Quad], int]:
    """Label boxes, and how many label-sized bright regions were not rectangles."""
    scale = min(1.0, LABEL_SEARCH_SIDE / max(gray.shape))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else gray
    # Two-level Otsu: the first split may separate belt from cardboard; labels are the
    # bright class of what is left.
    t1, _ = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    upper = small[small > t1]
    if upper.size < 16:
        return [], 0
    t2, _ = cv2.threshold(upper.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = np.asarray(small > t2, dtype=np.uint8) * 255
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    area = float(small.shape[0] * small.shape[1])
    lo, hi = LABEL_AREA_SHARE
    boxes = []
    odd = 0
    for contour in contours:
        rect = cv2.minAreaRect(contour)
        (w, h) = rect[1]
        if not lo * area <= w * h <= hi * area:
            continue
        if min(w, h) < 0.25 * max(w, h) or cv2.contourArea(contour) < LABEL_RECTANGULARITY * w * h:
            odd += 1
            continue
        boxes.append(np.asarray(cv2.boxPoints(rect), dtype=np.float32) / scale)
    boxes.sort(key=lambda q: -abs(float(cv2.contourArea(q))))
    return boxes[:MAX_LABELS], odd + max(0, len(boxes) - MAX_LABELS)


#: A 2-D code is looked for within this many code lengths of a located code's centre.
MATRIX_REACH = 1.0
#: A located label holds its codes: its half-diagonal plus a margin is enough.
LABEL_REACH = 0.65
#: Past this share of the image the regions are not worth it: search the whole image.
MATRIX_MAX_SHARE = 0.75


def matrix_regions(
    shape: tuple[int, ...], boxes: list[tuple[Quad, float]]
) -> list[tuple[int, int, int, int]] | None:
    """Merged (x0, y0, x1, y1) rectangles around ``boxes``; None to search the whole image."""
    if not boxes:
        return None
    h, w = shape[0], shape[1]
    rects: list[list[int]] = []
    for quad, factor in boxes:
        (cx, cy), (bw, bh), _ = cv2.minAreaRect(quad.reshape(-1, 1, 2))
        reach = factor * max(bw, bh) + 24
        rects.append([max(0, int(cx - reach)), max(0, int(cy - reach)),
                      min(w, int(cx + reach) + 1), min(h, int(cy + reach) + 1)])
    merged = True
    while merged:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    rects[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]),
                                max(a[3], b[3])]
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects)
    if area > MATRIX_MAX_SHARE * h * w:
        return None
    return [(x0, y0, x1, y1) for x0, y0, x1, y1 in rects if x1 > x0 and y1 > y0]


#: A straightened label whose print spans fewer gray levels than this is stretched.
LOW_CONTRAST = 100.0


def stretch_contrast(crop: GrayImage) -> GrayImage:
    """A label crop with faded print stretched to the full gray range; others unchanged."""
    # judged on the middle: the crop's margins hold cardboard, darker than faded ink
    h, w = crop.shape
    middle = crop[h // 4: h - h // 4: 2, w // 4: w - w // 4: 2]
    if middle.size < 16:
        return crop
    lo, hi = (float(v) for v in np.percentile(middle, (1.0, 99.0)))
    if hi - lo >= LOW_CONTRAST or hi - lo < 8:
        return crop
    return np.asarray(cv2.convertScaleAbs(crop, alpha=255.0 / (hi - lo), beta=-lo * 255.0
                                          / (hi - lo)), dtype=np.uint8)


def centre_across(crop: GrayImage, found: Found) -> Symbol:
    """The read moved across its bars to the middle of their height."""
    # Decoders report the rows they scanned; the bars are the run of rows (or columns)
    # dense in edges along the code around the read.
    s = found.symbol
    half = max(4, int(found.size / 4))
    x, y = round(s.x), round(s.y)
    win = crop[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1].astype(np.float32)
    if win.shape[0] < 3 or win.shape[1] < 3:
        return s
    gx = float(np.abs(np.diff(win, axis=1)).sum())
    gy = float(np.abs(np.diff(win, axis=0)).sum())
    bars_vertical = gx >= gy
    if bars_vertical:
        band = crop[:, max(0, x - half):x + half + 1].astype(np.float32)
        energy = np.abs(np.diff(band, axis=1)).mean(axis=1)
        at = y
    else:
        band = crop[max(0, y - half):y + half + 1, :].astype(np.float32)
        energy = np.abs(np.diff(band, axis=0)).mean(axis=0)
        at = x
    energy = np.convolve(energy, np.ones(3, dtype=np.float32) / 3, mode="same")
    n = len(energy)
    if not 0 <= at < n:
        return s
    peak = float(energy[max(0, at - 3):at + 4].max())
    if peak <= 0:
        return s
    lo = hi = at
    while lo > 0 and energy[lo - 1] > 0.4 * peak:
        lo -= 1
    while hi < n - 1 and energy[hi + 1] > 0.4 * peak:
        hi += 1
    mid = (lo + hi) / 2
    if bars_vertical:
        return Symbol(s.text, s.symbology, s.x, float(mid))
    return Symbol(s.text, s.symbology, float(mid), s.y)


def _mapped(found: Found, back: npt.NDArray[np.float64]) -> Found:
    """``found`` with its centre mapped through the 2x3 affine ``back``."""
    s = found.symbol
    x = back[0, 0] * s.x + back[0, 1] * s.y + back[0, 2]
    y = back[1, 0] * s.x + back[1, 1] * s.y + back[1, 2]
    return Found(Symbol(s.text, s.symbology, float(x), float(y)), found.size)


def _reach(quads: list[Quad], factor: float) -> list[tuple[Quad, float]]:
    return [(q, factor) for q in quads]


def _back_to_image(found: Found, crop_h: int, back: npt.NDArray[np.float64]) -> tuple[Found, bool]:
    """Map a read in a straightened crop back to image pixels; say if it was centred.

    Along the code the decoder's extent is exact; across it zxing-cpp reports only the
    rows it scanned, so a read on the located code takes the box's centre line. A read
    off that line (another code caught in the margin) keeps its own.
    """
    s = found.symbol
    mid = crop_h / 2
    half_box = (crop_h - 16) / 3  # straighten() made crop_h = 1.5 * box height + 16
    centred = abs(s.y - mid) <= half_box
    y = mid if centred else s.y
    x_img = back[0, 0] * s.x + back[0, 1] * y + back[0, 2]
    y_img = back[1, 0] * s.x + back[1, 1] * y + back[1, 2]
    return Found(Symbol(s.text, s.symbology, float(x_img), float(y_img)), found.size), centred


def _split(formats: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = check_formats(formats)
    return (
        tuple(f for f in names if f in LINEAR_SYMBOLOGIES),
        tuple(f for f in names if f in MATRIX_SYMBOLOGIES),
    )


class _EmptyFinder:
    formats: tuple[str, ...] = ()

    def find(self, gray: GrayImage) -> list[Found]:
        return []


class LocatedZxingDecoder(LocatingDecoder):
    """Locate with OpenCV, decode crops with zxing-cpp; 2-D formats by zxing-cpp."""

    def __init__(self, formats: Sequence[str] = ("code128", "qrcode")) -> None:
        linear, matrix = _split(formats)
        super().__init__(
            ZxingDecoder(linear) if linear else _EmptyFinder(),
            ZxingDecoder(matrix) if matrix else None,
            name="located-zxing",
        )


class LocatedPyzbarDecoder(LocatingDecoder):
    """Locate with OpenCV, decode crops with pyzbar; 2-D formats by zxing-cpp."""

    def __init__(self, formats: Sequence[str] = ("code128", "qrcode")) -> None:
        from .pyzbar import PyzbarDecoder

        linear, matrix = _split(formats)
        super().__init__(
            PyzbarDecoder(linear) if linear else _EmptyFinder(),
            ZxingDecoder(matrix) if matrix else None,
            name="located-pyzbar",
        )
