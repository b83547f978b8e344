"""What a technician sees of a running line: status, metrics, events and devices as payloads.

The payloads and topics are docs/diagnostics-protocol.md. :class:`Diagnostics` builds them
from the sorter's own counters and states and hands them to a :class:`DiagnosticsSink`
(the MQTT driver, or a list in a test), which never blocks. It is cheap on the line: an
event per exception parcel or notice, a status per change of mode, a metrics dict every few
seconds and the devices' states compared as often; nothing per frame. Durations come in
through :class:`RollingTelemetry`, a :class:`~controller.telemetry.Telemetry` the Sorter is
built with (beside Prometheus', through :class:`TelemetryFanout`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from controller.clock import Clock
from controller.disposition import Disposition
from controller.journal import FinalRecord
from controller.parcel import BinState, SorterStats
from controller.telemetry import Telemetry

__all__ = ["Diagnostics", "DiagnosticsSink", "RollingTelemetry", "TelemetryFanout",
           "wall_time"]

log = logging.getLogger(__name__)

#: Bound on the samples one window keeps (a 40,000 parcels/hour line makes ~700 a minute).
MAX_SAMPLES = 100_000
#: How often the devices' states are compared (a change is published within this).
DEVICE_POLL_S = 1.0

LinkStates = Callable[[], Mapping[str, object]]
DeviceStates = Callable[[], Mapping[str, str]]


def wall_time(at: datetime | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``: ``2026-12-02T04:05:06.789Z``."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class DiagnosticsSink(Protocol):
    """Where the payloads go. ``publish`` never blocks; the topic is relative to
    ``<prefix>/<line>/`` (``status``, ``metrics``, ``events/no_read``, ``devices/camera-cam1``)."""

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False,
                qos: int = 1) -> None: ...

    @property
    def dropped(self) -> int:
        """Messages thrown away because the queue was full."""
        ...

    @property
    def queued(self) -> int:
        """Messages waiting to be sent."""
        ...


class OperatingModeView(Protocol):
    """The line's operating mode (controller.operating.OperatingMode), as read here."""

    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def since_wall(self) -> datetime: ...

    @property
    def listeners(self) -> list[Callable[[Any], None]]: ...


class NoticeView(Protocol):
    """A line notice (bin_full, device_fault, tracking_lost, line_fault), as read here."""

    @property
    def kind(self) -> str: ...

    @property
    def device(self) -> str | None: ...

    @property
    def message(self) -> str: ...


class CameraView(Protocol):
    @property
    def camera_id(self) -> str: ...

    @property
    def state(self) -> object: ...

    @property
    def dropped(self) -> int: ...


class WatchedLine(Protocol):
    """What Diagnostics reads of the Sorter."""

    @property
    def mode(self) -> OperatingModeView: ...

    @property
    def notices(self) -> list[Callable[[Any], None]]: ...

    @property
    def listeners(self) -> list[Callable[[FinalRecord], None]]: ...

    @property
    def stats(self) -> SorterStats: ...

    @property
    def cameras(self) -> Sequence[CameraView]: ...

    @property
    def bins(self) -> Mapping[str, BinState]: ...

    @property
    def open_parcels(self) -> int: ...


class _Window:
    """Durations observed over the last ``window_s`` seconds of ``now``; thread-safe."""

    def __init__(self, now: Callable[[], float], window_s: float) -> None:
        self._now = now
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            now = self._now()
            self._samples.append((now, seconds))
            cutoff = now - self._window_s
            while self._samples[0][0] < cutoff:  # pruned as it goes, read or not
                self._samples.popleft()

    def summary(self) -> dict[str, float | int | None]:
        """``{"p50", "p99", "n"}`` in milliseconds (null percentiles when empty)."""
        with self._lock:
            cutoff = self._now() - self._window_s
            while self._samples and self._samples[0][0] < cutoff:
                self._samples.popleft()
            values = sorted(seconds for _, seconds in self._samples)
        return {"p50": _percentile(values, 0.50), "p99": _percentile(values, 0.99),
                "n": len(values)}


def overload(stats: SorterStats) -> dict[str, float | int]:
    """How far the box fell behind the belt: the metrics payload's ``overload``."""
    return {"loop_lag_max_ms": round(stats.loop_lag_max_ms, 3),
            "loop_lag_ticks": stats.loop_lag_ticks,
            "event_lag_max_ms": round(stats.event_lag_max_ms, 3),
            "events_late": stats.events_late,
            "frames_ahead_of_events": stats.frames_ahead_of_events,
            "missing_deferred": stats.missing_deferred}


