"""The serial link: divert→answer latency through the whole driver stack, and the capacity of a
115200-baud wire at 40,000 parcels an hour.

Run: ``.venv/bin/python bench/serial_link.py`` (``--runs``, ``--n``, ``--seconds``).

1. Baseline, as FACTS.md measured it: a plain pyserial-asyncio-fast client writing a 20-byte
   request to a pty whose far end answers each one at once; round trip p50/p99.
2. Ours: the time ``SerialLineIO.divert()`` takes over an unpaced pty (as the baseline),
   against two far ends: the least a board must do (a protocol session that decodes the
   frame and answers ACK + DivertAnswer at once, as firmware would in microseconds), and
   the whole emulated I/O board (which also checks the command against the physical line
   and schedules it, in Python, in the same process). p50/p99, and p99 against the
   baseline's (the issue's goal: ≤ 1.5x).
3. Capacity: a real-time shift at 40,000 parcels/h (``bench/realtime.py``'s line at 3 m/s,
   one in-process camera) over the serial link paced at 115200 baud on the emulated wire:
   the wire's busy share each way, the headroom (1 / busy share of the busier direction),
   bytes per parcel, and the outcome (every parcel must still sort).

Medians over ``--runs`` runs are quoted; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.realtime import SPEED_MM_S, fast_line  # noqa: E402
from controller.clock import RealClock, run_real  # noqa: E402
from controller.config import SerialLinkConfig, load_config  # noqa: E402
from controller.lineio import DivertCommand  # noqa: E402
from controller.report import parcel_records, summarise  # noqa: E402
from controller.simulate import LinkOptions, ShiftResult, run_shift  # noqa: E402
from drivers.lineio.serial import SerialLineIO  # noqa: E402
from sim_hardware.board import IoBoard  # noqa: E402
from sim_hardware.line import PhysicalLine  # noqa: E402
from sim_hardware.scenario import ScenarioSpec, generate  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def plain_round_trips(n: int) -> list[float]:
    import serial_asyncio_fast

    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()

    def echo() -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(master, os.read(master, 4096))

    loop.add_reader(master, echo)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, Client, os.ttyname(slave), baudrate=115200)
    request = bytes(range(20))
    times: list[float] = []
    try:
        for i in range(n + 200):
            start = time.perf_counter()
            transport.write(request)
            received = b""
            while len(received) < len(request):
                received += await got.get()
            if i >= 200:
                times.append(time.perf_counter() - start)
    finally:
        transport.close()
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)
    return times


async def driver_round_trips(n: int, workdir: Path) -> list[float]:
    clock = RealClock()
    config = load_config(ROOT / "deploy" / "line.example.toml")
    spec = ScenarioSpec(parcels=0)
    line = PhysicalLine(config, spec, generate(spec, config)[0], clock, render=False)
    board = IoBoard(line, clock, link_path=workdir / "ttyBENCH")
    await board.start()
    times: list[float] = []
    try:
        async with SerialLineIO(SerialLinkConfig(port=str(workdir / "ttyBENCH")),
                                clock=clock) as link:
            await link.wait_up(5.0)
            far = line.encoder() + 10_000_000
            for i in range(n + 200):
                command = DivertCommand(i + 1, i + 1, "D1", far + i, 100.0)
                start = time.perf_counter()
                reply = await link.divert(command)
                elapsed = time.perf_counter() - start
                assert reply.accepted, reply
                if i >= 200:
                    times.append(elapsed)
    finally:
        line.cancel_diverts()
        await board.close()
    return times


async def responder_round_trips(n: int, workdir: Path) -> list[float]:
    """The driver against the least a board must do: a protocol session answering at once."""
    from drivers.lineio import wire
    from drivers.lineio.link import LinkSession

    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    link_path = workdir / "ttyRESPONDER"
    link_path.unlink(missing_ok=True)
    link_path.symlink_to(os.ttyname(slave))
    board = LinkSession("board", boot_id=1)

    def readable() -> None:
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return
        now = loop.time()
        received = board.receive(data, now)
        out = bytearray(received.out)
        for message in received.messages:
            if isinstance(message, wire.Hello):
                out += board.reply_hello(wire.Mode.RUN, 0, 0, now)
            elif isinstance(message, wire.Divert):
                out += board.send(wire.DivertAnswer(message.command_id, True, wire.Reason.OK),
                                  now)
        if out:
            os.write(master, out)

    loop.add_reader(master, readable)
    times: list[float] = []
    try:
        async with SerialLineIO(SerialLinkConfig(port=str(link_path)),
                                clock=RealClock()) as link:
            await link.wait_up(5.0)
            for i in range(n + 200):
                command = DivertCommand(i + 1, i + 1, "D1", 10_000_000 + i, 100.0)
                start = time.perf_counter()
                reply = await link.divert(command)
                elapsed = time.perf_counter() - start
                assert reply.accepted, reply
                if i >= 200:
                    times.append(elapsed)
    finally:
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)
    return times


def capacity(seconds: float, workdir: Path) -> dict[str, float]:
    config = fast_line(1)
    mean_pitch = (150 + 260) / 2 + (40 + 90) / 2
    parcels = int(seconds * SPEED_MM_S / mean_pitch)
    spec = ScenarioSpec(parcels=parcels, seed=40, length_mm=(150.0, 260.0),
                        width_mm=(150.0, 300.0), gap_mm=(40.0, 90.0), scuffed_share=0.0,
                        multi_parcel_share=0.0)

    async def shift(clock: RealClock) -> ShiftResult:
        return await run_shift(config, spec, workdir, clock, line_link="serial",
                               link_options=LinkOptions(baudrate=115200), decode_cost_s=0.0)

    result = run_real(shift)
    summary = summarise(result, parcel_records(result))
    board = result.extra["board"]
    stream_s = max(p.offset_mm for p in result.truth) / SPEED_MM_S
    line_s = result.line_time_s
    busy_up = board["wire_busy_s"]["up"] / line_s
    busy_down = board["wire_busy_s"]["down"] / line_s
    return {
        "parcels": parcels, "per_hour": parcels / stream_s * 3600, "line_s": line_s,
        "busy_up": busy_up, "busy_down": busy_down,
        "bytes_up_per_parcel": board["bytes_out"] / parcels,
        "bytes_down_per_parcel": board["bytes_in"] / parcels,
        "headroom": 1 / max(busy_up, busy_down),
        "sorted": summary["dispositions"].get("SORTED", 0),
        "late": summary["dispositions"].get("LATE", 0),
        "missorts": summary["missorts"], "wrong_fires": summary["wrong_parcel_fires"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000, help="round trips per run")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="belt time of parcels in the capacity shift")
    args = parser.parse_args()

    plain: list[list[float]] = []
    minimal: list[list[float]] = []
    ours: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):  # interleaved, so a noisy moment hits all three alike
            plain.append(run_real(lambda _c: plain_round_trips(args.n)))
            minimal.append(run_real(lambda _c: responder_round_trips(args.n, Path(tmp))))
            ours.append(run_real(lambda _c: driver_round_trips(args.n, Path(tmp))))
    p50 = statistics.median(statistics.median(t) for t in plain) * 1e6
    p99 = statistics.median(pct(t, 0.99) for t in plain) * 1e6
    print(f"round trip over a pty, {args.n} each after 200 warm-up, median of {args.runs} runs")
    print(f"  plain pyserial-asyncio-fast echo, 20 B:      p50 {p50:5.0f} µs  p99 {p99:5.0f} µs")
    for name, runs in (("divert() → protocol session answering", minimal),
                       ("divert() → emulated I/O board", ours)):
        o50 = statistics.median(statistics.median(t) for t in runs) * 1e6
        o99 = statistics.median(pct(t, 0.99) for t in runs) * 1e6
        print(f"  {name:<41} p50 {o50:5.0f} µs  p99 {o99:5.0f} µs  (p99 {o99 / p99:.2f}x "
              f"plain; goal <= 1.5x)")

    with tempfile.TemporaryDirectory() as tmp:
        cap = capacity(args.seconds, Path(tmp))
    print(f"capacity at 115200 baud: {cap['parcels']} parcels at {cap['per_hour']:,.0f}/h, "
          f"{cap['line_s']:.1f} s of line time")
    print(f"  wire busy: board→controller {cap['busy_up']:.1%}, controller→board "
          f"{cap['busy_down']:.1%}; headroom {cap['headroom']:.1f}x "
          f"(≈ {cap['per_hour'] * cap['headroom']:,.0f} parcels/h before the wire is full)")
    print(f"  bytes per parcel: up {cap['bytes_up_per_parcel']:.0f}, down "
          f"{cap['bytes_down_per_parcel']:.0f}")
    print(f"  outcome: {cap['sorted']} of {cap['parcels']} SORTED, LATE {cap['late']}, "
          f"mis-sorts {cap['missorts']}, wrong-parcel fires {cap['wrong_fires']}")


if __name__ == "__main__":
    main()
