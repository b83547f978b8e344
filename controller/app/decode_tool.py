"""``parcel-sorter decode``: why did this label not read? The line's own pipeline on images.

The CLI adds the command with :func:`add_decode_command`; its handler is the parsed
arguments' ``tool_handler``. A :class:`SorterError` is the CLI's exit code 2, an image that
could not be read is exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.app.example_line import EXAMPLE_CONFIG
from controller.codes import CodeRule
from controller.config import LineConfig, load_config
from controller.errors import ConfigError, SorterError
from controller.vision import BarcodeDecoder, GrayImage, Symbol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RejectedRead:
    """A decoded text the code rule refused, and why."""

    text: str
    symbology: str
    why: str


@dataclass(slots=True)
class ImageReads:
    """What the line's pipeline makes of one image file."""

    path: str
    accepted: list[Symbol] = field(default_factory=list)
    rejected: list[RejectedRead] = field(default_factory=list)
    error: str | None = None
    label_types: list[str] = field(default_factory=list)  # of each accepted read

    def as_json(self) -> dict[str, Any]:
        """This result as a JSON-ready mapping."""
        return {
            "path": self.path,
            "accepted": [{"text": s.text, "symbology": s.symbology, "x": s.x, "y": s.y,
                          "label_type": label}
                         for s, label in zip(self.accepted, self.label_types, strict=True)],
            "rejected": [{"text": r.text, "symbology": r.symbology, "why": r.why}
                         for r in self.rejected],
            "error": self.error,
        }


def read_gray(path: Path) -> GrayImage:
    """Read an image file as 8-bit gray with OpenCV; raise ValueError saying why not."""
    import cv2
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    image = None
    if data:
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
        except cv2.error:
            image = None
    if image is None or image.size == 0:
        raise ValueError("not an image OpenCV can read")
    return np.ascontiguousarray(image, dtype=np.uint8)


def decode_image(path: Path, decoder: BarcodeDecoder, rule: CodeRule) -> ImageReads:
    """Read, decode and judge one image file; errors go into the result, never raise."""
    import cv2

    result = ImageReads(str(path))
    try:
        symbols = decoder.decode(read_gray(path))
    except (ValueError, SorterError, cv2.error) as exc:
        result.error = str(exc)
        return result
    for symbol in symbols:
        label = rule.classify(symbol.text, symbol.symbology)
        if label is not None:
            result.accepted.append(symbol)
            result.label_types.append(label.name)
        else:
            why = rule.why_rejected(symbol.text, symbol.symbology) or ""
            result.rejected.append(RejectedRead(symbol.text, symbol.symbology, why))
    return result


def printable(text: str) -> str:
    """``text`` with control characters escaped, so one read stays on one line."""
    return "".join(c if c.isprintable() else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)


def format_reads(result: ImageReads, *, show_rejected: bool = False) -> list[str]:
    """The text lines for one image: path and accepted codes, then rejections if asked."""
    if result.error is not None:
        return [f"{result.path}: error: {result.error}"]
    head = " ".join([result.path, *(f"{printable(s.text)} ({s.symbology})"
                                    for s in result.accepted)])
    lines = [head]
    if show_rejected:
        lines += [f"  rejected: {printable(r.text)} ({r.symbology}): {r.why}"
                  for r in result.rejected]
    return lines


# -- decode command --------------------------------------------------------------------


def add_decode_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``decode IMAGE...`` to the CLI's subcommands."""
    p = sub.add_parser(
        "decode", help="run the line's decode-and-accept pipeline on image files",
        description="Decode image files as the line does and print, per image, its path "
                    "and each accepted code with its symbology (--all: also what was "
                    "refused and why).")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--config", type=Path, default=None,
                   help="line config TOML (default: the packaged example line)")
    p.add_argument("--camera", default=None,
                   help="use this camera's decoder (default: the first camera's)")
    p.add_argument("--decoder", default=None,
                   help="decoder name instead of the camera's (located-zxing, zxing, ...)")
    p.add_argument("--formats", default=None,
                   help="comma-separated symbologies, e.g. code128,qrcode (default: those "
                        "the line's label types name)")
    p.add_argument("--all", action="store_true", dest="show_rejected",
                   help="also print the reads the code rule refused, and why")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(tool_handler=run_decode)


def _decoder_for(config: LineConfig, camera: str | None, name: str | None,
                 formats: str | None) -> BarcodeDecoder:
    from drivers.decoders import line_formats, make_decoder

    if camera is None:
        cam = config.cameras[0]
    else:
        found = [c for c in config.cameras if c.id == camera]
        if not found:
            known = ", ".join(c.id for c in config.cameras)
            raise ConfigError("--camera", [("camera", f"no camera {camera!r}; known: {known}")],
                              what="option")
        cam = found[0]
    if formats is None:  # the line's: what its label types name
        return make_decoder(name or cam.decoder, line_formats(config))
    return make_decoder(name or cam.decoder,
                        [f for f in (part.strip() for part in formats.split(",")) if f])


def run_decode(args: argparse.Namespace) -> int:
    """Handle ``decode``: 0 if every image was read, 1 if any could not be."""
    config = load_config(args.config or EXAMPLE_CONFIG)
    decoder = _decoder_for(config, args.camera, args.decoder, args.formats)
    rule = CodeRule(config.decision)
    results = [decode_image(path, decoder, rule) for path in args.images]
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2, ensure_ascii=False))
    else:
        for result in results:
            for line in format_reads(result, show_rejected=args.show_rejected):
                print(line)
    return 1 if any(r.error is not None for r in results) else 0
