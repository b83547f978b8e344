"""Decoder backends on rendered codes pasted on synthetic cardboard (real images, no mocks)."""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from controller.errors import ConfigError, DriverUnavailable
from controller.vision import Symbol
from drivers.decoders import available_decoders, make_decoder
from drivers.decoders.synth import cardboard, paste, render

KNOWN = ["zxing", "pyzbar", "located-zxing", "located-pyzbar"]
AVAILABLE = available_decoders()


def params(*names: str) -> list[object]:
    """Decoder names as test parameters, skipped where the library (libzbar) is missing."""
    return [
        pytest.param(n, marks=pytest.mark.skipif(n not in AVAILABLE, reason=f"{n} unavailable"))
        for n in names
    ]


ALL = params(*KNOWN)
LOCATED = params("located-zxing", "located-pyzbar")
TRACKING = "1Z999AA10123456784"
FRAME = (720, 960)  # rows, columns
ANGLES = range(0, 360, 15)
CENTRE_TOLERANCE = 6.0  # px


@pytest.fixture(scope="module")
def code128() -> np.ndarray:
    return render(TRACKING, "code128", module_px=2, bar_height=80)


def frame_with(
    code: np.ndarray, angle: float, seed: int, *, whole_px: bool = False
) -> tuple[np.ndarray, float, float]:
    """A cardboard frame with ``code`` at a seeded random place; returns frame and centre.

    ``whole_px`` puts the centre on a whole pixel (see test_subpixel_phase).
    """
    rng = np.random.default_rng(seed)
    cx = float(rng.uniform(300, FRAME[1] - 300))
    cy = float(rng.uniform(280, FRAME[0] - 280))
    if whole_px:
        cx, cy = round(cx), round(cy)
    return paste(cardboard(*FRAME, rng), code, cx, cy, angle, rng=rng), cx, cy


def assert_read(
    symbols: list[Symbol],
    text: str,
    symbology: str,
    cx: float,
    cy: float,
    *,
    tolerance: float = CENTRE_TOLERANCE,
) -> None:
    assert [(s.text, s.symbology) for s in symbols] == [(text, symbology)], symbols
    s = symbols[0]
    assert math.hypot(s.x - cx, s.y - cy) <= tolerance, (s, cx, cy)


def test_available_decoders() -> None:
    assert [n for n in KNOWN if n in AVAILABLE] == AVAILABLE
    assert {"zxing", "located-zxing"} <= set(AVAILABLE)  # the default needs no system library


@pytest.mark.parametrize("name", ALL)
def test_decoder_has_its_name(name: str) -> None:
    assert make_decoder(name).name == name


@pytest.mark.parametrize("name", LOCATED)
def test_located_reads_code128_at_every_angle(name: str, code128: np.ndarray) -> None:
    decoder = make_decoder(name)
    misses = []
    for angle in ANGLES:
        frame, cx, cy = frame_with(code128, angle, seed=angle)
        symbols = decoder.decode(frame)
        try:
            assert_read(symbols, TRACKING, "code128", cx, cy)
        except AssertionError as exc:
            misses.append((angle, str(exc)))
    assert misses == []


@pytest.mark.parametrize("name", params("zxing", "pyzbar"))
@pytest.mark.parametrize("angle", [0, 90, 180, 270])
def test_whole_image_reads_code128_square_on(name: str, angle: int, code128: np.ndarray) -> None:
    frame, cx, cy = frame_with(code128, angle, seed=1000 + angle, whole_px=True)
    # zbar's box spans its scan lines only, which need not reach the ends of the bars
    tolerance = 10 if name == "pyzbar" else CENTRE_TOLERANCE
    assert_read(make_decoder(name).decode(frame), TRACKING, "code128", cx, cy, tolerance=tolerance)


@pytest.mark.parametrize("name", LOCATED)
def test_subpixel_phase(name: str, code128: np.ndarray) -> None:
    """Bars at 2 px/module shifted by 0.3 px (plus blur) defeat whole-image zxing-cpp in
    most frames (measured 1 of 10 read); the located decoder's 2x stretched crop reads them.
    """
    decoder = make_decoder(name)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        frame = paste(cardboard(*FRAME, rng), code128, 487.3, 376.6, 0, rng=rng)
        assert_read(decoder.decode(frame), TRACKING, "code128", 487.3, 376.6)


