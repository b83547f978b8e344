"""One contract for every line I/O link: in-process, the I/O board over a pty, nodes over MQTT.

Written once, run against each backend with the emulator's physical line behind it: the
controller's view (events, encoder, divert replies) is checked against what the line did.
The serial driver runs it twice: against the emulated board, which runs the driver's own
protocol session, and against ``c-board``, the board firmware in C (bench/board_stub.c,
built with ``cc``) that shares no code with the driver, so a bug of both ends cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import pytest

from controller.app.simulate import LinkOptions, Rig, wire_up
from controller.clock import RealClock, run_real
from controller.config import LineConfig
from controller.errors import DriverError
from controller.lineio import (
    INDUCTION_EYE,
    BinEntry,
    DivertCommand,
    LineEvent,
    LineIO,
    PhotoEyeEdge,
)
from sim_hardware.devices import SimLineIO
from sim_hardware.line import PhysicalLine
from sim_hardware.scenario import ScenarioSpec, generate
from tests.c_board import CBoard, CBoardLineIO, build_stub

pytestmark = pytest.mark.wallclock

Backend = Literal["inprocess", "serial", "mqtt", "c-board"]
BACKENDS: list[Backend] = ["inprocess", "serial", "c-board", "mqtt"]
Body = Callable[[Rig, LineIO, RealClock], Coroutine[Any, Any, None]]


@pytest.fixture(scope="session")
def board_stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/board_stub.c, compiled once for the run."""
    binary = build_stub(tmp_path_factory.mktemp("board_stub"))
    if binary is None:
        pytest.skip("no C compiler (cc): the board firmware in C cannot be built")
    return binary


async def _c_board(config: LineConfig, rig: Rig, stack: contextlib.AsyncExitStack,
                   clock: RealClock, binary: Path) -> LineIO:
    """The serial driver, with the C firmware on the far end of a pty."""
    from controller.config import SerialLinkConfig
    from drivers.lineio.serial import SerialLineIO

    stub = await stack.enter_async_context(CBoard(binary, rig.line, clock))
    rig.board = stub
    link = SerialLineIO(SerialLinkConfig(port=stub.port), clock=clock)
    line_io = await stack.enter_async_context(CBoardLineIO(link, stub))
    await link.wait_up(5.0)
    return line_io


def _run(config: LineConfig, backend: Backend, tmp_path: Path, *,
         broker: tuple[str, int] | None, body: Body, parcels: int = 2,
         stub: Path | None = None) -> None:
    spec = ScenarioSpec(parcels=parcels, seed=7, gap_mm=(1200.0, 1200.0),
                        length_mm=(300.0, 300.0), scuffed_share=0.0)
    truth, _ = generate(spec, config)

    async def main(clock: RealClock) -> None:
        line = PhysicalLine(config, spec, truth, clock, render=False)
        rig = Rig(line)
        async with contextlib.AsyncExitStack() as stack:
            if backend == "inprocess":
                line_io: LineIO = SimLineIO(line)
            elif backend == "c-board":
                assert stub is not None
                line_io = await _c_board(config, rig, stack, clock, stub)
            else:
                _, line_io = await wire_up(config, rig, stack, workdir=tmp_path, clock=clock,
                                           line_link=backend,
                                           options=LinkOptions(broker=broker))
                if backend == "mqtt":
                    await _nodes_online(line_io, config, clock)
            rig.line_io = line_io
            line.start_belt()
            running = asyncio.create_task(line.run())
            try:
                async with asyncio.timeout(20):
                    await body(rig, line_io, clock)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)

    run_real(main)


async def _nodes_online(line_io: LineIO, config: LineConfig, clock: RealClock) -> None:
    """Until every diverter node's own status is in: a node of an earlier test on the same
    broker left its "offline" retained, which the new node's "online" replaces only once it
    has connected (a divert before then is refused: its node is offline)."""
    mqtt = line_io.links["mqtt"]  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        while any(mqtt.nodes.get(d.id) != "online" for d in config.diverters):
            await clock.sleep(0.02)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[Backend, tuple[str, int] | None]:
    name: Backend = request.param
    if name != "mqtt":
        return name, None
    broker = request.getfixturevalue("mosquitto")
    return name, (broker.host, broker.port)


def _stub(backend: str, request: pytest.FixtureRequest) -> Path | None:
    return request.getfixturevalue("board_stub") if backend == "c-board" else None


async def _next(events: AsyncIterator[LineEvent], kind: type[Any],
                match: Callable[[Any], bool] = lambda _: True) -> Any:
    async for event in events:
        if isinstance(event, kind) and match(event):
            return event
    raise AssertionError("events ended")


