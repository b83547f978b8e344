"""Read -> divert on the wire, per parcel, at 40,000 parcels/h in real time over MQTT.

Run: ``.venv/bin/python bench/read_to_divert.py`` (``--seconds`` of belt time, ``--link``,
``--emulator``).

bench/realtime.py's line (3 m/s, small parcels 65 mm apart, about 11 a second, two
1920x1080 cameras at 30 fps served as MJPEG on loopback and decoded for real), on the real
clock, with a mosquitto of its own. Two ways to run the emulator:

* ``--emulator process`` (the default): as on a real line, where cameras and I/O are
  separate devices, the emulator runs in its own process (``parcel-sorter emulate`` through
  bench/emulator_process.py): the I/O board on a pty (sensors), the diverters as its MQTT
  nodes, the cameras as MJPEG servers; the controller is ``run``'s (``run_line``) in this
  process, on the config the emulator wrote. ``--link opencv`` reads the same streams with
  OpenCV; ``--emulator-cpu N`` pins the emulator to CPU N and this process to the others.
* ``--emulator inprocess``: the emulator in this process beside the controller (the old
  bench: ``run_shift`` with ``line_link="mqtt"``, sensors and diverters as MQTT nodes), so
  its rendering and JPEG encoding are on this event loop's cores and GIL.

For every diverted parcel:

* **settled**: when its read verdict settled, which for a parcel settled in the read zone is
  the frame whose accepted read settled it (the reading stage settles right after it adds a
  frame's reads, and starts the decision task then). The controller keeps no timestamp of
  it, so this bench takes it from the moment the decision task is created: a task factory
  (public asyncio API) sees ``Sorter._decide``'s coroutine and reads its ``parcel``;
* **called**: when the sorter called ``divert()`` (its message log's "sent" record);
* **on the wire**: when a separate ``mosquitto_sub`` process, subscribed to the divert
  topics, received it (its ``%U`` timestamp): an upper bound of the socket write, by the
  broker's forwarding, measured outside the controller's loop.

For profiling: ``--slow-callback-ms MS`` (asyncio's debug mode logs every callback longer
than MS; it slows the loop itself), ``--switch-interval-ms`` (this process's GIL switch
interval), ``--emulator-nice``, ``--verbose`` (the emulator's own output and report).

Prints p50 / p95 / p99 / max of settled -> wire (the figure, goal p99 <= 5 ms), and its two
parts, for the parcels settled in the read zone and, apart, those settled at its end; and
how late the event loop wakes a task during the shift, which every step waits on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.emulator_process import EmulatorProcess  # noqa: E402
from bench.realtime import SPEED_MM_S, fast_line  # noqa: E402
from controller.app.run import run_line  # noqa: E402
from controller.app.simulate import LOOPBACK_HANDOVER_MS, LinkOptions, run_shift  # noqa: E402
from controller.clock import RealClock  # noqa: E402
from controller.config import LineConfig, load_config  # noqa: E402
from controller.sorter import Sorter  # noqa: E402
from sim_hardware.broker import Mosquitto, mosquitto_path  # noqa: E402
from sim_hardware.scenario import ScenarioSpec  # noqa: E402

T = TypeVar("T")
DECIDE = "Sorter._decide"  # the coroutine the reading stage starts when a verdict settles


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class SettleTimes:
    """A task factory noting, per parcel, when its decision task was created (unix time) and
    whether it settled inside the read zone (by a frame's read) or at its end; and the
    sorter that created it."""

    def __init__(self) -> None:
        self.at: dict[int, tuple[float, bool]] = {}
        self.sorter: Sorter | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop,
                 coro: Generator[Any, None, T] | Coroutine[Any, Any, T], /,
                 **kwargs: Any) -> asyncio.Future[T]:
        frame = coro.cr_frame if isinstance(coro, types.CoroutineType) else None
        if frame is not None and frame.f_code.co_qualname == DECIDE:
            parcel = frame.f_locals["parcel"]
            self.sorter = frame.f_locals["self"]
            self.at.setdefault(parcel.parcel_id, (time.time(), parcel.zone_exit_at is None))
        return asyncio.Task(coro, loop=loop, **kwargs)


async def loop_lag(lags: list[float], period_s: float = 0.005) -> None:
    """How late the event loop wakes a task that sleeps ``period_s`` (ms), until cancelled:
    the time any step of the path may wait for its turn."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        lags.append((loop.time() - due) * 1000)


def spec_for(seconds: float) -> ScenarioSpec:
    mean_pitch = (150 + 260) / 2 + (40 + 90) / 2  # as bench/realtime.py
    return ScenarioSpec(parcels=int(seconds * SPEED_MM_S / mean_pitch), seed=40,
                        length_mm=(150.0, 260.0), width_mm=(150.0, 300.0),
                        gap_mm=(40.0, 90.0), qr_share=0.3, scuffed_share=0.05,
                        multi_parcel_share=0.0)


def wire_times(lines: list[str]) -> dict[int, float]:
    """parcel -> when mosquitto_sub received its (first) divert, from ``%U %p`` lines."""
    seen: dict[int, float] = {}
    for line in lines:
        stamp, _, payload = line.partition(" ")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            seen.setdefault(int(json.loads(payload)["parcel"]), float(stamp))
    return seen


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:34} (none)"
    return (f"  {label:34} n {len(values):4d}  p50 {percentile(values, 50):6.2f}  p95 "
            f"{percentile(values, 95):6.2f}  p99 {percentile(values, 99):6.2f}  max "
            f"{max(values):6.2f} ms")


