"""The serial link: divert→answer latency through the whole driver stack, and the capacity of a
115200-baud wire at 40,000 parcels an hour.

Run: ``.venv/bin/python bench/serial_link.py`` (``--runs``, ``--n``, ``--seconds``).

The far end of every round trip runs in its own process, as a board is its own device.

1. The issue's goal, measured with the far end a board would be: firmware in C.
   ``bench/board_stub.c`` (built here with ``cc``; skipped if there is none) is either a
   plain echo or board firmware written from docs/serial-protocol.md alone (COBS, CRC,
   sequence, cumulative ACK, resends, heartbeats), here with no diverters of its own, so it
   answers every divert at once and holds none. Against the
   echo, a plain pyserial-asyncio-fast client writes a 20-byte request and waits for it back
   (FACTS.md's baseline); against the stub, ``SerialLineIO.divert()`` sends a Divert and waits
   for its answer, which carries the acknowledgement of the divert. Both far ends cost the
   same few µs, so the ratio of the two p99s is what our driver stack adds (the goal: <=
   1.5x).
2. The same with the far end in Python, for reference: the plain client against a Python echo,
   and ``divert()`` against our own protocol session answering at once and against the whole
   emulated I/O board (which also checks each command against the physical line and schedules
   it). These ratios include the emulated board's own Python, which a real board does not have.
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
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.realtime import SPEED_MM_S, fast_line  # noqa: E402
from controller.app.shift_report import parcel_records, summarise  # noqa: E402
from controller.app.simulate import LinkOptions, ShiftResult, run_shift  # noqa: E402
from controller.clock import RealClock, run_real  # noqa: E402
from controller.config import SerialLinkConfig, load_config  # noqa: E402
from controller.errors import DriverTimeout  # noqa: E402
from controller.lineio import DivertCommand  # noqa: E402
from drivers.lineio import wire  # noqa: E402
from drivers.lineio.link import LinkSession  # noqa: E402
from drivers.lineio.serial import SerialLineIO  # noqa: E402
from sim_hardware.board import IoBoard  # noqa: E402
from sim_hardware.line import PhysicalLine  # noqa: E402
from sim_hardware.scenario import ScenarioSpec, generate  # noqa: E402

WARM_UP = 200
TIMEOUTS = [0]  # diverts of ours the far end did not answer within reply_timeout_ms


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


FarEnd = Literal["c-echo", "c-board", "echo", "session", "board"]
STUB_SOURCE = ROOT / "bench" / "board_stub.c"


def build_stub(workdir: Path) -> Path | None:
    """Compile bench/board_stub.c, or None (with a note) when there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("no C compiler (cc): the C far ends are skipped")
        return None
    binary = workdir / "board_stub"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(STUB_SOURCE)], check=True)
    return binary


def far_end(kind: FarEnd, ready: Connection, link_path: str) -> None:
    """The board's side in its own process, as a board is its own device: a pty whose master
    answers as ``kind`` says, until the process is terminated."""

    async def serve(clock: RealClock) -> None:
        loop = asyncio.get_running_loop()
        if kind == "board":
            config = load_config(ROOT / "deploy" / "line.example.toml")
            spec = ScenarioSpec(parcels=0)
            line = PhysicalLine(config, spec, generate(spec, config)[0], clock, render=False)
            board = IoBoard(line, clock, link_path=Path(link_path))
            await board.start()
            ready.send(board.port)
            await asyncio.Event().wait()
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        session = LinkSession("board", boot_id=1)

        def echo() -> None:
            with contextlib.suppress(BlockingIOError):
                os.write(master, os.read(master, 4096))

        def answer() -> None:
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                return
            now = loop.time()
            received = session.receive(data, now, defer_ack=True)
            out = bytearray(received.out)
            for message in received.messages:
                if isinstance(message, wire.Hello):
                    out += session.reply_hello(wire.Mode.RUN, 0, 0, now)
                elif isinstance(message, wire.Divert):
                    out += session.send(
                        wire.DivertAnswer(message.command_id, True, wire.Reason.OK), now)
            out += session.take_ack()  # b"" when an answer carries it
            if out:
                os.write(master, out)

        loop.add_reader(master, echo if kind == "echo" else answer)
        ready.send(os.ttyname(slave))
        await asyncio.Event().wait()

    run_real(serve)


