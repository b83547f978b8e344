"""Operator tools: ``decode`` (why did this label not read?) and ``archive`` (the no-reads).

``controller.cli`` wires them in with :func:`add_decode_command`,
:func:`add_archive_command` and :func:`run_tool`; a :class:`SorterError` from a handler is
the CLI's exit code 2, a per-image error is exit code 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.archive import ArchiveError, NoReadArchive, entry_as_json
from controller.codes import CodeRule, gs1_check_digit
from controller.config import DecisionConfig, LineConfig, load_config
from controller.errors import ConfigError, SorterError
from controller.vision import BarcodeDecoder, GrayImage, Symbol

TOOL_COMMANDS = ("decode", "archive")
DEFAULT_ARCHIVE_MAX_PARCELS = 1000
DEFAULT_ARCHIVE_MAX_MB = 500.0
NOT_PATTERN = "does not match the code pattern"
BAD_CHECK_DIGIT = "bad check digit"


def why_rejected(rule_config: DecisionConfig, text: str,
                 symbology: str = "code128") -> str | None:
    """Why the line's code rule refuses a read (None if it accepts it)."""
    return _judge(rule_config, text, symbology)[0]


def _judge(rule_config: DecisionConfig, text: str, symbology: str) -> tuple[str | None, str | None]:
    """(why refused or None, accepting label type's name or None), as the line judges reads."""
    rule = CodeRule(rule_config)
    explain = getattr(rule, "why_rejected", None)
    if explain is not None:  # a CodeRule that explains itself (label types): its own words
        why: str | None = explain(text, symbology)
        label = None if why is not None else getattr(rule.classify(text, symbology), "name", None)
        return why, label
    # A CodeRule with one code pattern and check digit: the same test, told apart.
    if not re.fullmatch(str(getattr(rule_config, "code_pattern", "")), text):
        return NOT_PATTERN, None
    if getattr(rule_config, "check_digit", "none") == "gs1-mod10" and not (
            text.isdigit() and len(text) > 1 and gs1_check_digit(text[:-1]) == int(text[-1])):
        return BAD_CHECK_DIGIT, None
    return None, None


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
    label_types: list[str | None] = field(default_factory=list)  # of each accepted read

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


def decode_image(path: Path, decoder: BarcodeDecoder, rule: DecisionConfig) -> ImageReads:
    """Read, decode and judge one image file; errors go into the result, never raise."""
    import cv2

    result = ImageReads(str(path))
    try:
        symbols = decoder.decode(read_gray(path))
    except (ValueError, SorterError, cv2.error) as exc:
        result.error = str(exc)
        return result
    for symbol in symbols:
        why, label = _judge(rule, symbol.text, symbol.symbology)
        if why is None:
            result.accepted.append(symbol)
            result.label_types.append(label)
        else:
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
                   help="line config TOML (default: deploy/line.example.toml)")
    p.add_argument("--camera", default=None,
                   help="use this camera's decoder (default: the first camera's)")
    p.add_argument("--decoder", default=None,
                   help="decoder name instead of the camera's (located-zxing, zxing, ...)")
    p.add_argument("--formats", default=None,
                   help="comma-separated symbologies, e.g. code128,qrcode (default: the line's)")
    p.add_argument("--all", action="store_true", dest="show_rejected",
                   help="also print the reads the code rule refused, and why")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(tool_handler=run_decode)


def _decoder_for(config: LineConfig, camera: str | None, name: str | None,
                 formats: str | None) -> BarcodeDecoder:
    from drivers.decoders import make_decoder

    if camera is None:
        cam = config.cameras[0]
    else:
        found = [c for c in config.cameras if c.id == camera]
        if not found:
            known = ", ".join(c.id for c in config.cameras)
            raise ConfigError("--camera", [("camera", f"no camera {camera!r}; known: {known}")],
                              what="option")
        cam = found[0]
    chosen: Sequence[str] | None = getattr(cam, "formats", None)
    if formats is not None:
        chosen = [f for f in (part.strip() for part in formats.split(",")) if f]
    if chosen is None:
        return make_decoder(name or cam.decoder)
    return make_decoder(name or cam.decoder, chosen)


def run_decode(args: argparse.Namespace) -> int:
    """Handle ``decode``: 0 if every image was read, 1 if any could not be."""
    from controller.cli import EXAMPLE_CONFIG

    config = load_config(args.config or EXAMPLE_CONFIG)
    decoder = _decoder_for(config, args.camera, args.decoder, args.formats)
    results = [decode_image(path, decoder, config.decision) for path in args.images]
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2, ensure_ascii=False))
    else:
        for result in results:
            for line in format_reads(result, show_rejected=args.show_rejected):
                print(line)
    return 1 if any(r.error is not None for r in results) else 0


