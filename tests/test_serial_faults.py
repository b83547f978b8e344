"""Shifts over the real serial driver and the emulated I/O board, with the wire going bad:
garbled and lost bytes, lost and late ACKs, a cable pulled and plugged back, a jammed
diverter, a board that restarts. Whatever happens, every parcel gets exactly one disposition,
no diverter pushes a parcel the command did not name, and the link comes back by itself.

The shifts run on the virtual clock, the board on an in-memory null modem
(drivers/lineio/nullmodem.py): no pty, no real time, and the same seed gives the same shift.
One shift per fault family also runs on a real pty and the real clock (the ``test_real_pty_``
tests), so the pty, pyserial and the event loop's real I/O stay covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from controller.app.shift_report import parcel_records, summarise
from controller.app.simulate import LineLink, LinkOptions, Rig, ShiftResult, run_shift, wire_up
from controller.clock import Clock, RealClock, VirtualClock, run_real, run_virtual
from controller.config import LineConfig
from controller.errors import LinkDown
from controller.lineio import DivertCommand, PhotoEyeEdge, TrackingLost
from sim_hardware.board import WireFaults
from sim_hardware.line import PhysicalLine
from sim_hardware.scenario import ScenarioSpec, generate
from tests.test_lineio_contract import _next

SPEC = ScenarioSpec(parcels=24, seed=11, gap_mm=(200.0, 400.0), scuffed_share=0.0,
                    multi_parcel_share=0.0)
REAL_SPEC = SPEC.model_copy(update={"parcels": 12})
"""The real-pty shifts run in real time: half as many parcels, the fault earlier."""
REAL_FAULT_AT_S = 1.8
BAD_WIRE = WireFaults(garble=0.01, drop=0.002, drop_acks=0.3, ack_delay_s=0.01, seed=3)
During = Callable[[Rig], Awaitable[None]]


def shift(config: LineConfig, workdir: Path, *, line_link: LineLink = "serial",
          options: LinkOptions | None = None, during: Any = None,
          spec: ScenarioSpec = SPEC, real: bool | None = None,
          ) -> tuple[dict[str, Any], list[dict[str, Any]], ShiftResult]:
    """One shift over ``line_link``: on the virtual clock (the board on a null modem), or
    with ``real`` on the real clock (the board on a pty); by default real only for a link
    through an MQTT broker, which moves in real time."""
    if real is None:
        real = "mqtt" in line_link
    # The session and boot ids (and the reconnect jitter drawn from the session) come from
    # the global stream: seeded, a shift is the same every time.
    random.seed(spec.seed)

    async def main(clock: Clock) -> ShiftResult:
        return await run_shift(config, spec, workdir, clock, line_link=line_link,
                               link_options=options or LinkOptions(), during=during,
                               decode_cost_s=0.0)

    result = run_real(main) if real else run_virtual(main)
    records = parcel_records(result)
    return summarise(result, records), records, result


def assert_nothing_lost_nothing_wrong(summary: dict[str, Any], records: list[dict[str, Any]],
                                      result: ShiftResult, *, parcels: int = SPEC.parcels) -> None:
    tracked = [r for r in records if r["sim_id"] is not None]
    assert len(tracked) == parcels
    assert all(r["disposition"] not in ("UNTRACKED", "LOST") for r in tracked), \
        Counter(r["disposition"] for r in tracked)
    assert [r for r in records if r["case"] == "phantom"] == []
    assert len({row["parcel_id"] for row in result.journal}) == len(result.journal)
    assert all(row["disposition"] is not None for row in result.journal)
    assert summary["wrong_parcel_fires"] == 0
    assert summary["missorts"] == 0


async def pull_cable(rig: Rig, at_s: float = 3.0, out_s: float = 1.0) -> None:
    await rig.line.clock.sleep(at_s)
    await rig.board.unplug(out_s)


async def power_cycle(rig: Rig, at_s: float = 3.0) -> None:
    await rig.line.clock.sleep(at_s)
    await rig.board.restart(0.5)  # its count carries on: the line's encoder is absolute


# --- the checks of each fault family, whichever clock and cable ran the shift ----------------

def check_bad_wire(summary: dict[str, Any], records: list[dict[str, Any]],
                   result: ShiftResult, spec: ScenarioSpec = SPEC) -> None:
    assert_nothing_lost_nothing_wrong(summary, records, result, parcels=spec.parcels)
    board = result.extra["board"]
    assert board["garbled"] > 20
    assert board["acks_dropped"] > 0
    assert result.extra["link_serial_frames"]["resends"] > 0
    # The link repairs itself in time for nearly every decision.
    assert summary["dispositions"].get("SORTED", 0) >= spec.parcels - 2, summary["dispositions"]


def check_pulled_cable(summary: dict[str, Any], records: list[dict[str, Any]],
                       result: ShiftResult, spec: ScenarioSpec = SPEC) -> None:
    assert_nothing_lost_nothing_wrong(summary, records, result, parcels=spec.parcels)
    assert result.extra["board"]["unplugs"] == 1
    assert result.extra["link_serial"]["reconnects"] >= 1
    # The board dropped its schedule (fail-safe); the driver sent the still-due diverts again.
    assert result.extra["board"]["failsafes"] == 1
    assert result.extra["link_serial"]["restored"] >= 1
    # Parcels inducted well after the cable is back are sorted as usual.
    late = [r for r in records if r["sim_id"] is not None
            and r["sim_id"] >= spec.parcels - spec.parcels // 4]
    assert all(r["disposition"] == "SORTED" and r["actual_bin"] == r["expected_bin"]
               for r in late), late


def check_board_restart(summary: dict[str, Any], records: list[dict[str, Any]],
                        result: ShiftResult, spec: ScenarioSpec = SPEC) -> None:
    assert result.extra["board"]["restarts"] == 1
    assert result.extra["link_serial"]["board_restarts"] == 1
    # What the board held died with it; the driver sent the still-due diverts to the new boot.
    assert result.extra["link_serial"]["restored"] >= 1
    assert summary["wrong_parcel_fires"] == 0
    assert summary["missorts"] == 0
    assert len({row["parcel_id"] for row in result.journal}) == len(result.journal)
    assert all(row["disposition"] is not None for row in result.journal)
    assert [r for r in records if r["case"] == "phantom"] == []
    # The edges of parcels passing the induction eye while it was down are gone with it, so
    # those parcels may not be tracked; the rest sort as usual.
    sorted_ok = [r for r in records if r["disposition"] == "SORTED"]
    assert all(r["actual_bin"] == r["expected_bin"] for r in sorted_ok)
    late = [r for r in records if r["sim_id"] is not None
            and r["sim_id"] >= spec.parcels - spec.parcels // 4]
    assert all(r["disposition"] == "SORTED" and r["actual_bin"] == r["expected_bin"]
               for r in late), late


# --- on the virtual clock, through the null modem --------------------------------------------

def test_a_clean_serial_link_sorts_every_parcel_into_its_bin(
        example_config: LineConfig, tmp_path: Path) -> None:
    summary, records, result = shift(example_config, tmp_path)
    assert_nothing_lost_nothing_wrong(summary, records, result)
    assert summary["dispositions"] == {"SORTED": SPEC.parcels}
    assert all(r["actual_bin"] == r["expected_bin"] for r in records)
    frames = result.extra["link_serial_frames"]
    assert frames["bad_frames"] == 0
    assert frames["resends"] == 0


def test_one_percent_garbled_bytes_and_lost_acks_lose_nothing(
        example_config: LineConfig, tmp_path: Path) -> None:
    check_bad_wire(*shift(example_config, tmp_path, options=LinkOptions(wire_faults=BAD_WIRE)))


def test_a_pulled_cable_comes_back_and_the_line_keeps_sorting(
        example_config: LineConfig, tmp_path: Path) -> None:
    check_pulled_cable(*shift(example_config, tmp_path, during=pull_cable))


def test_a_jammed_diverter_is_a_fault_not_a_loss(
        example_config: LineConfig, tmp_path: Path) -> None:
    jammed = example_config.diverters[1]

    async def jam(rig: Rig) -> None:
        rig.line.jammed.add(jammed.id)

    summary, records, result = shift(example_config, tmp_path, during=jam)
    assert_nothing_lost_nothing_wrong(summary, records, result)
    to_jammed = [r for r in records if r["expected_bin"] == jammed.bin]
    assert to_jammed, "the stream should send some parcels to the jammed diverter"
    assert all(r["disposition"] == "DIVERT_FAULT" and r["actual_bin"] == "END"
               for r in to_jammed)


def test_a_board_restart_keeps_no_stale_command_and_the_line_sorts_on(
        example_config: LineConfig, tmp_path: Path) -> None:
    check_board_restart(*shift(example_config, tmp_path, during=power_cycle))


def test_the_same_faulty_shift_twice_with_one_seed_ends_the_same_parcel_by_parcel(
        example_config: LineConfig, tmp_path: Path) -> None:
    faults = WireFaults(garble=0.01, drop=0.003, drop_acks=0.3, ack_delay_s=0.01, seed=5)

    async def everything(rig: Rig) -> None:
        await rig.line.clock.sleep(2.0)
        await rig.board.unplug(0.7)
        await rig.line.clock.sleep(1.5)
        await rig.board.restart(0.4)

    def outcome(run: int) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        summary, records, result = shift(example_config, tmp_path / f"run{run}", during=everything,
                                         options=LinkOptions(wire_faults=faults))
        assert summary["wrong_parcel_fires"] == 0
        per_parcel = [(r["sim_id"], r["parcel_id"], r["disposition"], r["controller_bin"],
                       r["actual_bin"], r["reason"]) for r in records]
        return per_parcel, {"board": result.extra["board"],
                            "frames": result.extra["link_serial_frames"],
                            "fires": [(f.command_id, f.diverter_id, f.pushed, f.enc)
                                      for f in result.fires]}

    first, first_figures = outcome(1)
    second, second_figures = outcome(2)
    board = first_figures["board"]
    # The faults did happen, so the sameness is not that of a quiet shift.
    assert board["garbled"] > 10
    assert board["dropped"] > 0
    assert board["acks_dropped"] > 0
    assert (board["unplugs"], board["restarts"]) == (1, 1)
    assert len({p[2] for p in first}) > 1, "the faults should cost some parcels their bin"
    assert first == second
    assert first_figures == second_figures


def test_a_board_whose_count_begins_again_gets_no_command_from_before(
        example_config: LineConfig, tmp_path: Path) -> None:
    config = example_config
    diverter = config.diverters[-1]
    cpm = config.belt.encoder_counts_per_mm
    spec = ScenarioSpec(parcels=2, seed=7, gap_mm=(1200.0, 1200.0), length_mm=(300.0, 300.0),
                        scuffed_share=0.0)
    truth, _ = generate(spec, config)

    async def main(clock: VirtualClock) -> None:
        line = PhysicalLine(config, spec, truth, clock, render=False)
        rig = Rig(line)
        async with contextlib.AsyncExitStack() as stack:
            _, line_io = await wire_up(config, rig, stack, workdir=tmp_path, clock=clock,
                                       line_link="serial", options=LinkOptions())
            serial = line_io.links["serial"]
            line.start_belt()
            running = asyncio.create_task(line.run())
            try:
                async with asyncio.timeout(20):
                    events = line_io.events()
                    blocked = await _next(events, PhotoEyeEdge, lambda e: e.blocked)
                    fire = blocked.enc + round((diverter.position_mm
                                                - config.induction.photo_eye_mm + 150) * cpm)
                    reply = await line_io.divert(
                        DivertCommand(41, 1, diverter.id, fire, diverter.pulse_ms))
                    assert reply.accepted, reply
                    before = line_io.encoder()

                    await rig.board.restart(0.3, count_restarts=True)
                    await serial.wait_up(5.0)
                    # Until the controller has given up its parcels, no divert may go out:
                    # its fire_enc would count from before.
                    with pytest.raises(LinkDown, match="tracking lost"):
                        await line_io.divert(DivertCommand(42, 2, diverter.id, fire, 80.0))
                    lost = await _next(events, TrackingLost)
                    assert "began again" in lost.message
                    assert line_io.encoder() < before
                    assert serial.stats.board_restarts == 1
                    assert serial.stats.restored == 0  # nothing from before is sent again
                    assert line.scheduled_diverts() == 0

                    # The parcel the old command was for passes its diverter unpushed.
                    while line.encoder() < fire + round(400 * cpm):
                        await clock.sleep(0.05)
                    assert [f for f in line.fires if f.command_id == 41] == []
                    # The new count is the controller's now: a divert in it is carried out.
                    now = rig.board.count()
                    reply = await line_io.divert(DivertCommand(
                        43, 3, diverter.id, now + round(800 * cpm), diverter.pulse_ms))
                    assert reply.accepted, reply
                    while not [f for f in line.fires if f.command_id == 43]:
                        await clock.sleep(0.02)
                    (fired,) = [f for f in line.fires if f.command_id == 43]
                    assert fired.enc - line.encoder() + rig.board.count() == pytest.approx(
                        now + 800 * cpm, abs=5 * cpm)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)

    run_virtual(main)


# --- one shift per fault family on a real pty and the real clock -----------------------------

@pytest.mark.wallclock
@pytest.mark.slow
def test_real_pty_garbled_bytes_and_lost_acks_lose_nothing(
        example_config: LineConfig, tmp_path: Path) -> None:
    check_bad_wire(*shift(example_config, tmp_path, options=LinkOptions(wire_faults=BAD_WIRE),
                          spec=REAL_SPEC, real=True), spec=REAL_SPEC)


@pytest.mark.wallclock
@pytest.mark.slow
def test_real_pty_a_pulled_cable_comes_back(example_config: LineConfig, tmp_path: Path) -> None:
    during = functools.partial(pull_cable, at_s=REAL_FAULT_AT_S, out_s=0.7)
    check_pulled_cable(*shift(example_config, tmp_path, during=during, spec=REAL_SPEC,
                              real=True), spec=REAL_SPEC)


@pytest.mark.wallclock
@pytest.mark.slow
def test_real_pty_a_board_restart_keeps_no_stale_command(
        example_config: LineConfig, tmp_path: Path) -> None:
    during = functools.partial(power_cycle, at_s=REAL_FAULT_AT_S)
    check_board_restart(*shift(example_config, tmp_path, during=during, spec=REAL_SPEC,
                               real=True), spec=REAL_SPEC)


@pytest.mark.wallclock
def test_real_pty_a_second_controller_cannot_open_the_board_port(
        example_config: LineConfig, tmp_path: Path) -> None:
    """The port is opened exclusively: a second controller on it is refused, and says why."""
    from controller.config import SerialLinkConfig
    from controller.errors import DriverTimeout
    from drivers.lineio.serial import SerialLineIO
    from sim_hardware.board import IoBoard

    spec = ScenarioSpec(parcels=0)

    async def main(clock: RealClock) -> None:
        line = PhysicalLine(example_config, spec, generate(spec, example_config)[0], clock,
                            render=False)
        link_path = tmp_path / "ttyIOBOARD"
        async with IoBoard(line, clock, link_path=link_path, cable="pty") as board:
            config = SerialLinkConfig(port=str(link_path))
            async with SerialLineIO(config, clock=clock) as first:
                await first.wait_up(5.0)
                async with SerialLineIO(config, clock=clock) as second:
                    with pytest.raises(DriverTimeout, match="already open in another program"):
                        await second.wait_up(0.5)
                    assert second.stats.opens == 0
                    assert second.stats.open_failures >= 1
                # The first never noticed: still talking to the board, and only to it.
                assert first.stats.reconnects == 0
                assert board.stats.sessions == 1
                reply = await first.divert(DivertCommand(
                    1, 1, example_config.diverters[0].id, line.encoder() + 10**9, 80.0))
                assert reply.accepted

    run_real(main)


def test_a_second_controller_cannot_open_a_null_modem_either(
        example_config: LineConfig, tmp_path: Path) -> None:
    from controller.config import SerialLinkConfig
    from controller.errors import DriverTimeout
    from drivers.lineio.serial import SerialLineIO
    from sim_hardware.board import IoBoard

    spec = ScenarioSpec(parcels=0)

    async def main(clock: VirtualClock) -> None:
        line = PhysicalLine(example_config, spec, generate(spec, example_config)[0], clock,
                            render=False)
        async with IoBoard(line, clock, link_path=tmp_path / "ttyIOBOARD") as board:
            assert board.port == str(tmp_path / "ttyIOBOARD")  # a null modem's name: no pty
            config = SerialLinkConfig(port=board.port)
            async with SerialLineIO(config, clock=clock) as first:
                await first.wait_up(1.0)
                async with SerialLineIO(config, clock=clock) as second:
                    with pytest.raises(DriverTimeout, match="exclusively"):
                        await second.wait_up(0.5)
                assert board.stats.sessions == 1

    run_virtual(main)
