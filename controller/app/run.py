"""``parcel-sorter run``: the controller on a real line, wired from its config.

Cameras, decoders, order store, journal, archive and the line I/O links are each made by
their driver registry from the config. Starting, it waits until the line is ready: every
line I/O link up, a first frame from every camera, the order store answering (its cache
warmed); it says what it still waits for, and gives up after :data:`READY_TIMEOUT_S`
naming the device that never came up (:class:`NeverReady`). Parcels inducted before then
end ``NOT_READY``. Once ready it tells systemd (``READY=1``) and the I/O board (mode RUN:
an infeed waits for that).

The first ``stop`` (SIGINT or SIGTERM from the CLI) stops it gracefully: ``STOPPING=1``,
parcels arriving at PE-IN from then on are not tracked, the parcels on the belt are
finished (decided, diverted, confirmed) for up to :func:`stop_timeout_s` and those still
open then are closed LOST; then the journal is closed and the links (the board's and the
nodes' heartbeat fail-safe drops any divert still scheduled). ``stop_now`` (a second
signal) ends it at once: parcels still open are closed LOST at the next start. A journal
the storage stops taking ends it too, raising the JournalError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.app.sd_notify import Notifier
from controller.archive import open_archive
from controller.clock import Clock
from controller.commands import iso_utc
from controller.config import LineConfig, load_config
from controller.confirming import LOST_AFTER_MM
from controller.diagnostics import RollingTelemetry, TelemetryFanout
from controller.encoder import EncoderHistory
from controller.errors import ConfigError, DriverTimeout
from controller.journal import AuditRecord, FinalRecord, Journal
from controller.lineio import LinkState
from controller.sorter import Sorter, SorterStats
from controller.vision import BarcodeDecoder

log = logging.getLogger(__name__)

STATUS_EVERY_S = 30.0
READY_TIMEOUT_S = 60.0
"""How long ``run`` waits for its cameras, links and order store before it gives up."""
STARTING_EVERY_S = 1.0
STOP_LIMIT_S = 20.0
"""The longest a graceful stop waits for the belt to empty: below the unit's TimeoutStopSec=30."""
STOP_MARGIN_S = 2.0
LONGEST_PARCEL_MM = 1200.0  # a parcel's tail trails its head by this at most


class NeverReady(DriverTimeout):
    """A device the line needs never came up within the readiness timeout."""


def stop_timeout_s(config: LineConfig) -> float:
    """The time a parcel just inducted needs to be confirmed at the end of line, bounded."""
    travel_mm = (config.end_of_line.position_mm + LOST_AFTER_MM + LONGEST_PARCEL_MM
                 - config.induction.photo_eye_mm)
    return min(STOP_LIMIT_S, travel_mm / config.belt.speed_mm_s + STOP_MARGIN_S)


async def run_line(config: LineConfig, clock: Clock, stop: asyncio.Event, *,
                   stop_now: asyncio.Event | None = None, notifier: Notifier | None = None,
                   say: Callable[[str], None] = log.info,
                   ready_timeout_s: float = READY_TIMEOUT_S,
                   on_final: Callable[[FinalRecord], None] | None = None,
                   config_path: Path | None = None,
                   reload: asyncio.Event | None = None) -> SorterStats:
    """Sort on the line the config names until ``stop`` is set; return the counters.

    With ``[diagnostics]`` it publishes the technicians' view and takes their commands
    (docs/diagnostics-protocol.md); ``reload-plan`` reads ``config_path``. Each time
    ``reload`` is set (SIGHUP), the sort plan is read again from ``config_path``.
    """
    from controller.app.live import diagnostics
    from controller.app.metrics import LineMetrics, node_states
    from drivers.cameras import open_camera
    from drivers.decoders import make_line_decoders
    from drivers.lineio import open_line_io
    from drivers.orders import open_order_store

    notifier = notifier or Notifier(None)
    stop_now = stop_now or asyncio.Event()
    links = open_line_io(config, clock)
    history = EncoderHistory()
    cameras = [open_camera(c, clock=clock, encoder_at=history.at) for c in config.cameras]
    decoders: dict[str, BarcodeDecoder] = make_line_decoders(config)
    metrics = LineMetrics()
    rolling = RollingTelemetry(clock)

    def links_down() -> list[str]:
        return [f"line I/O {name}" for name, state in links.states().items()
                if state != LinkState.UP]

    async with links, metrics.serving(config.metrics):
        sorter = Sorter(config, clock, line_io=links, cameras=cameras, decoders=decoders,
                        order_store=open_order_store(config.order_store, create=False),
                        journal=Journal(config.journal.path, clock,
                                        synchronous=config.journal.synchronous),
                        archive=open_archive(config.archive), encoder_history=history,
                        wait_for_frames=True, prerequisites=links_down,
                        telemetry=TelemetryFanout(metrics.telemetry, rolling))
        nodes = node_states(links.links)
        metrics.watch(sorter, links.states, nodes)
        if on_final is not None:
            sorter.listeners.append(on_final)
        async with diagnostics(config, sorter, clock, config_path=config_path,
                               telemetry=rolling, link_states=links.states,
                               device_states=nodes):
            reloads = asyncio.create_task(
                _reload_plans(sorter, reload, config_path, notifier, say),
                name="run.reload-plan")
            try:
                return await _sort(config, sorter, links.links, clock=clock, stop=stop,
                                   stop_now=stop_now, notifier=notifier, say=say,
                                   ready_timeout_s=ready_timeout_s, states=links.states)
            finally:
                reloads.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloads


