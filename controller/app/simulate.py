"""A shift against the emulator: the real controller, the emulated line, and the truth joined.

The emulator is wired in as the line's backend (in-process links behind the controller's own
interfaces); nothing of the controller knows it is not steel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from controller.archive import open_archive
from controller.clock import Clock
from controller.config import LineConfig
from controller.diagnostics import Diagnostics, RollingTelemetry, TelemetryFanout
from controller.encoder import EncoderHistory
from controller.errors import JournalError
from controller.journal import FinalRecord, Journal
from controller.lineio import LineIO
from controller.orders import Order, OrderStore
from controller.sorter import Sorter, SorterStats
from controller.telemetry import NO_TELEMETRY, Telemetry
from controller.vision import BarcodeDecoder, Camera

if TYPE_CHECKING:  # the emulator's modules are imported when a shift runs, not before
    from sim_hardware.board import IoBoard, WireFaults
    from sim_hardware.line import Fire, PhysicalLine
    from sim_hardware.mqtt_nodes import MqttNodes
    from sim_hardware.scenario import ScenarioSpec, SimParcel

log = logging.getLogger(__name__)

CameraLink = Literal["inprocess", "mjpeg", "opencv"]
FrameMode = Literal["rendered", "truth"]
"""What the emulator's cameras hand over: rendered pixels that the line's decoders read, or
truth frames that the emulator's truth decoder reads (:mod:`sim_hardware.truth_frames`: no
pixels to render or decode, for shifts too long for that)."""
LineLink = Literal["inprocess", "serial", "mqtt", "serial+mqtt"]
"""How the controller reaches the emulated line's I/O: in-process, or the real drivers over a
pty (the I/O board), a broker (diverter and sensor nodes), or both (sensors on the board,
diverters on the network). The last three need the real clock."""
LOOPBACK_HANDOVER_MS = 16.0
"""Capture to hand-over of the emulator's 1080p MJPEG stream read by OpenCV on loopback,
median of bench/cameras.py (15.3 ms at 15 fps, 16.9 ms at 30 fps). OpenCV cannot read the
parts' encoder counts, so its frames are stamped this much before they arrive."""
DRAIN_LIMIT_S = 60.0
DECODE_COST_S = 0.025
"""A frame's decode time on a virtual clock: the measured p95 of a parcel crop (~15 ms) plus
the frame's hand-over from the camera."""


@dataclass
class ShiftResult:
    """What a simulated shift left behind: the truth, the journal and the counters."""

    config: LineConfig
    truth: list[SimParcel]
    journal: list[dict[str, Any]]
    stats: SorterStats
    line_counters: dict[str, int]
    bins: dict[str, dict[str, int]]
    line_time_s: float
    wall_time_s: float = 0.0
    frames_dropped: int = 0
    fires: list[Fire] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    fault: JournalError | None = None  # the storage fault that stopped the controller
    faulted_at: float | None = None  # on the shift's clock


@dataclass
class Rig:
    """The emulated hardware of a running shift, for fault injection while it runs."""

    line: PhysicalLine
    board: IoBoard | None = None
    nodes: MqttNodes | None = None
    line_io: LineIO | None = None  # the controller's
    diagnostics: Diagnostics | None = None  # the controller's, with [diagnostics]


@dataclass(frozen=True)
class LinkOptions:
    """The emulated wire between controller and line, for ``line_link`` other than in-process."""

    baudrate: int | None = None  # pace the pty like a serial line at this rate
    wire_faults: WireFaults | None = None
    broker: tuple[str, int] | None = None  # the MQTT broker (host, port)
    serial: dict[str, Any] = field(default_factory=dict)  # SerialLinkConfig overrides
    mqtt: dict[str, Any] = field(default_factory=dict)  # MqttLinkConfig overrides


