"""Truth frames: a camera mode for very long shifts that neither renders nor decodes labels.

A truth frame is a blank frame that carries, in its top rows, a mark at the centre column of
every label in view: the parcel's ``sim_id`` + 1 in rows 0-2 (three bytes, low first) and
the label's index + 1 in row 3. :class:`TruthDecoder` reads those marks back from any
column crop of the frame, as a real decoder reads the labels' pixels, and reports each
label's code (and its QR code) at the label's centre column. What it reads is the
emulator's truth, not what a camera would see: every label in view reads, except a
``destroyed`` one, so a shift of truth frames measures the controller's and the line's own
cost per parcel (tracking, decisions, the journal, memory), not the cost of the pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from controller.vision import GrayImage, Symbol
from sim_hardware.render import FrameRenderer, ParcelTop
from sim_hardware.scenario import SimParcel

__all__ = ["MARK_ROWS", "TruthDecoder", "truth_frame"]

MARK_ROWS = 4
_ID_LIMIT = 1 << 24


def truth_frame(renderer: FrameRenderer, view_x0_mm: float,
                parcels: Iterable[tuple[int, ParcelTop]]) -> GrayImage:
    """A blank frame marked where each (sim_id, top)'s labels' centres are in view."""
    frame = np.zeros((renderer.height_px, renderer.width_px), dtype=np.uint8)
    for sim_id, top in parcels:
        if not 0 <= sim_id < _ID_LIMIT - 1:
            raise ValueError(f"sim_id {sim_id} does not fit a truth frame's mark")
        key = sim_id + 1
        for index, label in enumerate(top.labels):
            col, row = renderer.label_centre_px(view_x0_mm, top, label)
            c = round(col)
            if 0 <= c < renderer.width_px and 0 <= row < renderer.height_px:
                frame[:MARK_ROWS, c] = (key & 0xFF, (key >> 8) & 0xFF, key >> 16, index + 1)
    return frame


class TruthDecoder:
    """Reads a truth frame's marks: every label in the crop but a destroyed one."""

    name = "truth"

    def __init__(self, parcels: Sequence[SimParcel] | Mapping[int, SimParcel]) -> None:
        # A line's live parcels (by sim_id) are all it needs: a settled one shows no labels.
        self._parcels = parcels if isinstance(parcels, Mapping) else {p.sim_id: p for p in parcels}

    def decode(self, image: GrayImage) -> list[Symbol]:
        if image.shape[0] < MARK_ROWS:
            return []
        marks = image[:MARK_ROWS].astype(np.int64)
        y = image.shape[0] / 2
        symbols = []
        for col in np.flatnonzero(marks[3]):
            key = int(marks[0, col] | (marks[1, col] << 8) | (marks[2, col] << 16))
            parcel = self._parcels.get(key - 1)
            index = int(marks[3, col]) - 1
            if parcel is None or index >= len(parcel.labels):
                continue
            spec = parcel.labels[index].spec
            if spec.damage == "destroyed":
                continue
            symbols.append(Symbol(spec.code, spec.symbology, float(col), y))
            if spec.qr_text is not None:
                symbols.append(Symbol(spec.qr_text, "qrcode", float(col), y))
        return symbols
