"""The located decoder never does much more work than plain whole-image zxing-cpp (issue 15).

Timing is for bench/decode.py; here the work is counted: every image the located pipeline
hands zxing-cpp or the locator, on the emulator's frames of parcels that pass the activity
check yet hold no readable code (destroyed labels, print, straps). One plain pass over the
frame is the yardstick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from controller.config import load_config
from controller.vision import GrayImage
from drivers.decoders import budget
from drivers.decoders._common import Found
from drivers.decoders.activity import active_region
from drivers.decoders.finders import Finder
from drivers.decoders.located import LocatedZxingDecoder
from drivers.decoders.locator import MATRIX_MAX_SHARE, Quad, label_candidates
from drivers.decoders.synth import render
from sim_hardware.labels import LabelSpec
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel

from .conftest import EXAMPLE_CONFIG

FORMATS = ("code128", "qrcode")
KINDS = ("destroyed", "several", "glare", "print", "busy")
#: kinds whose frames mostly hold nothing label-like: the frame-wide locator pass is left
#: out on those
LABEL_LESS = ("print", "busy")
FRAMES = 6
#: the located pipeline's zxing-cpp passes, all together, against one plain pass
ZXING_SHARE = 1.2
#: frames without a label: the survey (activity map, label search: a third of a pass,
#: as measured) plus one pass
LABEL_LESS_SHARE = 1.35
#: frames active all over afford no locator pass but around labels: none over more than
#: this share of the frame (past it, the labels' surroundings are not searched either)
WHOLE_REGION_LOCATOR_SHARE = MATRIX_MAX_SHARE


def unreadable_frames(kind: str, count: int, seed: int) -> list[npt.NDArray[np.uint8]]:
    """The example line's frames of a parcel that passes the activity check but holds no
    readable code: ``destroyed`` (one smeared label), ``several`` (three destroyed labels),
    ``glare`` (a destroyed label under a lamp's reflection), ``print`` (cardboard printed
    with text and rules, no code), ``busy`` (many non-code edges: tape, straps, scribbles)."""
    cam = load_config(EXAMPLE_CONFIG).cameras[0]
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        glare = 220.0 if kind == "glare" else 0.0
        renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=seed + i, glare_px=glare)
        n_labels = {"destroyed": 1, "several": 3, "glare": 1}.get(kind, 0)
        labels = tuple(
            PlacedLabel(LabelSpec(code=f"1Z{seed + i:06d}{k}", damage="destroyed",
                                  seed=seed + 7 * i + k),
                        u_mm=float(rng.uniform(-120, 120)) if n_labels == 1 else -150.0 + 150 * k,
                        v_mm=float(rng.uniform(-40, 40)), angle_deg=float(rng.uniform(0, 360)))
            for k in range(n_labels))
        parcel = ParcelTop(lead_x_mm=cam.position_mm + float(rng.uniform(150, 300)),
                           length_mm=float(rng.uniform(500, 650)),
                           width_mm=float(rng.uniform(300, 380)), y_mm=0.0,
                           shade=int(rng.integers(125, 185)), labels=labels)
        frame = np.ascontiguousarray(renderer.render(cam.view_start_mm, [parcel]))
        h, w = frame.shape[:2]
        if kind == "print":
            for _ in range(25):
                org = (int(rng.uniform(0.2, 0.7) * w), int(rng.uniform(0.2, 0.8) * h))
                cv2.putText(frame, "FRAGILE THIS SIDE UP 12345", org, cv2.FONT_HERSHEY_SIMPLEX,
                            float(rng.uniform(0.6, 1.4)), 40, 2)
            for _ in range(8):
                y = int(rng.uniform(0.2, 0.8) * h)
                cv2.line(frame, (int(0.2 * w), y), (int(0.8 * w), y), 40, 3)
        elif kind == "busy":
            for _ in range(300):
                p0 = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
                p1 = (p0[0] + int(rng.normal(0, 80)), p0[1] + int(rng.normal(0, 80)))
                cv2.line(frame, p0, p1, int(rng.integers(0, 255)), int(rng.integers(1, 4)))
        frames.append(frame)
    return frames


@dataclass
class Work:
    """Pixels handed to zxing-cpp (times the symbology families asked for) and the locator."""

    zxing_px: int = 0
    locator_px: int = 0
    locator_calls: list[tuple[int, ...]] = field(default_factory=list)
    #: the image each located part belongs to (its scale), None for a whole image
    locator_frames: list[tuple[int, ...] | None] = field(default_factory=list)
    #: the zxing-cpp passes' estimated cost, call by call
    zxing_ms: float = 0.0

    def estimated_ms(self) -> float:
        return (self.zxing_ms
                + sum(budget.locator_ms(s, f)
                      for s, f in zip(self.locator_calls, self.locator_frames, strict=True)))


class CountingFinder:
    """A finder that tallies what it is handed, then reads as the real one does."""

    def __init__(self, real: Finder, work: Work) -> None:
        self.real = real
        self.formats = real.formats
        self.work = work

    def find(self, gray: GrayImage) -> list[Found]:
        self.work.zxing_px += gray.size * budget.families(self.formats)
        self.work.zxing_ms += budget.zxing_ms(gray.size, self.formats)
        return self.real.find(gray)


def counted_decoder(work: Work) -> LocatedZxingDecoder:
    """The line's decoder with every finder and the locator counted."""
    decoder = LocatedZxingDecoder(FORMATS)
    decoder.inner = CountingFinder(decoder.inner, work)
    assert decoder.matrix is not None
    assert decoder.whole is not None
    decoder.matrix = CountingFinder(decoder.matrix, work)
    decoder.whole = CountingFinder(decoder.whole, work)
    decoder.small_matrix = CountingFinder(decoder.small_matrix or decoder.matrix, work)
    assert decoder.upright is not None
    decoder.upright = CountingFinder(decoder.upright, work)
    locate = decoder.locate

    def counted_locate(gray: GrayImage, frame: tuple[int, ...] | None = None) -> list[Quad]:
        work.locator_px += gray.size
        work.locator_calls.append(gray.shape)
        work.locator_frames.append(frame)
        return locate(gray, frame)

    decoder.locate = counted_locate  # type: ignore[method-assign]
    return decoder


