"""The decoders look for exactly the symbologies the line's label types name."""

from __future__ import annotations

import dataclasses
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from controller.app.decode_tool import run_decode
from controller.app.example_line import EXAMPLE_CONFIG
from controller.app.simulate import DECODE_COST_S, Rig, _run_to_end, fresh_books
from controller.clock import VirtualClock, run_virtual
from controller.codes import with_check_digit
from controller.config import LineConfig, parse_config
from controller.errors import ConfigError
from controller.journal import Journal
from controller.sorter import Sorter
from controller.vision import Camera
from drivers.decoders import line_formats, make_line_decoders
from sim_hardware.labels import LabelSpec, label_symbology, render_label
from sim_hardware.scenario import Case, ScenarioSpec, SimParcel

PPM = 3.0  # label pixels per mm in the decoder-level tests


def _data() -> dict[str, Any]:
    return tomllib.loads(Path(EXAMPLE_CONFIG).read_text())


def _line(shipment: list[str], plate: list[str] | None = None, **camera: str) -> LineConfig:
    """The example line, its shipment (and licence-plate) labels printed in these symbologies."""
    data = _data()
    types = data["decision"]["label_types"]
    types[0]["symbologies"] = shipment
    if plate is not None:
        types[1]["symbologies"] = plate
    data["cameras"] = [{**c, **camera} for c in data["cameras"]]
    return parse_config(data)


def _printed_as_the_line_prints(parcel: SimParcel, line: LineConfig) -> SimParcel:
    labels = tuple(dataclasses.replace(placed, spec=dataclasses.replace(
        placed.spec, symbology=label_symbology(line, placed.spec.code)))
        for placed in parcel.labels)
    return dataclasses.replace(parcel, labels=labels)


def _shift(printing: LineConfig, reading: LineConfig, workdir: Path) -> list[dict[str, Any]]:
    """A shift whose labels are printed as ``printing`` says, read by the ``reading`` line."""
    from sim_hardware.devices import SimCamera, SimLineIO
    from sim_hardware.line import PhysicalLine

    spec = ScenarioSpec(parcels=12, seed=21, qr_share=0.0, scuffed_share=0.0,
                        mix={Case.NOMINAL: 3.0, Case.NO_LABEL: 1.0})

    async def run(clock: VirtualClock) -> list[dict[str, Any]]:
        config, parcels, store = fresh_books(reading, spec, workdir)
        parcels = [_printed_as_the_line_prints(p, printing) for p in parcels]
        line = PhysicalLine(config, spec, parcels, clock)
        cameras: list[Camera] = [SimCamera(line, c.id) for c in config.cameras]
        sorter = Sorter(config, clock, line_io=SimLineIO(line), cameras=cameras,
                        decoders=make_line_decoders(config), order_store=store,
                        journal=Journal(config.journal.path, clock),
                        decode_cost_s=DECODE_COST_S)
        return await _run_to_end(sorter, Rig(line), clock, None)

    return run_virtual(run)


def test_a_datamatrix_line_sorts_datamatrix_labels(tmp_path: Path) -> None:
    datamatrix = _line(["datamatrix"])
    assert label_symbology(datamatrix, "004512345673") == "datamatrix"
    assert label_symbology(datamatrix, "LP00000001") == "code128"  # the plates'
    records = _shift(datamatrix, datamatrix, tmp_path / "dm")
    outcome = Counter(r["disposition"] for r in records)
    assert outcome["SORTED"] >= 6, outcome
    assert set(outcome) == {"SORTED", "NO_READ"}, outcome
    # The same labels on a line whose decoders look for Code 128 alone read nothing.
    blind = Counter(r["disposition"] for r in _shift(datamatrix, _line(["code128"]),
                                                       tmp_path / "blind"))
    assert blind == {"NO_READ": len(records)}, blind


