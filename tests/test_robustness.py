"""Read rate and false reads of the line's decoding pipeline on degraded emulated labels.

Each condition renders seeded parcels on the example line's camera (1920x1080 at 0.4 mm
per pixel), three frames per parcel at different belt positions, crops each frame to the
parcel as the controller does, decodes with located-zxing, accepts reads by the line's
code rule and settles them with ``ParcelReads`` as the controller does. Run with ``-s``
for the table; ``bench/robustness.py`` prints it for more parcels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from controller.codes import CodeRule, ParcelReads, ReadVerdict
from controller.config import CameraConfig, DecisionConfig, LabelType, LineConfig, load_config
from controller.vision import BarcodeDecoder, GrayImage
from drivers.decoders import make_decoder
from sim_hardware.labels import LabelSpec, label_alpha, label_size_mm, render_label
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel
from sim_hardware.scenario import make_code

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "line.example.toml"
FRAMES_PER_PARCEL = 3
PARCELS = 30
SCUFFED_SHARE = 0.05  # as in the scenarios' default
QR_SHARE = 0.3


@dataclass(frozen=True)
class Condition:
    """One row of the table: how labels and frames are degraded."""

    name: str
    label: dict[str, float | str] = field(default_factory=dict)
    placement: dict[str, float] = field(default_factory=dict)
    camera: dict[str, float] = field(default_factory=dict)
    sweep: bool = False  # label angles step evenly over 0-360 instead of random
    tilt_axis_random: bool = False
    glare_on_label: bool = False
    #: floors asserted by the test (per-frame, per-parcel read rate); below the issue's
    #: 95 % only where measured so, and then marked in the table
    floor_frame: float = 0.9
    floor_parcel: float = 0.95
    #: set where a person could no longer make out the bars in the frame
    beyond: str = ""

    def mark(self, parcel_rate: float) -> str:
        if self.beyond:
            return f"beyond readable: {self.beyond}"
        return "" if parcel_rate >= 0.95 else "BELOW 95 % though readable"


CONDITIONS: tuple[Condition, ...] = (
    Condition("nominal mix", label={"scuffed": SCUFFED_SHARE}, floor_frame=0.97,
              floor_parcel=0.995),
    Condition("rotation sweep 0-360", sweep=True, floor_frame=0.97, floor_parcel=0.995),
    Condition("tilt 20°", placement={"tilt_deg": 20.0}, tilt_axis_random=True),
    Condition("tilt 40°", placement={"tilt_deg": 40.0}, tilt_axis_random=True),
    Condition("defocus blur sigma 1 px", camera={"blur_px": 1.0}),
    Condition("motion blur 3 px", camera={"motion_blur_px": 3.0}),
    Condition("noise sigma 12", camera={"noise_sigma": 12.0}),
    Condition("low contrast 0.25", label={"contrast": 0.25}),
    Condition("glare r 8 mm on label", camera={"glare_px": 20.0}, glare_on_label=True),
    Condition("small bars 0.6 mm", label={"module_mm": 0.6}),
    Condition("small bars 0.5 mm", label={"module_mm": 0.5}, floor_frame=0.8,
              floor_parcel=0.9),
    Condition("covered top 35-45 %", label={"damage": "covered"}),
    Condition("torn edge ≤35 %", label={"damage": "torn_edge"}),
    # harder than the issue asks, to show where reading stops
    Condition("tilt 40° along bars", placement={"tilt_deg": 40.0, "tilt_axis_deg": 90.0},
              floor_frame=0.0, floor_parcel=0.0),
    Condition("defocus blur sigma 1.5 px", camera={"blur_px": 1.5}, floor_frame=0.0,
              floor_parcel=0.0, beyond="narrow spaces blur shut"),
    Condition("motion blur 5 px", camera={"motion_blur_px": 5.0}, floor_frame=0.5,
              floor_parcel=0.55, beyond="across the bars, narrow spaces smear shut"),
    Condition("low contrast 0.15", label={"contrast": 0.15}, floor_frame=0.8,
              floor_parcel=0.85),
    Condition("glare r 16 mm on label", camera={"glare_px": 40.0}, glare_on_label=True,
              floor_frame=0.6, floor_parcel=0.9),
)


@dataclass
class Tally:
    """Counts for one condition."""

    parcels: int = 0
    frames: int = 0
    frames_read: int = 0
    frames_false: int = 0  # frames with a decoded text that is not the parcel's code
    frames_false_accepted: int = 0  # ... that the code rule let through
    parcels_read: int = 0
    parcels_multi: int = 0
    parcels_false: int = 0  # settled on a code that is not the parcel's

    @property
    def frame_rate(self) -> float:
        return self.frames_read / max(1, self.frames)

    @property
    def parcel_rate(self) -> float:
        return self.parcels_read / max(1, self.parcels)


def _label(cond: Condition, rng: random.Random, angle_deg: float, length: float,
           width: float) -> PlacedLabel:
    """The parcel's label under ``cond``, placed as the scenarios place labels."""
    code = make_code(rng.randrange(10_000, 900_000_000))
    opts = dict(cond.label)
    scuffed = float(opts.pop("scuffed", 0.0))
    damage = str(opts.pop("damage", "scuffed" if rng.random() < scuffed else "none"))
    spec = LabelSpec(code, qr_text=code if rng.random() < QR_SHARE else None, damage=damage,
                     seed=rng.randrange(1 << 30), **opts)  # type: ignore[arg-type]
    angle = angle_deg if cond.sweep else rng.uniform(0, 360)
    label_w, label_h = label_size_mm(spec)
    reach = math.hypot(label_w, label_h) / 2
    du = max(0.0, length / 2 - reach)
    dv = max(0.0, width / 2 - reach)
    placed = PlacedLabel(spec, rng.uniform(-du, du), rng.uniform(-dv, dv), angle,
                         **cond.placement)
    if cond.tilt_axis_random:
        placed = replace(placed, tilt_axis_deg=rng.uniform(0, 180))
    return placed


