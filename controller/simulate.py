"""A shift against the emulator: the real controller, the emulated line, and the truth joined.

The emulator is wired in as the line's backend (in-process links behind the controller's own
interfaces); nothing of the controller knows it is not steel.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from controller.archive import open_archive
from controller.clock import Clock
from controller.config import LineConfig
from controller.encoder import EncoderHistory
from controller.journal import FinalRecord, Journal
from controller.sorter import Sorter, SorterStats
from controller.vision import BarcodeDecoder, Camera

if TYPE_CHECKING:
    from sim_hardware.mjpeg import MjpegServer

log = logging.getLogger(__name__)

CameraLink = Literal["inprocess", "mjpeg", "opencv"]
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
    truth: list[Any]  # sim_hardware.scenario.SimParcel
    journal: list[dict[str, Any]]
    stats: SorterStats
    line_counters: dict[str, int]
    bins: dict[str, dict[str, int]]
    line_time_s: float
    wall_time_s: float = 0.0
    frames_dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


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
    scenario: Any,  # sim_hardware.scenario.ScenarioSpec
    workdir: Path,
    clock: Clock,
    *,
    on_final: Callable[[FinalRecord], None] | None = None,
    decode_threads: int | None = None,
    decode_cost_s: float = DECODE_COST_S,
    order_store_wrapper: Callable[[Any], Any] | None = None,
    camera_link: CameraLink = "inprocess",
) -> ShiftResult:
    """Run one shift to its end: every parcel physically settled and finally disposed.

    The shift's order book, journal and no-read archive are made afresh in ``workdir``,
    whatever paths the config names.
    """
    from drivers.cameras import open_camera
    from drivers.decoders import make_decoder
    from drivers.orders import open_order_store
    from drivers.orders.sqlite import SqliteOrderStore
    from sim_hardware.devices import SimCamera, SimLineIO
    from sim_hardware.line import PhysicalLine
    from sim_hardware.mjpeg import MjpegServer
    from sim_hardware.scenario import generate

    orders_path, journal_path = _fresh_workdir(workdir)
    config = config.model_copy(update={
        "order_store": config.order_store.model_copy(update={"path": str(orders_path)}),
        "journal": config.journal.model_copy(update={"path": str(journal_path)}),
        "archive": config.archive.model_copy(update={"path": str(workdir / "noread")}),
    })
    parcels, orders = generate(scenario, config)
    SqliteOrderStore(orders_path).add(orders)  # the test bench fills the order book
    store = open_order_store(config.order_store)
    line = PhysicalLine(config, scenario, parcels, clock,
                        free_running=camera_link != "inprocess")
    line_io = SimLineIO(line)
    history = EncoderHistory()
    server: MjpegServer | None = None
    if camera_link == "inprocess":
        cameras: list[Camera] = [SimCamera(line, c.id) for c in config.cameras]
    else:
        # The emulator's cameras as IP cameras: MJPEG over HTTP on loopback, read by the
        # controller's real camera drivers (the real clock only).
        server = MjpegServer(line)
        await server.start()
        prefix = "mjpeg+" if camera_link == "mjpeg" else ""
        cameras = [open_camera(c.model_copy(update={
            "source": prefix + server.url(c.id),
            "latency_ms": c.latency_ms or LOOPBACK_HANDOVER_MS}),
            clock=clock, encoder_at=history.at) for c in config.cameras]
    decoders: dict[str, BarcodeDecoder] = {
        c.id: make_decoder(c.decoder) for c in config.cameras}
    journal = Journal(config.journal.path, clock, synchronous=config.journal.synchronous)
    archive = open_archive(config.archive)
    sorter = Sorter(config, clock, line_io=line_io, cameras=cameras, decoders=decoders,
                    order_store=order_store_wrapper(store) if order_store_wrapper else store,
                    journal=journal, archive=archive, encoder_history=history,
                    decode_threads=decode_threads, decode_cost_s=decode_cost_s)
    if on_final is not None:
        sorter.listeners.append(on_final)

    started = clock.now()
    sorter_task = asyncio.create_task(sorter.run(), name=f"sorter[{config.line.name}]")
    try:
        await line.run()
        drain_until = clock.now() + DRAIN_LIMIT_S
        while sorter.open_parcels and clock.now() < drain_until:
            await clock.sleep(0.05)
        records = await journal.records()
    finally:
        crashed = sorter_task.done() and not sorter_task.cancelled() \
            and sorter_task.exception() is not None
        sorter_task.cancel()
        await asyncio.gather(sorter_task, return_exceptions=True)
        await sorter.aclose()
        if server is not None:
            await server.close()
    if crashed:
        raise RuntimeError("the controller stopped during the shift") from sorter_task.exception()
    return ShiftResult(
        config=config, truth=parcels, journal=records, stats=sorter.stats,
        line_counters=vars(line.counters).copy(),
        bins={b.bin_id: {"fill": b.fill, "received": len(b.parcels), "overfilled": b.overfilled}
              for b in line.bins.values()},
        line_time_s=clock.now() - started,
        frames_dropped=sum(c.dropped for c in cameras),
    )
