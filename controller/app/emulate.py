"""``parcel-sorter emulate``: the emulated line as hardware, for a controller in another process.

The line's I/O board answers on a pseudo-terminal, its diverter nodes (with ``--mqtt``) on a
broker, its cameras as MJPEG streams on loopback. A line config that reaches all of them is
written for the controller, the shift starts once a controller has said HELLO to the board,
and at the end the emulator's truth is joined with the controller's journal (named in that
config) into the same report as ``sim``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from controller.app.simulate import ShiftResult, fresh_books, line_outcome
from controller.clock import Clock
from controller.config import LineConfig
from controller.errors import DriverTimeout
from controller.journal import read_records
from controller.sorter import SorterStats

if TYPE_CHECKING:
    from sim_hardware.board import IoBoard
    from sim_hardware.line import PhysicalLine
    from sim_hardware.scenario import ScenarioSpec

log = logging.getLogger(__name__)

BOARD_LINK = "ttyIOBOARD"


@dataclass
class EmulateOptions:
    """What ``parcel-sorter emulate`` was asked for: where to write, and the faults to make."""

    config_path: Path
    write_config: Path
    workdir: Path
    mqtt: tuple[str, int] | None = None
    mqtt_secrets: Path | None = None  # user:password lines of the broker's deploy accounts
    baudrate: int | None = 115200
    garble: float = 0.0
    drop: float = 0.0
    drop_acks: float = 0.0
    ack_delay_ms: float = 0.0
    unplug: list[tuple[float, float]] = field(default_factory=list)  # (at s, for s)
    restart: list[tuple[float, float]] = field(default_factory=list)  # board off (at s, for s)
    jam: list[str] = field(default_factory=list)  # diverters that never push
    wait_controller_s: float = 120.0
    drain_s: float = 30.0


async def emulate(config: LineConfig, scenario: ScenarioSpec, options: EmulateOptions, clock: Clock,
                  say: Callable[[str], None]) -> ShiftResult:
    """Serve the line until every parcel settled and the controller journalled them."""
    from sim_hardware.board import IoBoard, WireFaults
    from sim_hardware.line import PhysicalLine
    from sim_hardware.mjpeg import MjpegServer

    config, parcels, store = fresh_books(config, scenario, options.workdir)
    await store.close()
    line = PhysicalLine(config, scenario, parcels, clock, free_running=True)
    line.jammed.update(options.jam)
    faults = WireFaults(garble=options.garble, drop=options.drop, drop_acks=options.drop_acks,
                        ack_delay_s=options.ack_delay_ms / 1000, seed=scenario.seed)
    async with contextlib.AsyncExitStack() as stack:
        server = MjpegServer(line)
        await server.start()
        stack.push_async_callback(server.close)
        board = IoBoard(line, clock, baudrate=options.baudrate, faults=faults,
                        diverters=[] if options.mqtt else None,
                        link_path=options.workdir / BOARD_LINK,
                        on_port=lambda port: say(f"serial: {port}"))
        await board.start()
        stack.push_async_callback(board.close)
        if options.mqtt is not None:
            from sim_hardware.mqtt_nodes import MqttNodes

            host, port = options.mqtt
            nodes = MqttNodes(line, host, port, line_name=config.line.name, clock=clock,
                              credentials=_node_credentials(options, config.line.name))
            await stack.enter_async_context(nodes)
        _write_line_config(options, config, {c.id: server.url(c.id) for c in config.cameras})
        say(f"config: {options.write_config}")
        try:
            async with asyncio.timeout(options.wait_controller_s):
                await board.controller_seen.wait()
        except TimeoutError:
            raise DriverTimeout("emulator", f"no controller said HELLO on the serial port "
                                            f"within {options.wait_controller_s:g} s") from None
        say(f"controller connected: {len(parcels)} parcels wait for it to be ready")
        feeding = asyncio.create_task(_feed_when_ready(board, line, clock, options, say))
        try:
            await line.run(infeed=board.sorter_ready)
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
        line_time = clock.now() - line.belt.start
        journal = await _controller_outcome(config, len(parcels), clock, options.drain_s)
    return ShiftResult(
        config=config, truth=parcels, journal=journal, stats=SorterStats(),
        line_time_s=line_time, extra={"board": dataclasses.asdict(board.stats)},
        **line_outcome(line))


async def _feed_when_ready(board: IoBoard, line: PhysicalLine, clock: Clock,
                           options: EmulateOptions, say: Callable[[str], None]) -> None:
    """Once the controller says it sorts (mode RUN), the infeed feeds and the faults count."""
    await board.sorter_ready.wait()
    say("controller ready: the infeed feeds")
    started = clock.now()
    async with asyncio.TaskGroup() as tg:
        for at, length in options.unplug:
            tg.create_task(_unplug_at(board, clock, started, at, length))
        for at, length in options.restart:
            tg.create_task(_restart_at(board, clock, started, at, length))


async def _unplug_at(board: IoBoard, clock: Clock, started: float, at: float,
                     length: float) -> None:
    await clock.sleep_until(started + at)
    log.warning("emulator: serial cable pulled for %.1f s", length)
    await board.unplug(length)


async def _restart_at(board: IoBoard, clock: Clock, started: float, at: float,
                      length: float) -> None:
    await clock.sleep_until(started + at)
    log.warning("emulator: I/O board power-cycled for %.1f s", length)
    await board.restart(length)


async def _controller_outcome(config: LineConfig, inducted: int, clock: Clock,
                              drain_s: float) -> list[dict[str, Any]]:
    """The controller's journal once it has a disposition for every parcel (or drain_s)."""
    until = clock.now() + drain_s
    while True:
        rows = read_records(config.journal.path)
        final = sum(1 for row in rows if row.get("disposition") is not None)
        if final >= inducted or clock.now() >= until:
            return rows
        await clock.sleep(0.2)


