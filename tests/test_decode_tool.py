"""``parcel-sorter decode``: the line's decode-and-accept pipeline on image files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from controller.app.cli import main
from controller.app.decode_tool import printable
from controller.codes import CodeRule
from controller.config import LineConfig
from sim_hardware.labels import LabelSpec
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel
from sim_hardware.scenario import make_code

from .conftest import EXAMPLE_CONFIG, SHARED

QR_PHOTOS = SHARED / "realworld-barcodes" / "qrcode-1"


def _bad_check_digit(code: str) -> str:
    return code[:-1] + str((int(code[-1]) + 1) % 10)


def _write_label(config: LineConfig, path: Path, label: LabelSpec, angle: float = 0.0) -> Path:
    cam = config.cameras[0]
    renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=label.seed)
    parcel = ParcelTop(lead_x_mm=cam.position_mm + 200, length_mm=400, width_mm=300,
                       y_mm=0.0, shade=150, labels=(PlacedLabel(label, 10.0, -5.0, angle),))
    assert cv2.imwrite(str(path), renderer.render(cam.view_start_mm, [parcel]))
    return path


@pytest.fixture
def labels(example_config: LineConfig, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Three label images: a good code, a good code with its QR, a bad check digit."""
    good, both, bad = make_code(31_337), make_code(4242), _bad_check_digit(make_code(777))
    return {
        "good": (_write_label(example_config, tmp_path / "good.png",
                              LabelSpec(good, seed=1), angle=33.0), good),
        "both": (_write_label(example_config, tmp_path / "both.png",
                              LabelSpec(both, qr_text=both, seed=2)), both),
        "bad": (_write_label(example_config, tmp_path / "bad.png", LabelSpec(bad, seed=3)), bad),
    }


def test_why_rejected_agrees_with_the_line_rule(example_config: LineConfig) -> None:
    rule = CodeRule(example_config.decision)
    texts = [make_code(n) for n in range(50)] + [_bad_check_digit(make_code(n))
                                                 for n in range(50)]
    texts += ["", "12345", "abcdefghijkl", "0012345678901", "http://example.com"]
    for text in texts:
        assert (rule.why_rejected(text, "code128") is None) == rule.accepts(text), text
    assert "bad check digit" in (rule.why_rejected(_bad_check_digit(make_code(5)), "code128")
                                 or "")
    assert "does not match" in (rule.why_rejected("hello", "code128") or "")


def test_accepted_codes_one_line_per_image(labels: dict[str, tuple[Path, str]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(labels[k][0]) for k in ("good", "both", "bad")]
    assert main(["decode", *paths]) == 0  # the example config by default
    lines = capsys.readouterr().out.splitlines()
    good, both = labels["good"][1], labels["both"][1]
    assert lines == [f"{paths[0]} {good} (code128)",
                     f"{paths[1]} {both} (code128) {both} (qrcode)",
                     paths[2]]


def test_all_shows_what_was_refused_and_why(labels: dict[str, tuple[Path, str]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, bad = labels["bad"]
    assert main(["decode", "--all", "--config", str(EXAMPLE_CONFIG), str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(path)
    assert len(lines) == 2
    assert lines[1].startswith(f"  rejected: {bad} (code128): ")
    assert lines[1].endswith("bad check digit")


def test_json_output(labels: dict[str, tuple[Path, str]],
                     capsys: pytest.CaptureFixture[str]) -> None:
    paths = [labels[k][0] for k in ("both", "bad")]
    assert main(["decode", "--json", *map(str, paths)]) == 0
    both, bad = json.loads(capsys.readouterr().out)
    code = labels["both"][1]
    assert both["path"] == str(paths[0])
    assert both["error"] is None
    assert both["rejected"] == []
    assert sorted((a["text"], a["symbology"]) for a in both["accepted"]) == [
        (code, "code128"), (code, "qrcode")]
    for read in both["accepted"]:
        assert 0 <= read["x"] < 1920
        assert 0 <= read["y"] < 1080
    assert bad["accepted"] == []
    assert [(r["text"], r["symbology"]) for r in bad["rejected"]] == [
        (labels["bad"][1], "code128")]
    assert "bad check digit" in bad["rejected"][0]["why"]


def test_formats_limit_what_is_read(labels: dict[str, tuple[Path, str]],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, code = labels["both"]
    assert main(["decode", "--formats", "qrcode", "--decoder", "zxing", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{path} {code} (qrcode)"]


def test_unreadable_files_are_error_lines_and_exit_1(
        labels: dict[str, tuple[Path, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a PNG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    good, code = labels["good"]
    assert main(["decode", str(junk), str(good), str(missing), str(empty), str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"{junk}: error: not an image OpenCV can read",
        f"{good} {code} (code128)",
        f"{missing}: error: No such file or directory",
        f"{empty}: error: not an image OpenCV can read",
        f"{tmp_path}: error: Is a directory",
    ]
    assert "Traceback" not in out.err

    assert main(["decode", "--json", str(missing)]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert result == {"path": str(missing), "accepted": [], "rejected": [],
                      "error": "No such file or directory"}


@pytest.mark.parametrize("argv", [["--decoder", "nope"], ["--formats", "code128,bogus"],
                                  ["--camera", "cam9"], ["--config", "/no/such/line.toml"]])
def test_bad_options_exit_2(labels: dict[str, tuple[Path, str]], argv: list[str],
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", *argv, str(labels["good"][0])]) == 2
    assert capsys.readouterr().err.startswith("parcel-sorter: ")


@pytest.mark.skipif(not QR_PHOTOS.is_dir(), reason=f"no real-world image set at {QR_PHOTOS}")
def test_real_qr_photos_read_but_are_not_parcel_codes(
        capsys: pytest.CaptureFixture[str]) -> None:
    photos = sorted(p for p in QR_PHOTOS.iterdir()
                    if p.suffix in {".png", ".webp"} and p.with_suffix(".txt").exists())
    assert photos
    assert main(["decode", "--all", *map(str, photos)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rejected = 0
    for photo in photos:
        expected = photo.with_suffix(".txt").read_bytes().decode("utf-8", errors="replace")
        at = lines.index(str(photo))  # the path alone: nothing accepted
        follow = lines[at + 1] if at + 1 < len(lines) else ""
        if follow.startswith(f"  rejected: {printable(expected)} (qrcode): "):
            assert "does not match" in follow
            rejected += 1
    assert rejected >= len(photos) - 1  # zxing-cpp reads all 8 of qrcode-1; allow one miss

    assert main(["decode", "--json", *map(str, photos)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert all(r["accepted"] == [] and r["error"] is None for r in results)
    assert sum(bool(r["rejected"]) for r in results) >= len(photos) - 1
