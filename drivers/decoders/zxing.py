"""Barcode decoding with zxing-cpp (3.x) on the whole image."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import zxingcpp

from controller.vision import GrayImage, Symbol

from ._common import Found, check_formats, decode_with, quad_found

log = logging.getLogger(__name__)

_F = zxingcpp.BarcodeFormat
#: project name -> the zxing-cpp format to ask for
TO_ZXING: dict[str, zxingcpp.BarcodeFormat] = {
    "code128": _F.Code128,
    "code39": _F.Code39,
    "code93": _F.Code93,
    "codabar": _F.Codabar,
    "ean13": _F.EAN13,
    "ean8": _F.EAN8,
    "upca": _F.UPCA,
    "upce": _F.UPCE,
    "itf": _F.ITF,
    "qrcode": _F.QRCode,
    "datamatrix": _F.DataMatrix,
    "pdf417": _F.PDF417,
    "aztec": _F.Aztec,
    "maxicode": _F.MaxiCode,
}
#: zxing-cpp symbology (``Barcode.symbology.name``) -> project name
_FROM_SYMBOLOGY: dict[str, str] = {
    "Code128": "code128",
    "Code39": "code39",
    "Code93": "code93",
    "Codabar": "codabar",
    "ITF": "itf",
    "QRCode": "qrcode",
    "DataMatrix": "datamatrix",
    "PDF417": "pdf417",
    "Aztec": "aztec",
    "MaxiCode": "maxicode",
}
#: zxing-cpp reports EAN/UPC codes under the EANUPC symbology; the format tells them apart.
_FROM_FORMAT: dict[str, str] = {"EAN13": "ean13", "EAN8": "ean8", "UPCA": "upca", "UPCE": "upce"}


def symbology_name(barcode: zxingcpp.Barcode) -> str:
    """The project's lowercase name for what zxing-cpp read."""
    fmt = barcode.format.name
    if fmt in _FROM_FORMAT:
        return _FROM_FORMAT[fmt]
    return _FROM_SYMBOLOGY.get(barcode.symbology.name, fmt.lower())


class ZxingDecoder:
    """zxing-cpp over the whole image, looking only for ``formats`` (none: every one it reads).

    ``try_invert`` is off unless asked for: labels are dark on light, and the inverted pass
    doubles the cost of every frame. ``try_rotate`` stays on so 90°/270° linear codes read.
    """

    name = "zxing"

    def __init__(
        self,
        formats: Sequence[str] = ("code128", "qrcode"),
        *,
        try_rotate: bool = True,
        try_downscale: bool = True,
        try_invert: bool = False,
    ) -> None:
        self.formats = check_formats(formats, every=tuple(TO_ZXING))
        self._zx_formats = zxingcpp.BarcodeFormats([TO_ZXING[f] for f in self.formats])
        self._try_rotate = try_rotate
        self._try_downscale = try_downscale
        self._try_invert = try_invert

    def decode(self, image: GrayImage) -> list[Symbol]:
        return decode_with(self.find, image)

    def find(self, gray: GrayImage) -> list[Found]:
        """Reads in ``gray`` (already 2-D uint8) with their sizes; [] on any library error."""
        try:
            barcodes = zxingcpp.read_barcodes(
                gray,
                formats=self._zx_formats,
                try_rotate=self._try_rotate,
                try_downscale=self._try_downscale,
                try_invert=self._try_invert,
            )
            found = []
            for b in barcodes:
                p = b.position
                corners = (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
                found.append(quad_found(b.text, symbology_name(b), ((c.x, c.y) for c in corners)))
        except Exception:  # a library failure must not reach the controller
            log.warning("zxing-cpp failed on a %s image", gray.shape, exc_info=True)
            return []
        return found
