"""Grayscale camera frames of a conveyor belt carrying labelled parcels.

Line coordinates are millimetres: x along the belt (downstream), y across it
(0 = belt centre). Frame columns grow with x, rows with y. Pixel (col, row) is
centred at x = view_x0 + (col + 0.5) * mm_per_px, y = -height/2 + (row + 0.5) * mm_per_px,
and pixel coordinates returned here put integer values at pixel centres.

Angles (label angle_deg, parcel skew_deg) are counter-clockwise as seen in the
image with rows growing downward: at 90 degrees a label's text runs bottom-to-top
and its top edge faces the low columns (upstream). In line coordinates a label's
reading direction is (cos a, -sin a) and its downward direction (sin a, cos a).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
import numpy.typing as npt

from controller.vision import GrayImage
from sim_hardware.labels import LabelSpec, label_alpha, render_label

__all__ = ["FrameRenderer", "ParcelTop", "PlacedLabel"]

BELT_GRAY = 60
NOISE_PAD = 128
#: Camera height above a label, for the perspective of a tilted label.
CAMERA_DISTANCE_MM = 1200.0
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PlacedLabel:
    """A label stuck on a parcel's top face: centre offset (mm) from the face centre, angle.

    ``tilt_deg`` tilts the label's plane out of the belt plane about an axis through its
    centre (a sloping or bulging face), seen in perspective; ``tilt_axis_deg`` is that
    axis from the label's reading direction: 90 runs along the bars and narrows them.
    """

    spec: LabelSpec
    u_mm: float
    v_mm: float
    angle_deg: float
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 90.0


@dataclass(frozen=True)
class ParcelTop:
    """A parcel's top face on the belt: leading edge, size, lateral centre, cardboard gray."""

    lead_x_mm: float
    length_mm: float
    width_mm: float
    y_mm: float
    shade: int
    labels: tuple[PlacedLabel, ...] = ()
    skew_deg: float = 0.0