@pytest.fixture(scope="module")
def frames() -> dict[str, list[npt.NDArray[np.uint8]]]:
    return {kind: unreadable_frames(kind, FRAMES, seed=31) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_zxing_is_handed_at_most_about_one_plain_pass(
        kind: str, frames: dict[str, list[npt.NDArray[np.uint8]]]) -> None:
    for i, frame in enumerate(frames[kind]):
        work = Work()
        assert counted_decoder(work).decode(frame) == []
        plain = frame.shape[0] * frame.shape[1] * budget.families(FORMATS)
        assert work.zxing_px <= ZXING_SHARE * plain, (kind, i, work.zxing_px / plain)


@pytest.mark.parametrize("kind", LABEL_LESS)
def test_label_less_frames_cost_about_one_plain_pass(
        kind: str, frames: dict[str, list[npt.NDArray[np.uint8]]]) -> None:
    """No label, nothing but print or straps: no frame-wide locator pass on top of the
    whole-region pass that reads what plain zxing-cpp would."""
    label_less = 0
    for i, frame in enumerate(frames[kind]):
        gray = np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3
                          else frame, dtype=np.uint8)
        labels, _, torn = label_candidates(gray)
        if labels or torn:  # a bright region may be a label: it is searched
            continue
        label_less += 1
        work = Work()
        assert counted_decoder(work).decode(frame) == []
        h, w = frame.shape[:2]
        spent = work.estimated_ms() + budget.survey_ms(h * w)
        plain = budget.zxing_ms(h * w, FORMATS)
        assert spent <= LABEL_LESS_SHARE * plain, (kind, i, spent / plain, work)
    assert label_less >= FRAMES - 1