async def _reload_plans(sorter: Sorter, reload: asyncio.Event | None, config_path: Path | None,
                        notifier: Notifier, say: Callable[[str], None]) -> None:
    """On each ``reload``, the plan from the config file, checked whole first: a plan the
    line cannot use is refused and the running one stays. Each attempt is audited."""
    if reload is None or config_path is None:
        return
    while True:
        await reload.wait()
        reload.clear()
        notifier.send("RELOADING=1")
        try:
            rules = sorter.replace_plan(load_config(config_path).sort_plan)
        except ConfigError as exc:
            problems = "; ".join(f"{path}: {why}" for path, why in exc.problems)
            status, result = "error", f"plan refused: {problems}"
            say(f"reload: {result}; the running plan stays")
        else:
            status, result = "ok", f"{rules} rules"
            say(f"reload: new sort plan, {rules} rules")
        notifier.ready(f"sorting; plan reload {status}")
        record = AuditRecord(at=sorter.clock.now(), wall=iso_utc(datetime.now(UTC)),
                             who="SIGHUP", verb="reload-plan", args={}, status=status,
                             result=result)
        try:
            await sorter.journal.audit(record)
        except Exception as exc:  # a journal fault stops the line through the sorter
            log.warning("plan reload not audited: %s", exc)


async def _sort(config: LineConfig, sorter: Sorter, links: Mapping[str, object], *,
                clock: Clock, stop: asyncio.Event, stop_now: asyncio.Event,
                notifier: Notifier, say: Callable[[str], None], ready_timeout_s: float,
                states: Callable[[], Mapping[str, object]]) -> SorterStats:
    """The sorter's life: start, sort until stopped, finish the belt; then it is closed."""
    running = asyncio.create_task(sorter.run(), name=f"sorter[{config.line.name}]")
    background = [
        asyncio.create_task(_status(sorter, states, clock, notifier), name="run.status"),
        asyncio.create_task(notifier.keep_alive(), name="run.watchdog")]
    stopping = asyncio.create_task(stop.wait(), name="run.stop")
    at_once = asyncio.create_task(stop_now.wait(), name="run.stop-now")
    tasks: list[asyncio.Task[Any]] = [running, *background, stopping, at_once]
    try:
        if await _start(sorter, running, stopping, clock=clock, notifier=notifier, say=say,
                        timeout_s=ready_timeout_s):
            await _set_mode_run(links)
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done() and not running.done() and not at_once.done():
            timeout = stop_timeout_s(config)
            notifier.stopping(f"stopping: finishing {sorter.open_parcels} parcels on the belt")
            say(f"stopping: induction stopped, finishing {sorter.open_parcels} parcels on "
                f"the belt (at most {timeout:.1f} s); signal again to stop at once")
            finishing = asyncio.create_task(sorter.finish(timeout), name="run.finish")
            tasks.append(finishing)
            await asyncio.wait({running, finishing, at_once},
                               return_when=asyncio.FIRST_COMPLETED)
            if finishing.done() and not finishing.cancelled() and finishing.exception() is None:
                left = finishing.result()
                say("stopped: every parcel on the belt finished" if not left else
                    f"stopped: {left} parcels not finished in time, closed LOST")
        elif at_once.done():
            notifier.stopping("stopping at once")
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await sorter.aclose()
    failure = results[0]
    if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
        raise failure
    return sorter.stats


async def _start(sorter: Sorter, running: asyncio.Task[None], stopping: asyncio.Task[bool], *,
                 clock: Clock, notifier: Notifier, say: Callable[[str], None],
                 timeout_s: float) -> bool:
    """Wait until the line is ready (True), or stopped or failed first (False)."""
    ready = asyncio.create_task(sorter.ready.wait(), name="run.ready")
    started = clock.now()
    shown: list[str] | None = None
    try:
        while not ready.done():
            waiting = sorter.waiting_for()
            if waiting != shown:
                shown = waiting
                text = f"starting: waiting for {', '.join(waiting)}" if waiting else "starting"
                say(text)
                notifier.status(text)
            if clock.now() - started >= timeout_s:
                device = waiting[0] if waiting else "line"
                others = f" (also waiting for {', '.join(waiting[1:])})" if waiting[1:] else ""
                raise NeverReady(device, f"never came up within {timeout_s:g} s{others}")
            await asyncio.wait({ready, running, stopping}, timeout=STARTING_EVERY_S,
                               return_when=asyncio.FIRST_COMPLETED)
            if running.done() or stopping.done():
                return False
    finally:
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
    say(f"ready: sorting after {clock.now() - started:.1f} s")
    notifier.ready("sorting")
    return True


async def _set_mode_run(links: Mapping[str, object]) -> None:
    """Tell the I/O board the sorter is ready (its mode RUN): a real infeed waits for it."""
    from drivers.lineio.messages import Mode

    for link in links.values():
        set_mode = getattr(link, "set_mode", None)
        if set_mode is not None:
            await set_mode(Mode.RUN)


async def _status(sorter: Sorter, states: Callable[[], Mapping[str, object]],
                  clock: Clock, notifier: Notifier) -> None:
    """A status line in the log now and then: what a technician checks first."""
    while True:
        await clock.sleep(STATUS_EVERY_S)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(sorter.stats.dispositions.items()))
        links = ", ".join(f"{k} {v}" for k, v in states().items())
        cameras = ", ".join(f"{k} {v}" for k, v in sorter.camera_states().items())
        log.info("open parcels %d; %s; links: %s; cameras: %s", sorter.open_parcels,
                 counts or "no parcel finished yet", links, cameras)
        if sorter.ready.is_set():
            notifier.status(f"sorting: open parcels {sorter.open_parcels}; "
                            f"{counts or 'no parcel finished yet'}")
