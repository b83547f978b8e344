"""``parcel-sorter trace``: where a parcel went and why, on the line's own box.

The journal's record of the parcel, and, when the line config has ``[diagnostics]``, the
live controller's answer to the ``trace`` command (docs/diagnostics-protocol.md), which adds
the line I/O messages sent and received for it. The CLI adds the command with
:func:`add_trace_command`; its handler is the parsed arguments' ``tool_handler``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import aiomqtt

from controller import journal
from controller.config import LineConfig, load_config
from controller.errors import SorterError

DEFAULT_TIMEOUT_S = 2.0
_JOURNAL_FIELDS = {"parcel_id": "parcel", "code": "code", "order_id": "order",
                   "disposition": "disposition", "bin": "bin", "reason": "reason",
                   "inducted_at": "inducted_at", "final_at": "final_at"}


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class JournalUnreadable(SorterError):
    """The journal the config names cannot be read."""


def add_trace_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``trace`` to the CLI's subcommands."""
    p = sub.add_parser(
        "trace", help="where a parcel went and why (journal, and the live controller's log)",
        description="The journal's record of a parcel (the newest, for a code read more than "
                    "once) and, when the config has [diagnostics], the live controller's "
                    "line I/O messages for it. Exit 1 when the parcel is not found.")
    p.add_argument("parcel", metavar="PARCEL_OR_CODE",
                   help="a parcel id, or a code (digits are tried as a parcel id first)")
    p.add_argument("--config", type=Path, required=True, metavar="LINE.toml",
                   help="the line config (its journal, and its [diagnostics] broker)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="how long to wait for the live controller (default: %(default)g)")
    p.set_defaults(tool_handler=run_trace)


def run_trace(args: argparse.Namespace) -> int:
    """Handle ``trace``: print the parcel's trace; 1 when it is not found."""
    config = load_config(args.config)
    query: str = args.parcel.strip()
    journal_problem: str | None = None
    try:
        record = read_parcel(config.journal.path, query)
    except JournalUnreadable as exc:
        record, journal_problem = None, str(exc)
    live, note = None, None
    if config.diagnostics is not None:
        live, note = _ask_live(config, query, record, args.timeout)
    if live is not None:
        trace = live
    elif record is not None:
        trace = record
    else:
        print(f"parcel-sorter: {journal_problem or _not_found(query, config.journal.path)}"
              + (f"; {note}" if note else ""), file=sys.stderr)
        return 1
    if note is not None and live is None:
        print(f"parcel-sorter: {note}: the journal's record alone", file=sys.stderr)
    print(json.dumps(trace, indent=2, ensure_ascii=False) if args.json else format_trace(trace))
    return 0


def _not_found(query: str, journal: str) -> str:
    return f"no parcel {query!r} in the journal {journal}"


def read_parcel(path: str | Path, parcel_or_code: str) -> dict[str, Any] | None:
    """The journal's record of a parcel id (digits) or else of a code (its newest parcel),
    in the trace's fields, with ``"messages": None`` (the journal keeps none)."""
    if str(path) == ":memory:":
        raise JournalUnreadable("the config's journal is in memory: nothing to read")
    if not Path(path).is_file():
        raise JournalUnreadable(f"no journal at {path}")
    row = journal.read_parcel(path, parcel_or_code)
    if row is None:
        return None
    record = {name: row.get(column) for column, name in _JOURNAL_FIELDS.items()}
    record["messages"] = None
    return record


def _ask_live(config: LineConfig, query: str, record: dict[str, Any] | None,
              timeout_s: float) -> tuple[dict[str, Any] | None, str | None]:
    """The live controller's trace, or None and why there is none."""
    from controller.app.diag import DEVICE, send_command
    from drivers.mqtt_client import login

    diagnostics = config.diagnostics
    assert diagnostics is not None
    if record is not None:
        fields: dict[str, Any] = {"parcel": record["parcel"]}
    elif query.isdigit() and len(query) < 19:
        fields = {"parcel": int(query)}
    else:
        fields = {"code": query}
    request = {**fields, "transaction": f"trace-{secrets.token_hex(6)}", "by": "trace"}
    try:
        where = login(diagnostics, DEVICE)
        reply = asyncio.run(send_command(where, diagnostics.topic_prefix, config.line.name,
                                         "trace", request, timeout_s=timeout_s))
    except (SorterError, aiomqtt.MqttError) as exc:
        return None, f"cannot ask the live controller: {exc}"
    if reply is None:
        return None, f"no answer from the live controller within {timeout_s:g} s"
    data = reply.get("data")
    if reply.get("status") != "ok" or not isinstance(data, dict):
        return None, f"the live controller answered: {reply.get('error') or 'no trace'}"
    return data, None


def format_trace(trace: dict[str, Any]) -> str:
    """A trace as lines for a person (terminal control characters shown as ``?``)."""
    return _CONTROL.sub("?", _lines(trace))


def _lines(trace: dict[str, Any]) -> str:
    lines = [f"parcel {trace.get('parcel')}  code {trace.get('code')}  "
             f"order {trace.get('order')}",
             f"disposition {trace.get('disposition')}  bin {trace.get('bin')}  "
             f"reason {trace.get('reason')}",
             f"inducted {trace.get('inducted_at')}  final {trace.get('final_at')}"]
    messages = trace.get("messages")
    if not isinstance(messages, list):
        lines.append("messages: unknown (the live controller did not answer)")
        return "\n".join(lines)
    lines.append(f"messages ({len(messages)}):" if messages
                 else "messages: none (older than the controller's message log)")
    for message in messages:
        if not isinstance(message, dict):
            continue
        latency = message.get("latency_ms")
        lines.append(f"  {message.get('at')}  {message.get('direction', ''):<8}  "
                     f"{message.get('link', '')}  {message.get('kind', '')}  "
                     f"{json.dumps(message.get('detail'), ensure_ascii=False)}"
                     + (f"  {latency} ms" if latency is not None else ""))
    return "\n".join(lines)