async def plain_round_trips(port: str, n: int) -> list[float]:
    import serial_asyncio_fast

    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, Client, port, baudrate=115200)
    request = bytes(range(20))
    times: list[float] = []
    try:
        for i in range(n + WARM_UP):
            start = time.perf_counter()
            transport.write(request)
            received = b""
            while len(received) < len(request):
                received += await got.get()
            if i >= WARM_UP:
                times.append(time.perf_counter() - start)
    finally:
        transport.close()
    return times


async def driver_round_trips(port: str, n: int) -> list[float]:
    times: list[float] = []
    async with SerialLineIO(SerialLinkConfig(port=port), clock=RealClock()) as link:
        await link.wait_up(5.0)
        for i in range(n + WARM_UP):
            # Far in the future: the board holds every one, none fires during the bench.
            command = DivertCommand(i + 1, i + 1, "D1", 10_000_000_000 + i, 100.0)
            start = time.perf_counter()
            try:
                reply = await link.divert(command)
            except DriverTimeout:
                # A stall of this shared machine: counted, kept as the time it took.
                TIMEOUTS[0] += 1
            else:
                assert reply.accepted, reply
            elapsed = time.perf_counter() - start
            if i >= WARM_UP:
                times.append(elapsed)
    return times


def round_trips(kind: FarEnd, n: int, workdir: Path, stub: Path | None) -> list[float]:
    if kind.startswith("c-"):
        assert stub is not None
        # No diverters and no inputs: the stub answers every divert and holds none.
        with subprocess.Popen([str(stub), kind.removeprefix("c-")], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True) as stub_process:
            try:
                assert stub_process.stdout is not None
                port = stub_process.stdout.readline().strip()
                if kind == "c-echo":
                    return run_real(lambda _c: plain_round_trips(port, n))
                return run_real(lambda _c: driver_round_trips(port, n))
            finally:
                stub_process.kill()
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    link_path = workdir / f"tty-{kind}"
    process = context.Process(target=far_end, args=(kind, theirs, str(link_path)), daemon=True)
    process.start()
    try:
        if not mine.poll(30):
            raise RuntimeError(f"the {kind} far end did not start")
        port = str(link_path) if kind == "board" else mine.recv()
        if kind == "echo":
            return run_real(lambda _c: plain_round_trips(port, n))
        return run_real(lambda _c: driver_round_trips(port, n))
    finally:
        process.terminate()
        process.join(5)


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


NAMES = {"c-board": "divert() → board stub in C", "session": "divert() → protocol session (Python)",
         "board": "divert() → emulated I/O board (Python)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000, help="round trips per run")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="belt time of parcels in the capacity shift")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stub = build_stub(Path(tmp))
        kinds: list[FarEnd] = ["echo", "session", "board"]
        if stub is not None:
            kinds = ["c-echo", "c-board", *kinds]
        runs: dict[FarEnd, list[list[float]]] = {kind: [] for kind in kinds}
        for _ in range(args.runs):  # interleaved, so a noisy moment hits all alike
            for kind, samples in runs.items():
                samples.append(round_trips(kind, args.n, Path(tmp), stub))

    def figures(kind: FarEnd) -> tuple[float, float]:
        return (statistics.median(statistics.median(t) for t in runs[kind]) * 1e6,
                statistics.median(pct(t, 0.99) for t in runs[kind]) * 1e6)

    print(f"round trip over a pty, far end in its own process, {args.n} each after "
          f"{WARM_UP} warm-up, median of {args.runs} runs")
    pairs: tuple[tuple[FarEnd, tuple[FarEnd, ...], str], ...] = (
        ("c-echo", ("c-board",), "far end in C, as a board's firmware"),
        ("echo", ("session", "board"), "far end in Python"))
    for plain, ours, where in pairs:
        if plain not in runs:
            continue
        p50, p99 = figures(plain)
        print(f"  {where}:")
        print(f"    {'plain pyserial-asyncio-fast, 20 B echoed':<44} p50 {p50:5.0f} µs  "
              f"p99 {p99:5.0f} µs")
        for kind in ours:
            o50, o99 = figures(kind)
            print(f"    {NAMES[kind]:<44} p50 {o50:5.0f} µs  p99 {o99:5.0f} µs  "
                  f"(p99 {o99 / p99:.2f}x plain{'; goal <= 1.5x' if kind == 'c-board' else ''})")

    if TIMEOUTS[0]:
        print(f"  ({TIMEOUTS[0]} diverts unanswered within the reply timeout: machine stalls)")

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