class Shift:
    """What one run measured, whichever way the emulator ran."""

    def __init__(self) -> None:
        self.settle = SettleTimes()
        self.lags: list[float] = []
        self.offset = 0.0  # unix time - loop time
        self.dispositions: Counter[str] = Counter()
        self.wall = 0.0
        self.cpu = 0.0
        self.emulator_cpu = 0.0
        self.notes: list[str] = []  # the emulator's own output, when it ran apart

    async def probe(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(self.settle)
        self.offset = time.time() - loop.time()
        return asyncio.create_task(loop_lag(self.lags))


async def inprocess_shift(shift: Shift, config: LineConfig, spec: ScenarioSpec, tmp: Path, *,
                          broker: Mosquitto, link: str) -> None:
    """The emulator in this process (run_shift), its sensors and diverters on MQTT."""
    probe = await shift.probe()
    try:
        result = await run_shift(config, spec, tmp, RealClock(), camera_link=link,  # type: ignore[arg-type]
                                 line_link="mqtt",
                                 link_options=LinkOptions(broker=(broker.host, broker.port)),
                                 on_final=lambda _: None)
    finally:
        probe.cancel()
    shift.dispositions.update(r["disposition"] for r in result.journal)


async def process_shift(shift: Shift, config: LineConfig, spec: ScenarioSpec, tmp: Path, *,
                        broker: Mosquitto, link: str, cpu: int | None,
                        nice: int) -> None:
    """The emulator in its own process; the controller here as ``parcel-sorter run``."""
    cpus = None if cpu is None else {cpu}
    emulator = EmulatorProcess(config, spec, tmp / "emulator", mqtt=(broker.host, broker.port),
                               cpus=cpus, nice=nice)
    if cpus is not None:
        os.sched_setaffinity(0, set(os.sched_getaffinity(0)) - cpus or cpus)
    with emulator:
        line = load_config(await asyncio.to_thread(emulator.start))
        if link == "opencv":
            line = line.model_copy(update={"cameras": [c.model_copy(update={
                "source": c.source.removeprefix("mjpeg+"), "latency_ms": LOOPBACK_HANDOVER_MS})
                for c in line.cameras]})
        probe = await shift.probe()
        stop = asyncio.Event()
        controller = asyncio.create_task(run_line(line, RealClock(), stop, say=lambda _: None))
        try:
            waiting = asyncio.create_task(asyncio.to_thread(emulator.wait, 600.0))
            await asyncio.wait({controller, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if controller.done():
                controller.result()  # raises what stopped it
                raise RuntimeError("the controller stopped before the emulator ended")
            report = await waiting
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(controller, 30)
            probe.cancel()
    shift.dispositions.update(p["disposition"] for p in report["parcels"])
    shift.notes = [f"emulator| {line}" for line in emulator.lines
                   if not line.startswith(("mqtt:", "device fault"))][-40:]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="belt time of parcels")
    parser.add_argument("--link", choices=("mjpeg", "opencv", "inprocess"), default="mjpeg")
    parser.add_argument("--emulator", choices=("process", "inprocess"), default="process",
                        help="the emulator in its own process (default) or in this one")
    parser.add_argument("--emulator-cpu", type=int, default=None, metavar="N",
                        help="pin the emulator's process to CPU N, this one to the others")
    parser.add_argument("--emulator-nice", type=int, default=0, metavar="N",
                        help="run the emulator's process at nice N (it takes the CPU left)")
    parser.add_argument("--switch-interval-ms", type=float, default=None, metavar="MS",
                        help="sys.setswitchinterval for this process (Python's default 5 ms)")
    parser.add_argument("--verbose", action="store_true",
                        help="print the emulator's own output (its process only)")
    parser.add_argument("--slow-callback-ms", type=float, default=None, metavar="MS",
                        help="asyncio debug mode: log every callback longer than MS")
    args = parser.parse_args()
    if args.emulator == "process" and args.link == "inprocess":
        parser.error("--link inprocess needs --emulator inprocess")
    return args


def main() -> None:
    args = parse_args()
    sub = shutil.which("mosquitto_sub")
    if mosquitto_path() is None or sub is None:
        sys.exit("mosquitto and mosquitto-clients are needed (scripts/setup installs them)")
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    config = fast_line(2)
    spec = spec_for(args.seconds)
    shift = Shift()

    async def run(tmp: Path, broker: Mosquitto) -> None:
        if args.slow_callback_ms is not None:
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = args.slow_callback_ms / 1000
            logging.basicConfig(level=logging.WARNING)
        await asyncio.sleep(0.5)  # the sniffer subscribed
        if args.emulator == "process":
            await process_shift(shift, config, spec, tmp, broker=broker, link=args.link,
                                cpu=args.emulator_cpu, nice=args.emulator_nice)
        else:
            await inprocess_shift(shift, config, spec, tmp, broker=broker, link=args.link)

    with Mosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = f"sorter/{config.line.name}/io/divert/+"
        sniffer = subprocess.Popen(
            [sub, "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1",
             "-F", "%U %p"], stdout=subprocess.PIPE, text=True)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            asyncio.run(run(Path(tmp), broker))
            shift.wall, shift.cpu = time.perf_counter() - wall, time.process_time() - cpu
            done = resource.getrusage(resource.RUSAGE_CHILDREN)  # the emulator's, if it ran
            shift.emulator_cpu = (done.ru_utime + done.ru_stime
                                  - children.ru_utime - children.ru_stime)
            time.sleep(0.3)
        finally:
            sniffer.terminate()
            out, _ = sniffer.communicate(timeout=5)
    on_wire = wire_times(out.splitlines())
    called: dict[int, float] = {}
    sorter = shift.settle.sorter
    for parcel_id in on_wire:
        for m in sorter.messages.for_parcel(parcel_id) if sorter is not None else []:
            if m.direction == "sent" and m.kind == "divert":
                called.setdefault(parcel_id, m.at + shift.offset)
    if args.verbose:
        print("\n".join(shift.notes))
    report(shift, spec, how=f"emulator {args.emulator}, cameras {args.link}",
           called=called, on_wire=on_wire)


def report(shift: Shift, spec: ScenarioSpec, *, how: str, called: dict[int, float],
           on_wire: dict[int, float]) -> None:
    settled = shift.settle.at
    mean_pitch = sum(spec.length_mm) / 2 + sum(spec.gap_mm) / 2
    print(f"real-time shift over MQTT ({how}): {spec.parcels} parcels, about "
          f"{SPEED_MM_S * 3600 / mean_pitch:.0f} inducted per hour, {shift.wall:.1f} s wall, "
          f"this process {shift.cpu / max(shift.wall, 1e-9):.2f} cores, the emulator's "
          f"{shift.emulator_cpu / max(shift.wall, 1e-9):.2f}")
    print(f"  dispositions: {dict(shift.dispositions)}; diverts seen on the wire: "
          f"{len(on_wire)}")
    for in_zone, label in ((True, "settled by a read in the read zone"),
                           (False, "settled at the read zone's end")):
        ids = [p for p in on_wire if p in settled and settled[p][1] is in_zone]
        print(f"{label} ({len(ids)} parcels), ms:")
        print(row("settled -> divert on the wire", [(on_wire[p] - settled[p][0]) * 1000
                                                    for p in ids]))
        print(row("settled -> divert() called", [(called[p] - settled[p][0]) * 1000
                                                 for p in ids if p in called]))
        print(row("divert() called -> on the wire", [(on_wire[p] - called[p]) * 1000
                                                     for p in ids if p in called]))
    print(row("the event loop's lag (5 ms sleeps)", shift.lags))
    print("(on the wire: received by mosquitto_sub in its own process, so the broker's "
          "forwarding is in; goal p99 <= 5 ms)")


if __name__ == "__main__":
    main()
