"""Median and p95 ms to render emulator camera frames: `.venv/bin/python bench/render.py`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim_hardware.labels import LabelSpec, render_label
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel

MM_PER_PX = 0.375
RUNS = 300


def parcels_in_view(rng: np.random.Generator, n: int, view_mm: float) -> list[ParcelTop]:
    """N parcels spread along the view, each with one or two labels at random angles."""
    out = []
    for i in range(n):
        length = float(rng.uniform(200, 400))
        labels = tuple(
            PlacedLabel(
                LabelSpec(
                    f"0045{int(rng.integers(10**8)):08d}",
                    qr_text=f"https://t.example/{i}",
                    damage=("none", "scuffed")[j % 2],
                    seed=i * 10 + j,
                ),
                float(rng.uniform(-40, 40)),
                float(rng.uniform(-30, 30)),
                float(rng.uniform(0, 360)),
            )
            for j in range(1 + i % 2)
        )
        out.append(
            ParcelTop(
                lead_x_mm=(i + 1) * view_mm / (n + 0.5),
                length_mm=length,
                width_mm=float(rng.uniform(200, 350)),
                y_mm=float(rng.uniform(-60, 60)),
                shade=int(rng.integers(120, 190)),
                labels=labels,
                skew_deg=float(rng.uniform(-8, 8)),
            )
        )
    return out


def bench(width: int, height: int, n_parcels: int, blur_px: float = 0.0) -> None:
    """Render RUNS frames (labels already cached) and print median and p95 ms."""
    rng = np.random.default_rng(n_parcels)
    renderer = FrameRenderer(width, height, MM_PER_PX, seed=1, blur_px=blur_px)
    parcels = parcels_in_view(rng, n_parcels, width * MM_PER_PX)
    renderer.render(0.0, parcels)  # warm the label cache
    times = []
    for k in range(RUNS):
        t0 = time.perf_counter()
        renderer.render(k * 0.7, parcels)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    blur = f", blur {blur_px} px" if blur_px else ""
    print(
        f"{width}x{height} {n_parcels} parcels{blur}: "
        f"median {np.median(ms):.2f} ms  p95 {np.percentile(ms, 95):.2f} ms"
    )


def main() -> None:
    """Run the standard cases."""
    for n in (0, 1, 3):
        bench(1920, 1080, n)
    bench(1920, 1080, 3, blur_px=1.0)
    bench(2448, 2048, 3)
    times = []
    for i in range(50):
        spec = LabelSpec(f"0045{i:08d}", qr_text=f"https://t.example/{i}", seed=i)
        t0 = time.perf_counter()
        render_label(spec, 1.0 / MM_PER_PX)
        times.append(time.perf_counter() - t0)
    print(f"new label, first (uncached) render_label: median {np.median(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