# -- archive command -------------------------------------------------------------------


def add_archive_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``archive list`` and ``archive export`` to the CLI's subcommands."""
    p = sub.add_parser("archive", help="list or export the no-read archive",
                       description="The frames of NO_READ and MULTI_READ parcels, kept so a "
                                   "person can key their codes by hand.")
    actions = p.add_subparsers(dest="archive_command", required=True)
    listing = actions.add_parser("list", help="one line per archived parcel")
    export = actions.add_parser("export", help="write archived parcels to a zip")
    export.add_argument("parcel_ids", type=int, nargs="*", metavar="PARCEL_ID",
                        help="parcels to export (default: all)")
    export.add_argument("--to", type=Path, required=True, metavar="FILE.zip", dest="dest")
    for q in (listing, export):
        where = q.add_mutually_exclusive_group(required=True)
        where.add_argument("--archive", type=Path, default=None, metavar="DIR",
                           help="the archive folder")
        where.add_argument("--config", type=Path, default=None, metavar="LINE.toml",
                           help="take the archive folder from this line config")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(tool_handler=run_archive_list)
    export.set_defaults(tool_handler=run_archive_export)


def archive_from_config(config: LineConfig, config_path: Path) -> NoReadArchive | None:
    """The archive a line config names in its ``[archive]`` section, if it has one."""
    section = getattr(config, "archive", None)
    path = getattr(section, "path", None)
    if section is None or not path:
        return None
    root = Path(path)
    if not root.is_absolute():
        root = config_path.resolve().parent / root
    max_parcels = getattr(section, "max_parcels", None) or DEFAULT_ARCHIVE_MAX_PARCELS
    max_mb = getattr(section, "max_mb", None) or DEFAULT_ARCHIVE_MAX_MB
    return NoReadArchive(root, max_parcels=int(max_parcels),
                         max_bytes=max(1, int(float(max_mb) * 1024 * 1024)))


def _open_archive(args: argparse.Namespace) -> NoReadArchive:
    if args.archive is not None:
        archive = NoReadArchive(args.archive, max_parcels=DEFAULT_ARCHIVE_MAX_PARCELS,
                                max_bytes=int(DEFAULT_ARCHIVE_MAX_MB * 1024 * 1024))
    else:
        # Absolute, so that paths the config loader resolved are not resolved twice.
        found = archive_from_config(load_config(args.config.resolve()), args.config)
        if found is None:
            raise ArchiveError(f"{args.config} has no [archive] section with a path: "
                               "give --archive DIR")
        archive = found
    if not archive.root.is_dir():
        raise ArchiveError(f"no archive at {archive.root}")
    return archive


def run_archive_list(args: argparse.Namespace) -> int:
    """Handle ``archive list``: one line per archived parcel, oldest first."""
    entries = _open_archive(args).entries()
    if args.json:
        print(json.dumps([entry_as_json(e) for e in entries], indent=2, ensure_ascii=False))
        return 0
    for e in entries:
        codes = ",".join(printable(c) for c in e.codes) or "-"
        print(f"{e.parcel_id:>8}  {e.disposition:<10}  {printable(e.reason)}  codes: {codes}  "
              f"frames: {len(e.frame_files)}  {e.wall_time}")
    return 0


def run_archive_export(args: argparse.Namespace) -> int:
    """Handle ``archive export``: the chosen parcels (all if none named) to a zip."""
    archive = _open_archive(args)
    ids: list[int] | None = list(args.parcel_ids) or None
    dest = archive.export(ids, args.dest)
    with zipfile.ZipFile(dest) as zf:
        count = sum(1 for name in zf.namelist() if name.endswith("/meta.json"))
    print(f"exported {count} parcel{'s' if count != 1 else ''} to {dest}")
    return 0


def run_tool(args: argparse.Namespace) -> int:
    """Run the handler the parsed ``decode`` or ``archive`` command chose."""
    handler = args.tool_handler
    result: int = handler(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run just these tools (for tests and until cli.py wires them): exit 2 on SorterError."""
    parser = argparse.ArgumentParser(prog="parcel-sorter")
    sub = parser.add_subparsers(dest="command", required=True)
    add_decode_command(sub)
    add_archive_command(sub)
    args = parser.parse_args(argv)
    try:
        return run_tool(args)
    except SorterError as exc:
        print(f"parcel-sorter: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
