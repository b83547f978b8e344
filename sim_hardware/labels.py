"""Synthetic shipping labels: a barcode (Code 128 unless told), clutter text, an optional QR code.

The label's code is printed in the symbology its :class:`LabelSpec` names: a linear one as
bars across the label's middle, a 2-D one (DataMatrix, Aztec, ...) as a square there.
:func:`label_symbology` says which one a line's label types print a code in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from controller.vision import GrayImage
from sim_hardware.label_damage import apply_damage, torn_mask

if TYPE_CHECKING:
    from controller.config import LineConfig

__all__ = [
    "DAMAGE_KINDS",
    "LabelSpec",
    "label_alpha",
    "label_size_mm",
    "label_symbology",
    "render_label",
    "validate_code",
]

DAMAGE_KINDS = ("none", "scuffed", "destroyed", "covered", "torn_edge")
PAPER = 235
INK = 25
MAX_CODE_LEN = 48
QUIET_MODULES = 12
QR_QUIET_MODULES = 4
BAR_HEIGHT_MM = 20.0
MARGIN_MM = 4.0
TOP_BLOCK_MM = 27.5
BOTTOM_TEXT_MM = 14.0
QR_BOTTOM_MM = 2.5

#: A 2-D code in place of the bars is at least this big (mm), its modules at least module_mm.
MATRIX_SIDE_MM = 16.0

FloatImage = npt.NDArray[np.float32]

_F = zxingcpp.BarcodeFormat
#: symbologies a label's code can be printed in -> zxing-cpp's format to make it with
LINEAR: dict[str, zxingcpp.BarcodeFormat] = {
    "code128": _F.Code128, "code39": _F.Code39, "code93": _F.Code93, "codabar": _F.Codabar,
    "ean13": _F.EAN13, "ean8": _F.EAN8, "upca": _F.UPCA, "upce": _F.UPCE, "itf": _F.ITF,
}
MATRIX: dict[str, zxingcpp.BarcodeFormat] = {
    "datamatrix": _F.DataMatrix, "aztec": _F.Aztec, "pdf417": _F.PDF417, "qrcode": _F.QRCode,
}

_NAMES = ("J. SMITH", "A. NOWAK", "M. ROSSI", "K. TANAKA", "L. GARCIA", "P. MUELLER", "S. OKAFOR")
_STREETS = ("12 HARBOUR RD", "4711 ELM ST", "88 RUE DU PONT", "7 MILL LANE", "301 KING AVE")
_TOWNS = ("LEEDS LS1 4AP", "LYON 69002", "DALLAS TX 75201", "OSAKA 530-0001", "GDANSK 80-001")


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """What is printed on one label and how damaged it is; sizes in millimetres.

    ``symbology`` is what ``code`` is printed in (see :data:`LINEAR` and :data:`MATRIX`).

    ``contrast`` scales the ink's darkness (1.0 = fresh print, 0.25 = badly faded).
    Damage: ``scuffed`` (scratches, reads), ``destroyed`` (smeared across the whole bar
    height, must never read), ``covered`` (a sticker over the upper ~40 % of the bars),
    ``torn_edge`` (a corner or top strip torn off, reaching at most ~35 % into the bars).
    """

    code: str
    qr_text: str | None = None
    damage: str = "none"
    module_mm: float = 0.75
    width_mm: float = 110.0
    height_mm: float = 75.0
    seed: int = 0
    contrast: float = 1.0
    symbology: str = "code128"


def validate_code(code: str) -> None:
    """Raise ValueError unless code is non-empty ASCII that Code 128 can encode."""
    if not code:
        raise ValueError("barcode text is empty")
    if len(code) > MAX_CODE_LEN:
        raise ValueError(f"barcode text longer than {MAX_CODE_LEN} characters: {code!r}")
    bad = [ch for ch in code if ord(ch) > 127]
    if bad:
        raise ValueError(f"barcode text {code!r} has characters Code 128 cannot encode: {bad!r}")


def _validate(spec: LabelSpec) -> None:
    """Raise ValueError for a spec that cannot be rendered."""
    validate_code(spec.code)
    if spec.symbology not in LINEAR and spec.symbology not in MATRIX:
        known = ", ".join([*LINEAR, *MATRIX])
        raise ValueError(f"symbology must be one of {known}, not {spec.symbology!r}")
    try:
        _modules(spec.code, spec.symbology)
    except ValueError as exc:  # zxing-cpp's refusal: not digits for EAN, wrong length, ...
        raise ValueError(f"{spec.code!r} cannot be printed as {spec.symbology}: {exc}") from None
    if spec.damage not in DAMAGE_KINDS:
        raise ValueError(f"damage must be one of {DAMAGE_KINDS}, not {spec.damage!r}")
    if not spec.module_mm > 0 or not spec.width_mm > 0 or not spec.height_mm > 0:
        raise ValueError("module_mm, width_mm and height_mm must be positive")
    if not 0 < spec.contrast <= 1:
        raise ValueError(f"contrast must be in (0, 1], not {spec.contrast!r}")
    if spec.qr_text is not None and not spec.qr_text:
        raise ValueError("qr_text must be None or non-empty")


@lru_cache(maxsize=256)
def _modules(code: str, symbology: str) -> npt.NDArray[np.float32]:
    """The code's modules, 1.0 = dark, without quiet zones: one row for a linear code."""
    fmt = LINEAR.get(symbology) or MATRIX[symbology]
    img = np.asarray(zxingcpp.create_barcode(code, fmt).to_image(scale=1, add_quiet_zones=False))
    if symbology in LINEAR:
        img = img[img.shape[0] // 2 :][:1]
    return np.asarray(img < 128, dtype=np.float32)


def _matrix_module_mm(spec: LabelSpec) -> float:
    rows, cols = _modules(spec.code, spec.symbology).shape
    return max(spec.module_mm, MATRIX_SIDE_MM / max(int(rows), int(cols)))


def label_symbology(line: LineConfig, code: str) -> str:
    """What a label carrying ``code`` is printed in on this line: the first symbology of the
    first label type whose pattern it matches, other than QR (the label's second code);
    Code 128 when that type names none (takes any) or only QR."""
    for label in line.decision.label_types:
        if re.fullmatch(label.pattern, code):
            named = [s for s in label.symbologies if s != "qrcode"]
            if not label.symbologies or not named:
                return "code128"
            return next((s for s in named if s in LINEAR or s in MATRIX), "code128")
    return "code128"


@dataclass(frozen=True)
class _Layout:
    """Where things go on a label, in millimetres from its top-left corner."""

    width: float
    height: float
    bar_x: float
    bar_y: float
    bar_w: float
    qr_x: float
    qr_y: float
    qr_size: float
    text_right: float


def _layout(spec: LabelSpec) -> _Layout:
    """Centre the barcode on the label, addresses above, QR code bottom-right; grow to fit."""
    m = spec.module_mm
    if spec.symbology in MATRIX:
        cols = _modules(spec.code, spec.symbology).shape[1]
        bar_w = cols * _matrix_module_mm(spec)
    else:
        bar_w = _modules(spec.code, spec.symbology).shape[1] * m
    width = max(spec.width_mm, bar_w + 2 * QUIET_MODULES * m + 2 * MARGIN_MM)
    half = max(TOP_BLOCK_MM, BOTTOM_TEXT_MM)
    qr_size = 0.0
    if spec.qr_text is not None:
        qr_size = len(_modules(spec.qr_text, "qrcode")) * m
        half = max(half, QR_QUIET_MODULES * m + qr_size + QR_BOTTOM_MM)
    height = max(spec.height_mm, BAR_HEIGHT_MM + 2 * half)
    bar_y = (height - BAR_HEIGHT_MM) / 2
    return _Layout(
        width=width,
        height=height,
        bar_x=(width - bar_w) / 2,
        bar_y=bar_y,
        bar_w=bar_w,
        qr_x=width - MARGIN_MM - qr_size,
        qr_y=bar_y + BAR_HEIGHT_MM + QR_QUIET_MODULES * m,
        qr_size=qr_size,
        text_right=width - MARGIN_MM,
    )


def label_size_mm(spec: LabelSpec) -> tuple[float, float]:
    """The label's (width, height) in mm: the spec's, grown if a long code needs more room."""
    _validate(spec)
    lay = _layout(spec)
    return lay.width, lay.height


def _coverage(
    n_px: int, ppm: float, start_mm: float, n_modules: int, module_mm: float
) -> FloatImage:
    """Fraction of each pixel (rows) covered by each module (columns) of a 1-D grid."""
    px0 = np.arange(n_px, dtype=np.float64)[:, None] / ppm
    px1 = px0 + 1.0 / ppm
    m0 = start_mm + np.arange(n_modules, dtype=np.float64)[None, :] * module_mm
    m1 = m0 + module_mm
    overlap = np.clip(np.minimum(px1, m1) - np.maximum(px0, m0), 0.0, None) * ppm
    return np.asarray(overlap, dtype=np.float32)


def _put_text(
    ink: GrayImage, text: str, at_mm: tuple[float, float], h_mm: float, ppm: float
) -> None:
    """Draw text with its baseline-left at at_mm and cap height h_mm into an 8-bit ink layer."""
    scale = h_mm * ppm / 22.0
    thickness = max(1, round(scale * 1.6))
    org = (round(at_mm[0] * ppm), round(at_mm[1] * ppm))
    cv2.putText(ink, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)


def _clutter(ink: GrayImage, lay: _Layout, spec: LabelSpec, ppm: float) -> None:
    """Fake sender and recipient addresses, rules and a routing line."""
    rng = np.random.default_rng(spec.seed)
    right = lay.text_right

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    def hline(y_mm: float, x0: float, x1: float, t_mm: float) -> None:
        r0 = round(y_mm * ppm)
        r1 = max(r0 + 1, round((y_mm + t_mm) * ppm))
        ink[r0:r1, round(x0 * ppm) : round(x1 * ppm)] = 255

    x = MARGIN_MM
    _put_text(ink, "FROM: " + pick(_NAMES), (x, 5.5), 1.6, ppm)
    _put_text(ink, pick(_STREETS) + ", " + pick(_TOWNS), (x, 8.0), 1.6, ppm)
    hline(9.0, x, right, 0.4)
    _put_text(ink, "SHIP TO:", (x, 12.0), 2.0, ppm)
    _put_text(ink, pick(_NAMES), (x, 15.5), 2.6, ppm)
    _put_text(ink, pick(_STREETS), (x, 19.0), 2.6, ppm)
    _put_text(ink, pick(_TOWNS), (x, 22.5), 2.6, ppm)
    weight = f"{rng.uniform(0.2, 30.0):.1f} KG"
    _put_text(ink, weight, (right - 14.0, 22.5), 2.0, ppm)
    hline(lay.bar_y - 1.5, MARGIN_MM, right, 0.3)
    text_y = lay.bar_y + BAR_HEIGHT_MM + 4.5
    _put_text(ink, spec.code, (lay.bar_x + QUIET_MODULES * spec.module_mm * 0.5, text_y), 2.8, ppm)
    route = f"ROUTE {int(rng.integers(1, 99)):02d}  SORT {chr(65 + int(rng.integers(8)))}"
    _put_text(ink, route, (MARGIN_MM, text_y + 5.5), 2.0, ppm)


@lru_cache(maxsize=128)
def label_alpha(spec: LabelSpec, px_per_mm: float) -> GrayImage | None:
    """How much of each label pixel is there (uint8, 255 = all); None for a whole label."""
    if spec.damage != "torn_edge":
        return None
    _validate(spec)
    lay = _layout(spec)
    shape = (max(1, round(lay.height * px_per_mm)), max(1, round(lay.width * px_per_mm)))
    kept = torn_mask(shape, lay, spec, px_per_mm, BAR_HEIGHT_MM)
    out: GrayImage = np.clip(np.rint(kept * 255), 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=512)
def render_label(spec: LabelSpec, px_per_mm: float) -> GrayImage:
    """Render a label (uint8, paper ~235, ink ~25) at px_per_mm; cached, treat as read-only."""
    _validate(spec)
    if not px_per_mm > 0:
        raise ValueError("px_per_mm must be positive")
    ppm = px_per_mm
    lay = _layout(spec)
    w_px, h_px = max(1, round(lay.width * ppm)), max(1, round(lay.height * ppm))
    ink = np.zeros((h_px, w_px), dtype=np.float32)

    code = _modules(spec.code, spec.symbology)
    if spec.symbology in MATRIX:
        mm = _matrix_module_mm(spec)
        top = lay.bar_y + (BAR_HEIGHT_MM - code.shape[0] * mm) / 2
        cy = _coverage(h_px, ppm, top, code.shape[0], mm)
        cx = _coverage(w_px, ppm, lay.bar_x, code.shape[1], mm)
        ink = np.maximum(ink, cy @ code @ cx.T)
    else:
        bars = code[0]
        cols = _coverage(w_px, ppm, lay.bar_x, len(bars), spec.module_mm) @ bars
        rows = _coverage(h_px, ppm, lay.bar_y, 1, BAR_HEIGHT_MM)[:, 0]
        ink = np.maximum(ink, rows[:, None] * cols[None, :])
    if spec.qr_text is not None:
        qr = _modules(spec.qr_text, "qrcode")
        n = len(qr)
        cx = _coverage(w_px, ppm, lay.qr_x, n, spec.module_mm)
        cy = _coverage(h_px, ppm, lay.qr_y, n, spec.module_mm)
        ink = np.maximum(ink, cy @ qr @ cx.T)
    text = np.zeros((h_px, w_px), dtype=np.uint8)
    _clutter(text, lay, spec, ppm)
    ink = np.maximum(ink, text.astype(np.float32) / 255.0)

    img = PAPER - np.clip(ink, 0.0, 1.0) * ((PAPER - INK) * spec.contrast)
    apply_damage(img, lay, spec, ppm, paper=PAPER, bar_h_mm=BAR_HEIGHT_MM)
    out: GrayImage = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out
