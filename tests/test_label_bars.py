"""The bars in a squared-up label: found as runs, the pieces of a smeared code joined, a
code along the label's short side read where it lies; and the histogram shortcuts the
label search and the contrast stretch take (Otsu's threshold, grey-level percentiles)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from drivers.decoders.activity import BarRun, bar_runs
from drivers.decoders.located import LocatedZxingDecoder
from drivers.decoders.locator import (
    grey_percentiles,
    label_candidates,
    otsu,
    straighten,
    stretch_contrast,
)
from drivers.decoders.synth import cardboard, paste, render

from .test_decode_budget import unreadable_frames
from .test_decoders import CENTRE_TOLERANCE

TEXT = "1Z999AA10123456784"


def _label_crops(kind: str, count: int) -> list[list[np.ndarray]]:
    crops = []
    for frame in unreadable_frames(kind, count, seed=31):
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        crops.append([stretch_contrast(straighten(gray, q)[0])
                      for q in label_candidates(gray)[0]])
    return crops


@pytest.mark.parametrize("kind", ["destroyed", "several"])
def test_a_code_a_smear_cut_in_two_is_one_run(kind: str) -> None:
    """Each destroyed label holds one code, smeared across its full bar height: its
    pieces are one run, along the rows."""
    for labels in _label_crops(kind, 4):
        assert labels
        for crop in labels:
            runs = bar_runs(crop)
            assert len(runs) == 1, [r.box for r in runs]
            assert runs[0].along == 1


def test_pieces_in_line_join_and_codes_apart_do_not() -> None:
    """Bars either side of a smear are one run; a second code below is another."""
    crop = np.full((260, 420), 235, np.uint8)
    bars = np.tile(np.repeat(np.array([30, 235], np.uint8), 2), 30)[:120]
    crop[40:120, 40:160] = bars
    crop[40:120, 250:370] = bars
    crop[36:124, 160:250] = 20  # the smear, past the bars' height
    crop[170:230, 100:300] = np.tile(bars, 2)[:200]
    runs = sorted(bar_runs(crop), key=lambda r: r.box[1])
    assert [r.along for r in runs] == [1, 1]
    top, bottom = runs
    assert top.box[0] <= 48
    assert top.box[2] >= 362
    assert bottom.box[1] >= 160
    assert bottom.box[3] <= 240


def test_a_label_turned_a_quarter_has_its_runs_across() -> None:
    crop = _label_crops("destroyed", 1)[0][0]
    (run,) = bar_runs(crop)
    (turned,) = bar_runs(np.ascontiguousarray(crop.T))
    assert turned.along == 0
    assert turned == run.transposed()
    assert turned.transposed() == run


def test_a_run_quad_is_long_along_its_code() -> None:
    """A code's piece, taller than long, is still straightened along the code."""
    for along, box in ((1, (100, 50, 140, 150)), (0, (50, 100, 150, 140))):
        quad = BarRun(box, along).quad()
        width = float(np.ptp(quad[:, 0]))
        height = float(np.ptp(quad[:, 1]))
        length, bars = (width, height) if along else (height, width)
        assert length > 1.5 * bars


@pytest.mark.parametrize("angle", [0.0, 35.0, 120.0, 250.0])
def test_a_code_along_a_labels_short_side_reads_where_it_lies(angle: float) -> None:
    """A portrait label with its code across: squared up along its long side, its bars lie
    along the rows, and the label is turned before its upright read; the read maps back to
    the code's place in the frame."""
    code = render(TEXT, "code128", module_px=2, bar_height=80)
    h, w = code.shape
    label = np.full((round(1.6 * w), w), 255, np.uint8)
    top = round(0.15 * label.shape[0])
    label[top:top + h] = code
    rng = np.random.default_rng(int(angle))
    cx, cy = 900.0, 540.0
    frame = paste(cardboard(1080, 1920, rng), label, cx, cy, angle, rng=rng)
    symbols = LocatedZxingDecoder().decode(frame)
    assert [s.text for s in symbols] == [TEXT]
    t = math.radians(angle)
    dx, dy = 0.0, top + h / 2 - label.shape[0] / 2
    x = cx + dx * math.cos(t) + dy * math.sin(t)
    y = cy - dx * math.sin(t) + dy * math.cos(t)
    (s,) = symbols
    assert math.hypot(s.x - x, s.y - y) <= 3 * CENTRE_TOLERANCE, (s, x, y)


def test_otsu_on_a_histogram_is_opencvs() -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (40, 50), dtype=np.uint8) for _ in range(20)]
    images += [(rng.random((30, 30)) * rng.uniform(5, 120) + rng.uniform(0, 120)).astype(np.uint8)
               for _ in range(20)]
    images += [frame for frames in _label_crops("several", 2) for frame in frames]
    for image in images:
        expected, _ = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
        assert otsu(hist) == int(expected)
    assert otsu(np.zeros(256)) == 0


def test_grey_percentiles_are_numpys() -> None:
    rng = np.random.default_rng(6)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        image = rng.integers(0, int(rng.integers(1, 256)), (h, 2 * w), dtype=np.uint8)[:, ::2]
        percents = (1.0, 10.0, 50.0, 99.0)
        assert grey_percentiles(image, percents) == pytest.approx(
            list(np.percentile(image, percents)))