def _frame(*specs: LabelSpec) -> np.ndarray:
    """Labels side by side on cardboard-grey."""
    images = [np.pad(render_label(s, PPM), 30, constant_values=120) for s in specs]
    height = max(i.shape[0] for i in images)
    return np.ascontiguousarray(np.hstack([np.pad(i, ((0, height - i.shape[0]), (0, 0)),
                                                  constant_values=120) for i in images]))


CODE = with_check_digit("00451234567")


def test_an_ean13_line_reads_ean13_and_a_code128_line_does_not() -> None:
    ean = with_check_digit(CODE)  # EAN-13 carries 13 digits
    frame = _frame(LabelSpec(ean, symbology="ean13"))
    ean_line = _line(["ean13"])
    for decoder in make_line_decoders(ean_line).values():
        assert [(s.text, s.symbology) for s in decoder.decode(frame)] == [(ean, "ean13")]
    for decoder in make_line_decoders(_line(["code128"])).values():
        assert decoder.decode(frame) == []


def test_a_code128_line_asks_for_code128_alone() -> None:
    line = _line(["code128"], plate=["code128"])
    assert line.symbologies == ("code128",)
    frame = _frame(LabelSpec(CODE, qr_text=CODE), LabelSpec(CODE, symbology="datamatrix"),
                   LabelSpec(CODE, symbology="code39"))
    wide = _line(["code128", "qrcode", "datamatrix", "code39"])
    for decoder in make_line_decoders(line).values():
        assert getattr(decoder, "formats", None) == ("code128",)
        assert getattr(decoder, "matrix", "absent") is None  # no 2-D pass over the frame
        assert [(s.text, s.symbology) for s in decoder.decode(frame)] == [(CODE, "code128")]
    for decoder in make_line_decoders(wide).values():
        read = sorted(s.symbology for s in decoder.decode(frame))
        assert read == ["code128", "code39", "datamatrix", "qrcode"]


def test_the_union_of_the_label_types_and_any() -> None:
    assert _line(["Code128", "qrcode"], plate=["datamatrix", "code128"]).symbologies == (
        "code128", "qrcode", "datamatrix")
    anything = _line([], plate=["code128"])
    assert anything.symbologies == ()
    for decoder in make_line_decoders(anything).values():  # any: all it reads
        assert {"code128", "datamatrix", "ean13", "qrcode"} <= set(getattr(decoder, "formats", ()))


def test_an_unknown_symbology_names_its_label_type() -> None:
    line = _line(["code128"], plate=["code-128"])
    with pytest.raises(ConfigError, match=r"label_types\[1\].*'licence-plate'.*'code-128'"):
        line_formats(line)
    with pytest.raises(ConfigError, match="licence-plate"):
        make_line_decoders(line)


def test_a_decoder_that_cannot_read_a_named_symbology_is_refused() -> None:
    pytest.importorskip("pyzbar.pyzbar")
    line = _line(["datamatrix"], decoder="pyzbar")
    with pytest.raises(ConfigError, match=r"decoder 'pyzbar' cannot read datamatrix, which "
                                          r"label type 'shipment' names"):
        make_line_decoders(line)
    # pyzbar behind the locator reads the 2-D codes with zxing-cpp
    assert make_line_decoders(_line(["datamatrix"], decoder="located-pyzbar"))


def test_decode_tool_looks_for_the_lines_symbologies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    import cv2

    image = tmp_path / "dm.png"
    cv2.imwrite(str(image), _frame(LabelSpec(CODE, symbology="datamatrix")))
    for symbologies, printed in ((["datamatrix"], f"{CODE} (datamatrix)"), (["code128"], "")):
        config = tmp_path / "line.toml"
        data = _data()
        data["decision"]["label_types"][0]["symbologies"] = symbologies
        config.write_text(tomli_w.dumps(data))
        args = argparse.Namespace(images=[image], config=config, camera=None, decoder=None,
                                  formats=None, show_rejected=False, json=False)
        assert run_decode(args) == 0
        assert capsys.readouterr().out.strip() == f"{image} {printed}".strip()

