"""Where in a camera frame anything barcode-like could be: a cheap edge-density map.

Bars, modules and label print are dense in edges; belt, cardboard and a parcel's outline
are not. The map is the mean of |dx| + |dy| over 16 px blocks (every other row sampled),
each pixel's value capped so one strong outline counts no more than faint bars, smoothed
over 3x3 blocks. A block is active when it stands out from the frame's own background
(its 10th percentile) by :data:`ACTIVE_RISE`; the active region is the box around the
blocks that stand out by half that.

Measured on the example line's 1080p frames (seeded parcels, every robustness condition
that still reads): empty belt and label-less parcels rose at most 3.6 over their
background, labels at 0.15 contrast at least 6.2, the rest at least 10.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from controller.vision import GrayImage

#: Frames whose longer side is at most this are not gated: a code may fill them, and
#: the whole pipeline on them is cheap.
GATE_MIN_SIDE = 1024
BLOCK = 16
#: |dx| + |dy| of one pixel counts at most this much (a parcel's outline is one strong edge).
EDGE_CAP = 40
#: edges are scaled by this (EDGE_CAP times it fits a byte) while averaged into blocks
EDGE_SCALE = 4
#: A smoothed block this far above the frame's background holds something barcode-like:
#: half the background, within these bounds (a flat, noiseless background makes even a
#: few wide bars stand out; camera noise makes a parcel's outline rise up to 3.6).
ACTIVE_RISE = (1.5, 5.0)
#: A background this busy is not a background (a code filling the frame): all is active.
BUSY_BACKGROUND = 28.0
#: The active region is grown by this many px on each side (quiet zones, faint bar ends) ...
REGION_MARGIN = 64
#: ... and is the whole frame once it would cover more than this share of it: a crop
#: saves little there, and a big-moduled code's quiet zone may reach past the margin.
REGION_MAX_SHARE = 0.9
#: A label's outline is active too: blocks this close to a label count as on it.
OUTLINE_BLOCKS = 2

Box = tuple[int, int, int, int]


def block_activity(gray: GrayImage) -> npt.NDArray[np.float32]:
    """Edge density per BLOCK x BLOCK block of ``gray``, smoothed over 3x3 blocks."""
    h, w = gray.shape
    rows, cols = (h - 1) // BLOCK, (w - 1) // BLOCK
    height, width = rows * BLOCK, cols * BLOCK
    even = gray[0:height:2, : width + 1]
    odd = gray[1 : height + 1 : 2, :width]
    dx = cv2.absdiff(even[:, 1 : width + 1], even[:, :width])
    dy = cv2.absdiff(odd, even[:, :width])
    _, edges = cv2.threshold(cv2.add(dx, dy), EDGE_CAP, 255, cv2.THRESH_TRUNC)
    # Block means by halving (OpenCV halves uint8 by area several times faster than it
    # shrinks by 16 x 8), on edges scaled up 4x so each halving's rounding costs little:
    # within 0.35 of the exact means, where one area resize was within 0.5.
    edges = cv2.add(edges, edges)
    blocks = cv2.add(edges, edges)
    while blocks.shape[1] >= 2 * cols and blocks.shape[0] >= 2 * rows:
        half_w, half_h = blocks.shape[1] // 2, blocks.shape[0] // 2
        blocks = cv2.resize(blocks[: 2 * half_h, : 2 * half_w], (half_w, half_h),
                            interpolation=cv2.INTER_AREA)
    if blocks.shape != (rows, cols):
        blocks = cv2.resize(blocks, (cols, rows), interpolation=cv2.INTER_AREA)
    means = blocks.astype(np.float32) * np.float32(1 / EDGE_SCALE)
    return np.asarray(cv2.blur(means, (3, 3)), dtype=np.float32)


@dataclass(frozen=True)
class Activity:
    """A large frame's block map and the level at which a block holds something barcode-like."""

    blocks: npt.NDArray[np.float32]
    background: float
    rise: float
    shape: tuple[int, int]

    def region(self) -> Box | None:
        """The (x0, y0, x1, y1) box around the active blocks, grown by REGION_MARGIN (the
        whole frame past REGION_MAX_SHARE); None when nothing is barcode-like."""
        h, w = self.shape
        if self.background >= BUSY_BACKGROUND:
            return 0, 0, w, h
        if float(self.blocks.max()) < self.background + self.rise:
            return None
        # the region takes in the fainter blocks around too: wide bars are sparse in edges
        ys, xs = np.nonzero(self.blocks >= self.background + self.rise / 2)
        x0 = max(0, int(xs.min()) * BLOCK - REGION_MARGIN)
        y0 = max(0, int(ys.min()) * BLOCK - REGION_MARGIN)
        x1 = min(w, (int(xs.max()) + 1) * BLOCK + REGION_MARGIN)
        y1 = min(h, (int(ys.max()) + 1) * BLOCK + REGION_MARGIN)
        if (x1 - x0) * (y1 - y0) > REGION_MAX_SHARE * w * h:
            return 0, 0, w, h
        return x0, y0, x1, y1

    def beyond(self, quads: list[npt.NDArray[np.float32]]) -> bool:
        """Whether a block off the ``quads`` (image pixels, each grown by
        OUTLINE_BLOCKS for its outline) is active: something barcode-like off them."""
        if self.background >= BUSY_BACKGROUND:
            return True
        active = np.asarray(self.blocks >= self.background + self.rise, dtype=np.uint8)
        covered = np.zeros_like(active)
        for quad in quads:
            cv2.fillConvexPoly(covered, np.round(quad / BLOCK).astype(np.int32), 1)
        side = 2 * OUTLINE_BLOCKS + 1
        grown = cv2.dilate(covered, np.ones((side, side), np.uint8))
        return bool((active > grown).any())