def run_condition(cond: Condition, cam: CameraConfig, decoder: BarcodeDecoder,
                  rule: CodeRule, *, parcels: int, seed: int,
                  belt_speed_mm_s: float = 2000.0) -> Tally:
    """Render, crop, decode and settle ``parcels`` parcels under ``cond``."""
    rng = random.Random(f"{cond.name}/{seed}")
    width_px, height_px = cam.resolution
    mmpp = cam.mm_per_px
    renderer = FrameRenderer(width_px, height_px, mmpp, seed=seed, **cond.camera)  # type: ignore[arg-type]
    view_h_mm = height_px * mmpp
    step = belt_speed_mm_s / cam.fps
    tol = DecisionConfig().assign_tolerance_mm
    tally = Tally()
    for i in range(parcels):
        length = rng.uniform(250.0, 600.0)
        width = rng.uniform(180.0, 380.0)
        y_room = max(0.0, view_h_mm / 2 - width / 2 - 5)
        label = _label(cond, rng, (i * 360.0 / parcels + rng.uniform(0, 1)) % 360, length, width)
        truth = label.spec.code
        # leading edge positions (mm from the view's start) of three successive frames
        lo, hi = length, cam.fov_mm
        mid = (lo + hi) / 2 + rng.uniform(-0.25, 0.25) * max(0.0, hi - lo)
        gap = min(step, max(0.0, hi - lo) / 2)
        reads = ParcelReads(min_agreeing=DecisionConfig().min_agreeing_reads)
        settled: ReadVerdict = ReadVerdict.PENDING
        y_mm = rng.uniform(-y_room, y_room)
        shade = rng.randrange(125, 185)
        skew = rng.uniform(-8, 8)
        for k in range(FRAMES_PER_PARCEL):
            lead = mid + (k - 1) * gap
            parcel = ParcelTop(lead_x_mm=lead, length_mm=length, width_mm=width, y_mm=y_mm,
                               shade=shade, labels=(label,), skew_deg=skew)
            if cond.glare_on_label:
                col, row = renderer.label_centre_px(0.0, parcel, label)
                lw, lh = label_size_mm(label.spec)
                renderer.glare_at = (col + rng.uniform(-0.4, 0.4) * lw / mmpp,
                                     row + rng.uniform(-0.4, 0.4) * lh / mmpp)
            image = renderer.render(0.0, [parcel])
            c0 = max(0, int((lead - length - tol) / mmpp))
            c1 = min(width_px, int((lead + tol) / mmpp) + 1)
            symbols = decoder.decode(image[:, c0:c1])
            texts = {s.text for s in symbols}
            accepted: dict[str, LabelType] = {}
            for s in symbols:
                label_type = rule.classify(s.text, s.symbology)
                if label_type is not None:
                    accepted[s.text] = label_type
            tally.frames += 1
            tally.frames_read += truth in texts
            wrong = texts - {truth}
            tally.frames_false += bool(wrong)
            tally.frames_false_accepted += bool(wrong & accepted.keys())
            if settled is ReadVerdict.PENDING:
                reads.add_frame(accepted, texts - accepted.keys(),
                                lead_in_view=lead <= cam.fov_mm,
                                trail_in_view=lead - length >= 0.0)
                settled = reads.verdict(final=False)
        if settled is ReadVerdict.PENDING:
            settled = reads.verdict(final=True)
        tally.parcels += 1
        if settled is ReadVerdict.ONE_CODE:
            if reads.code == truth:
                tally.parcels_read += 1
            else:
                tally.parcels_false += 1
        tally.parcels_multi += settled is ReadVerdict.MULTI_READ
    return tally


