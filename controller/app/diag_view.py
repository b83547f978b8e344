"""What ``parcel-sorter diag`` knows of a line, and how it draws it.

:class:`LineView` holds the latest diagnostics of one line (docs/diagnostics-protocol.md):
fed ``(topic, payload)`` pairs, it keeps the status, metrics, devices and the latest
exceptions, and counts every payload it cannot use instead of failing on it.
:func:`render` draws it with rich; nothing here touches a terminal or a broker.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

MAX_PAYLOAD = 64 * 1024
"""A payload longer than this is counted as bad, unread."""
EVENTS_SHOWN = 10
MAX_DEVICES = 256
"""Devices kept at most: a flood of made-up device ids is counted as bad, not stored."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_STATE_STYLES = {"running": "bold green", "paused": "bold yellow", "maintenance": "bold yellow",
                 "starting": "bold cyan", "stopping": "bold cyan", "faulted": "bold red",
                 "offline": "bold red"}


class BadMessage(ValueError):
    """A payload that is not what the protocol says its topic carries."""


@dataclass
class LineView:
    """The latest of one line's diagnostics topics under ``prefix``.

    ``line`` None: the first line whose message arrives is the one kept.
    """

    prefix: str = "sorter"
    line: str | None = None
    status: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    metrics_received: float | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_SHOWN))
    last_reply: dict[str, Any] | None = None
    received: int = 0
    bad_messages: int = 0
    last_bad: str | None = None
    connection: str = "connecting"
    now: Callable[[], float] = time.monotonic

    def feed(self, topic: str, payload: bytes | bytearray | str) -> bool:
        """Take one message; False if it was not this line's diagnostics or was bad."""
        parts = self._parts(topic)
        if parts is None:
            return False
        self.received += 1
        try:
            self._take(parts, _object(payload))
        except BadMessage as exc:
            self.bad_messages += 1
            self.last_bad = _clean(f"{topic}: {exc}", 160)
            return False
        return True

    def _parts(self, topic: str) -> list[str] | None:
        head = self.prefix.rstrip("/") + "/"
        if not topic.startswith(head):
            return None
        line, _, rest = topic[len(head):].partition("/")
        if not line or not rest or (self.line is not None and line != self.line):
            return None
        parts = rest.split("/")
        if not _diagnostics_topic(parts):
            return None  # line I/O, a command request, a reply of another client
        self.line = line
        return parts

    def _take(self, parts: list[str], data: dict[str, Any]) -> None:
        kind = parts[0]
        if kind == "status":
            _need(data, "state", str)
            for key in ("reason", "since", "version"):
                _maybe(data, key, str)
            self.status = data
        elif kind == "metrics":
            _check_metrics(data)
            self.metrics, self.metrics_received = data, self.now()
        elif kind == "devices":
            _need(data, "state", str)
            _maybe(data, "last_seen", str)
            _maybe(data, "kind", str)
            if parts[1] not in self.devices and len(self.devices) >= MAX_DEVICES:
                raise BadMessage(f"more than {MAX_DEVICES} devices")
            self.devices[parts[1]] = data
        elif kind == "events":
            _maybe(data, "at", str)
            self.events.appendleft({**data, "kind": parts[1]})
        else:  # cmd/<verb>/response
            _maybe(data, "status", str)
            self.last_reply = {**data, "verb": parts[1]}


def _diagnostics_topic(parts: list[str]) -> bool:
    kind, n = parts[0], len(parts)
    return ((kind in ("status", "metrics") and n == 1)
            or (kind in ("devices", "events") and n == 2 and bool(parts[1]))
            or (kind == "cmd" and n == 3 and parts[2] == "response"))


