"""Barcode decoding with pyzbar (libzbar) on the whole image."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyzbar import pyzbar as zbar

from controller.vision import GrayImage, Symbol

from ._common import Found, check_formats, decode_text, decode_with, quad_found

log = logging.getLogger(__name__)

#: project name -> zbar symbol type; zbar has no DataMatrix, Aztec or MaxiCode, and
#: libzbar's PDF417 decoder is disabled in common builds, so those are ignored.
TO_ZBAR: dict[str, zbar.ZBarSymbol] = {
    "code128": zbar.ZBarSymbol.CODE128,
    "code39": zbar.ZBarSymbol.CODE39,
    "code93": zbar.ZBarSymbol.CODE93,
    "codabar": zbar.ZBarSymbol.CODABAR,
    "ean13": zbar.ZBarSymbol.EAN13,
    "ean8": zbar.ZBarSymbol.EAN8,
    "upca": zbar.ZBarSymbol.UPCA,
    "upce": zbar.ZBarSymbol.UPCE,
    "itf": zbar.ZBarSymbol.I25,
    "qrcode": zbar.ZBarSymbol.QRCODE,
}
_FROM_ZBAR: dict[str, str] = {
    "CODE128": "code128",
    "CODE39": "code39",
    "CODE93": "code93",
    "CODABAR": "codabar",
    "EAN13": "ean13",
    "EAN8": "ean8",
    "UPCA": "upca",
    "UPCE": "upce",
    "I25": "itf",
    "QRCODE": "qrcode",
}


class PyzbarDecoder:
    """pyzbar over the whole image, looking only for the ``formats`` zbar knows.

    ``formats`` holds those it looks for: the asked-for ones zbar reads (none asked for:
    every one it reads).
    """

    name = "pyzbar"

    def __init__(self, formats: Sequence[str] = ("code128", "qrcode")) -> None:
        self.formats = tuple(f for f in check_formats(formats, every=tuple(TO_ZBAR))
                             if f in TO_ZBAR)
        self._symbols = [TO_ZBAR[f] for f in self.formats]

    def decode(self, image: GrayImage) -> list[Symbol]:
        return decode_with(self.find, image)

    def find(self, gray: GrayImage) -> list[Found]:
        """Reads in ``gray`` (already 2-D uint8) with their sizes; [] on any library error."""
        if not self._symbols:  # pyzbar treats an empty list as "everything"
            return []
        try:
            results = zbar.decode(gray, symbols=self._symbols)
            found = []
            for r in results:
                # zbar's polygon holds the scan-line end points; the centre of their
                # bounding rectangle is the code's centre.
                left, top, width, height = r.rect
                corners = [
                    (left, top),
                    (left + width, top),
                    (left + width, top + height),
                    (left, top + height),
                ]
                symbology = _FROM_ZBAR.get(r.type, r.type.lower())
                found.append(quad_found(decode_text(r.data), symbology, corners))
        except Exception:  # a library failure must not reach the controller
            log.warning("pyzbar failed on a %s image", gray.shape, exc_info=True)
            return []
        return found
