"""The controller's Prometheus endpoint: ``GET /metrics`` on loopback, served by aiohttp.

Counters the controller keeps anyway (dispositions, frames, bins, states) are read when
Prometheus scrapes, by :class:`SorterCollector`, so nothing is counted twice; durations come
in through :class:`PrometheusTelemetry`, the pipeline's :class:`~controller.telemetry.Telemetry`
hook. The server runs on the controller's own event loop, so a scrape reads the counters
between two steps of the pipeline, never in the middle of one, and there is no thread to
stop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from controller.config import MetricsConfig
from controller.disposition import Disposition
from controller.lineio import LinkState
from controller.sorter import Sorter
from controller.vision import CameraState

__all__ = ["LineMetrics", "MetricsServer", "PrometheusTelemetry", "SorterCollector",
           "node_states"]

log = logging.getLogger(__name__)

PREFIX = "parcel_sorter"
LinkStates = Callable[[], Mapping[str, object]]
"""Each line I/O link's state by name (``LineRegistry.states``)."""
DeviceStates = Callable[[], Mapping[str, str]]
"""Each device's last announced status by id (the MQTT nodes' online/safe/offline)."""
DEVICE_STATES = ("online", "safe", "offline")

#: Seconds. A decision is a lookup plus a divert's answer: tens of milliseconds, seconds at
#: worst (the store's timeout); a divert's answer on serial or MQTT a few milliseconds.
DECISION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DIVERT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
JOURNAL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)
LINK_STATES = (*(s.value for s in LinkState), "failed")


