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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="belt time of parcels")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--link", choices=("mjpeg", "opencv", "inprocess"), default="mjpeg")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="the cameras' configured hand-over latency (opencv link)")
    args = parser.parse_args()

    config = fast_line(args.cameras)
    if args.latency_ms is not None:
        config = config.model_copy(update={"cameras": [
            c.model_copy(update={"latency_ms": args.latency_ms}) for c in config.cameras]})
    mean_pitch = (150 + 260) / 2 + (40 + 90) / 2
    parcels = int(args.seconds * SPEED_MM_S / mean_pitch)
    spec = ScenarioSpec(parcels=parcels, seed=40, length_mm=(150.0, 260.0),
                        width_mm=(150.0, 300.0), gap_mm=(40.0, 90.0), qr_share=0.3,
                        scuffed_share=0.05, multi_parcel_share=0.0)
    timed: list[TimedDecoder] = []
    make = decoders.make_decoder

    def timed_decoder(name: str, formats: Any = ("code128", "qrcode")) -> Any:
        timed.append(TimedDecoder(make(name, formats)))
        return timed[-1]

    decoders.make_decoder = timed_decoder  # type: ignore[assignment]
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
        if r["disposition"] not in ("SORTED", "DEST_FULL"):
            print(f"  parcel {r['parcel_id']}: {r['disposition']} ({r['reason']}); emulator: "
                  f"{'; '.join(truth[r['sim_id']].events) or 'nothing'}, in {r['actual_bin']}")
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