def _fresh_workdir(workdir: Path) -> tuple[Path, Path]:
    """An empty order book and journal for a new shift."""
    workdir.mkdir(parents=True, exist_ok=True)
    orders_path, journal_path = workdir / "orders.sqlite", workdir / "journal.sqlite"
    for path in (orders_path, journal_path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(workdir / "noread", ignore_errors=True)
    return orders_path, journal_path


async def run_shift(
    config: LineConfig,
    scenario: ScenarioSpec,
    workdir: Path,
    clock: Clock,
    *,
    on_final: Callable[[FinalRecord], None] | None = None,
    decode_threads: int | None = None,
    decode_cost_s: float = DECODE_COST_S,
    order_store_wrapper: Callable[[OrderStore], OrderStore] | None = None,
    camera_wrapper: Callable[[Camera], Camera] | None = None,
    camera_link: CameraLink = "inprocess",
    line_link: LineLink = "inprocess",
    link_options: LinkOptions = LinkOptions(),
    during: Callable[[Rig], Coroutine[Any, Any, None]] | None = None,
    with_sorter: Callable[[Sorter], None] | None = None,
    telemetry: Telemetry = NO_TELEMETRY,
    config_path: Path | None = None,
    frames: FrameMode = "rendered",
    journal_readback: bool = True,
    truth_sink: Callable[[SimParcel], None] | None = None,
) -> ShiftResult:
    """Run one shift to its end: every parcel physically settled and finally disposed.

    The shift's order book, journal and no-read archive are made afresh in ``workdir``,
    whatever paths the config names. ``with_sorter`` is handed the controller before it
    starts (a test bench's technician: to command it mid-shift). With ``[diagnostics]`` in
    the config the shift publishes the technicians' view and takes their commands, as
    ``run`` does (``reload-plan`` reads ``config_path``); ``telemetry`` sees its durations.
    ``frames="truth"`` (in-process cameras only) skips rendering and decoding. Without
    ``journal_readback`` the result's ``journal`` is empty: a long shift's bench need not hold
    every final record in memory (about 1 KB a parcel as dicts) to count against the truth.
    With ``truth_sink`` the emulator holds no truth either: the parcels are generated as the
    line reaches them and each one is handed to the sink once it settles (those the shift
    never settled, at its end), so the result's ``truth`` and ``fires`` are empty and a
    shift of any length runs in the memory of a short one.
    """
    from controller.app.live import diagnostics
    from drivers.decoders import make_line_decoders
    from sim_hardware.devices import SimLineIO
    from sim_hardware.line import PhysicalLine
    from sim_hardware.truth_frames import TruthDecoder

    free_running = camera_link != "inprocess"
    if frames == "truth" and free_running:
        raise ValueError("truth frames are handed over in-process only")
    parcels: Iterable[SimParcel]
    if truth_sink is None:
        config, parcels, store = fresh_books(config, scenario, workdir)
    else:
        config, parcels, store = streamed_books(config, scenario, workdir)
    line = PhysicalLine(config, scenario, parcels, clock, free_running=free_running,
                        truth_frames=frames == "truth")
    if truth_sink is not None:
        line.settled_sinks.append(truth_sink)
    rig = Rig(line)
    async with contextlib.AsyncExitStack() as stack:
        if line_link == "inprocess":
            line_io: LineIO = SimLineIO(line)
        else:
            config, line_io = await wire_up(config, rig, stack, workdir=workdir, clock=clock,
                                             line_link=line_link, options=link_options)
        rig.line_io = line_io
        history = EncoderHistory()
        cameras = await _cameras(config, line, camera_link, clock=clock, history=history,
                                 stack=stack)
        if camera_wrapper is not None:
            cameras = [camera_wrapper(camera) for camera in cameras]
        decoders: dict[str, BarcodeDecoder] = make_line_decoders(config)
        if frames == "truth":
            truth = TruthDecoder(line.live)
            decoders = dict.fromkeys(decoders, truth)
        journal = Journal(config.journal.path, clock, synchronous=config.journal.synchronous)
        rolling = RollingTelemetry(clock)
        sorter = Sorter(config, clock, line_io=line_io, cameras=cameras, decoders=decoders,
                        order_store=order_store_wrapper(store) if order_store_wrapper else store,
                        journal=journal, archive=open_archive(config.archive),
                        encoder_history=history, decode_threads=decode_threads,
                        decode_cost_s=decode_cost_s, wait_for_frames=free_running,
                        # only diagnostics read (and prune) the rolling windows: without them, unfed
                        telemetry=TelemetryFanout(telemetry, rolling)
                        if config.diagnostics is not None else telemetry)
        if on_final is not None:
            sorter.listeners.append(on_final)
        if with_sorter is not None:
            with_sorter(sorter)
        live = await stack.enter_async_context(diagnostics(
            config, sorter, clock, config_path=config_path, telemetry=rolling,
            link_states=getattr(line_io, "states", None)))
        rig.diagnostics = live
        # The links are up: the infeed waits until the controller is ready to sort.
        records = await _run_to_end(sorter, rig, clock, during, infeed=sorter.ready,
                                    readback=journal_readback)
        if truth_sink is not None:
            for parcel in line.unsettled():
                truth_sink(parcel)
        return ShiftResult(
            config=config, truth=line.parcels.kept or [],
            journal=records, stats=sorter.stats,
            fault=sorter.fault, faulted_at=sorter.faulted_at,
            line_time_s=clock.now() - line.belt.start,
            frames_dropped=sum(c.dropped for c in cameras),
            extra=_link_figures(rig),
            **line_outcome(line),
        )


def fresh_books(config: LineConfig, scenario: ScenarioSpec,
                workdir: Path) -> tuple[LineConfig, list[SimParcel], OrderStore]:
    """The config pointed at a fresh order book, journal and archive; the parcels; the store."""
    from sim_hardware.scenario import generate

    config = _fresh_paths(config, workdir)
    parcels, orders = generate(scenario, config)
    return config, parcels, _filled_store(config, orders)


def streamed_books(config: LineConfig, scenario: ScenarioSpec,
                   workdir: Path) -> tuple[LineConfig, Iterator[SimParcel], OrderStore]:
    """As :func:`fresh_books`, with the book written and the parcels yielded one at a time."""
    from sim_hardware.parcel_stream import order_book, stream

    config = _fresh_paths(config, workdir)
    store = _filled_store(config, order_book(scenario, config))
    return config, stream(scenario, config), store


def _fresh_paths(config: LineConfig, workdir: Path) -> LineConfig:
    orders_path, journal_path = _fresh_workdir(workdir)
    return config.model_copy(update={
        "order_store": config.order_store.model_copy(update={"path": str(orders_path)}),
        "journal": config.journal.model_copy(update={"path": str(journal_path)}),
        "archive": config.archive.model_copy(update={"path": str(workdir / "noread")}),
    })


def _filled_store(config: LineConfig, orders: Iterable[Order]) -> OrderStore:
    """The test bench fills the order book; the line reads it as its config says."""
    from drivers.orders import open_order_store
    from drivers.orders.sqlite import SqliteOrderStore

    SqliteOrderStore(Path(config.order_store.path)).add(orders)
    return open_order_store(config.order_store)


async def _run_to_end(sorter: Sorter, rig: Rig, clock: Clock,
                      during: Callable[[Rig], Coroutine[Any, Any, None]] | None, *,
                      infeed: asyncio.Event | None = None,
                      readback: bool = True) -> list[dict[str, Any]]:
    """Run the line until every parcel settled and the controller disposed of them all.

    A controller stopped by a storage fault ends the drain; the fault is the sorter's.
    """
    sorter_task = asyncio.create_task(sorter.run(), name=f"sorter[{sorter.config.line.name}]")
    tasks = [sorter_task]
    if during is not None:
        tasks.append(asyncio.create_task(during(rig), name="sim.injected-faults"))
    try:
        await rig.line.run(infeed)
        drain_until = clock.now() + DRAIN_LIMIT_S
        while sorter.open_parcels and clock.now() < drain_until and not sorter_task.done():
            await clock.sleep(0.05)
        records = await sorter.journal.records() if readback else []
    finally:
        crashed = sorter_task.done() and not sorter_task.cancelled() \
            and sorter_task.exception() is not None and sorter.fault is None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sorter.aclose()
    if crashed:
        raise RuntimeError("the controller stopped during the shift") from sorter_task.exception()
    return records


async def _cameras(config: LineConfig, line: PhysicalLine, camera_link: CameraLink, *, clock: Clock,
                   history: EncoderHistory, stack: contextlib.AsyncExitStack) -> list[Camera]:
    from drivers.cameras import open_camera
    from sim_hardware.devices import SimCamera
    from sim_hardware.mjpeg import MjpegServer

    if camera_link == "inprocess":
        return [SimCamera(line, c.id) for c in config.cameras]
    # The emulator's cameras as IP cameras: MJPEG over HTTP on loopback, read by the
    # controller's real camera drivers (the real clock only).
    server = MjpegServer(line)
    await server.start()
    stack.push_async_callback(server.close)
    prefix = "mjpeg+" if camera_link == "mjpeg" else ""
    return [open_camera(c.model_copy(update={
        "source": prefix + server.url(c.id),
        "latency_ms": c.latency_ms or LOOPBACK_HANDOVER_MS}),
        clock=clock, encoder_at=history.at) for c in config.cameras]


async def wire_up(config: LineConfig, rig: Rig, stack: contextlib.AsyncExitStack, *,
                   workdir: Path, clock: Clock, line_link: LineLink,
                   options: LinkOptions) -> tuple[LineConfig, LineIO]:
    """Put the emulator's devices behind real links and open the controller's drivers."""
    from controller.config import LineIOConfig, MqttLinkConfig, SerialLinkConfig
    from drivers.lineio import open_line_io

    serial_config = mqtt_config = None
    if "serial" in line_link:
        from sim_hardware.board import IoBoard

        link_path = workdir / "ttyIOBOARD"
        board_diverters: list[str] | None = None if line_link == "serial" else []
        board = rig.board = IoBoard(rig.line, clock, baudrate=options.baudrate,
                                    faults=options.wire_faults, diverters=board_diverters,
                                    link_path=link_path)
        await board.start()
        stack.push_async_callback(board.close)
        serial_config = SerialLinkConfig(port=str(link_path), **options.serial)
    if "mqtt" in line_link:
        from sim_hardware.mqtt_nodes import MqttNodes

        if options.broker is None:
            raise ValueError(f"line_link {line_link!r} needs link_options.broker")
        host, port = options.broker
        rig.nodes = await stack.enter_async_context(MqttNodes(
            rig.line, host, port, line_name=config.line.name, sensors=line_link == "mqtt",
            clock=clock))
        mqtt_config = MqttLinkConfig(host=host, port=port, **options.mqtt)
    config = config.model_copy(update={"line_io": LineIOConfig(
        sensors="mqtt" if line_link == "mqtt" else "serial",
        diverters="serial" if line_link == "serial" else "mqtt",
        serial=serial_config, mqtt=mqtt_config)})
    line_io = open_line_io(config, clock)
    await stack.enter_async_context(line_io)
    await line_io.wait_up(10.0)
    return config, line_io


def line_outcome(line: PhysicalLine) -> dict[str, Any]:
    """What the emulated line did, as ShiftResult fields: counters, bins and every fire."""
    return {
        "line_counters": dataclasses.asdict(line.counters),
        "bins": {b.bin_id: {"fill": b.fill, "received": b.received,
                            "overfilled": b.overfilled} for b in line.bins.values()},
        "fires": list(line.fires),
    }


def _link_figures(rig: Rig) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if rig.board is not None:
        figures["board"] = dataclasses.asdict(rig.board.stats)
    if rig.nodes is not None:
        figures["nodes"] = dataclasses.asdict(rig.nodes.stats)
    links = getattr(rig.line_io, "links", {})
    for name, link in links.items():
        figures[f"link_{name}"] = dataclasses.asdict(link.stats)
        if hasattr(link, "link_stats"):
            figures[f"link_{name}_frames"] = dataclasses.asdict(link.link_stats)
    return figures
