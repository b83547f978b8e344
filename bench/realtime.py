"""Real time: two 1920x1080 cameras at 30 fps while the line sorts 40,000 parcels an hour.

Run: ``.venv/bin/python bench/realtime.py`` (``--seconds`` of belt time, ``--cameras``).

The example line, sped up to 3 m/s with small parcels 65 mm apart (about 11 a second), and a
second camera; the emulator renders both cameras' frames and serves them as MJPEG over HTTP
on loopback; the controller reads them with its MJPEG camera driver, decodes in its thread
pool and sorts, all on the real clock in this one process (emulator and controller share
the 2 cores, as FACTS.md warns). Prints frames per second received and decoded per camera,
each disposition (LATE must be 0), decode time per frame, and the process's CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.app.shift_report import parcel_records, summarise  # noqa: E402
from controller.app.simulate import ShiftResult, run_shift  # noqa: E402
from controller.clock import RealClock, run_real  # noqa: E402
from controller.config import LineConfig, load_config  # noqa: E402
from controller.kpis import ParcelOutcome  # noqa: E402
from controller.vision import GrayImage, Symbol  # noqa: E402
from drivers import decoders  # noqa: E402
from sim_hardware.scenario import ScenarioSpec  # noqa: E402

SPEED_MM_S = 3000.0


def fast_line(cameras: int) -> LineConfig:
    base = load_config(ROOT / "deploy" / "line.example.toml")
    first = base.cameras[0].model_copy(update={"fps": 30.0, "position_mm": 900.0})
    cams = [first] + [first.model_copy(update={"id": f"cam{i + 1}",
                                                "position_mm": 900.0 + 700.0 * i})
                      for i in range(1, cameras)]
    return base.model_copy(update={
        "belt": base.belt.model_copy(update={"speed_mm_s": SPEED_MM_S}),
        "cameras": cams,
        "bins": [b.model_copy(update={"capacity": 100_000}) for b in base.bins],
    })


class TimedDecoder:
    """Wraps the line's decoder to time each call (thread-safe counters)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.ms: list[float] = []
        self._lock = threading.Lock()

    def decode(self, image: GrayImage) -> list[Symbol]:
        start = time.perf_counter()
        found: list[Symbol] = self.inner.decode(image)
        with self._lock:
            self.ms.append((time.perf_counter() - start) * 1000)
        return found


def print_outcomes(summary: dict[str, Any], records: list[ParcelOutcome],
                   result: ShiftResult, length: tuple[float, float],
                   gap: tuple[float, float]) -> None:
    """The fail-safe counts the overload brief asks for, and the controller's counters."""
    disp = summary["dispositions"]
    sorted_n = disp.get("SORTED", 0) + disp.get("DEST_FULL", 0)
    print(f"  LOST {disp.get('LOST', 0)}  MISSORT {disp.get('MISSORT', 0)}  TOO_CLOSE "
          f"{disp.get('TOO_CLOSE', 0)}  LATE {disp.get('LATE', 0)}  NO_READ "
          f"{disp.get('NO_READ', 0)}; sorted {sorted_n} of {len(records)} "
          f"({sorted_n / max(1, len(records)):.1%}); lengths {length[0]:.0f}-{length[1]:.0f} "
          f"mm, gaps {gap[0]:g}-{gap[1]:g} mm")
    print(f"  controller stats: {result.stats}")


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="belt time of parcels")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--link", choices=("mjpeg", "opencv", "inprocess"), default="mjpeg")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="the cameras' configured hand-over latency (opencv link)")
    parser.add_argument("--gap-mm", type=float, nargs=2, metavar=("MIN", "MAX"),
                        default=(40.0, 90.0), help="gap between parcels on the belt")
    parser.add_argument("--rate", type=float, default=None, metavar="PARCELS_PER_H",
                        help="parcels an hour: sets the parcel lengths (+-25 %%) for the gaps")
    parser.add_argument("--min-gap-mm", type=float, default=None,
                        help="[induction] min_gap_mm: pairs closer than this end TOO_CLOSE")
    parser.add_argument("--seed", type=int, default=40)
    parser.add_argument("--quiet", action="store_true", help="no line per exception parcel")
    return parser, parser.parse_args()