def _axes(angle_deg: float) -> tuple[float, float, float, float]:
    """(ux, uy, dx, dy): an object's rightward and downward unit vectors in line coordinates."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return c, -s, s, c


def _tilted(a_mm: float, b_mm: float, label: PlacedLabel) -> tuple[float, float]:
    """A label point (mm from its centre: along, down) seen from above once tilted."""
    t = math.radians(label.tilt_deg)
    phi = math.radians(label.tilt_axis_deg)
    ea, eb = math.cos(phi), math.sin(phi)
    on_axis = a_mm * ea + b_mm * eb
    off_axis = -a_mm * eb + b_mm * ea
    scale = CAMERA_DISTANCE_MM / (CAMERA_DISTANCE_MM - off_axis * math.sin(t))
    off_axis *= math.cos(t)
    return (scale * (on_axis * ea - off_axis * eb), scale * (on_axis * eb + off_axis * ea))


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, smooth: float
) -> npt.NDArray[np.float32]:
    """Smoothed Gaussian noise scaled to roughly the given standard deviation."""
    t = rng.standard_normal(shape).astype(np.float32)
    if smooth > 0:
        t = np.asarray(cv2.GaussianBlur(t, (0, 0), smooth), dtype=np.float32)
        t /= max(float(t.std()), 1e-6)
    return t * sigma


Tiles = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8],
              npt.NDArray[np.uint8]]


@functools.lru_cache(maxsize=8)
def _tiles(seed: int, width_px: int, height_px: int, noise_sigma: float) -> Tiles:
    """Belt, cardboard and noise (+, -) tiles: the same for the same arguments, so a renderer
    reuses those of an earlier one (read-only: they cost 0.4 s to draw at 1080p)."""
    rng = np.random.default_rng((seed, 1))
    h, w = height_px, width_px
    belt = BELT_GRAY + _texture(rng, (h, w), 3.0, 1.5)
    belt += 2.0 * np.sin(np.arange(h, dtype=np.float32) * 0.7)[:, None]
    card = _texture(rng, (h, 2 * w), 4.0, 6.0) + _texture(rng, (h, 2 * w), 2.5, 0.7)
    noise = np.rint(_texture(rng, (h + NOISE_PAD, w + NOISE_PAD), noise_sigma, 0.0))
    tiles = (np.clip(np.rint(belt), 0, 255).astype(np.uint8),
             np.clip(np.rint(128 + card), 0, 255).astype(np.uint8),
             np.clip(noise, 0, 255).astype(np.uint8),
             np.clip(-noise, 0, 255).astype(np.uint8))
    for tile in tiles:
        tile.flags.writeable = False
    return tiles


class FrameRenderer:
    """Renders one camera's frames; deterministic for a given seed and call sequence."""

    def __init__(
        self,
        width_px: int,
        height_px: int,
        mm_per_px: float,
        *,
        seed: int = 0,
        noise_sigma: float = 4.0,
        blur_px: float = 0.0,
        motion_blur_px: float = 0.0,
        glare_px: float = 0.0,
        glare_at: tuple[float, float] | None = None,
    ) -> None:
        """Pre-generate belt, cardboard and noise tiles for a width x height camera.

        ``glare_px`` is the radius of a lamp's reflection that saturates glossy labels
        (cardboard is matte) around ``glare_at`` (col, row; the frame's centre if None),
        fading out over another radius.
        """
        if width_px <= 0 or height_px <= 0 or not mm_per_px > 0:
            raise ValueError("frame size and mm_per_px must be positive")
        self.width_px = width_px
        self.height_px = height_px
        self.mm_per_px = mm_per_px
        self.blur_px = blur_px
        self.motion_blur_px = motion_blur_px
        self.glare_px = glare_px
        self.glare_at = glare_at if glare_at is not None else (width_px / 2, height_px / 2)
        self._rng = np.random.default_rng(seed)
        self._belt, self._card, self._noise_pos, self._noise_neg = _tiles(
            seed, width_px, height_px, noise_sigma)
        self._noise = noise_sigma > 0

    def _to_px(self, view_x0_mm: float, x_mm: float, y_mm: float) -> tuple[float, float]:
        """Line coordinates (mm) to pixel coordinates (col, row), integers at pixel centres."""
        col = (x_mm - view_x0_mm) / self.mm_per_px - 0.5
        row = (y_mm + self.height_px * self.mm_per_px / 2) / self.mm_per_px - 0.5
        return col, row

    def label_centre_px(
        self, view_x0_mm: float, parcel: ParcelTop, label: PlacedLabel
    ) -> tuple[float, float]:
        """Where the label's centre lands in the frame as (col, row); may be outside it."""
        ux, uy, dx, dy = _axes(parcel.skew_deg)
        cx = parcel.lead_x_mm - parcel.length_mm / 2 + label.u_mm * ux + label.v_mm * dx
        cy = parcel.y_mm + label.u_mm * uy + label.v_mm * dy
        return self._to_px(view_x0_mm, cx, cy)

    def _parcel_region(
        self, view_x0_mm: float, parcel: ParcelTop
    ) -> tuple[int, int, int, int, Mask | None] | None:
        """The parcel's clipped pixel box (r0, r1, c0, c1) and, when skewed, its mask in it."""
        cx = parcel.lead_x_mm - parcel.length_mm / 2
        ccol, crow = self._to_px(view_x0_mm, cx, parcel.y_mm)
        half_l = parcel.length_mm / 2 / self.mm_per_px
        half_w = parcel.width_mm / 2 / self.mm_per_px
        if parcel.skew_deg % 360.0 == 0.0:
            c0, c1 = math.ceil(ccol - half_l), math.ceil(ccol + half_l)
            r0, r1 = math.ceil(crow - half_w), math.ceil(crow + half_w)
            poly = None
        else:
            ux, uy, dx, dy = _axes(parcel.skew_deg)
            poly = np.array(
                [
                    (
                        ccol + su * half_l * ux + sd * half_w * dx,
                        crow + su * half_l * uy + sd * half_w * dy,
                    )
                    for su, sd in ((-1, -1), (1, -1), (1, 1), (-1, 1))
                ]
            )
            c0, r0 = np.floor(poly.min(axis=0)).astype(int)
            c1, r1 = np.ceil(poly.max(axis=0)).astype(int) + 1
        c0, c1 = max(int(c0), 0), min(int(c1), self.width_px)
        r0, r1 = max(int(r0), 0), min(int(r1), self.height_px)
        if c0 >= c1 or r0 >= r1:
            return None
        if poly is None:
            return r0, r1, c0, c1, None
        mask = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
        pts = np.round((poly - (c0, r0)) * 16).astype(np.int32)
        cv2.fillConvexPoly(mask, pts, 1, cv2.LINE_8, shift=4)
        return r0, r1, c0, c1, mask.astype(bool)

    def _draw_parcel(self, frame: GrayImage, view_x0_mm: float, parcel: ParcelTop) -> None:
        """Cardboard, then the parcel's labels clipped to its top face."""
        region = self._parcel_region(view_x0_mm, parcel)
        if region is None:
            return
        r0, r1, c0, c1, mask = region
        # The cardboard texture is anchored to the parcel's leading edge so it travels with it.
        lead_col = math.floor((parcel.lead_x_mm - view_x0_mm) / self.mm_per_px)
        t0 = (c0 - lead_col) % self.width_px
        tex = self._card[r0:r1, t0 : t0 + (c1 - c0)]
        lut = np.clip(np.arange(256) + (int(parcel.shade) - 128), 0, 255).astype(np.uint8)
        card = cv2.LUT(tex, lut)
        roi = frame[r0:r1, c0:c1]
        if mask is None:
            roi[...] = card
        else:
            np.copyto(roi, card, where=mask)
        for label in parcel.labels:
            self._draw_label(frame, view_x0_mm, parcel, label, region)

    def _draw_label(
        self,
        frame: GrayImage,
        view_x0_mm: float,
        parcel: ParcelTop,
        label: PlacedLabel,
        region: tuple[int, int, int, int, Mask | None],
    ) -> None:
        """Warp the cached label image into the frame over its bounding box only."""
        img = render_label(label.spec, 1.0 / self.mm_per_px)
        alpha = label_alpha(label.spec, 1.0 / self.mm_per_px)
        hl, wl = img.shape
        ccol, crow = self.label_centre_px(view_x0_mm, parcel, label)
        ux, uy, dx, dy = _axes(label.angle_deg + parcel.skew_deg)
        # Label pixel (j, i) centre -> frame (col, row); one label pixel is one frame pixel.
        m = np.array(
            [
                [ux, dx, ccol - (wl / 2 - 0.5) * ux - (hl / 2 - 0.5) * dx],
                [uy, dy, crow - (wl / 2 - 0.5) * uy - (hl / 2 - 0.5) * dy],
                [0.0, 0.0, 1.0],
            ]
        )
        src = np.array([[-0.5, -0.5], [wl - 0.5, -0.5], [wl - 0.5, hl - 0.5], [-0.5, hl - 0.5]])
        if label.tilt_deg % 360.0 != 0.0:
            ppm = 1.0 / self.mm_per_px
            centre = np.array([(wl - 1) / 2, (hl - 1) / 2])
            seen = np.array(
                [_tilted(float(a), float(b), label) for a, b in (src - centre) / ppm],
                dtype=np.float64,
            ) * ppm + centre
            m = m @ cv2.getPerspectiveTransform(
                src.astype(np.float32), seen.astype(np.float32)
            )
        corners = m @ np.vstack([src.T, np.ones(4)])
        corners = corners[:2] / corners[2]
        pr0, pr1, pc0, pc1, mask = region
        c0 = max(math.floor(corners[0].min()), pc0)
        c1 = min(math.ceil(corners[0].max()) + 1, pc1)
        r0 = max(math.floor(corners[1].min()), pr0)
        r1 = min(math.ceil(corners[1].max()) + 1, pr1)
        if c0 >= c1 or r0 >= r1:
            return
        m = np.array([[1.0, 0.0, -c0], [0.0, 1.0, -r0], [0.0, 0.0, 1.0]]) @ m
        size = (c1 - c0, r1 - r0)
        roi = frame[r0:r1, c0:c1]
        out = roi.copy()
        affine = label.tilt_deg % 360.0 == 0.0

        def warp(src_img: GrayImage, dst: GrayImage | None, border: int) -> GrayImage:
            if affine:
                return np.asarray(cv2.warpAffine(
                    src_img, m[:2], size, dst=dst, flags=cv2.INTER_LINEAR, borderMode=border))
            return np.asarray(cv2.warpPerspective(
                src_img, m, size, dst=dst, flags=cv2.INTER_LINEAR, borderMode=border))

        cover: npt.NDArray[np.float32] | None = None
        if alpha is not None or self.glare_px > 0:
            cover = warp(alpha if alpha is not None else np.full_like(img, 255), None,
                         cv2.BORDER_CONSTANT).astype(np.float32) * (1.0 / 255.0)
        warp(img, out, cv2.BORDER_TRANSPARENT)
        if cover is not None:
            shade = out.astype(np.float32)
            if alpha is not None:
                shade = roi.astype(np.float32) * (1.0 - cover) + shade * cover
            if self.glare_px > 0:
                shade += (255.0 - shade) * cover * self._glare(r0, r1, c0, c1)
            out = np.clip(np.rint(shade), 0, 255).astype(np.uint8)
        if mask is None:
            roi[...] = out
        else:
            np.copyto(roi, out, where=mask[r0 - pr0 : r1 - pr0, c0 - pc0 : c1 - pc0])

    def _glare(self, r0: int, r1: int, c0: int, c1: int) -> npt.NDArray[np.float32]:
        """Glare strength (1 = saturated) over frame rows r0:r1 and columns c0:c1."""
        gc, gr = self.glare_at
        cols = np.arange(c0, c1, dtype=np.float32) - gc
        rows = np.arange(r0, r1, dtype=np.float32) - gr
        dist = np.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
        beyond = np.maximum(dist - self.glare_px, 0.0) / (0.5 * self.glare_px)
        return np.asarray(np.exp(-beyond * beyond), dtype=np.float32)

    def render(self, view_x0_mm: float, parcels: Sequence[ParcelTop]) -> GrayImage:
        """A (height_px, width_px) uint8 frame of the belt and the parcels in view."""
        return self.deferred(view_x0_mm, parcels)()

    def deferred(self, view_x0_mm: float,
                 parcels: Sequence[ParcelTop]) -> Callable[[], GrayImage]:
        """The frame's rendering, to be run later, in any thread.

        What is random in a frame is drawn now, so a seeded stream gives the same frames
        whatever order (or whether) they are rendered in.
        """
        noise_at = (tuple(int(v) for v in self._rng.integers(0, NOISE_PAD + 1, size=2))
                    if self._noise else None)
        return partial(self._render, view_x0_mm, tuple(parcels), noise_at)

    def _render(self, view_x0_mm: float, parcels: Sequence[ParcelTop],
                noise_at: tuple[int, ...] | None) -> GrayImage:
        frame = self._belt.copy()
        for parcel in parcels:
            self._draw_parcel(frame, view_x0_mm, parcel)
        if self.blur_px > 0:
            frame = np.asarray(cv2.GaussianBlur(frame, (0, 0), self.blur_px), dtype=np.uint8)
        if self.motion_blur_px > 0:
            k = max(1, round(self.motion_blur_px))
            frame = np.asarray(cv2.blur(frame, (k, 1)), dtype=np.uint8)
        if noise_at is not None:
            oy, ox = noise_at
            h, w = self.height_px, self.width_px
            cv2.add(frame, self._noise_pos[oy : oy + h, ox : ox + w], dst=frame)
            cv2.subtract(frame, self._noise_neg[oy : oy + h, ox : ox + w], dst=frame)
        return frame
