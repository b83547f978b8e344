"""Find codes and labels in an image with OpenCV, and straighten them into upright crops.

``cv2.barcode.BarcodeDetector.detect`` finds linear codes at any angle (its own decode is
never used: it cannot read Code 128 and invents EAN codes); bright rectangles are found as
label candidates. Each box is rotated to horizontal with a margin for the quiet zone, and
reads in a crop are mapped back to image pixels.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np
import numpy.typing as npt

from controller.vision import GrayImage, Symbol

from ._common import Found

log = logging.getLogger(__name__)

Quad = npt.NDArray[np.float32]


class _PerThread(threading.local):
    detector: cv2.barcode.BarcodeDetector | None = None
    threshold: float = 0.0


#: The locator shrinks images whose longer side exceeds its downsampling threshold
#: (512 px by default). With 2 px modules it found every label in 1080p frames (3.75x
#: shrink) but only half of them at 2448x2048 (4.8x); capping the shrink at 3.5x found
#: all at 2448x2048 for about 20 ms a frame.
MAX_LOCATOR_SHRINK = 3.5
MIN_LOCATOR_THRESHOLD = 512.0
#: cv2.barcode refuses a downsampling threshold below this.
DETECTOR_MIN_THRESHOLD = 64.0
#: At most this many located boxes are decoded per image (largest first): clutter bound.
MAX_BOXES = 16


def locator_threshold(shape: tuple[int, ...], frame: tuple[int, ...] | None = None) -> float:
    """The detector's downsampling threshold for an image of ``shape``: an image whose
    shorter side is longer is shrunk to it. A part of a ``frame`` the detector shrinks is
    shrunk as much as the frame would be (down to the detector's least threshold): the code
    is found at the same scale in both, and the shrink averages camera noise away (low-
    contrast codes on noisy cardboard it found in the 1080p frame, it missed in a 544x304
    part searched unshrunk)."""
    own = max(MIN_LOCATOR_THRESHOLD, max(shape[0], shape[1]) / MAX_LOCATOR_SHRINK)
    if frame is None:
        return own
    whole = max(MIN_LOCATOR_THRESHOLD, max(frame[0], frame[1]) / MAX_LOCATOR_SHRINK)
    shrink = min(frame[0], frame[1]) / whole
    if shrink <= 1:
        return own
    return max(DETECTOR_MIN_THRESHOLD, min(shape[0], shape[1]) / shrink)


class CodeLocator:
    """Linear codes located by ``cv2.barcode``, one detector per thread."""

    def __init__(self) -> None:
        self._local = _PerThread()

    def _detector(self) -> cv2.barcode.BarcodeDetector:
        # One detector per thread: OpenCV does not document the detector as re-entrant.
        det = self._local.detector
        if det is None:
            det = self._local.detector = cv2.barcode.BarcodeDetector()
        return det

    def locate(self, gray: GrayImage, frame: tuple[int, ...] | None = None) -> list[Quad]:
        """Quadrilaterals (4x2, float32) around linear codes in ``gray`` (a part of an image
        of shape ``frame``, if given, searched at that image's scale); [] on failure."""
        threshold = locator_threshold(gray.shape, frame)
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


def crop_pixels(quad: Quad, stretch: float = 1.0) -> int:
    """How many pixels :func:`straighten` makes of ``quad`` (to charge it before)."""
    _, (w, h), _ = cv2.minAreaRect(quad.reshape(-1, 1, 2))
    length, short = max(float(max(w, h)), 1.0), max(float(min(w, h)), 1.0)
    return round((length * 1.3 + 24) * stretch) * round(short * 1.5 + 16)


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


#: Labels are looked for on an image shrunk to this longer side (px).
LABEL_SEARCH_SIDE = 480
#: A label candidate's area, as a share of the searched image, must lie in this range.
LABEL_AREA_SHARE = (0.004, 0.5)
#: Labels are rectangles: a candidate must fill this much of its rotated bounding box
#: (blobs of bright cardboard texture fill far less).
LABEL_RECTANGULARITY = 0.8
MAX_LABELS = 4
#: A label-sized bright region that is no rectangle may still be a label (torn, touching
#: another) when it fills this much of its box; tape, straps and scribbles filled at most
#: 0.32 in the bench's busy frames.
TORN_FILL = 0.5


def locate_labels(gray: GrayImage) -> list[Quad]:
    """Boxes (4x2, float32, image pixels) around bright label-like regions, largest first."""
    return label_candidates(gray)[0]


def shrunk(gray: GrayImage, scale: float) -> GrayImage:
    """``gray`` resized by ``scale`` (< 1) about as INTER_AREA does (a grey level apart on
    average): halved by area while the scale allows, then interpolated the rest of the way.
    OpenCV halves a uint8 image of even sides about ten times faster than it shrinks one by
    area by any other factor (1920x1080 to 480x270: 0.10 ms against 0.71; a 1500x1080
    parcel crop 0.20 against 2.5)."""
    h, w = gray.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small: npt.NDArray[np.uint8] = gray
    while small.shape[1] >= 2 * size[0] and small.shape[0] >= 2 * size[1]:
        half_h, half_w = small.shape[0] // 2, small.shape[1] // 2
        small = np.asarray(cv2.resize(small[: 2 * half_h, : 2 * half_w], (half_w, half_h),
                                      interpolation=cv2.INTER_AREA), dtype=np.uint8)
    if (small.shape[1], small.shape[0]) != size:  # less than halved: no pixel is skipped
        small = np.asarray(cv2.resize(small, size, interpolation=cv2.INTER_LINEAR),
                           dtype=np.uint8)
    return small


def otsu(hist: npt.NDArray[np.float64]) -> int:
    """Otsu's threshold of a 256-bin grey-level histogram, as ``cv2.THRESH_OTSU`` picks it:
    the level that best splits the classes at or below it from those above."""
    total = float(hist.sum())
    if total <= 0:
        return 0
    p = hist / total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    spread = omega * (1.0 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(spread > 1e-12, (mu[-1] * omega - mu) ** 2 / spread, 0.0)
    return int(np.argmax(between))


def label_candidates(gray: GrayImage) -> tuple[list[Quad], int, int]:
    """Label boxes, how many label-sized bright regions were not rectangles, and how
    many of those still fill TORN_FILL of their box (labels torn or touching)."""
    scale = min(1.0, LABEL_SEARCH_SIDE / max(gray.shape))
    small = shrunk(gray, scale) if scale < 1 else gray
    # Two-level Otsu: the first split may separate belt from cardboard; labels are the
    # bright class of what is left.
    hist = cv2.calcHist([small], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    t1 = otsu(hist)
    upper = hist.copy()
    upper[: t1 + 1] = 0.0
    if upper.sum() < 16:
        return [], 0, 0
    _, mask = cv2.threshold(small, otsu(upper), 255, cv2.THRESH_BINARY)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    area = float(small.shape[0] * small.shape[1])
    lo, hi = LABEL_AREA_SHARE
    boxes = []
    odd = torn = 0
    for contour in contours:
        _, _, box_w, box_h = cv2.boundingRect(contour)
        if box_w * box_h < lo * area:  # its rotated box is smaller still: tape, a scribble
            continue
        rect = cv2.minAreaRect(contour)
        (w, h) = rect[1]
        if not lo * area <= w * h <= hi * area:
            continue
        fill = float(cv2.contourArea(contour))
        if min(w, h) < 0.25 * max(w, h) or fill < LABEL_RECTANGULARITY * w * h:
            odd += 1
            torn += fill >= TORN_FILL * w * h
            continue
        boxes.append(np.asarray(cv2.boxPoints(rect), dtype=np.float32) / scale)
    boxes.sort(key=lambda q: -abs(float(cv2.contourArea(q))))
    return boxes[:MAX_LABELS], odd + max(0, len(boxes) - MAX_LABELS), torn


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


def grey_percentiles(image: GrayImage, percents: tuple[float, ...]) -> list[float]:
    """``np.percentile(image, percents)`` of a uint8 image, by its histogram: a few times
    faster than sorting, on a strided view too."""
    counts = np.cumsum(cv2.calcHist([image], [0], None, [256], [0, 256]).ravel())
    n = int(counts[-1])
    found = []
    for q in percents:
        rank = (n - 1) * q / 100.0
        below = int(rank)
        lo, hi = np.searchsorted(counts, (below, min(below + 1, n - 1)), side="right")
        found.append(float(lo) + (rank - below) * float(hi - lo))
    return found


#: A straightened label whose print spans fewer gray levels than this is stretched.
LOW_CONTRAST = 100.0


def stretch_contrast(crop: GrayImage) -> GrayImage:
    """A label crop with faded print stretched to the full gray range; others unchanged."""
    # judged on the middle: the crop's margins hold cardboard, darker than faded ink
    h, w = crop.shape
    middle = crop[h // 4: h - h // 4: 2, w // 4: w - w // 4: 2]
    if middle.size < 16:
        return crop
    lo, hi = grey_percentiles(middle, (1.0, 99.0))
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


def mapped(found: Found, back: npt.NDArray[np.float64]) -> Found:
    """``found`` with its centre mapped through the 2x3 affine ``back``."""
    s = found.symbol
    x = back[0, 0] * s.x + back[0, 1] * s.y + back[0, 2]
    y = back[1, 0] * s.x + back[1, 1] * s.y + back[1, 2]
    return Found(Symbol(s.text, s.symbology, float(x), float(y)), found.size)


def back_to_image(found: Found, crop_h: int, back: npt.NDArray[np.float64]) -> tuple[Found, bool]:
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
