"""The line's decoding pipeline reads emulated shipping labels at any angle on the parcel."""

from __future__ import annotations

import pytest

from controller.config import LineConfig
from controller.reading import decode_crops, merge_spans
from drivers.decoders import make_decoder
from sim_hardware.labels import LabelSpec
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel
from sim_hardware.scenario import make_code

ANGLES = range(0, 360, 20)


def _frame(config: LineConfig, label: LabelSpec, angle: float, seed: int) -> tuple[object, ...]:
    cam = config.cameras[0]
    renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=seed)
    parcel = ParcelTop(lead_x_mm=cam.position_mm + 200, length_mm=400, width_mm=300,
                       y_mm=(seed % 7 - 3) * 10.0, shade=150,
                       labels=(PlacedLabel(label, 10.0, -5.0, angle),))
    image = renderer.render(cam.view_start_mm, [parcel])
    return image, renderer.label_centre_px(cam.view_start_mm, parcel, parcel.labels[0])


@pytest.mark.parametrize("damage", ["none", "scuffed"])
def test_labels_read_at_every_angle_with_right_position(
        example_config: LineConfig, damage: str) -> None:
    decoder = make_decoder("located-zxing")
    misses = []
    for i, angle in enumerate(ANGLES):
        code = make_code(100_000 + i)
        image, (col, row) = _frame(example_config, LabelSpec(code, damage=damage, seed=i),
                                   angle, i)
        symbols = [s for s in decoder.decode(image) if s.symbology == "code128"]  # type: ignore[arg-type]
        if [s.text for s in symbols] != [code]:
            misses.append((angle, [s.text for s in symbols]))
            continue
        # The code is centred on its label: position-based assignment depends on this.
        assert abs(symbols[0].x - col) < 25, (angle, symbols[0], col)
        assert abs(symbols[0].y - row) < 25, (angle, symbols[0], row)
    assert misses == []


def test_qr_beside_the_barcode_reads_the_same_code(example_config: LineConfig) -> None:
    decoder = make_decoder("located-zxing")
    code = make_code(4242)
    for angle in (0, 33, 145, 290):
        image, _ = _frame(example_config, LabelSpec(code, qr_text=code, seed=angle), angle, 1)
        found = {(s.text, s.symbology) for s in decoder.decode(image)}  # type: ignore[arg-type]
        assert found == {(code, "code128"), (code, "qrcode")}, angle


def test_destroyed_labels_never_read(example_config: LineConfig) -> None:
    decoder = make_decoder("located-zxing")
    for i, angle in enumerate(ANGLES):
        label = LabelSpec(make_code(200_000 + i), qr_text=make_code(200_000 + i),
                          damage="destroyed", seed=i)
        image, _ = _frame(example_config, label, angle, i)
        assert decoder.decode(image) == [], angle  # type: ignore[arg-type]


def test_crop_spans_merge_where_parcels_overlap_and_empty_ones_drop() -> None:
    assert merge_spans([(300, 500), (0, 120), (100, 200), (600, 600), (500, 550)]) == [
        (0, 200), (300, 550)]
    assert merge_spans([]) == []


def test_crop_reads_are_placed_in_the_whole_frame(example_config: LineConfig) -> None:
    """Reads from a crop carry the frame's column, so they are assigned to the right parcel."""
    cam = example_config.cameras[0]
    renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=3)
    codes = [make_code(300_001), make_code(300_002)]
    parcels = [ParcelTop(lead_x_mm=cam.view_start_mm + lead, length_mm=300, width_mm=300,
                         y_mm=0.0, shade=150, labels=(PlacedLabel(LabelSpec(code, seed=k),
                                                                  0.0, 0.0, 0.0),))
               for k, (code, lead) in enumerate(zip(codes, (350.0, 720.0), strict=True))]
    image = renderer.render(cam.view_start_mm, parcels)
    spans = [(int((p.lead_x_mm - p.length_mm - cam.view_start_mm) / cam.mm_per_px),
              int((p.lead_x_mm - cam.view_start_mm) / cam.mm_per_px)) for p in parcels]
    symbols = [s for s in decode_crops(make_decoder("located-zxing"), image, spans)
               if s.symbology == "code128"]
    assert sorted(s.text for s in symbols) == sorted(codes)
    for parcel, code in zip(parcels, codes, strict=True):
        col, _ = renderer.label_centre_px(cam.view_start_mm, parcel, parcel.labels[0])
        (found,) = [s for s in symbols if s.text == code]
        assert abs(found.x - col) < 25, (code, found, col)