def test_whole_image_zxing_misses_tilted_code128(code128: np.ndarray) -> None:
    """The weakness the locating decoder exists for; if zxing-cpp improves, revisit it."""
    frame, _, _ = frame_with(code128, 45, seed=45)
    assert make_decoder("zxing").decode(frame) == []
    assert [s.text for s in make_decoder("located-zxing").decode(frame)] == [TRACKING]


@pytest.mark.parametrize("name", ALL)
def test_qrcode_at_any_angle(name: str) -> None:
    qr = render("PARCEL 42 / ROUTE B7", "qrcode", module_px=4)
    decoder = make_decoder(name, ("code128", "qrcode"))
    misses = []
    for angle in range(0, 360, 30):
        frame, cx, cy = frame_with(qr, angle, seed=angle + 7)
        try:
            assert_read(decoder.decode(frame), "PARCEL 42 / ROUTE B7", "qrcode", cx, cy)
        except AssertionError as exc:
            misses.append((angle, str(exc)))
    # pyzbar missed 1 QR code in 96 such frames (zxing-cpp none): allow it one miss
    assert len(misses) <= (1 if name == "pyzbar" else 0), misses


@pytest.mark.parametrize("name", params("zxing", "located-zxing", "located-pyzbar"))
def test_datamatrix(name: str) -> None:
    dm = render("[)>\x1e06\x1d1ZPARCEL\x1e\x04", "datamatrix", module_px=4)
    decoder = make_decoder(name, ("code128", "datamatrix"))
    for angle in (0, 40, 250):
        frame, cx, cy = frame_with(dm, angle, seed=angle + 3)
        symbols = decoder.decode(frame)
        assert [s.symbology for s in symbols] == ["datamatrix"]
        # zxing-cpp's default (HRI) text mode shows ISO 15434 control characters as
        # Unicode control pictures U+241E, U+241D, U+2404 (and others as <SOH> ...)
        assert symbols[0].text == "[)>\u241e06\u241d1ZPARCEL\u241e\u2404"
        assert math.hypot(symbols[0].x - cx, symbols[0].y - cy) <= CENTRE_TOLERANCE


@pytest.mark.skipif("pyzbar" not in AVAILABLE, reason="libzbar missing")
def test_pyzbar_ignores_formats_it_lacks() -> None:
    dm = render("DM", "datamatrix", module_px=4)
    frame, _, _ = frame_with(dm, 0, seed=5)
    assert make_decoder("pyzbar", ("datamatrix",)).decode(frame) == []


#: symbology -> text to print. UPC-A and UPC-E are left out: zxing-cpp reads a UPC-A back
#: as 13 digits and expands a UPC-E, zbar finds a UPC-A only when EAN-13 is asked for too.
PRINTED = {
    "code39": "PARCEL-42", "code93": "PARCEL42", "codabar": "A40156B",
    "ean13": "4006381333931", "ean8": "96385074", "itf": "00123456789012",
}


@pytest.mark.parametrize("symbology", sorted(PRINTED))
@pytest.mark.parametrize("name", ALL)
def test_each_linear_symbology_reads_under_its_name(name: str, symbology: str) -> None:
    text = PRINTED[symbology]
    frame, cx, cy = frame_with(render(text, symbology, module_px=3, bar_height=90), 0,
                               seed=len(text))
    for formats in ((symbology,), ()):  # asked for alone, and as one of any
        assert_read(make_decoder(name, formats).decode(frame), text, symbology, cx, cy,
                    tolerance=3 * CENTRE_TOLERANCE)
    # Not asked for, it is not read.
    others = tuple(s for s in PRINTED if s != symbology)
    assert make_decoder(name, ("code128", *others)).decode(frame) == []


@pytest.mark.parametrize("name", ALL)
def test_any_means_every_symbology_the_decoder_reads(name: str) -> None:
    formats = set(getattr(make_decoder(name, ()), "formats", ()))
    assert {"code128", "code39", "code93", "codabar", "ean13", "itf", "qrcode"} <= formats
    assert ("datamatrix" in formats) == (name != "pyzbar")


