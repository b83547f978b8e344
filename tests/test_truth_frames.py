"""Truth frames: the marks of the labels in view read back from any crop, as the truth says."""

from __future__ import annotations

from sim_hardware.labels import LabelSpec
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel
from sim_hardware.scenario import Case, SimParcel
from sim_hardware.truth_frames import TruthDecoder, truth_frame


def parcel(sim_id: int, labels: tuple[PlacedLabel, ...]) -> SimParcel:
    return SimParcel(sim_id, Case.NOMINAL, 300.0, 200.0, 0.0, 150, 0.0, labels, None, None,
                     "SORTED", [])


def test_a_crop_reads_its_labels_at_their_columns_and_a_destroyed_one_never() -> None:
    renderer = FrameRenderer(640, 360, 1.0, seed=1)
    good = PlacedLabel(LabelSpec("0045000001", qr_text="https://t.example/1"), 0.0, 0.0, 30.0)
    gone = PlacedLabel(LabelSpec("0045000002", damage="destroyed"), 0.0, 0.0, 0.0)
    a = ParcelTop(200.0, 150.0, 150.0, 0.0, 150, (good,))
    b = ParcelTop(500.0, 150.0, 150.0, 0.0, 150, (gone,))
    frame = truth_frame(renderer, 0.0, [(70_000, a), (3, b)])
    decoder = TruthDecoder([parcel(70_000, (good,)), parcel(3, (gone,))])
    col = round(renderer.label_centre_px(0.0, a, good)[0])
    whole = decoder.decode(frame)
    assert [(s.text, s.symbology, s.x) for s in whole] == [
        ("0045000001", "code128", col), ("https://t.example/1", "qrcode", col)]
    crop = decoder.decode(frame[:, col - 10 : col + 10])
    assert [(s.text, s.x) for s in crop] == [("0045000001", 10.0), ("https://t.example/1", 10.0)]
    assert decoder.decode(frame[:, 400:]) == []
