"""What the technicians' diagnostics cost a 40,000 parcels/hour line, on the real clock.

Run: ``.venv/bin/python bench/diagnostics.py`` (``--seconds`` of belt time per shift,
``--repeat``, ``--link``, ``--cameras``).

The example line sped up as in bench/realtime.py (3 m/s, small parcels about 65 mm apart:
about 11 a second, 40,000 an hour), sorted in real time in this one process, with
diagnostics off and on in turn, ``--repeat`` times each, in one run (alternating, so a
machine that slows down meanwhile weighs on both alike). With them on, the controller
publishes status, events, devices and metrics (every 0.5 s, ten times the default rate) to a
real mosquitto, answers a ``rebirth`` command every second, and a ``mosquitto_sub`` watches
everything, counting what arrives. Prints, per shift and as medians: the process CPU seconds
per 1,000 parcels (emulator and controller share the process; the broker and the watcher are
processes of their own, not counted), the decision latency p50/p99 (a verdict settled to its
route decided, real milliseconds), the dispositions (LATE must be 0), and what was published,
dropped and received.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.realtime import SPEED_MM_S, fast_line  # noqa: E402
from controller.app.simulate import CameraLink, Rig, ShiftResult, run_shift  # noqa: E402
from controller.clock import RealClock, run_real  # noqa: E402
from controller.config import DiagnosticsConfig, LineConfig  # noqa: E402
from sim_hardware import labels  # noqa: E402
from sim_hardware.broker import Mosquitto  # noqa: E402
from sim_hardware.scenario import ScenarioSpec  # noqa: E402

METRICS_EVERY_S = 0.5
REBIRTH_EVERY_S = 1.0


class Decisions:
    """Every decision's duration (a Telemetry that keeps them all, for exact percentiles)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def observe_decision(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def observe_divert(self, seconds: float) -> None:
        pass

    def observe_journal_write(self, seconds: float) -> None:
        pass


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


@dataclass
class Run:
    diagnostics: bool
    parcels: int
    cpu_s: float
    wall_s: float
    decision_ms: list[float]
    dispositions: dict[str, int]
    published: int = 0
    dropped: int = 0
    commands: int = 0
    received: int = 0

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.parcels * 1000

    def line(self) -> str:
        text = (f"  diagnostics {'on ' if self.diagnostics else 'off'}: {self.parcels} parcels, "
                f"CPU {self.cpu_per_1000:.2f} s per 1,000 parcels "
                f"({self.cpu_s / self.wall_s:.2f} cores), decision ms p50 "
                f"{percentile(self.decision_ms, 0.5):.2f} p99 "
                f"{percentile(self.decision_ms, 0.99):.2f}, LATE "
                f"{self.dispositions.get('LATE', 0)}")
        if self.diagnostics:
            text += (f"; published {self.published}, dropped {self.dropped}, commands "
                     f"{self.commands}, received by the watcher {self.received}")
        return text


def scenario(seconds: float, seed: int) -> ScenarioSpec:
    mean_pitch = (150 + 260) / 2 + (40 + 90) / 2
    return ScenarioSpec(parcels=int(seconds * SPEED_MM_S / mean_pitch), seed=seed,
                        length_mm=(150.0, 260.0), width_mm=(150.0, 300.0),
                        gap_mm=(40.0, 90.0), qr_share=0.3, scuffed_share=0.05,
                        multi_parcel_share=0.0)


