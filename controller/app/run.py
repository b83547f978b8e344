"""``parcel-sorter run``: the controller on a real line, wired from its config.

Cameras, decoders, order store, journal, archive and the line I/O links are each made by
their driver registry from the config. The controller runs until ``stop`` is set (SIGINT or
SIGTERM from the CLI); then it stops taking decisions, closes its links (the board's and the
nodes' heartbeat fail-safe then drops any divert still scheduled) and closes the journal, so
parcels still open are closed as LOST at the next start. A journal the storage stops taking
ends it the same way, raising the JournalError (the CLI takes the line's lock beforehand).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from controller.archive import open_archive
from controller.clock import Clock
from controller.config import LineConfig
from controller.encoder import EncoderHistory
from controller.journal import FinalRecord, Journal
from controller.sorter import Sorter, SorterStats
from controller.vision import BarcodeDecoder

log = logging.getLogger(__name__)

STATUS_EVERY_S = 30.0


async def run_line(config: LineConfig, clock: Clock, stop: asyncio.Event, *,
                   on_final: Callable[[FinalRecord], None] | None = None) -> SorterStats:
    """Sort on the line the config names until ``stop`` is set; return the counters."""
    from drivers.cameras import open_camera
    from drivers.decoders import make_decoder
    from drivers.lineio import open_line_io
    from drivers.orders import open_order_store

    links = open_line_io(config, clock)
    history = EncoderHistory()
    cameras = [open_camera(c, clock=clock, encoder_at=history.at) for c in config.cameras]
    decoders: dict[str, BarcodeDecoder] = {c.id: make_decoder(c.decoder) for c in config.cameras}
    async with links:
        sorter = Sorter(config, clock, line_io=links, cameras=cameras, decoders=decoders,
                        order_store=open_order_store(config.order_store),
                        journal=Journal(config.journal.path, clock,
                                        synchronous=config.journal.synchronous),
                        archive=open_archive(config.archive), encoder_history=history)
        if on_final is not None:
            sorter.listeners.append(on_final)
        running = asyncio.create_task(sorter.run(), name=f"sorter[{config.line.name}]")
        status = asyncio.create_task(_status(sorter, links.states, clock), name="run.status")
        stopping = asyncio.create_task(stop.wait(), name="run.stop")
        try:
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (running, status, stopping):
                task.cancel()
            results = await asyncio.gather(running, status, stopping, return_exceptions=True)
            await sorter.aclose()
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
            raise failure
        return sorter.stats


async def _status(sorter: Sorter, states: Callable[[], Mapping[str, object]],
                  clock: Clock) -> None:
    """A status line in the log now and then: what a technician checks first."""
    while True:
        await clock.sleep(STATUS_EVERY_S)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(sorter.stats.dispositions.items()))
        links = ", ".join(f"{k} {v}" for k, v in states().items())
        cameras = ", ".join(f"{k} {v}" for k, v in sorter.camera_states().items())
        log.info("open parcels %d; %s; links: %s; cameras: %s", sorter.open_parcels,
                 counts or "no parcel finished yet", links, cameras)