def _object(payload: bytes | bytearray | str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise BadMessage(f"payload of {len(payload)} bytes, over {MAX_PAYLOAD}")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadMessage(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise BadMessage(f"a JSON {type(data).__name__}, not an object")
    return data


def _need(data: Mapping[str, Any], key: str, kind: type) -> None:
    if not isinstance(data.get(key), kind):
        raise BadMessage(f"{key!r} missing or not a {kind.__name__}")


def _maybe(data: Mapping[str, Any], key: str, kind: type) -> None:
    if data.get(key) is not None and not isinstance(data[key], kind):
        raise BadMessage(f"{key!r} is not a {kind.__name__}")


def _check_metrics(data: Mapping[str, Any]) -> None:
    for key in ("parcels_per_minute", "read_rate", "uptime_s", "open_parcels"):
        if data.get(key) is not None and _number(data[key]) is None:
            raise BadMessage(f"{key!r} is not a number")
    for key in ("dispositions", "bins", "decision_ms", "divert_ms", "diagnostics", "overload"):
        _maybe(data, key, dict)
    for key in ("bins",):
        if any(not isinstance(v, dict) for v in (data.get(key) or {}).values()):
            raise BadMessage(f"a {key!r} entry is not an object")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _clean(value: object, limit: int = 60) -> str:
    """A field as one printable line: control characters (terminal escapes) replaced."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        text = "?"
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cell(value: object, limit: int = 60, style: str = "") -> Text:
    return Text("-" if value is None else _clean(value, limit), style=style)


def _fmt(value: object, spec: str = ".1f", suffix: str = "") -> str:
    number = _number(value)
    return "-" if number is None else f"{number:{spec}}{suffix}"


# --- rendering ----------------------------------------------------------------------------


def render(view: LineView) -> RenderableType:
    """The whole view: status, rates, dispositions, bins beside devices, exceptions."""
    parts: list[RenderableType] = [_status_panel(view)]
    metrics = view.metrics
    if metrics is None:
        parts.append(Text("no metrics yet", style="dim"))
    else:
        parts += [_rates(view, metrics), _dispositions(metrics)]
    # side by side when the terminal is wide enough, else one under the other
    parts += [Columns([_bins_table(metrics or {}), _devices_table(view)], padding=(0, 4)),
              _events_table(view)]
    if view.last_reply is not None:
        reply = view.last_reply
        parts.append(Text(f"last command reply: {_clean(reply.get('verb'))} "
                          f"{_clean(reply.get('status'))} {_clean(reply.get('error') or '')}"))
    return Group(*parts)


def render_text(view: LineView, width: int = 100) -> str:
    """The view as plain text, as a terminal this wide shows it."""
    console = Console(record=True, width=width, color_system=None, force_terminal=False,
                      file=io.StringIO())
    console.print(render(view))
    return console.export_text()


def _status_panel(view: LineView) -> Panel:
    title = f"{view.prefix}/{view.line}" if view.line else f"{view.prefix}/… (no line seen yet)"
    text = Text()
    status = view.status
    if status is None:
        text.append("no status yet", style="bold magenta")
    else:
        state = _clean(status["state"], 20)
        text.append(state.upper(), style=_STATE_STYLES.get(state, "bold"))
        text.append(f"  {_clean(status.get('reason') or '', 80)}")
        text.append(f"\nsince {_clean(status.get('since') or '-')}"
                    f"  version {_clean(status.get('version') or '-', 20)}")
    text.append(f"\nbroker: {_clean(view.connection, 80)}"
                f"  messages {view.received}  bad messages {view.bad_messages}",
                style="red" if view.bad_messages else "dim")
    if view.last_bad:
        text.append(f"\nlast bad: {view.last_bad}", style="red")
    return Panel(text, title=_clean(title, 80), title_align="left")


def _rates(view: LineView, metrics: Mapping[str, Any]) -> Text:
    read_rate = _number(metrics.get("read_rate"))
    age = None if view.metrics_received is None else view.now() - view.metrics_received
    figures = [("parcels/min", _fmt(metrics.get("parcels_per_minute"))),
               ("read rate", "-" if read_rate is None else f"{read_rate:.1%}"),
               ("decision p50/p99", _percentiles(metrics.get("decision_ms"))),
               ("divert p50/p99", _percentiles(metrics.get("divert_ms"))),
               ("open", _fmt(metrics.get("open_parcels"), ".0f")),
               ("lag loop/events", _lags(metrics.get("overload"))),
               ("uptime", _fmt(metrics.get("uptime_s"), ".0f", " s"))]
    text = Text()
    for name, value in figures:
        text.append(f"{name} ", style="bold")
        text.append(f"{value}   ")
    text.append(f"(metrics {_fmt(age, '.0f', ' s')} ago)", style="dim")
    return text


def _lags(overload: object) -> str:
    """The worst loop and event lag, ms: how far the box fell behind the belt."""
    if not isinstance(overload, dict):
        return "-"
    return (f"{_fmt(overload.get('loop_lag_max_ms'), '.0f')}/"
            f"{_fmt(overload.get('event_lag_max_ms'), '.0f')} ms")


def _time_of_day(value: object) -> object:
    """``HH:MM:SS.mmm`` of an ISO 8601 time (the view is of today); other values as they are."""
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        return value[11:23].rstrip("Z")
    return value


def _percentiles(value: object) -> str:
    if not isinstance(value, dict):
        return "-"
    return f"{_fmt(value.get('p50'))}/{_fmt(value.get('p99'))} ms"


def _dispositions(metrics: Mapping[str, Any]) -> Text:
    counts = metrics.get("dispositions") or {}
    text = Text("dispositions: ", style="bold")
    text.append("  ".join(f"{_clean(name, 20)} {_fmt(n, '.0f')}" for name, n in counts.items())
                or "none yet", style="")
    return text


def _bins_table(metrics: Mapping[str, Any]) -> Table:
    table = Table(title="bins", title_justify="left", show_edge=False)
    for name in ("bin", "fill", "in flight", "full"):
        table.add_column(name, no_wrap=True)
    bins = metrics.get("bins") or {}
    if not bins:
        table.add_row(Text("no bins yet", style="dim"), "", "", "")
    for bin_id, entry in bins.items():
        confirmed, capacity = _number(entry.get("confirmed")), _number(entry.get("capacity"))
        fill = _fmt(confirmed, ".0f")
        if confirmed is not None and capacity:
            fill += f"/{capacity:.0f} {confirmed / capacity:.0%}"
        full = entry.get("full") is True
        table.add_row(_cell(bin_id, 20), fill, _fmt(entry.get("in_flight"), ".0f"),
                      Text("FULL", style="bold red") if full else Text("no"))
    return table


def _devices_table(view: LineView) -> Table:
    table = Table(title="devices", title_justify="left", show_edge=False)
    for name in ("device", "state", "last seen", "errors"):
        table.add_column(name, no_wrap=True)
    for device_id, entry in sorted(view.devices.items()):
        state = _clean(entry["state"], 30)
        bad = state.startswith(("failed", "down", "offline", "stalled", "safe"))
        errors = entry.get("errors")
        shown_errors = " ".join(f"{_clean(k, 20)} {_clean(v, 12)}" for k, v in errors.items()
                                if v) if isinstance(errors, dict) else ""
        table.add_row(_cell(device_id, 30), Text(state, style="red" if bad else "green"),
                      _cell(_time_of_day(entry.get("last_seen"))),
                      Text(shown_errors[:40], style="yellow"))
    if not view.devices:
        table.add_row(Text("no devices yet", style="dim"), "", "", "")
    return table


def _events_table(view: LineView) -> Table:
    table = Table(title=f"latest exceptions (of the last {EVENTS_SHOWN})", title_justify="left",
                  show_edge=False)
    for name in ("at", "kind", "parcel", "code", "bin", "device", "reason"):
        table.add_column(name, no_wrap=name != "reason")
    for event in view.events:
        table.add_row(_cell(_time_of_day(event.get("at"))), _cell(event["kind"], 20, "yellow"),
                      _cell(event.get("parcel"), 12), _cell(event.get("code"), 24),
                      _cell(event.get("bin"), 12), _cell(event.get("device"), 20),
                      _cell(event.get("reason"), 50))
    if not view.events:
        table.add_row(Text("none yet", style="dim"), "", "", "", "", "", "")
    return table
