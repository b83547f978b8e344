"""Emulator label and frame rendering, checked by decoding the pixels with real decoders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import zxingcpp
from pyzbar import pyzbar

from controller.vision import GrayImage
from sim_hardware.labels import LabelSpec, label_size_mm, render_label
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel

MM_PER_PX = 0.375  # 2 px per 0.75 mm module
PPM = 1.0 / MM_PER_PX
FORMATS = zxingcpp.BarcodeFormats([zxingcpp.BarcodeFormat.Code128, zxingcpp.BarcodeFormat.QRCode])
CODES = ["99123456", "9912", "004512345678", "123456789012", "PS-0001/x", "99ABC"]


def zx(image: GrayImage, *, rotate: bool = False) -> list[tuple[str, str, float, float]]:
    """(format, text, centre x, centre y) of every Code 128 / QR zxing-cpp reads."""
    out = []
    for b in zxingcpp.read_barcodes(image, formats=FORMATS, try_rotate=rotate):
        p = b.position
        pts = (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
        cx = sum(q.x for q in pts) / 4
        cy = sum(q.y for q in pts) / 4
        out.append((b.format.name, b.text, cx, cy))
    return out


def zx_hard(image: GrayImage) -> list[str]:
    """Texts from zxing-cpp with every format and every effort option on."""
    texts = []
    for binarizer in (zxingcpp.Binarizer.LocalAverage, zxingcpp.Binarizer.GlobalHistogram):
        found = zxingcpp.read_barcodes(
            image, try_rotate=True, try_downscale=True, try_invert=True, binarizer=binarizer
        )
        texts += [b.text for b in found]
    return texts


def zbar(image: GrayImage) -> list[str]:
    """Texts pyzbar reads, all symbologies."""
    return [s.data.decode("latin-1") for s in pyzbar.decode(image)]


def codes(found: list[tuple[str, str, float, float]], fmt: str = "Code128") -> list[str]:
    """Texts of one format."""
    return [text for f, text, _, _ in found if f == fmt]


def pad(img: GrayImage, px: int = 40, value: int = 150) -> GrayImage:
    """Put a cardboard-gray border around a label image."""
    return np.asarray(cv2.copyMakeBorder(img, px, px, px, px, cv2.BORDER_CONSTANT, value=value))


def rotate(img: GrayImage, angle_deg: float) -> GrayImage:
    """Rotate an image counter-clockwise (as displayed) about its centre, enlarging the canvas."""
    h, w = img.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle_deg, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c) + 2, int(h * c + w * s) + 2
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    return np.asarray(cv2.warpAffine(img, m, (nw, nh), borderValue=150))


def frame_with(
    angle_deg: float, spec: LabelSpec, *, seed: int = 1, noise: float = 4.0
) -> tuple[FrameRenderer, GrayImage, tuple[float, float]]:
    """A 1280x720 frame with one parcel carrying one label; also the label centre in pixels."""
    r = FrameRenderer(1280, 720, MM_PER_PX, seed=seed, noise_sigma=noise)
    label = PlacedLabel(spec, 10.0, -15.0, angle_deg)
    parcel = ParcelTop(
        lead_x_mm=400.0, length_mm=330.0, width_mm=240.0, y_mm=5.0, shade=165, labels=(label,)
    )
    return r, r.render(0.0, [parcel]), r.label_centre_px(0.0, parcel, label)


@pytest.mark.parametrize("code", CODES)
def test_label_decodes_to_exactly_its_code(code: str) -> None:
    img = pad(render_label(LabelSpec(code, seed=len(code)), PPM))
    assert codes(zx(img)) == [code]
    assert zbar(img) == [code]


def test_qr_decodes_to_its_text() -> None:
    spec = LabelSpec("004512345678", qr_text="https://track.example/p/004512345678?x=1")
    found = zx(pad(render_label(spec, PPM)))
    assert codes(found, "QRCode") == [spec.qr_text]
    assert codes(found) == [spec.code]


def test_label_image_levels_and_cache() -> None:
    spec = LabelSpec("ABC123")
    img = render_label(spec, PPM)
    assert img.dtype == np.uint8
    assert img.shape == (round(75.0 * PPM), round(110.0 * PPM))
    assert 225 <= int(np.median(img)) <= 240
    assert 15 <= int(img.min()) <= 35
    assert render_label(spec, PPM) is img


def test_long_code_grows_label() -> None:
    spec = LabelSpec("PS" + "X" * 30)
    w, _ = label_size_mm(spec)
    assert w > 110.0
    assert codes(zx(pad(render_label(spec, PPM)))) == [spec.code]


@pytest.mark.parametrize(
    "spec",
    [LabelSpec(""), LabelSpec("caf\u00e9"), LabelSpec("A" * 49), LabelSpec("X", damage="torn")],
)
def test_invalid_specs_raise(spec: LabelSpec) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        render_label(spec, PPM)


def test_frame_shape_and_dtype() -> None:
    for w, h in ((640, 480), (1920, 1080), (333, 217)):
        frame = FrameRenderer(w, h, 0.5).render(0.0, [])
        assert frame.shape == (h, w)
        assert frame.dtype == np.uint8
        assert 50 <= float(frame.mean()) <= 70


def test_angle_zero_decodes_at_label_centre() -> None:
    spec = LabelSpec("004512345678", qr_text="https://track.example/p/1")
    _, frame, (col, row) = frame_with(0.0, spec)
    found = zx(frame)
    bars = [(x, y) for f, text, x, y in found if f == "Code128" and text == spec.code]
    assert len(bars) == 1
    assert abs(bars[0][0] - col) < 8
    assert abs(bars[0][1] - row) < 8
    assert codes(found, "QRCode") == [spec.qr_text]
    assert spec.code in zbar(frame)


@pytest.mark.parametrize("angle", [90.0, 180.0, 270.0])
def test_right_angles_decode_with_try_rotate(angle: float) -> None:
    spec = LabelSpec("99001234567", seed=int(angle))
    _, frame, (col, row) = frame_with(angle, spec)
    bars = [(x, y) for f, text, x, y in zx(frame, rotate=True) if text == spec.code]
    assert len(bars) == 1
    assert abs(bars[0][0] - col) < 8
    assert abs(bars[0][1] - row) < 8


@pytest.mark.parametrize("angle", [45.0, 133.0, 200.0, 333.0])
def test_any_angle_pixels_are_right_when_rotated_back(angle: float) -> None:
    spec = LabelSpec("004512345678", seed=7)
    _, frame, (col, row) = frame_with(angle, spec)
    half = 170
    crop = frame[round(row) - half : round(row) + half, round(col) - half : round(col) + half]
    centre = (half + col - round(col), half + row - round(row))
    m = np.asarray(cv2.getRotationMatrix2D(centre, -angle, 1.0))
    upright = np.asarray(cv2.warpAffine(crop, m, (2 * half, 2 * half)), dtype=np.uint8)
    found = zx(upright)
    bars = [(x, y) for f, text, x, y in found if f == "Code128" and text == spec.code]
    assert len(bars) == 1
    assert abs(bars[0][0] - half) < 8
    # zxing reports the span of rows it decoded, which need not be centred in the 53 px bars.
    assert abs(bars[0][1] - half) < 20


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_scuffed_still_reads_at_zero(seed: int) -> None:
    spec = LabelSpec("004512345678", damage="scuffed", seed=seed)
    assert codes(zx(pad(render_label(spec, PPM)))) == [spec.code]
    _, frame, _ = frame_with(0.0, spec, seed=seed)
    assert codes(zx(frame)) == [spec.code]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_destroyed_never_reads(seed: int) -> None:
    spec = LabelSpec(
        "004512345678", qr_text="https://track.example/p/9", damage="destroyed", seed=seed
    )
    img = pad(render_label(spec, PPM))
    for angle in (0.0, 7.0, 30.0, 90.0, 180.0, 270.0):
        view = rotate(img, angle)
        assert zx_hard(view) == []
        assert zbar(view) == []
    _, frame, _ = frame_with(0.0, spec, seed=seed)
    assert zx_hard(frame) == []
    assert zbar(frame) == []


def test_label_is_clipped_at_the_parcel_edge() -> None:
    r = FrameRenderer(800, 600, MM_PER_PX, noise_sigma=0.0)
    # Label centred on the parcel's downstream edge, so its downstream half hangs off.
    parcel = ParcelTop(
        lead_x_mm=200.0,
        length_mm=150.0,
        width_mm=150.0,
        y_mm=0.0,
        shade=150,
        labels=(PlacedLabel(LabelSpec("ABC123"), 75.0, 0.0, 0.0),),
    )
    frame = r.render(0.0, [parcel])
    lead_col = round(200.0 / MM_PER_PX)
    mid_row = 300
    on_parcel = frame[mid_row - 60 : mid_row + 60, lead_col - 60 : lead_col - 2]
    off_parcel = frame[mid_row - 60 : mid_row + 60, lead_col + 1 : lead_col + 140]
    assert float(np.median(on_parcel)) > 200  # label paper
    assert int(off_parcel.max()) < 100  # belt only, no paper
    empty = r.render(0.0, [])
    assert np.array_equal(
        off_parcel, empty[mid_row - 60 : mid_row + 60, lead_col + 1 : lead_col + 140]
    )


def test_skewed_parcel_is_a_rotated_rectangle() -> None:
    r = FrameRenderer(800, 600, MM_PER_PX, noise_sigma=0.0)
    parcel = ParcelTop(
        lead_x_mm=200.0, length_mm=150.0, width_mm=100.0, y_mm=0.0, shade=170, skew_deg=30.0
    )
    frame = r.render(0.0, [parcel])
    centre = (round(125.0 / MM_PER_PX), 300)
    assert abs(int(frame[centre[1], centre[0]]) - 170) < 25
    # The axis-aligned box corner is outside a 30-degree-rotated face.
    assert int(frame[300 - 125, centre[0] - 195]) < 100
    assert int(frame[300 - 125, centre[0] + 195]) < 100


def test_parcels_out_of_view_are_not_drawn() -> None:
    r = FrameRenderer(640, 480, MM_PER_PX, seed=3, noise_sigma=0.0)
    label = PlacedLabel(LabelSpec("99887766"), 0.0, 0.0, 30.0)
    width_mm = 640 * MM_PER_PX
    outside = [
        ParcelTop(-1.0, 200.0, 200.0, 0.0, 150, (label,)),  # entirely upstream
        ParcelTop(width_mm + 300.0, 200.0, 200.0, 0.0, 150, (label,)),  # downstream
        ParcelTop(100.0, 200.0, 200.0, 500.0, 150, (label,)),  # beside the belt
    ]
    empty = r.render(0.0, [])
    assert np.array_equal(r.render(0.0, outside), empty)
    partial = [
        ParcelTop(60.0, 200.0, 200.0, 0.0, 150, (label,)),  # label straddles the left edge
        ParcelTop(width_mm + 40.0, 200.0, 200.0, -80.0, 150, (label,)),  # right/top corner
        ParcelTop(width_mm * 2, width_mm * 3, 2000.0, 0.0, 150, (label,)),  # bigger than view
    ]
    for p in partial:
        frame = r.render(0.0, [p])
        assert frame.shape == (480, 640)
        assert not np.array_equal(frame, empty)


def test_deterministic_for_a_seed() -> None:
    label = PlacedLabel(LabelSpec("004512345678", damage="scuffed"), 5.0, 5.0, 17.0)
    parcels = [ParcelTop(300.0, 250.0, 200.0, 10.0, 160, (label,), skew_deg=4.0)]
    frames = []
    for seed in (5, 5, 6):
        r = FrameRenderer(640, 480, MM_PER_PX, seed=seed, blur_px=0.6)
        frames.append([r.render(x0, parcels).tobytes() for x0 in (0.0, 20.0, 40.0)])
    assert frames[0] == frames[1]
    assert frames[0] != frames[2]
    assert frames[0][0] != frames[0][1]


def test_parcel_texture_moves_with_the_parcel() -> None:
    r = FrameRenderer(640, 480, MM_PER_PX, noise_sigma=0.0)
    parcel = ParcelTop(200.0, 150.0, 150.0, 0.0, 150)
    a = r.render(0.0, [parcel])
    b = r.render(-30.0, [parcel])  # camera view moved 80 px upstream = parcel 80 px downstream
    assert np.array_equal(a[200:280, 200:400], b[200:280, 280:480])
