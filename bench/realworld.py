"""Real barcode photographs (shared/realworld-barcodes): our pipeline beside whole-image reads.

Run: ``.venv/bin/python bench/realworld.py``. For each folder, the line's pipeline
(``located-zxing``, asked for the folder's symbology as a line would configure it) beside
zxing-cpp and pyzbar each reading the whole image asked for every symbology they know:
correct reads, wrong reads (a text that is not the expected one) and images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.decoders import DEFAULT_DECODER, make_decoder  # noqa: E402
from drivers.decoders._common import SYMBOLOGIES  # noqa: E402
from tests.test_realworld_barcodes import (  # noqa: E402
    EXPECTED,
    IMAGE_SUFFIXES,
    expected_text,
    letters_and_digits,
)
from tests.test_realworld_barcodes import ROOT as IMAGES  # noqa: E402


def tally(decoder_name: str, formats: tuple[str, ...], folder: Path) -> tuple[int, int, int]:
    decoder = make_decoder(decoder_name, formats)
    read = wrong = total = 0
    for image in sorted(folder.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        total += 1
        gray = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        symbols = decoder.decode(np.asarray(gray, dtype=np.uint8))
        want = expected_text(image)
        if want is not None and any(letters_and_digits(s.text) == want for s in symbols):
            read += 1
        elif symbols:
            wrong += 1
    return read, wrong, total


def main() -> None:
    if not IMAGES.is_dir():
        sys.exit(f"no real-world image set at {IMAGES}")
    every = tuple(SYMBOLOGIES)
    columns = [(f"{DEFAULT_DECODER} (line)", DEFAULT_DECODER, None),
               ("zxing whole image", "zxing", every), ("pyzbar whole image", "pyzbar", every)]
    print(f"{'folder':<18}" + "".join(f"{name:>24}" for name, _, _ in columns))
    print(f"{'':<18}" + "".join(f"{'read/wrong/images':>24}" for _ in columns))
    for folder, (formats, _, _) in EXPECTED.items():
        cells = []
        for _, decoder, asked in columns:
            read, wrong, total = tally(decoder, asked or formats, IMAGES / folder)
            cells.append(f"{read}/{wrong}/{total}")
        print(f"{folder:<18}" + "".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
