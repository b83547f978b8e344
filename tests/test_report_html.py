"""The HTML report: self-contained, and its charts really drawn in a headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller.app.report_html import CHARTS, render_html, write_html
from controller.business_kpis import business_kpis

from .test_business_kpis import EPOCH, hand_report, report, shift_files  # noqa: F401

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`: "
                             "scripts/setup installs it)")

# The colour each chart paints with (matplotlib's default cycle's first for the bin fill).
CHART_COLOURS = {"throughput": (0x4C, 0x72, 0xB0), "dispositions": (0x55, 0xA8, 0x68),
                 "cycle-time": (0xC4, 0x4E, 0x52), "bin-fill": (0x1F, 0x77, 0xB4)}


@pytest.fixture(scope="module", autouse=True)
def _fonts_loaded() -> None:
    """Load matplotlib's fonts before the tests' leak checks: it keeps them open for good."""
    render_html(business_kpis([], {}))


class _Charts(HTMLParser):
    """Per chart figure: how many SVG shapes it holds; and anything that would be fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.figure: str | None = None
        self.shapes: dict[str, int] = {}
        self.svgs: dict[str, int] = {}
        self.fetches: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "figure":
            self.figure = (attributes.get("id") or "").removeprefix("chart-")
        elif self.figure is not None and tag == "svg":
            self.svgs[self.figure] = self.svgs.get(self.figure, 0) + 1
        elif self.figure is not None and tag in ("path", "use", "rect", "text"):
            self.shapes[self.figure] = self.shapes.get(self.figure, 0) + 1
        if tag in ("script", "link", "img", "iframe", "object", "embed"):
            self.fetches.append(tag)
        for name in ("src", "href", "xlink:href"):
            value = attributes.get(name)
            if value and not value.startswith("#"):
                self.fetches.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.figure = None


def charts_of(text: str) -> _Charts:
    parser = _Charts()
    parser.feed(text)
    parser.close()
    return parser


def test_the_report_is_self_contained_with_every_chart() -> None:
    text = render_html(hand_report(), title="Shift <1>")
    charts = charts_of(text)
    assert charts.fetches == []
    assert not re.search(r"url\((?!#)|@import", text)  # only the charts' own clip paths
    assert set(charts.svgs) == set(CHARTS)
    assert all(n == 1 for n in charts.svgs.values())
    assert all(charts.shapes[name] > 10 for name in CHARTS), charts.shapes
    assert "<title>Shift &lt;1&gt;</title>" in text
    assert "<?xml" not in text
    assert "<!DOCTYPE svg" not in text


def test_an_empty_journal_still_makes_a_report() -> None:
    text = render_html(business_kpis([], {}))
    charts = charts_of(text)
    assert set(charts.svgs) == set(CHARTS)
    assert text.count("no data") == len(CHARTS)


def test_report_writes_the_html(shift_files: tuple[Path, Path], tmp_path: Path,  # noqa: F811
                                capsys: pytest.CaptureFixture[str]) -> None:
    journal, orders = shift_files
    out = tmp_path / "report.html"
    assert report(["--journal", str(journal), "--orders", str(orders), "--html", str(out)]) == 0
    assert f"HTML report written to {out}" in capsys.readouterr().out
    assert set(charts_of(out.read_text()).svgs) == set(CHARTS)
    assert report(["--journal", str(journal), "--orders", str(orders), "--html",
                   str(tmp_path / "no" / "such" / "dir.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"parcel-sorter report: --html {tmp_path}/no/such/dir.html: ")
    assert err.count("\n") == 1


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing can be fetched, were it asked
         "--window-size=1000,2400", *args],
        capture_output=True, text=True, timeout=60, check=False)


@needs_chromium
@pytest.mark.wallclock
def test_chromium_renders_every_chart(tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    write_html(page, hand_report(shift_hours=500 / 3600))
    dumped = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    charts = charts_of(dumped.stdout)  # the DOM after load, as the browser built it
    assert set(charts.svgs) == set(CHARTS), dumped.stdout[:2000]
    assert all(charts.shapes.get(name, 0) > 10 for name in CHARTS), charts.shapes
    assert charts.fetches == []

    shot = tmp_path / "report.png"
    painted = _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert painted.returncode == 0, painted.stderr[-2000:]
    assert shot.is_file()
    with Image.open(shot) as image:
        pixels = {colour: n for n, colour in image.convert("RGB").getcolors(1 << 24) or []}
    for name, colour in CHART_COLOURS.items():  # each chart's marks were painted
        assert pixels.get(colour, 0) > 50, f"{name}: {colour} painted {pixels.get(colour, 0)}"

