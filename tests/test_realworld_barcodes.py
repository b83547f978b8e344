"""The default decoding pipeline on real photographs and scans (shared/realworld-barcodes).

The image set sits in the ``shared`` folder beside the checkout and is not part of the
repository; without it these tests skip. Texts are compared on letters and digits only,
since tools differ in GS1 brackets and in how they show control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.decoders import DEFAULT_DECODER, make_decoder
from drivers.decoders._common import SYMBOLOGIES

ROOT = Path(__file__).resolve().parents[2] / "shared" / "realworld-barcodes"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}

#: folder -> (formats asked for, min correct reads, max wrong reads); floors sit a little
#: below what located-zxing measured (zxing-cpp 3.1.1, OpenCV 5.0): code128-1 6/6,
#: code128-2 14/14, datamatrix-1 29/30 (eci-mixed holds binary, read as ""),
#: datamatrix-2 13/13, qrcode-1 8/8, qrcode-2 53/56 (3 of them light on dark),
#: code39-1 6/6, ean13-1 15/16, itf-1 14/14, pdf417-1 16/17 (09 holds binary, which
#: zxing-cpp shows as other text), falsepositives-1 nothing. Whole-image zxing-cpp, asked
#: for every symbology, read no more in any folder (bench/realworld.py).
EXPECTED: dict[str, tuple[tuple[str, ...], int, int]] = {
    "code128-1": (("code128",), 5, 0),
    "code128-2": (("code128",), 13, 0),
    "datamatrix-1": (("datamatrix",), 28, 1),
    "datamatrix-2": (("datamatrix",), 12, 0),
    "qrcode-1": (("qrcode",), 7, 0),
    "qrcode-2": (("qrcode",), 52, 0),
    "code39-1": (("code39",), 5, 0),
    "ean13-1": (("ean13",), 14, 0),
    "itf-1": (("itf",), 13, 0),
    "pdf417-1": (("pdf417",), 15, 1),
    "falsepositives-1": (SYMBOLOGIES, 0, 0),
}

pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"no real-world image set at {ROOT}")


def letters_and_digits(text: str) -> str:
    """Drop <GS>-style control-character names, then keep letters and digits only."""
    return "".join(c for c in re.sub(r"<[A-Z]{2,3}>", "", text) if c.isalnum())


def expected_text(image: Path) -> str | None:
    for suffix in (".txt", ".bin"):
        path = image.with_suffix(suffix)
        if path.exists():
            return letters_and_digits(path.read_bytes().decode("utf-8", errors="replace"))
    return None


@dataclass
class Tally:
    total: int = 0
    read: int = 0
    wrong: int = 0
    unloadable: int = 0  # OpenCV cannot decode the file (two 1-pixel-high WebP images)
    notes: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tallies() -> dict[str, Tally]:
    result: dict[str, Tally] = {}
    for folder, (formats, _, _) in EXPECTED.items():
        decoder = make_decoder(DEFAULT_DECODER, formats)
        tally = result[folder] = Tally()
        for image in sorted((ROOT / folder).iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            tally.total += 1
            gray = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                tally.unloadable += 1
                continue
            symbols = decoder.decode(np.asarray(gray, dtype=np.uint8))
            want = expected_text(image)
            if want is not None and any(letters_and_digits(s.text) == want for s in symbols):
                tally.read += 1
            elif symbols:
                tally.wrong += 1
                tally.notes.append(f"{image.name}: {[s.text[:40] for s in symbols]}")
    print(f"\n{DEFAULT_DECODER} on {ROOT}")
    print(f"{'folder':<18}{'read':>6}{'wrong':>7}{'total':>7}{'unloadable':>12}")
    for folder, t in result.items():
        print(f"{folder:<18}{t.read:>6}{t.wrong:>7}{t.total:>7}{t.unloadable:>12}")
        for note in t.notes:
            print(f"    wrong: {note}")
    return result


@pytest.mark.parametrize("folder", list(EXPECTED))
def test_read_rate(folder: str, tallies: dict[str, Tally]) -> None:
    _, min_read, max_wrong = EXPECTED[folder]
    tally = tallies[folder]
    assert tally.total > 0
    assert tally.read >= min_read, tally
    assert tally.wrong <= max_wrong, tally


def test_false_positives_give_nothing(tallies: dict[str, Tally]) -> None:
    tally = tallies["falsepositives-1"]
    assert tally.total - tally.unloadable >= 19
    assert (tally.read, tally.wrong) == (0, 0)
