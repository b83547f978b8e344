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
    blocks = cv2.resize(edges, (cols, rows), interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.blur(blocks.astype(np.float32), (3, 3)), dtype=np.float32)


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


def frame_activity(gray: GrayImage) -> Activity | None:
    """The activity of a large frame; None for a frame no longer than GATE_MIN_SIDE (or too
    thin for blocks), which is active as a whole."""
    h, w = gray.shape
    if max(h, w) <= GATE_MIN_SIDE or min(h, w) < 4 * BLOCK:
        return None
    blocks = block_activity(gray)
    background = float(np.percentile(blocks, 10))
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


def unread_bars(crop: GrayImage, read_at: list[tuple[float, float]]) -> bool:
    """Whether the squared-up label ``crop`` holds bars that none of the reads centred at
    ``read_at`` (crop pixels) lies on: a code the whole-label read missed."""
    h, w = crop.shape
    rows, cols = (h - 1) // BAR_BLOCK, (w - 1) // BAR_BLOCK
    if rows < 1 or cols < 1:
        return False
    height, width = rows * BAR_BLOCK, cols * BAR_BLOCK
    dx = cv2.absdiff(crop[:height, 1 : width + 1], crop[:height, :width])
    dy = cv2.absdiff(crop[1 : height + 1, :width], crop[:height, :width])
    gx = cv2.resize(dx, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    gy = cv2.resize(dy, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    strong, weak = np.maximum(gx, gy), np.minimum(gx, gy)
    bar_like = (strong >= BAR_EDGE) & (strong >= BAR_ANISOTROPY * weak)
    return (_unread(bar_like & (gx > gy), read_at, along=1)
            or _unread(bar_like & (gx <= gy), read_at, along=0))


def _unread(bars: npt.NDArray[np.bool_], read_at: list[tuple[float, float]],
            along: int) -> bool:
    """Whether a code-shaped run of ``bars`` blocks (the code running along axis
    ``along``: 1 for columns) holds none of the reads."""
    # a block inside one wide bar or space is flat: close such gaps along the code only
    kernel = np.ones((1, 3) if along else (3, 1), np.uint8)
    closed = cv2.morphologyEx(bars.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=4)
    width, height, area = (stats[:, k] for k in (cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT,
                                                 cv2.CC_STAT_AREA))
    length, bar_height = (width, height) if along else (height, width)
    # the label's outline and rules are bar-like too, but thin or short, not a filled run
    unread = {i for i in range(1, count) if area[i] >= MIN_BAR_BLOCKS
              and length[i] >= MIN_CODE_BLOCKS and bar_height[i] >= 3
              and 2 * area[i] >= width[i] * height[i]}
    for x, y in read_at:
        c, r = int(x) // BAR_BLOCK, int(y) // BAR_BLOCK
        near = labels[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2]
        unread -= {int(v) for v in np.unique(near)}
    return bool(unread)