@pytest.mark.parametrize("name", ALL)
def test_no_false_reads_on_empty_frames(name: str) -> None:
    rng = np.random.default_rng(99)
    frames = [
        cardboard(*FRAME, rng),
        rng.integers(0, 256, FRAME, dtype=np.uint8),
        np.full(FRAME, 128, np.uint8),
        np.zeros((1, 1), np.uint8),
        np.zeros((1, 100), np.uint8),
        np.zeros((0, 0), np.uint8),
    ]
    # vertical stripes look like bars to the locator, but hold no code
    stripes = cardboard(*FRAME, rng)
    stripes[200:400, 200:700] = np.where((np.arange(500) // 3) % 2 == 0, 40, 230)
    frames.append(stripes)
    decoder = make_decoder(name, ("code128", "qrcode", "datamatrix"))
    assert [decoder.decode(f) for f in frames] == [[] for _ in frames]


@pytest.mark.parametrize("name", ALL)
def test_colour_image(name: str, code128: np.ndarray) -> None:
    frame, cx, cy = frame_with(code128, 0, seed=11, whole_px=True)
    bgr = np.asarray(cv2.merge([frame // 2, frame,
                                np.clip(frame.astype(int) + 20, 0, 255).astype(np.uint8)]),
                     dtype=np.uint8)
    assert_read(make_decoder(name).decode(bgr), TRACKING, "code128", cx, cy)
    bgra = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), dtype=np.uint8)
    assert_read(make_decoder(name).decode(bgra), TRACKING, "code128", cx, cy)


@pytest.mark.parametrize("name", ALL)
def test_not_an_image_returns_nothing(name: str) -> None:
    decoder = make_decoder(name)
    assert decoder.decode(np.zeros((50, 50), np.float32)) == []
    assert decoder.decode(np.zeros((50, 50, 2), np.uint8)) == []


def two_codes_frame() -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    rng = np.random.default_rng(3)
    frame = cardboard(900, 1200, rng)
    frame = paste(frame, render(TRACKING, bar_height=80), 380, 300, 35, rng=rng)
    frame = paste(frame, render("ROUTE-B7", "qrcode", module_px=5), 900, 620, 20, rng=rng)
    return frame, (380, 300), (900, 620)


@pytest.mark.parametrize("name", ALL)
def test_formats_restrict_what_is_reported(name: str) -> None:
    frame, _, qr_at = two_codes_frame()
    only_linear = make_decoder(name, ("code128",)).decode(frame)
    assert all(s.symbology == "code128" for s in only_linear)
    only_qr = make_decoder(name, ("qrcode",)).decode(frame)
    assert [(s.text, s.symbology) for s in only_qr] == [("ROUTE-B7", "qrcode")]
    assert math.hypot(only_qr[0].x - qr_at[0], only_qr[0].y - qr_at[1]) <= CENTRE_TOLERANCE


@pytest.mark.parametrize("name", LOCATED)
def test_located_reads_both_codes_once(name: str) -> None:
    frame, bar_at, qr_at = two_codes_frame()
    symbols = sorted(make_decoder(name).decode(frame), key=lambda s: s.symbology)
    assert [(s.text, s.symbology) for s in symbols] == [
        (TRACKING, "code128"),
        ("ROUTE-B7", "qrcode"),
    ]
    for s, (x, y) in zip(symbols, [bar_at, qr_at], strict=True):
        assert math.hypot(s.x - x, s.y - y) <= CENTRE_TOLERANCE


def test_located_reads_a_parcel_crop(code128: np.ndarray) -> None:
    """The controller hands over a crop about the parcel's size, code near its edge."""
    rng = np.random.default_rng(8)
    crop = paste(cardboard(320, 480, rng), code128, 240, 120, 160, rng=rng)
    assert_read(make_decoder("located-zxing").decode(crop), TRACKING, "code128", 240, 120)


def test_unknown_decoder_name() -> None:
    with pytest.raises(DriverUnavailable, match="located-zxing") as info:
        make_decoder("zbar-magic")
    assert info.value.device == "decoder"


def test_unknown_symbology_name() -> None:
    with pytest.raises(ConfigError, match="qr-code"):
        make_decoder("zxing", ("code128", "qr-code"))


def test_formats_are_case_insensitive_and_a_lone_string_works(code128: np.ndarray) -> None:
    frame, cx, cy = frame_with(code128, 0, seed=4)
    assert_read(make_decoder("zxing", ("Code128",)).decode(frame), TRACKING, "code128", cx, cy)
    assert_read(make_decoder("zxing", "code128").decode(frame), TRACKING, "code128", cx, cy)


