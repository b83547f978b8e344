"""Read -> divert on the wire, per parcel, at 40,000 parcels/h in real time over MQTT.

Run: ``.venv/bin/python bench/read_to_divert.py`` (``--seconds`` of belt time, ``--link``).

bench/realtime.py's line (3 m/s, small parcels 65 mm apart, about 11 a second, two
1920x1080 cameras at 30 fps served as MJPEG on loopback and decoded for real), with its
diverters and sensors as the emulator's MQTT nodes on a mosquitto of its own
(``line_link="mqtt"``), on the real clock in this one process. For every diverted parcel:

* **settled**: when its read verdict settled, which for a parcel settled in the read zone is
  the frame whose accepted read settled it (the reading stage settles right after it adds a
  frame's reads, and starts the decision task then). The controller keeps no timestamp of
  it, so this bench takes it from the moment the decision task is created: a task factory
  (public asyncio API) sees ``Sorter._decide``'s coroutine and reads its ``parcel``;
* **called**: when the sorter called ``divert()`` (its message log's "sent" record);
* **on the wire**: when a separate ``mosquitto_sub`` process, subscribed to the divert
  topics, received it (its ``%U`` timestamp): an upper bound of the socket write, by the
  broker's forwarding, measured outside the controller's loop.

Prints p50 / p95 / p99 / max of settled -> wire (the figure, goal p99 <= 5 ms), and its two
parts, for the parcels settled in the read zone and, apart, those settled at its end; and
how late the event loop wakes a task during the shift, which every step waits on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.realtime import SPEED_MM_S, fast_line  # noqa: E402
from controller.app.simulate import LinkOptions, ShiftResult, run_shift  # noqa: E402
from controller.clock import RealClock  # noqa: E402
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
    whether it settled inside the read zone (by a frame's read) or at its end."""

    def __init__(self) -> None:
        self.at: dict[int, tuple[float, bool]] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop,
                 coro: Generator[Any, None, T] | Coroutine[Any, Any, T], /,
                 **kwargs: Any) -> asyncio.Future[T]:
        frame = coro.cr_frame if isinstance(coro, types.CoroutineType) else None
        if frame is not None and frame.f_code.co_qualname == DECIDE:
            parcel = frame.f_locals["parcel"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="belt time of parcels")
    parser.add_argument("--link", choices=("mjpeg", "opencv", "inprocess"), default="mjpeg")
    args = parser.parse_args()
    sub = shutil.which("mosquitto_sub")
    if mosquitto_path() is None or sub is None:
        sys.exit("mosquitto and mosquitto-clients are needed (scripts/setup installs them)")
    config = fast_line(2)
    spec = spec_for(args.seconds)
    settle = SettleTimes()
    sorters: list[Sorter] = []
    offset = 0.0  # unix time - loop time
    lags: list[float] = []

    with Mosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = f"sorter/{config.line.name}/io/divert/+"
        sniffer = subprocess.Popen(
            [sub, "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1",
             "-F", "%U %p"], stdout=subprocess.PIPE, text=True)
        try:
            async def shift() -> ShiftResult:
                nonlocal offset
                loop = asyncio.get_running_loop()
                loop.set_task_factory(settle)
                offset = time.time() - loop.time()
                await asyncio.sleep(0.5)  # the sniffer subscribed
                probe = asyncio.create_task(loop_lag(lags))
                try:
                    return await run_shift(config, spec, Path(tmp), RealClock(),
                                           camera_link=args.link, line_link="mqtt",
                                           link_options=LinkOptions(broker=(broker.host,
                                                                            broker.port)),
                                           with_sorter=sorters.append,
                                           on_final=lambda _: None)
                finally:
                    probe.cancel()

            wall = time.perf_counter()
            result = asyncio.run(shift())
            wall = time.perf_counter() - wall
            time.sleep(0.3)
        finally:
            sniffer.terminate()
            out, _ = sniffer.communicate(timeout=5)
    on_wire = wire_times(out.splitlines())
    called: dict[int, float] = {}
    for parcel_id in on_wire:
        for m in sorters[0].messages.for_parcel(parcel_id):
            if m.direction == "sent" and m.kind == "divert":
                called.setdefault(parcel_id, m.at + offset)
    report(result, spec, how=f"cameras {args.link}", wall=wall, settled=settle.at,
           called=called, on_wire=on_wire, lags=lags)


def report(result: ShiftResult, spec: ScenarioSpec, *, how: str, wall: float,
           settled: dict[int, tuple[float, bool]], called: dict[int, float],
           on_wire: dict[int, float], lags: list[float]) -> None:
    dispositions: dict[str, int] = {}
    for r in result.journal:
        dispositions[r["disposition"]] = dispositions.get(r["disposition"], 0) + 1
    stream_s = max(p.offset_mm for p in result.truth) / SPEED_MM_S
    print(f"real-time shift over MQTT (line_link mqtt, {how}): {spec.parcels} "
          f"parcels, {spec.parcels / stream_s * 3600:.0f} inducted per hour, {wall:.1f} s wall")
    print(f"  dispositions: {dispositions}; diverts seen on the wire: {len(on_wire)}")
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
    print(row("the event loop's lag (5 ms sleeps)", lags))
    print("(on the wire: received by mosquitto_sub in its own process, so the broker's "
          "forwarding is in; goal p99 <= 5 ms)")


if __name__ == "__main__":
    main()