def main() -> None:
    parser, args = parse_args()

    config = fast_line(args.cameras)
    if args.latency_ms is not None:
        config = config.model_copy(update={"cameras": [
            c.model_copy(update={"latency_ms": args.latency_ms}) for c in config.cameras]})
    if args.min_gap_mm is not None:
        config = config.model_copy(update={"induction": config.induction.model_copy(
            update={"min_gap_mm": args.min_gap_mm})})
    gap = (float(args.gap_mm[0]), float(args.gap_mm[1]))
    length = (150.0, 260.0)
    if args.rate is not None:
        mean_length = SPEED_MM_S * 3600 / args.rate - sum(gap) / 2
        if mean_length < 40:
            parser.error(f"--rate {args.rate:g} leaves parcels {mean_length:.0f} mm long")
        length = (0.75 * mean_length, 1.25 * mean_length)
    mean_pitch = sum(length) / 2 + sum(gap) / 2
    parcels = int(args.seconds * SPEED_MM_S / mean_pitch)
    spec = ScenarioSpec(parcels=parcels, seed=args.seed, length_mm=length,
                        width_mm=(150.0, 300.0), gap_mm=gap, qr_share=0.3,
                        scuffed_share=0.05, multi_parcel_share=0.0)
    timed: list[TimedDecoder] = []
    make = decoders.make_decoder

    def timed_decoder(name: str, formats: Any = ("code128", "qrcode")) -> Any:
        timed.append(TimedDecoder(make(name, formats)))
        return timed[-1]

    decoders.make_decoder = timed_decoder
    frames_by_camera: Counter[str] = Counter()

    with tempfile.TemporaryDirectory() as tmp:

        async def shift(clock: RealClock) -> ShiftResult:
            return await run_shift(config, spec, Path(tmp), clock, camera_link=args.link,
                                   on_final=lambda _: None)

        wall, cpu = time.perf_counter(), time.process_time()
        result = run_real(shift)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    records = parcel_records(result)
    summary = summarise(result, records)
    truth = {p.sim_id: p for p in result.truth}
    for r in records:
        if not args.quiet and r["disposition"] not in ("SORTED", "DEST_FULL"):
            seen = truth[r["sim_id"]].events if r["sim_id"] is not None else []
            print(f"  parcel {r['parcel_id']}: {r['disposition']} ({r['reason']}); emulator: "
                  f"{'; '.join(seen) or 'nothing'}, in {r['actual_bin']}")
    frames_by_camera.update({"all": result.stats.frames})
    decode_ms = [ms for t in timed for ms in t.ms]
    belt_s = result.line_time_s
    print(f"real-time shift: {args.cameras} cameras {config.cameras[0].resolution[0]}x"
          f"{config.cameras[0].resolution[1]} at {config.cameras[0].fps:g} fps, link "
          f"{args.link}, belt {SPEED_MM_S / 1000:g} m/s, {parcels} parcels")
    stream_s = max(p.offset_mm for p in result.truth) / SPEED_MM_S
    streaming_s = (max(p.offset_mm + p.length_mm for p in result.truth)
                   + config.read_zone_end_mm) / SPEED_MM_S
    print(f"  parcels inducted per hour: {parcels / stream_s * 3600:.0f} "
          f"({parcels} in {stream_s:.1f} s; {belt_s:.1f} s of line time with the drain, "
          f"{wall:.1f} s wall)")
    print(f"  dispositions: {summary['dispositions']}  (LATE: "
          f"{summary['dispositions'].get('LATE', 0)}, mis-sorts by truth: {summary['missorts']})")
    print_outcomes(summary, records, result, length, gap)
    print(f"  frames rendered: {result.line_counters['frames']} "
          f"({result.line_counters['frames'] / belt_s:.1f}/s over all cameras)")
    print(f"  frames received by the controller: {result.stats.frames}, "
          f"{result.stats.frames / streaming_s / len(config.cameras):.1f} per second per camera "
          f"while streaming; dropped by drivers: {result.frames_dropped}")
    print(f"  frames decoded: {result.stats.frames_decoded} "
          f"({result.stats.frames_decoded / belt_s:.1f}/s), decode ms median "
          f"{statistics.median(decode_ms):.1f}, p95 "
          f"{sorted(decode_ms)[int(0.95 * (len(decode_ms) - 1))]:.1f}")
    print(f"  process CPU: {cpu / wall:.2f} cores (emulator rendering + JPEG, controller "
          f"JPEG decode + barcode decode), {cpu / max(1, parcels) * 1000:.0f} ms per parcel")


if __name__ == "__main__":
    main()
