"""``parcel-sorter archive``: list or export the no-read archive, for keying codes by hand.

The CLI adds the command with :func:`add_archive_command`; its handlers are the parsed
arguments' ``tool_handler``.
"""

from __future__ import annotations

import argparse
import json
import logging
import zipfile
from pathlib import Path

from controller.app.decode_tool import printable
from controller.archive import NoReadArchive, entry_as_json, open_archive
from controller.config import ArchiveConfig, load_config
from controller.errors import ArchiveError

log = logging.getLogger(__name__)

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


def _open_archive(args: argparse.Namespace) -> NoReadArchive:
    section = ArchiveConfig(path=str(args.archive)) if args.archive is not None \
        else load_config(args.config).archive
    archive = open_archive(section)
    if archive is None:
        raise ArchiveError(f"{args.config} has no [archive] section with a path: "
                           "give --archive DIR")
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
