"""Benchmark of the example line: simulated parcels per wall second, and decode cost per frame.

Run: ``.venv/bin/python bench/shift.py`` (``--parcels``, ``--repeat``, ``--frames`` to change).

1. A shift of the nominal mix on the virtual clock, with real rendering and real decoding,
   repeated; prints parcels simulated per second of wall time (median of the repeats) and the
   process CPU seconds per parcel (emulator rendering included: they share the process).
2. Frames the emulator renders for the example camera with one parcel in view; for every
   decoder available, the median and p95 milliseconds to decode the whole frame and the
   parcel's crop (which is what the controller decodes), and the read rate.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.app.simulate import ShiftResult, run_shift  # noqa: E402
from controller.clock import VirtualClock, run_virtual  # noqa: E402
from controller.config import LineConfig, load_config  # noqa: E402
from drivers.decoders import available_decoders, make_decoder  # noqa: E402
from sim_hardware.labels import LabelSpec  # noqa: E402
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel  # noqa: E402
from sim_hardware.scenario import ScenarioSpec, make_code  # noqa: E402

CONFIG = ROOT / "deploy" / "line.example.toml"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def bench_shift(config: LineConfig, parcels: int, repeat: int) -> None:
    rates, cpu_per_parcel, decoded = [], [], []
    for i in range(repeat):
        spec = ScenarioSpec(parcels=parcels, seed=100 + i)
        with tempfile.TemporaryDirectory() as tmp:

            async def shift(clock: VirtualClock, spec: ScenarioSpec = spec,
                            workdir: Path = Path(tmp)) -> ShiftResult:
                return await run_shift(config, spec, workdir, clock)

            wall, cpu = time.perf_counter(), time.process_time()
            result = run_virtual(shift)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(parcels / wall)
        cpu_per_parcel.append(cpu / parcels * 1000)
        decoded.append(result.stats.frames_decoded / parcels)
        print(f"  run {i + 1}: {parcels} parcels in {wall:.1f} s wall "
              f"({result.line_time_s:.0f} s of line time), "
              f"{result.stats.frames_decoded} frames decoded", flush=True)
    print(f"shift, example line, nominal mix, virtual clock, {parcels} parcels x {repeat}:")
    print(f"  parcels simulated per wall second: median {statistics.median(rates):.1f} "
          f"(min {min(rates):.1f}, max {max(rates):.1f})")
    print(f"  process CPU per parcel: median {statistics.median(cpu_per_parcel):.0f} ms "
          f"(rendering, decoding on 2 threads, controller)")
    print(f"  frames decoded per parcel: median {statistics.median(decoded):.2f}")


def bench_decoders(config: LineConfig, frames: int) -> None:
    cam = config.cameras[0]
    renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=5)
    rng = random.Random(5)
    samples = []
    for i in range(frames):
        code = make_code(500_000 + i)
        length, width = rng.uniform(250, 600), rng.uniform(180, 380)
        label = PlacedLabel(LabelSpec(code, qr_text=code if i % 3 == 0 else None, seed=i),
                            rng.uniform(-30, 30), rng.uniform(-20, 20), rng.uniform(0, 360))
        lead = cam.position_mm + length / 2 + rng.uniform(-100, 100)
        top = ParcelTop(lead, length, width, rng.uniform(-20, 20), rng.randrange(125, 185),
                        (label,))
        image = renderer.render(cam.view_start_mm, [top])
        lo = max(0, int((lead - length - 15 - cam.view_start_mm) / cam.mm_per_px))
        hi = min(image.shape[1], int((lead + 15 - cam.view_start_mm) / cam.mm_per_px) + 1)
        samples.append((code, image, image[:, lo:hi]))
    print(f"decode ms per frame, example camera {cam.resolution[0]}x{cam.resolution[1]}, "
          f"one parcel in view, label at a random angle, {frames} frames, one thread:")
    print(f"  {'decoder':<16}{'input':<22}{'median':>8}{'p95':>8}{'read':>10}")
    for name in available_decoders():
        decoder = make_decoder(name)
        for kind, index in (("whole frame", 1), ("parcel crop", 2)):
            times, reads = [], 0
            for sample in samples:
                code, image = sample[0], sample[index]
                start = time.perf_counter()
                symbols = decoder.decode(image)  # type: ignore[arg-type]
                times.append((time.perf_counter() - start) * 1000)
                reads += any(s.text == code and s.symbology == "code128" for s in symbols)
            shape = f"{kind} {image.shape[1]}x{image.shape[0]}" if kind == "whole frame" \
                else kind
            print(f"  {name:<16}{shape:<22}{statistics.median(times):>8.1f}"
                  f"{p95(times):>8.1f}{reads:>6}/{len(samples)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    config = load_config(CONFIG)
    bench_shift(config, args.parcels, args.repeat)
    bench_decoders(config, args.frames)


if __name__ == "__main__":
    main()