class PrometheusTelemetry:
    """The pipeline's durations as histograms (prometheus_client's are thread-safe)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decision = Histogram(
            f"{PREFIX}_decision_seconds", "Verdict settled to route decided and divert answered",
            buckets=DECISION_BUCKETS, registry=registry)
        self.divert = Histogram(
            f"{PREFIX}_divert_round_trip_seconds", "Divert command sent to its answer",
            buckets=DIVERT_BUCKETS, registry=registry)
        self.journal_write = Histogram(
            f"{PREFIX}_journal_write_seconds", "One committed journal write (real time)",
            buckets=JOURNAL_BUCKETS, registry=registry)

    def observe_decision(self, seconds: float) -> None:
        self.decision.observe(seconds)

    def observe_divert(self, seconds: float) -> None:
        self.divert.observe(seconds)

    def observe_journal_write(self, seconds: float) -> None:
        self.journal_write.observe(seconds)


class SorterCollector(Collector):
    """The sorter's own counters and states, read at scrape time."""

    def __init__(self, sorter: Sorter, link_states: LinkStates | None = None,
                 device_states: DeviceStates | None = None) -> None:
        self._sorter = sorter
        self._link_states = link_states
        self._device_states = device_states

    def collect(self) -> Iterator[Metric]:
        sorter = self._sorter
        stats = sorter.stats
        parcels = CounterMetricFamily(f"{PREFIX}_parcels", "Parcels by final disposition",
                                      labels=["disposition"])
        for disposition in Disposition:
            parcels.add_metric([disposition.value], stats.dispositions[disposition.value])
        yield parcels
        yield GaugeMetricFamily(f"{PREFIX}_open_parcels", "Parcels tracked, not yet final",
                                value=sorter.open_parcels)
        yield from self._cameras()
        yield from self._bins()
        if self._link_states is not None:
            yield self._links(self._link_states())
        if self._device_states is not None:
            devices = StateSetMetricFamily(f"{PREFIX}_device_state",
                                           "A line device's last announced status",
                                           labels=["device"])
            for device, status in self._device_states().items():
                devices.add_metric([device], {s: s == status for s in DEVICE_STATES})
            yield devices
        yield from self._faults()

    def _cameras(self) -> Iterator[Metric]:
        stats = self._sorter.stats
        received, decoded = stats.frames_by_camera, stats.decoded_by_camera
        families = {
            "received": CounterMetricFamily(f"{PREFIX}_camera_frames_received",
                                            "Frames a camera handed in", labels=["camera"]),
            "decoded": CounterMetricFamily(f"{PREFIX}_camera_frames_decoded",
                                           "Frames decoded (they showed undecided parcels)",
                                           labels=["camera"]),
            "dropped": CounterMetricFamily(f"{PREFIX}_camera_frames_dropped",
                                           "Frames thrown away because the controller lagged",
                                           labels=["camera"]),
        }
        state = StateSetMetricFamily(f"{PREFIX}_camera_state", "Camera link state",
                                     labels=["camera"])
        for camera in self._sorter.cameras:
            cid = camera.camera_id
            families["received"].add_metric([cid], received.get(cid, 0))
            families["decoded"].add_metric([cid], decoded.get(cid, 0))
            families["dropped"].add_metric([cid], camera.dropped)
            current = camera.state
            state.add_metric([cid], {s.value: s is current for s in CameraState})
        yield from families.values()
        yield state

    def _bins(self) -> Iterator[Metric]:
        fill = GaugeMetricFamily(f"{PREFIX}_bin_parcels", "Parcels confirmed in a bin",
                                 labels=["bin"])
        booked = GaugeMetricFamily(f"{PREFIX}_bin_parcels_in_flight",
                                   "Parcels sent to a bin, not yet confirmed", labels=["bin"])
        capacity = GaugeMetricFamily(f"{PREFIX}_bin_capacity_parcels", "A bin's capacity",
                                     labels=["bin"])
        full = GaugeMetricFamily(f"{PREFIX}_bin_full", "A bin's full sensor (1: full)",
                                 labels=["bin"])
        for bin_id, state in self._sorter.bins.items():
            fill.add_metric([bin_id], state.confirmed)
            booked.add_metric([bin_id], state.in_flight)
            capacity.add_metric([bin_id], state.capacity)
            full.add_metric([bin_id], int(state.full_sensor))
        yield from (fill, booked, capacity, full)

    @staticmethod
    def _links(states: Mapping[str, object]) -> Metric:
        family = StateSetMetricFamily(f"{PREFIX}_link_state", "Line I/O link state",
                                      labels=["link"])
        for name, raw in states.items():
            text = str(raw)
            current = "failed" if text.startswith("failed") else text
            family.add_metric([name], {s: s == current for s in LINK_STATES})
        return family

    def _faults(self) -> Iterator[Metric]:
        stats = self._sorter.stats
        for name, value, doc in (
            ("device_faults", stats.device_faults, "Faults the line's devices reported"),
            ("tracking_lost", stats.tracking_lost, "Times every belt position was given up"),
            ("unanswered_diverts", stats.unanswered_diverts, "Diverts sent, never answered"),
            ("order_store_errors", stats.order_store_errors, "Order store failures"),
            ("decision_errors", stats.decision_errors, "Decisions that raised"),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        for name, value, doc in (
            ("events_late", stats.events_late,
             "Line events taken in late: the loop or the link behind the belt"),
            ("frames_ahead_of_events", stats.frames_ahead_of_events,
             "Frames skipped: the line's events for them not yet in"),
            ("missing_deferred", stats.missing_deferred,
             "Parcels not called missing yet because events lagged"),
            ("loop_lag_ticks", stats.loop_lag_ticks, "Times the position watcher woke late"),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        yield GaugeMetricFamily(f"{PREFIX}_loop_lag_max_seconds",
                                "The position watcher's worst lateness",
                                value=stats.loop_lag_max_ms / 1000)
        yield GaugeMetricFamily(f"{PREFIX}_event_lag_max_seconds",
                                "The oldest a line event was when taken in",
                                value=stats.event_lag_max_ms / 1000)
        yield GaugeMetricFamily(f"{PREFIX}_line_faulted",
                                "1: the journal failed, no divert is sent any more",
                                value=int(self._sorter.fault is not None))


class LineMetrics:
    """The metrics of one line: the telemetry its Sorter is built with, then the Sorter."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.telemetry = PrometheusTelemetry(self.registry)

    def watch(self, sorter: Sorter, link_states: LinkStates | None = None,
              device_states: DeviceStates | None = None) -> None:
        """Read this sorter's counters (and the links' and devices' states) at every scrape."""
        self.registry.register(SorterCollector(sorter, link_states, device_states))

    @contextlib.asynccontextmanager
    async def serving(self, config: MetricsConfig) -> AsyncIterator[MetricsServer | None]:
        """The endpoint the config asks for, while the block runs (None: it asks for none)."""
        if not config.enabled:
            yield None
            return
        async with MetricsServer(self.registry, config.host, config.port) as server:
            yield server


def node_states(links: Mapping[str, object]) -> DeviceStates:
    """The statuses the nodes of the MQTT links among ``links`` (``LineRegistry.links``) last
    announced; a serial link's board has none of its own."""
    def states() -> dict[str, str]:
        found: dict[str, str] = {}
        for link in links.values():
            found.update(getattr(link, "nodes", {}))
        return found

    return states


class MetricsServer:
    """``GET /metrics`` of ``registry`` at ``host:port`` (port 0: any free one)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics on http://%s/metrics", self.address)

    @property
    def address(self) -> str:
        """host:port actually bound."""
        assert self._runner is not None, "not started"
        host, port = self._runner.addresses[0][:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