def one_shift(config: LineConfig, spec: ScenarioSpec, link: CameraLink,
              broker: Mosquitto | None) -> Run:
    decisions = Decisions()
    figures: dict[str, int] = {}

    async def commanding(clock: RealClock) -> None:
        assert broker is not None
        async with aiomqtt.Client(broker.host, broker.port) as technician:
            n = 0
            while True:
                await clock.sleep(REBIRTH_EVERY_S)
                n += 1
                await technician.publish("sorter/line1/cmd/rebirth",
                                         json.dumps({"transaction": n}).encode(), qos=1)

    def during_on(clock: RealClock) -> Callable[[Rig], Coroutine[Any, Any, None]]:
        async def during(rig: Rig) -> None:
            assert rig.diagnostics is not None
            sink: Any = rig.diagnostics.sink
            asking = asyncio.create_task(commanding(clock))
            try:
                await asyncio.Event().wait()
            finally:
                asking.cancel()
                await asyncio.gather(asking, return_exceptions=True)
                figures.update(published=sink.stats.published, dropped=sink.stats.dropped,
                               commands=sink.stats.commands)
        return during

    with tempfile.TemporaryDirectory() as tmp:

        async def shift(clock: RealClock) -> ShiftResult:
            during = during_on(clock) if broker else None
            return await run_shift(config, spec, Path(tmp), clock, camera_link=link,
                                   telemetry=decisions, during=during)

        # Every shift starts alike: the emulator's label images are drawn afresh (its cache
        # would give the second shift of a seed its labels for free) and the last shift's
        # garbage is not this one's cost.
        labels.render_label.cache_clear()
        labels.label_alpha.cache_clear()
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_real(shift)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run(broker is not None, spec.parcels, cpu, wall,
               [s * 1000 for s in decisions.seconds],
               {k: v for k, v in result.stats.dispositions.items() if v},
               published=figures.get("published", 0), dropped=figures.get("dropped", 0),
               commands=figures.get("commands", 0))


def watched_shift(config: LineConfig, spec: ScenarioSpec, link: CameraLink, broker: Mosquitto,
                  watcher_tool: str | None) -> Run:
    """A shift with diagnostics on, a ``mosquitto_sub`` counting what reaches a technician."""
    watching = None
    with tempfile.TemporaryFile() as seen:
        if watcher_tool is not None:
            watching = subprocess.Popen(  # our own broker's client
                [watcher_tool, "-h", broker.host, "-p", str(broker.port), "-q", "1",
                 "-t", "sorter/#", "-V", "mqttv5"], stdout=seen, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        try:
            run = one_shift(config, spec, link, broker)
        finally:
            if watching is not None:
                time.sleep(0.5)
                watching.terminate()
                watching.wait(timeout=5)
        seen.seek(0)
        run.received = sum(1 for _ in seen)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="belt time of parcels")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--link", choices=("mjpeg", "inprocess"), default="inprocess")
    args = parser.parse_args()
    watcher_tool = shutil.which("mosquitto_sub")

    with Mosquitto() as broker:
        config = fast_line(args.cameras).model_copy(update={"diagnostics": DiagnosticsConfig(
            port=broker.port, metrics_every_s=METRICS_EVERY_S)})
        plain = config.model_copy(update={"diagnostics": None})
        runs: list[Run] = []
        print(f"diagnostics cost: {args.cameras} camera(s), link {args.link}, belt "
              f"{SPEED_MM_S / 1000:g} m/s, {scenario(args.seconds, 0).parcels} parcels a shift "
              f"(40,000/hour), metrics every {METRICS_EVERY_S:g} s, a rebirth every "
              f"{REBIRTH_EVERY_S:g} s", flush=True)
        one_shift(plain, scenario(2.0, 39), args.link, None)  # warm-up: imports, decoders
        for i in range(args.repeat):
            spec = scenario(args.seconds, 40 + i)
            for on in (False, True) if i % 2 == 0 else (True, False):
                runs.append(watched_shift(config, spec, args.link, broker, watcher_tool) if on
                            else one_shift(plain, spec, args.link, None))
                print(runs[-1].line(), flush=True)

    def median(on: bool, figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(r) for r in runs if r.diagnostics is on)

    def cpu(r: Run) -> float:
        return r.cpu_per_1000

    def p99(r: Run) -> float:
        return percentile(r.decision_ms, 0.99)

    def p50(r: Run) -> float:
        return percentile(r.decision_ms, 0.5)

    off_cpu, on_cpu = median(False, cpu), median(True, cpu)
    print(f"medians of {args.repeat}: CPU per 1,000 parcels off {off_cpu:.2f} s, on "
          f"{on_cpu:.2f} s ({(on_cpu - off_cpu) / off_cpu * 100:+.1f} %); decision ms p50 off "
          f"{median(False, p50):.2f}, on {median(True, p50):.2f}; p99 off "
          f"{median(False, p99):.2f}, on {median(True, p99):.2f}")


if __name__ == "__main__":
    main()