def _percentile(ordered: list[float], share: float) -> float | None:
    """Nearest rank, in milliseconds to the microsecond."""
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return round(ordered[rank] * 1000, 3)


class RollingTelemetry:
    """Decision and divert durations of the last ``window_s`` seconds, for the metrics."""

    def __init__(self, clock: Clock, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._decision = _Window(clock.now, window_s)
        self._divert = _Window(clock.now, window_s)

    def observe_decision(self, seconds: float) -> None:
        self._decision.add(seconds)

    def observe_divert(self, seconds: float) -> None:
        self._divert.add(seconds)

    def observe_journal_write(self, seconds: float) -> None:
        pass  # Prometheus has it; the technicians' metrics do not show it

    def decision_ms(self) -> dict[str, float | int | None]:
        return self._decision.summary()

    def divert_ms(self) -> dict[str, float | int | None]:
        return self._divert.summary()


class TelemetryFanout:
    """Every observation to each of ``telemetries``."""

    def __init__(self, *telemetries: Telemetry) -> None:
        self._telemetries = telemetries

    def observe_decision(self, seconds: float) -> None:
        for telemetry in self._telemetries:
            telemetry.observe_decision(seconds)

    def observe_divert(self, seconds: float) -> None:
        for telemetry in self._telemetries:
            telemetry.observe_divert(seconds)

    def observe_journal_write(self, seconds: float) -> None:
        for telemetry in self._telemetries:
            telemetry.observe_journal_write(seconds)


class Diagnostics:
    """Publishes one line's diagnostics to ``sink`` (topics relative to the line's)."""

    def __init__(self, sorter: WatchedLine, clock: Clock, sink: DiagnosticsSink, *, line: str,
                 version: str, every_s: float, telemetry: RollingTelemetry,
                 window_s: float = 60.0, link_states: LinkStates | None = None,
                 device_states: DeviceStates | None = None,
                 store_state: Callable[[], str] | None = None) -> None:
        self.sorter = sorter
        self.clock = clock
        self.sink = sink
        self.line = line
        self.version = version
        self.every_s = every_s
        self.window_s = window_s
        self.telemetry = telemetry
        self._link_states = link_states
        self._device_states = device_states
        self._store_state = store_state
        self.started = clock.now()
        # (clock time, read, counted in the read rate) of each parcel finished in the window
        self._finished: deque[tuple[float, bool, bool]] = deque(maxlen=MAX_SAMPLES)
        self._published_states: dict[str, str] = {}
        self.events = 0
        sorter.mode.listeners.append(self._mode_changed)
        sorter.notices.append(self._notice)
        sorter.listeners.append(self._final)

    # --- payloads --------------------------------------------------------------------------

    def status_payload(self) -> dict[str, Any]:
        mode = self.sorter.mode
        return {"state": str(mode.state), "reason": mode.reason,
                "since": wall_time(mode.since_wall), "version": self.version,
                "line": self.line}

    def metrics_payload(self) -> dict[str, Any]:
        sorter, stats = self.sorter, self.sorter.stats
        now = self.clock.now()
        self._forget_before(now - self.window_s)
        span_s = max(1e-9, min(self.window_s, now - self.started))
        finished = len(self._finished)
        counted = [read for _, read, counts in self._finished if counts]
        links = self._link_states() if self._link_states is not None else {}
        return {
            "at": wall_time(),
            "uptime_s": round(now - self.started, 3),
            "window_s": self.window_s,
            "parcels_per_minute": round(finished * 60.0 / span_s, 3) if finished else 0.0,
            "read_rate": round(sum(counted) / len(counted), 6) if counted else None,
            "dispositions": {k: v for k, v in sorted(stats.dispositions.items()) if v},
            "open_parcels": sorter.open_parcels,
            "decision_ms": self.telemetry.decision_ms(),
            "divert_ms": self.telemetry.divert_ms(),
            "links": {name: str(state) for name, state in links.items()},
            "cameras": {
                camera.camera_id: {
                    "state": str(camera.state),
                    "received": stats.frames_by_camera.get(camera.camera_id, 0),
                    "decoded": stats.decoded_by_camera.get(camera.camera_id, 0),
                    "dropped": camera.dropped}
                for camera in sorter.cameras},
            "bins": {bin_id: {"confirmed": b.confirmed, "in_flight": b.in_flight,
                              "capacity": b.capacity, "full": b.full_sensor}
                     for bin_id, b in sorter.bins.items()},
            "diagnostics": {"dropped": self.sink.dropped, "queued": self.sink.queued},
            "overload": overload(stats),
        }

    def device_payloads(self) -> dict[str, dict[str, Any]]:
        """Each device's payload by its id (``camera-cam1``, ``link-serial``, ...)."""
        seen = wall_time()
        devices: dict[str, dict[str, Any]] = {}

        def add(device_id: str, kind: str, state: object, errors: Mapping[str, int]) -> None:
            devices[device_id] = {"id": device_id, "kind": kind, "state": str(state),
                                  "last_seen": seen, "errors": dict(errors)}

        for camera in self.sorter.cameras:
            add(f"camera-{camera.camera_id}", "camera", camera.state,
                {"dropped": camera.dropped})
        if self._link_states is not None:
            for name, state in self._link_states().items():
                add(f"link-{name}", "link", state, {})
        if self._device_states is not None:
            for node, state in self._device_states().items():
                add(f"node-{node}", "node", state, {})
        if self._store_state is not None:
            add("order-store", "order_store", self._store_state(),
                {"errors": self.sorter.stats.order_store_errors})
        return devices

    # --- publishing ------------------------------------------------------------------------

    def rebirth(self) -> int:
        """Publish every retained topic now (status and every device); how many."""
        self.sink.publish("status", self.status_payload(), retain=True)
        devices = self.device_payloads()
        for device_id, payload in devices.items():
            self.sink.publish(f"devices/{device_id}", payload, retain=True)
        self._published_states = {d: p["state"] for d, p in devices.items()}
        return 1 + len(devices)

    def publish_metrics(self) -> None:
        self.sink.publish("metrics", self.metrics_payload(), qos=0)

    def publish_changed_devices(self) -> int:
        """Publish the devices whose state changed since last published; how many."""
        changed = 0
        for device_id, payload in self.device_payloads().items():
            if self._published_states.get(device_id) != payload["state"]:
                self.sink.publish(f"devices/{device_id}", payload, retain=True)
                self._published_states[device_id] = payload["state"]
                changed += 1
        return changed

    async def run(self) -> None:
        """Everything retained now, then metrics every ``every_s`` and device changes as
        they come, until cancelled."""
        self.rebirth()
        poll_s = min(self.every_s, DEVICE_POLL_S)
        next_metrics = self.clock.now() + self.every_s
        while True:
            await self.clock.sleep(poll_s)
            try:
                self.publish_changed_devices()
                if self.clock.now() >= next_metrics - 1e-9:
                    self.publish_metrics()
                    next_metrics = max(next_metrics + self.every_s, self.clock.now())
            except Exception:  # a bug in a payload must not end the technicians' view
                log.exception("diagnostics: a payload could not be built")

    def close(self) -> None:
        """Stop listening to the sorter."""
        _discard(self.sorter.mode.listeners, self._mode_changed)
        _discard(self.sorter.notices, self._notice)
        _discard(self.sorter.listeners, self._final)

    # --- what the sorter reports -----------------------------------------------------------

    def _mode_changed(self, mode: object) -> None:
        self.sink.publish("status", self.status_payload(), retain=True)

    def _notice(self, notice: NoticeView) -> None:
        payload: dict[str, Any] = {"kind": notice.kind, "at": wall_time(),
                                   "reason": notice.message}
        if notice.device or notice.kind != "line_fault":
            payload["device"] = notice.device or None
        self.events += 1
        self.sink.publish(f"events/{notice.kind}", payload)

    def _final(self, record: FinalRecord) -> None:
        disposition = record.disposition
        self._finished.append((self.clock.now(), record.code is not None,
                               disposition is not Disposition.NOT_READY))
        if disposition is Disposition.SORTED:
            return
        kind = disposition.value.lower()
        self.events += 1
        self.sink.publish(f"events/{kind}", {
            "kind": kind, "at": wall_time(), "parcel": record.parcel_id, "code": record.code,
            "bin": record.bin, "reason": record.reason, "order": record.order_id})

    def _forget_before(self, cutoff: float) -> None:
        finished = self._finished
        while finished and finished[0][0] < cutoff:
            finished.popleft()


def _discard(hooks: list[Any], hook: object) -> None:
    if hook in hooks:
        hooks.remove(hook)
