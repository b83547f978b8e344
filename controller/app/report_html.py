"""The shift report as one self-contained HTML file: the figures and matplotlib's inline SVG charts.

Nothing in it is fetched: no scripts, no style sheets, no fonts, no images from elsewhere, so
it opens in a browser with no network. The charts: throughput over the shift, dispositions,
the order cycle-time distribution, and each bin's fill over time.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from controller.business_kpis import BusinessReport, ShiftKpis
from controller.order_kpis import JournalParcel

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHARTS = ("throughput", "dispositions", "cycle-time", "bin-fill")
"""The ids of the report's charts, each a ``<figure id="chart-…">`` holding one ``<svg>``."""

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child, #orders td { text-align: left; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; }
"""


def write_html(path: str | Path, report: BusinessReport, *, title: str = "Shift report") -> None:
    Path(path).write_text(render_html(report, title=title), encoding="utf-8")


def render_html(report: BusinessReport, *, title: str = "Shift report") -> str:
    charts: list[tuple[str, str, Callable[[Axes], None]]] = [
        ("throughput", "Throughput over the shift (parcels inducted per minute)",
         lambda ax: _throughput(ax, report.parcels)),
        ("dispositions", "Dispositions", lambda ax: _dispositions(ax, report.total)),
        ("cycle-time", "Order cycle time (created to last parcel sorted)",
         lambda ax: _cycle_times(ax, report.total)),
        ("bin-fill", "Bin fill over time (parcels sorted into each bin)",
         lambda ax: _bin_fill(ax, report.parcels)),
    ]
    figures = "\n".join(
        f'<figure id="chart-{name}"><figcaption>{html.escape(caption)}</figcaption>\n'
        f"{_svg(draw)}</figure>" for name, caption, draw in charts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{_figures_table(report)}\n{_orders_table(report)}\n"
        f"{figures}\n</body></html>\n")


def _figures_table(report: BusinessReport) -> str:
    shifts = report.shifts if len(report.shifts) > 1 else []
    columns = [report.total, *shifts]
    head = "".join(f"<th>{html.escape(s.name)}</th>" for s in columns)
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{html.escape(text)}</td>" for text in (show(s) for s in columns))
        + "</tr>" for label, show in KPI_ROWS)
    return f'<table id="kpis"><tr><th>figure</th>{head}</tr>{rows}</table>'


def _orders_table(report: BusinessReport) -> str:
    flawed = [o for o in report.orders if not o.perfect]
    if not flawed:
        return "<p>Every order seen was perfect.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(o.order_id)}</td><td>{o.sorted}/{o.parcels}</td>"
        f"<td>{html.escape('; '.join(o.problems) or '-')}</td></tr>" for o in flawed[:200])
    more = f"<p>and {len(flawed) - 200} more</p>" if len(flawed) > 200 else ""
    return ('<h2>Orders not perfect</h2><table id="orders"><tr><th>order</th>'
            f"<th>sorted</th><th>why</th></tr>{rows}</table>{more}")


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} min"


KPI_ROWS: Sequence[tuple[str, Callable[[ShiftKpis], str]]] = (
    ("parcels", lambda s: str(s.parcels)),
    ("read rate", lambda s: _pct(s.read_rate)),
    ("sort rate", lambda s: _pct(s.sort_rate)),
    ("mis-sorts", lambda s: str(s.missorts)),
    ("ship accuracy", lambda s: _pct(s.ship_accuracy)),
    ("order-information errors", lambda s: f"{s.order_information_errors} "
                                           f"({_pct(s.order_information_error_rate)})"),
    ("orders to ship", lambda s: str(s.orders)),
    ("fill rate", lambda s: _pct(s.fill_rate)),
    ("on time (of orders with a promise)", lambda s: _pct(s.on_time_rate)),
    ("perfect-order rate (SCOR)", lambda s: _pct(s.perfect_order_rate)),
    ("perfect-order index (APQC)", lambda s: _pct(s.apqc_perfect_order_index)),
    ("order cycle time, median", lambda s: _minutes(s.cycle_time_median_min)),
    ("order cycle time, p95", lambda s: _minutes(s.cycle_time_p95_min)),
)
"""The report's table of figures: a label and how to show it, for the HTML and the terminal."""


_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}
"""No RDF block in each chart: it is bytes and namespaces, nothing a reader sees."""


def _svg(draw: Callable[[Axes], None]) -> str:
    from matplotlib import rc_context
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    # Text as text (the browser's fonts), and ids that are the same run to run.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "parcel-sorter"}):
        figure = Figure(figsize=(8, 3.2), layout="constrained")
        FigureCanvasSVG(figure)
        draw(figure.add_subplot())
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata=_NO_METADATA)
    text = out.getvalue()
    return text[text.index("<svg"):]  # the XML prolog and doctype have no place in HTML


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _throughput(ax: Axes, parcels: Sequence[JournalParcel]) -> None:
    if not parcels:
        _no_data(ax)
        return
    start = min(p.inducted_at for p in parcels)
    per_minute = Counter(int((p.inducted_at - start) // 60) for p in parcels)
    minutes = range(max(per_minute) + 1)
    ax.bar(list(minutes), [per_minute.get(m, 0) for m in minutes], width=0.9, color="#4c72b0")
    ax.set_xlabel("minute of the shift")
    ax.set_ylabel("parcels / min")


def _dispositions(ax: Axes, shift: ShiftKpis) -> None:
    if not shift.dispositions:
        _no_data(ax)
        return
    names = list(shift.dispositions)
    ax.barh(names, [shift.dispositions[n] for n in names], color="#55a868")
    ax.invert_yaxis()
    ax.set_xlabel("parcels")


def _cycle_times(ax: Axes, shift: ShiftKpis) -> None:
    if not shift.cycle_times_s:
        _no_data(ax)
        return
    minutes = [t / 60 for t in shift.cycle_times_s]
    ax.hist(minutes, bins=min(30, max(5, len(minutes) // 3)), color="#c44e52")
    if shift.cycle_time_median_min is not None:
        ax.axvline(shift.cycle_time_median_min, color="#222", linestyle="--", label="median")
    if shift.cycle_time_p95_min is not None:
        ax.axvline(shift.cycle_time_p95_min, color="#888", linestyle=":", label="p95")
    ax.legend()
    ax.set_xlabel("minutes")
    ax.set_ylabel("orders")


def _bin_fill(ax: Axes, parcels: Sequence[JournalParcel]) -> None:
    """Parcels sorted into each bin so far: the journal does not know when a bin was emptied."""
    sorted_parcels = sorted((p for p in parcels if p.in_bin and p.final_at is not None),
                            key=lambda p: p.final_at or 0.0)
    if not sorted_parcels:
        _no_data(ax)
        return
    start = min(p.inducted_at for p in parcels)
    end = (max(p.final_at or p.inducted_at for p in parcels) - start) / 60
    by_bin: dict[str, list[float]] = {}
    for p in sorted_parcels:
        by_bin.setdefault(p.bin or "?", []).append(((p.final_at or 0.0) - start) / 60)
    for name in sorted(by_bin):
        times = by_bin[name]
        ax.step([0.0, *times, end], [*range(len(times) + 1), len(times)], where="post",
                label=name)
    ax.set_xlabel("minute of the shift")
    ax.set_ylabel("parcels in bin")
    ax.legend(fontsize="small", ncol=min(6, len(by_bin)))