def percentile(values: npt.NDArray[np.float32], percent: float) -> float:
    """``np.percentile(values, percent)`` by a partial sort: a tenth of its cost here."""
    flat = values.ravel()
    rank = (flat.size - 1) * percent / 100.0
    below = int(rank)
    above = min(below + 1, flat.size - 1)
    part = np.partition(flat, (below, above))
    return float(part[below]) + (rank - below) * float(part[above] - part[below])


def frame_activity(gray: GrayImage) -> Activity | None:
    """The activity of a large frame; None for a frame no longer than GATE_MIN_SIDE (or too
    thin for blocks), which is active as a whole."""
    h, w = gray.shape
    if max(h, w) <= GATE_MIN_SIDE or min(h, w) < 4 * BLOCK:
        return None
    blocks = block_activity(gray)
    background = percentile(blocks, 10.0)
    low, high = ACTIVE_RISE
    return Activity(blocks, background, min(high, max(low, background / 2)), (h, w))


def active_region(gray: GrayImage) -> Box | None:
    """The (x0, y0, x1, y1) box around ``gray``'s active blocks, grown by REGION_MARGIN (the
    whole frame past REGION_MAX_SHARE); None when nothing in it is barcode-like. A frame
    no longer than GATE_MIN_SIDE is active as a whole."""
    activity = frame_activity(gray)
    if activity is None:
        h, w = gray.shape
        return 0, 0, w, h
    return activity.region()


#: Bars are found in a squared-up label on blocks this big (px).
BAR_BLOCK = 8
#: A block holds bars when its gradient along one crop axis is this many times the other's
#: (label text and noise are about as busy both ways) ...
BAR_ANISOTROPY = 3.0
#: ... and the stronger one averages at least this much per pixel (0.15-contrast bars: ~10).
BAR_EDGE = 8.0
#: A run of bar blocks this large (blocks), at least MIN_CODE_BLOCKS along the code and 3
#: across, filling half its box, is a code, not a stray stroke of text or a printed rule.
MIN_BAR_BLOCKS = 12
MIN_CODE_BLOCKS = 6
#: Two runs along the same axis sharing this much of the shorter one's bar height are
#: pieces of one code.
JOIN_SHARE = 0.5
#: A run's quadrilateral is at least this many times longer than its bars are high
#: (above :data:`~drivers.decoders.crops.ELONGATED`: its crop is read upright).
RUN_ELONGATION = 1.6