def test_the_cost_estimates_rank_a_frame_wide_locator_pass_above_its_budget() -> None:
    """The premise of the budget: on a 1080p frame the locator alone costs about a whole
    plain pass, so both together are twice what plain zxing-cpp spends."""
    px = 1920 * 1080
    whole = budget.locator_ms((1080, 1920)) + budget.survey_ms(px)
    assert whole > 0.9 * budget.zxing_ms(px, FORMATS)
    assert budget.locator_ms((300, 380)) < 0.2 * budget.zxing_ms(px, FORMATS)


def _gray(frame: npt.NDArray[np.uint8]) -> GrayImage:
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame,
                      dtype=np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_a_frame_active_all_over_gets_no_frame_wide_locator_pass(
        kind: str, frames: dict[str, list[npt.NDArray[np.uint8]]]) -> None:
    """Where the region's pass is the whole frame, the budget has nothing left for the
    locator but around the labels: not over the region, nor around labels nearly as large."""
    for i, frame in enumerate(frames[kind]):
        gray = _gray(frame)
        h, w = gray.shape
        if active_region(gray) != (0, 0, w, h):
            continue
        work = Work()
        assert counted_decoder(work).decode(frame) == []
        largest = max((int(np.prod(s)) for s in work.locator_calls), default=0)
        assert largest <= WHOLE_REGION_LOCATOR_SHARE * h * w, (kind, i, largest / (h * w))


class CallsFinder:
    """A finder that keeps the shape of every image it is handed."""

    def __init__(self, real: Finder) -> None:
        self.real = real
        self.formats = real.formats
        self.shapes: list[tuple[int, ...]] = []

    def find(self, gray: GrayImage) -> list[Found]:
        self.shapes.append(gray.shape)
        return self.real.find(gray)


def _whole_counted(decoder: LocatedZxingDecoder) -> CallsFinder:
    assert decoder.whole is not None
    whole = CallsFinder(decoder.whole)
    decoder.whole = whole
    return whole


@pytest.mark.parametrize("kind", ["destroyed", "several"])
def test_labels_that_stood_for_the_locator_are_not_read_again_by_a_whole_pass(
        kind: str, frames: dict[str, list[npt.NDArray[np.uint8]]]) -> None:
    """Clean labels whose codes the locator found in their crops, and that read from neither
    the crops nor the frame's pixels, with nothing barcode-like off them: no linear pass
    over the region follows (plain zxing-cpp reads nothing there either)."""
    for i, frame in enumerate(frames[kind]):
        decoder = LocatedZxingDecoder(FORMATS)
        whole = _whole_counted(decoder)
        assert decoder.decode(frame) == []
        assert whole.shapes == [], (kind, i)


def test_a_2d_code_on_a_label_whose_linear_code_is_destroyed_still_reads(
        frames: dict[str, list[npt.NDArray[np.uint8]]]) -> None:
    """Where the labels stood for the search, the 2-D codes are still looked for beside
    them: a QR code printed over a destroyed label's middle reads, on most frames without
    a whole pass (where the QR hides the smeared bars from the locator, one follows)."""
    shortcut = 0
    for i, frame in enumerate(frames["destroyed"]):
        gray = _gray(frame).copy()
        labels, _, _ = label_candidates(gray)
        (cx, cy), _, _ = cv2.minAreaRect(labels[0].reshape(-1, 1, 2))
        qr = render(f"QR-{i:04d}", "qrcode", module_px=4)
        h, w = qr.shape
        y0, x0 = round(cy - h / 2), round(cx - w / 2)
        gray[y0:y0 + h, x0:x0 + w] = np.where(qr < 128, 30, 235)
        decoder = LocatedZxingDecoder(FORMATS)
        whole = _whole_counted(decoder)
        assert [(s.text, s.symbology) for s in decoder.decode(gray)] == [
            (f"QR-{i:04d}", "qrcode")], i
        shortcut += not whole.shapes
    assert shortcut >= FRAMES // 2