def test_edges_arrive_with_the_encoder_count_latched_at_them(
        example_config: LineConfig, tmp_path: Path,
        backend: tuple[Backend, tuple[str, int] | None],
        request: pytest.FixtureRequest) -> None:
    async def body(rig: Rig, line_io: LineIO, clock: RealClock) -> None:
        events = line_io.events()
        for parcel in rig.line.parcels:
            blocked = await _next(events, PhotoEyeEdge, lambda e: e.eye == INDUCTION_EYE)
            cleared = await _next(events, PhotoEyeEdge, lambda e: e.eye == INDUCTION_EYE)
            assert (blocked.blocked, cleared.blocked) == (True, False)
            assert blocked.enc == parcel.induct_enc
            cpm = example_config.belt.encoder_counts_per_mm
            assert cleared.enc - blocked.enc == pytest.approx(parcel.length_mm * cpm, abs=1)
            # The controller's encoder keeps up with the belt: within 100 mm at 2 m/s, 50 ms,
            # which a loaded 2-core machine's scheduling can take (a stale count is seconds).
            await clock.sleep(0.05)
            assert abs(line_io.encoder() - rig.line.encoder()) <= 100 * cpm

    _run(example_config, backend[0], tmp_path, broker=backend[1], body=body,
         stub=_stub(backend[0], request))


def test_an_accepted_divert_fires_on_its_count_and_the_bin_sees_the_parcel(
        example_config: LineConfig, tmp_path: Path,
        backend: tuple[Backend, tuple[str, int] | None],
        request: pytest.FixtureRequest) -> None:
    diverter = example_config.diverters[2]
    cpm = example_config.belt.encoder_counts_per_mm

    async def body(rig: Rig, line_io: LineIO, clock: RealClock) -> None:
        events = line_io.events()
        blocked = await _next(events, PhotoEyeEdge, lambda e: e.blocked)
        cleared = await _next(events, PhotoEyeEdge, lambda e: not e.blocked)
        length = (cleared.enc - blocked.enc) / cpm
        fire = blocked.enc + round((diverter.position_mm - example_config.induction.photo_eye_mm
                                    + length / 2) * cpm)
        reply = await line_io.divert(DivertCommand(41, 1, diverter.id, fire, diverter.pulse_ms))
        assert reply.accepted, reply
        assert reply.command_id == 41
        entry = await _next(events, BinEntry)
        assert entry.bin_id == diverter.bin
        first = rig.line.parcels[0]
        assert first.actual == diverter.bin
        assert [(f.command_id, f.diverter_id, f.pushed) for f in rig.line.fires] == \
            [(41, diverter.id, first.sim_id)]

    _run(example_config, backend[0], tmp_path, broker=backend[1], body=body, parcels=1,
         stub=_stub(backend[0], request))


def test_a_divert_past_its_deadline_or_for_no_diverter_never_fires(
        example_config: LineConfig, tmp_path: Path,
        backend: tuple[Backend, tuple[str, int] | None],
        request: pytest.FixtureRequest) -> None:
    diverter = example_config.diverters[0]

    async def body(rig: Rig, line_io: LineIO, clock: RealClock) -> None:
        events = line_io.events()
        await _next(events, PhotoEyeEdge, lambda e: not e.blocked)
        late = await line_io.divert(DivertCommand(7, 1, diverter.id, line_io.encoder(), 100.0))
        assert (late.accepted, late.reason) == (False, "late")
        try:
            unknown = await line_io.divert(
                DivertCommand(8, 1, "NOPE", line_io.encoder() + 100_000, 100.0))
        except DriverError:
            pass
        else:
            assert (unknown.accepted, unknown.reason) == (False, "unknown_diverter")
        await clock.sleep(0.2)
        assert rig.line.fires == []
        assert rig.line.scheduled_diverts() == 0

    _run(example_config, backend[0], tmp_path, broker=backend[1], body=body, parcels=1,
         stub=_stub(backend[0], request))


@pytest.mark.parametrize("link", ["serial", "c-board", "mqtt"])
def test_the_far_end_stops_firing_when_the_controller_goes_silent(
        example_config: LineConfig, tmp_path: Path, link: Backend,
        request: pytest.FixtureRequest) -> None:
    broker = None
    if link == "mqtt":
        mosquitto = request.getfixturevalue("mosquitto")
        broker = (mosquitto.host, mosquitto.port)
    diverter = example_config.diverters[-1]

    async def body(rig: Rig, line_io: LineIO, clock: RealClock) -> None:
        fire = line_io.encoder() + round(
            example_config.belt.encoder_counts_per_mm * example_config.belt.speed_mm_s * 3)
        reply = await line_io.divert(DivertCommand(9, 1, diverter.id, fire, 100.0))
        assert reply.accepted
        assert rig.line.scheduled_diverts() == 1
        await line_io.__aexit__(None, None, None)  # type: ignore[attr-defined]
        # No heartbeat for the fail-safe time (500 ms): the command is dropped unfired.
        await clock.sleep(1.2)
        assert rig.line.scheduled_diverts() == 0
        assert rig.line.fires == []

    _run(example_config, link, tmp_path, broker=broker, body=body, parcels=1,
         stub=_stub(link, request))