@dataclass(frozen=True)
class BarRun:
    """A code-shaped run of bar blocks in a squared-up label: its (x0, y0, x1, y1) box in
    crop pixels, and the crop axis the code runs along (1: along the rows, bars upright)."""

    box: Box
    along: int

    def quad(self) -> npt.NDArray[np.float32]:
        """The box as a 4x2 float32 quadrilateral, corners clockwise from the top left,
        grown by a block at each end of the code (the end blocks, part bars, part quiet
        zone, may not count as bars), and lengthened along it to RUN_ELONGATION times its
        bars' height where still shorter (a code's piece): a box is straightened along its
        long side."""
        x0, y0, x1, y1 = (float(v) for v in self.box)
        if self.along:
            grow = BAR_BLOCK + max(0.0, RUN_ELONGATION * (y1 - y0) - (x1 - x0)
                                   - 2 * BAR_BLOCK) / 2
            x0, x1 = x0 - grow, x1 + grow
        else:
            grow = BAR_BLOCK + max(0.0, RUN_ELONGATION * (x1 - x0) - (y1 - y0)
                                   - 2 * BAR_BLOCK) / 2
            y0, y1 = y0 - grow, y1 + grow
        return np.array(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), dtype=np.float32)

    def transposed(self) -> BarRun:
        """The run in the transposed crop."""
        x0, y0, x1, y1 = self.box
        return BarRun((y0, x0, y1, x1), 1 - self.along)

    def holds(self, x: float, y: float) -> bool:
        """Whether (x, y) lies on the run or within a block of it."""
        x0, y0, x1, y1 = self.box
        return x0 - BAR_BLOCK <= x < x1 + BAR_BLOCK and y0 - BAR_BLOCK <= y < y1 + BAR_BLOCK


def bar_runs(crop: GrayImage) -> list[BarRun]:
    """The code-shaped runs of bars in the squared-up label ``crop``, largest first.

    A label's codes lie along its axes, so a block whose gradient along one axis far
    outweighs the other's holds bars; label text, noise and a smear do not. A run is a
    filled run of such blocks, long along the code, not a stray stroke or a printed rule.
    """
    h, w = crop.shape
    rows, cols = (h - 1) // BAR_BLOCK, (w - 1) // BAR_BLOCK
    if rows < 1 or cols < 1:
        return []
    height, width = rows * BAR_BLOCK, cols * BAR_BLOCK
    dx = cv2.absdiff(crop[:height, 1 : width + 1], crop[:height, :width])
    dy = cv2.absdiff(crop[1 : height + 1, :width], crop[:height, :width])
    gx = cv2.resize(dx, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    gy = cv2.resize(dy, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    strong, weak = np.maximum(gx, gy), np.minimum(gx, gy)
    bar_like = (strong >= BAR_EDGE) & (strong >= BAR_ANISOTROPY * weak)
    runs = (_joined(_runs(bar_like & (gx > gy), along=1))
            + _joined(_runs(bar_like & (gx <= gy), along=0)))
    runs.sort(key=lambda r: -(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
    return runs


def _runs(bars: npt.NDArray[np.bool_], along: int) -> list[BarRun]:
    """The code-shaped runs of ``bars`` blocks, the code running along axis ``along``."""
    # a block inside one wide bar or space is flat: close such gaps along the code only
    kernel = np.ones((1, 3) if along else (3, 1), np.uint8)
    closed = cv2.morphologyEx(bars.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    count, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=4)
    runs = []
    for x, y, width, height, area in stats[1:count].tolist():
        length, bar_height = (width, height) if along else (height, width)
        # the label's outline and rules are bar-like too, but thin or short, not filled
        if (area >= MIN_BAR_BLOCKS and length >= MIN_CODE_BLOCKS and bar_height >= 3
                and 2 * area >= width * height):
            box = (x * BAR_BLOCK, y * BAR_BLOCK, (x + width) * BAR_BLOCK + 1,
                   (y + height) * BAR_BLOCK + 1)
            runs.append(BarRun(box, along))
    return runs


def _joined(runs: list[BarRun]) -> list[BarRun]:
    """Runs in line with each other (the same bars' height) joined into one: the pieces of
    one code a smear or a tear cut apart, which read only together."""
    joined = list(runs)
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(joined):
            for j in range(i + 1, len(joined)):
                b = joined[j]
                if _in_line(a, b):
                    joined[i] = BarRun(_union(a.box, b.box), a.along)
                    del joined[j]
                    merged = True
                    break
            if merged:
                break
    return joined


def _in_line(a: BarRun, b: BarRun) -> bool:
    """Whether two runs along the same axis share most of their bars' height."""
    start = 1 if a.along else 0  # the bars' height: y for a code along the rows, else x
    a0, a1 = a.box[start], a.box[start + 2]
    b0, b1 = b.box[start], b.box[start + 2]
    shared = min(a1, b1) - max(a0, b0)
    return shared >= JOIN_SHARE * min(a1 - a0, b1 - b0)


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
