"""Barcode decoder backends, chosen by name.

=================  ==============================================================
``zxing``          zxing-cpp on the whole image
``pyzbar``         pyzbar (libzbar) on the whole image
``located-zxing``  OpenCV locates linear codes, zxing-cpp reads the straightened
                   crops; 2-D codes by zxing-cpp on the whole image (the default)
``located-pyzbar`` the same with pyzbar reading the crops
=================  ==============================================================

Backends are imported only when asked for, so pyzbar is never loaded unless chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import cast

from controller.errors import DriverUnavailable
from controller.vision import BarcodeDecoder

__all__ = ["DEFAULT_DECODER", "available_decoders", "make_decoder"]

DEFAULT_DECODER = "located-zxing"

#: name -> ("module:Class", libraries that must import for it to work)
_BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zxing": ("drivers.decoders.zxing:ZxingDecoder", ("zxingcpp",)),
    "pyzbar": ("drivers.decoders.pyzbar:PyzbarDecoder", ("pyzbar.pyzbar",)),
    "located-zxing": (
        "drivers.decoders.located:LocatedZxingDecoder",
        ("cv2", "zxingcpp"),
    ),
    "located-pyzbar": (
        "drivers.decoders.located:LocatedPyzbarDecoder",
        ("cv2", "zxingcpp", "pyzbar.pyzbar"),
    ),
}


def _import_all(modules: Sequence[str]) -> None:
    for module in modules:
        importlib.import_module(module)


def available_decoders() -> list[str]:
    """Names of the decoders whose libraries import on this machine (this imports them)."""
    names = []
    for name, (_target, libraries) in _BACKENDS.items():
        try:
            _import_all(libraries)
        except (ImportError, OSError):
            continue
        names.append(name)
    return names


def make_decoder(name: str, formats: Sequence[str] = ("code128", "qrcode")) -> BarcodeDecoder:
    """Build the decoder called ``name`` that looks for ``formats`` (lowercase names).

    Raises DriverUnavailable for an unknown name or a missing library, and ConfigError
    for an unknown symbology name.
    """
    try:
        target, libraries = _BACKENDS[name]
    except KeyError:
        known = ", ".join(_BACKENDS)
        raise DriverUnavailable("decoder", f"unknown decoder {name!r}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    try:
        _import_all(libraries)
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, OSError) as exc:
        raise DriverUnavailable("decoder", f"{name!r} needs a library that failed: {exc}") from exc
    return cast("BarcodeDecoder", cls(formats))