def table(rows: list[tuple[Condition, Tally]]) -> str:
    """The results as a fixed-width table."""
    head = (f"{'condition':<27}{'parcels':>8}{'frame read':>12}{'parcel read':>13}"
            f"{'false frames':>14}{'false acc.':>11}{'multi':>7}{'false sorts':>13}  note")
    lines = [head, "-" * len(head)]
    for cond, t in rows:
        lines.append(
            f"{cond.name:<27}{t.parcels:>8}{t.frame_rate:>11.1%} {t.parcel_rate:>12.1%}"
            f"{t.frames_false:>14}{t.frames_false_accepted:>11}{t.parcels_multi:>7}"
            f"{t.parcels_false:>13}  {cond.mark(t.parcel_rate)}")
    return "\n".join(lines)


def run_all(parcels: int, seed: int = 1,
            report: Callable[[Condition, Tally], None] | None = None
            ) -> list[tuple[Condition, Tally]]:
    """Every condition on the example line's first camera."""
    config: LineConfig = load_config(EXAMPLE_CONFIG)
    cam = config.cameras[0]
    decoder = make_decoder("located-zxing")
    rule = CodeRule(config.decision)
    rows = []
    for cond in CONDITIONS:
        tally = run_condition(cond, cam, decoder, rule, parcels=parcels, seed=seed,
                              belt_speed_mm_s=config.belt.speed_mm_s)
        rows.append((cond, tally))
        if report is not None:
            report(cond, tally)
    return rows


@pytest.fixture(scope="module")
def results() -> dict[str, Tally]:
    rows = run_all(PARCELS)
    print(f"\nrobustness, {PARCELS} parcels per condition, {FRAMES_PER_PARCEL} frames each")
    print(table(rows))
    return {cond.name: tally for cond, tally in rows}


@pytest.mark.parametrize("cond", CONDITIONS, ids=[c.name for c in CONDITIONS])
def test_read_rates(cond: Condition, results: dict[str, Tally]) -> None:
    t = results[cond.name]
    assert t.parcels == PARCELS
    assert t.frame_rate >= cond.floor_frame, t
    assert t.parcel_rate >= cond.floor_parcel, t


@pytest.mark.parametrize("cond", CONDITIONS, ids=[c.name for c in CONDITIONS])
def test_no_parcel_settles_on_a_false_read(cond: Condition, results: dict[str, Tally]) -> None:
    assert results[cond.name].parcels_false == 0


def test_degraded_labels_are_drawn_as_specified() -> None:
    ppm = 2.5
    faded = render_label(LabelSpec("004512345678", contrast=0.25), ppm)
    assert 175 <= int(faded.min()) <= 190  # ink at a quarter of the paper-ink step
    with pytest.raises(ValueError, match="contrast"):
        render_label(LabelSpec("004512345678", contrast=0.0), ppm)
    into_bars = 0
    for seed in range(8):
        torn = LabelSpec("004512345678", damage="torn_edge", seed=seed)
        alpha = label_alpha(torn, ppm)
        assert alpha is not None
        assert (alpha.min(), alpha.max()) == (0, 255)
        # under the bars, the tear reaches at most 35 % into their height
        _, height = label_size_mm(torn)
        bar_top = (height - 20.0) / 2
        bars = (render_label(replace(torn, damage="none"), ppm)[round((bar_top + 10) * ppm)]
                < 128).nonzero()[0]
        below = alpha[round((bar_top + 0.36 * 20.0) * ppm):, bars[0]:bars[-1] + 1]
        assert below.min() == 255, seed
        into_bars += int(alpha[round(bar_top * ppm) + 2, bars[0]:bars[-1] + 1].min() < 128)
    assert into_bars >= 6  # and most tears do reach the bars
    assert label_alpha(LabelSpec("004512345678"), ppm) is None


def test_glare_saturates_the_label_and_tilt_narrows_it() -> None:
    spec = LabelSpec("004512345678", seed=3)
    parcel = ParcelTop(500.0, 400.0, 300.0, 0.0, 150, (PlacedLabel(spec, 0.0, 0.0, 0.0),))
    plain = FrameRenderer(1920, 1080, 0.4, noise_sigma=0.0)
    col, row = plain.label_centre_px(0.0, parcel, parcel.labels[0])
    glare = FrameRenderer(1920, 1080, 0.4, noise_sigma=0.0, glare_px=20.0,
                          glare_at=(col, row))
    spot = glare.render(0.0, [parcel])[round(row) - 10:round(row) + 10,
                                       round(col) - 10:round(col) + 10]
    assert spot.min() == 255
    flat = plain.render(0.0, [parcel])
    tilted = replace(parcel, labels=(replace(parcel.labels[0], tilt_deg=40.0),))
    leaning = plain.render(0.0, [tilted])
    def extent(image: GrayImage) -> int:
        bright = (image[round(row)] > 200).nonzero()[0]
        return int(bright[-1] - bright[0])

    flat_w, tilted_w = extent(flat), extent(leaning)
    assert tilted_w == pytest.approx(flat_w * math.cos(math.radians(40.0)), rel=0.05)