def test_thread_pool_gives_the_same_answers(code128: np.ndarray) -> None:
    decoder = make_decoder("located-zxing")
    frames = [frame_with(code128, a, seed=a)[0] for a in range(0, 360, 30)]
    alone = [decoder.decode(f) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        pooled = list(pool.map(decoder.decode, frames * 2))
    assert pooled == alone * 2
    assert all(len(r) == 1 for r in alone)


@pytest.mark.skipif("pyzbar" not in AVAILABLE, reason="libzbar missing")
def test_pyzbar_is_not_imported_unless_chosen() -> None:
    root = Path(__file__).resolve().parents[1]
    script = (
        "import sys; from drivers.decoders import make_decoder;"
        "make_decoder('located-zxing'); make_decoder('zxing');"
        "assert 'pyzbar' not in sys.modules, 'pyzbar imported';"
        "make_decoder('pyzbar'); assert 'pyzbar' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, timeout=60)


def test_located_reads_tilted_labels_in_5mp_frames(code128: np.ndarray) -> None:
    """The locator's default 512 px downsampling lost half of these; see located.py."""
    decoder = make_decoder("located-zxing")
    rng = np.random.default_rng(2448)
    board = cardboard(2048, 2448, rng)
    for angle in (20, 65, 110, 160, 205, 250, 295, 340):
        cx, cy = float(rng.uniform(400, 2000)), float(rng.uniform(400, 1600))
        frame = paste(board, code128, cx, cy, angle, rng=rng)
        assert_read(decoder.decode(frame), TRACKING, "code128", cx, cy)


@pytest.mark.parametrize("name", LOCATED)
def test_stacked_codes_keep_their_own_centres(name: str) -> None:
    """Two Code 128 codes 20 px apart: each box's margin catches the other code; the
    reported centre must still be the code's own (margin reads were 47 px off)."""
    top = render(TRACKING, bar_height=80)
    bottom = render("ROUTE-B7-0042", bar_height=80)
    padded = np.full((bottom.shape[0], top.shape[1]), 255, np.uint8)
    padded[:, : bottom.shape[1]] = bottom
    stack = np.vstack([top, np.full((20, top.shape[1]), 255, np.uint8), padded])
    offsets = {  # centre of each code relative to the stack's centre, unrotated
        TRACKING: (0.0, -(stack.shape[0] - top.shape[0]) / 2),
        "ROUTE-B7-0042": (-(top.shape[1] - bottom.shape[1]) / 2, (stack.shape[0] - 100) / 2),
    }
    decoder = make_decoder(name)
    for angle in range(0, 360, 20):
        rng = np.random.default_rng(angle)
        frame = paste(cardboard(800, 1280, rng), stack, 640, 400, angle, rng=rng)
        t = math.radians(angle)
        symbols = decoder.decode(frame)
        assert sorted(s.text for s in symbols) == sorted(offsets), (angle, symbols)
        for s in symbols:
            dx, dy = offsets[s.text]
            x = 640 + dx * math.cos(t) + dy * math.sin(t)
            y = 400 - dx * math.sin(t) + dy * math.cos(t)
            assert math.hypot(s.x - x, s.y - y) <= CENTRE_TOLERANCE, (angle, s, x, y)


def test_active_region_holds_the_label_and_nothing_on_a_bare_belt() -> None:
    """The gate that lets empty frames out early: none on belt and a bare parcel, a region
    around the emulator's label otherwise, and the decoder's reads agree."""
    from controller.config import load_config
    from drivers.decoders.activity import active_region
    from sim_hardware.labels import LabelSpec
    from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel
    from sim_hardware.scenario import make_code

    cam = load_config(Path(__file__).resolve().parents[1] / "deploy" / "line.example.toml"
                      ).cameras[0]
    decoder = make_decoder("located-zxing")
    for seed in range(4):
        renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=seed)
        bare = ParcelTop(lead_x_mm=cam.position_mm + 200, length_mm=400, width_mm=300,
                         y_mm=0.0, shade=130 + 10 * seed, labels=())
        for frame in (renderer.render(cam.view_start_mm, []),
                      renderer.render(cam.view_start_mm, [bare])):
            assert active_region(frame) is None
            assert decoder.decode(frame) == []
        code = make_code(5000 + seed)
        for contrast in (0.15, 1.0):  # the faintest print the robustness table reads
            placed = PlacedLabel(LabelSpec(code, contrast=contrast, seed=seed), 10.0, -5.0,
                                 70.0 * seed)
            parcel = ParcelTop(bare.lead_x_mm, bare.length_mm, bare.width_mm, bare.y_mm,
                               bare.shade, (placed,))
            frame = renderer.render(cam.view_start_mm, [parcel])
            region = active_region(frame)
            assert region is not None
            col, row = renderer.label_centre_px(cam.view_start_mm, parcel, placed)
            assert region[0] < col < region[2]
            assert region[1] < row < region[3]
        assert [s.text for s in decoder.decode(frame)] == [code]
