"""Barcode decoder backends, chosen by name.

=================  ==============================================================
``zxing``          zxing-cpp on the whole image
``pyzbar``         pyzbar (libzbar) on the whole image
``located-zxing``  OpenCV locates linear codes, zxing-cpp reads the straightened
                   crops; 2-D codes by zxing-cpp on the whole image (the default)
``located-pyzbar`` the same with pyzbar reading the crops
=================  ==============================================================

Backends are imported only when asked for, so pyzbar is never loaded unless chosen.

A line's decoders look for exactly the symbologies its label types name
(:func:`make_line_decoders`): every symbology looked for is one more way to misread
texture as a code, and costs decoding time.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import cast

from controller.config import LineConfig
from controller.errors import ConfigError, DriverUnavailable
from controller.vision import BarcodeDecoder

from ._common import SYMBOLOGIES

__all__ = ["DEFAULT_DECODER", "available_decoders", "line_formats", "make_decoder",
           "make_line_decoders"]

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
    """Build the decoder called ``name`` that looks for ``formats`` (lowercase names; none:
    every symbology it reads).

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


def line_formats(config: LineConfig, source: str = "<config>") -> tuple[str, ...]:
    """The symbologies the line's label types name (empty: any); ConfigError for unknown ones."""
    problems = [
        (f"decision.label_types[{i}].symbologies",
         f"label type {label.name!r}: unknown symbology {name!r}; known: {', '.join(SYMBOLOGIES)}")
        for i, label in enumerate(config.decision.label_types)
        for name in label.symbologies if name.strip().lower() not in SYMBOLOGIES]
    if problems:
        raise ConfigError(source, problems)
    return config.symbologies


def make_line_decoders(config: LineConfig, source: str = "<config>") -> dict[str, BarcodeDecoder]:
    """Each camera's decoder, looking for :func:`line_formats` and nothing else.

    A camera whose decoder cannot read a symbology a label type names is a ConfigError
    naming both (plain ``pyzbar`` reads no DataMatrix, PDF417, Aztec or MaxiCode).
    """
    formats = line_formats(config, source)
    decoders: dict[str, BarcodeDecoder] = {}
    problems: list[tuple[str, str]] = []
    for i, camera in enumerate(config.cameras):
        decoder = make_decoder(camera.decoder, formats)
        reads = set(getattr(decoder, "formats", formats))
        for label in config.decision.label_types:
            missing = [f for f in label.symbologies if f.strip().lower() not in reads]
            if missing:
                problems.append((f"cameras[{i}].decoder",
                                 f"{camera.id}: decoder {camera.decoder!r} cannot read "
                                 f"{', '.join(missing)}, which label type {label.name!r} names"))
        decoders[camera.id] = decoder
    if problems:
        raise ConfigError(source, problems)
    return decoders