def _node_credentials(options: EmulateOptions, line: str) -> dict[str, tuple[str, str]]:
    """Each node's own deploy account (``<line>-<node id>``), from the secrets file."""
    if options.mqtt_secrets is None:
        return {}
    from sim_hardware.broker import read_secrets

    prefix = f"{line}-"
    return {user.removeprefix(prefix): (user, password)
            for user, password in read_secrets(options.mqtt_secrets).items()
            if user.startswith(prefix)}


def _controller_account(options: EmulateOptions) -> dict[str, str]:
    """The controller's username and a password file of its own for the written config."""
    if options.mqtt_secrets is None:
        return {}
    from sim_hardware.broker import read_secrets

    password = read_secrets(options.mqtt_secrets)["controller"]
    path = options.workdir / "mqtt.password"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(password + "\n", encoding="utf-8")
    return {"username": "controller", "password_file": str(path)}


def _write_line_config(options: EmulateOptions, config: LineConfig,
                       camera_urls: dict[str, str]) -> None:
    """The base config pointed at the emulator's devices and this shift's books."""
    data = tomllib.loads(options.config_path.read_text(encoding="utf-8"))
    for camera in data["cameras"]:
        camera["source"] = "mjpeg+" + camera_urls[camera["id"]]
        camera.pop("latency_ms", None)
    data["order_store"] = {**data.get("order_store", {}), "path": config.order_store.path}
    data["journal"] = {**data.get("journal", {}), "path": config.journal.path}
    data["archive"] = {**data.get("archive", {}), "path": config.archive.path}
    line_io: dict[str, Any] = {
        "sensors": "serial", "diverters": "mqtt" if options.mqtt else "serial",
        "serial": {"port": str(options.workdir / BOARD_LINK)}}
    if options.baudrate is not None:
        line_io["serial"]["baudrate"] = options.baudrate
    if options.mqtt is not None:
        line_io["mqtt"] = {"host": options.mqtt[0], "port": options.mqtt[1],
                           **_controller_account(options)}
    data["line_io"] = line_io
    options.write_config.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by `parcel-sorter emulate`: the emulated line's I/O board, diverter "
              "nodes and cameras.\n# Run a controller on it: parcel-sorter run --config "
              f"{options.write_config}\n")
    options.write_config.write_text(header + tomli_w.dumps(data), encoding="utf-8")
