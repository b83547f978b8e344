"""The technicians' payloads (docs/diagnostics-protocol.md) from emulated shifts on the virtual
clock, checked against the journal and the emulator's truth; an in-memory sink stands in for
the broker (tests/test_diagnostics_mqtt.py runs the real one)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from controller.app.simulate import Rig
from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig, load_config
from controller.confirming import Confirmations
from controller.diagnostics import (
    Diagnostics,
    RollingTelemetry,
    TelemetryFanout,
    wall_time,
)
from controller.operating import LineState, Notice
from controller.parcel import Belt
from controller.sorter import Sorter
from controller.telemetry import NoTelemetry
from controller.tracking import Tracker
from sim_hardware.scenario import Case, ScenarioSpec

from .shifts import run_sim

WALL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class ListSink:
    """Every published message, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool, int]] = []

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False,
                qos: int = 1) -> None:
        self.messages.append((topic, dict(payload), retain, qos))

    @property
    def dropped(self) -> int:
        return 0

    @property
    def queued(self) -> int:
        return 0

    def on(self, prefix: str) -> list[dict[str, Any]]:
        return [p for t, p, _, _ in self.messages if t.startswith(prefix)]


class Watched:
    """A shift's Diagnostics, its sink, and what the sorter itself reported beside it."""

    def __init__(self) -> None:
        self.sink = ListSink()
        self.diagnostics: Diagnostics | None = None
        self.notices: list[Notice] = []
        self.metrics_at_end: dict[str, Any] = {}
        self.devices_at_end: dict[str, dict[str, Any]] = {}

    def attach(self, sorter: Sorter) -> None:
        telemetry = RollingTelemetry(sorter.clock)
        sorter.telemetry = TelemetryFanout(sorter.telemetry, telemetry)  # as run builds it
        self.diagnostics = Diagnostics(sorter, sorter.clock, self.sink, line="line1",
                                       version="0.1.0", every_s=5.0, telemetry=telemetry,
                                       store_state=lambda: "up")
        sorter.notices.append(self.notices.append)

    async def during(self, rig: Rig) -> None:
        assert self.diagnostics is not None
        task = asyncio.create_task(self.diagnostics.run())
        try:
            await asyncio.Event().wait()  # cancelled at the shift's end
        finally:
            self.metrics_at_end = self.diagnostics.metrics_payload()
            self.devices_at_end = self.diagnostics.device_payloads()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _shift(config: LineConfig, spec: ScenarioSpec,
           workdir: Path) -> tuple[Watched, list[Any], Any]:
    watched = Watched()
    _, records, result = run_sim(config, spec, workdir, with_sorter=watched.attach,
                                 during=watched.during)
    return watched, records, result


MIXED = ScenarioSpec(parcels=40, seed=7, scuffed_share=0.0, mix={
    Case.NOMINAL: 2.0, Case.NO_LABEL: 1.0, Case.TWO_LABELS: 1.0, Case.UNKNOWN_ORDER: 1.0,
    Case.HELD_ORDER: 1.0, Case.JAMMED_DIVERTER: 0.5})


@pytest.fixture(scope="module")
def mixed_shift(example_config: LineConfig,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Watched, list[Any], Any]:
    return _shift(example_config, MIXED, tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def example_config() -> LineConfig:
    from .conftest import EXAMPLE_CONFIG
    return load_config(EXAMPLE_CONFIG)


def test_one_event_per_exception_parcel(mixed_shift: tuple[Watched, list[Any], Any]) -> None:
    watched, records, result = mixed_shift
    journal = {row["parcel_id"]: row for row in result.journal}
    exceptions = {r["parcel_id"]: r for r in records if r["disposition"] != "SORTED"}
    assert {r["case"] for r in exceptions.values()} >= {"no_label", "two_labels",
                                                        "unknown_order", "held_order"}
    events = [p for p in watched.sink.on("events/") if "parcel" in p]
    assert len(events) == len(exceptions)  # one each, none for a sorted parcel
    for topic, payload, retain, qos in watched.sink.messages:
        if topic.startswith("events/"):
            assert (retain, qos) == (False, 1)
            assert topic == f"events/{payload['kind']}"
            assert WALL.match(payload["at"])
    for event in events:
        truth, row = exceptions[event["parcel"]], journal[event["parcel"]]
        assert event["kind"] == truth["disposition"].lower()
        assert truth["expected_disposition"] == truth["disposition"]  # the emulator agrees
        assert event["code"] == truth["read_code"] == row["code"]
        assert event["bin"] == truth["controller_bin"] == row["bin"]
        assert event["reason"] == row["reason"]
        assert event["order"] == row["order_id"]
    # the sorter's own notices became events too
    notice_events = [p for p in watched.sink.on("events/") if "parcel" not in p]
    assert [(p["kind"], p.get("device")) for p in notice_events] == \
        [(n.kind, n.device) for n in watched.notices]


def test_status_follows_the_mode_and_metrics_count_the_shift(
        example_config: LineConfig, mixed_shift: tuple[Watched, list[Any], Any]) -> None:
    watched, records, result = mixed_shift
    statuses = [(t, p, r, q) for t, p, r, q in watched.sink.messages if t == "status"]
    assert all(r and q == 1 for _, _, r, q in statuses)
    states = [p["state"] for _, p, _, _ in statuses]
    assert states[0] == "starting"
    assert "running" in states
    for _, payload, _, _ in statuses:
        assert set(payload) == {"state", "reason", "since", "version", "line"}
        assert WALL.match(payload["since"])
        assert payload["line"] == "line1"
    metrics = watched.sink.on("metrics")
    assert metrics, "no metrics in a shift of more than five seconds"
    assert all(q == 0 and not r for t, _, r, q in watched.sink.messages if t == "metrics")
    end = watched.metrics_at_end
    assert end["dispositions"] == dict(Counter(r["disposition"] for r in records))
    assert end["dispositions"] == {k: v for k, v in result.stats.dispositions.items() if v}
    assert end["open_parcels"] == 0
    assert set(end["cameras"]) == {c.id for c in example_config.cameras}
    for camera_id, figures in end["cameras"].items():
        assert figures["received"] == result.stats.frames_by_camera[camera_id] > 0
    assert set(end["bins"]) == {b.id for b in example_config.bins}
    for bin_id, figures in end["bins"].items():
        assert figures["confirmed"] == sum(1 for r in records if r["disposition"] == "SORTED"
                                           and r["controller_bin"] == bin_id)
    assert end["read_rate"] is not None
    assert 0 < end["read_rate"] < 1  # no-reads in the mix
    assert end["parcels_per_minute"] > 0
    # every parcel's decision, in a shift shorter than the window
    assert result.line_time_s < end["window_s"]
    assert end["decision_ms"]["n"] == len(records)
    assert end["decision_ms"]["p99"] >= end["decision_ms"]["p50"] >= 0
    # uptime on the virtual clock: the shift's own length, give or take the start
    assert end["uptime_s"] == pytest.approx(result.line_time_s, abs=5.0)


def test_devices_are_republished_when_a_camera_goes_down(
        example_config: LineConfig, tmp_path: Path) -> None:
    camera = example_config.cameras[0].id
    spec = ScenarioSpec(parcels=40, seed=3, scuffed_share=0.0,
                        camera_outages=[(camera, 8.0, 14.0)])
    watched, _, _ = _shift(example_config, spec, tmp_path)
    published = [(p["state"], r) for t, p, r, _ in watched.sink.messages
                 if t == f"devices/camera-{camera}"]
    assert all(retain for _, retain in published)
    states = [s for s, _ in published]
    assert "down" in states, states
    assert states[-1] == "streaming"
    # one message per change (and the start's), not one per poll
    assert len(states) == 1 + sum(1 for a, b in itertools.pairwise(states) if a != b)
    store = watched.devices_at_end["order-store"]
    assert store == {"id": "order-store", "kind": "order_store", "state": "up",
                     "last_seen": store["last_seen"], "errors": {"errors": 0}}


def test_rebirth_republishes_every_retained_topic() -> None:
    async def main(clock: VirtualClock) -> None:
        line = _StandInLine(clock)
        sink = ListSink()
        diagnostics = Diagnostics(line, clock, sink, line="l", version="1", every_s=1.0,
                                  telemetry=RollingTelemetry(clock),
                                  link_states=lambda: {"serial": "up"},
                                  device_states=lambda: {"D1": "online"})
        count = diagnostics.rebirth()
        assert count == 3  # status, link-serial, node-D1
        assert [t for t, _, r, _ in sink.messages if r] == ["status", "devices/link-serial",
                                                            "devices/node-D1"]
        line.mode.set(LineState.RUNNING, "sorting")
        assert sink.messages[-1][1]["state"] == "running"
        diagnostics.close()
        line.mode.set(LineState.PAUSED, "by a test")
        assert sink.messages[-1][1]["state"] == "running"  # no longer listening

    run_virtual(main)


def test_rolling_telemetry_keeps_only_its_window() -> None:
    async def main(clock: VirtualClock) -> None:
        rolling = RollingTelemetry(clock, window_s=60.0)
        fanout = TelemetryFanout(NoTelemetry(), rolling)
        assert rolling.decision_ms() == {"p50": None, "p99": None, "n": 0}
        for i in range(1, 101):
            fanout.observe_decision(i / 1000)  # 1..100 ms
        fanout.observe_divert(0.002)
        fanout.observe_journal_write(0.5)
        assert rolling.decision_ms() == {"p50": 50.0, "p99": 99.0, "n": 100}
        assert rolling.divert_ms() == {"p50": 2.0, "p99": 2.0, "n": 1}
        await clock.sleep(30)
        fanout.observe_decision(0.5)
        await clock.sleep(31)
        assert rolling.decision_ms() == {"p50": 500.0, "p99": 500.0, "n": 1}
        assert rolling.divert_ms()["n"] == 0

    run_virtual(main)


def test_wall_time_is_utc_with_milliseconds() -> None:
    from datetime import datetime, timedelta, timezone
    at = datetime(2026, 12, 2, 5, 5, 6, 789_999, tzinfo=timezone(timedelta(hours=1)))
    assert wall_time(at) == "2026-12-02T04:05:06.789Z"
    assert WALL.match(wall_time())


class _StandInLine:
    """Only what a Diagnostics reads, for a test without a line."""

    def __init__(self, clock: VirtualClock) -> None:
        from controller.operating import OperatingMode
        from controller.parcel import SorterStats
        self.mode = OperatingMode(clock)
        self.notices: list[Any] = []
        self.listeners: list[Any] = []
        self.stats = SorterStats()
        self.cameras: list[Any] = []
        self.bins: dict[str, Any] = {}
        self.open_parcels = 0


def test_metrics_say_how_far_the_box_fell_behind_the_belt(example_config: LineConfig) -> None:
    async def main(clock: VirtualClock) -> None:
        line = _StandInLine(clock)
        diagnostics = Diagnostics(line, clock, ListSink(), line="l", version="1", every_s=1.0,
                                  telemetry=RollingTelemetry(clock))
        assert diagnostics.metrics_payload()["overload"] == {
            "loop_lag_max_ms": 0.0, "loop_lag_ticks": 0, "event_lag_max_ms": 0.0,
            "events_late": 0, "frames_ahead_of_events": 0, "missing_deferred": 0}
        confirming = Confirmations(example_config, Belt(Tracker(0.0, 2.0), {}, line.stats),
                                   lambda *_: None, clock)
        confirming.loop_lagged(0.2)  # the watcher woke 200 ms late
        confirming.event_late(0.8125)  # an edge taken in 812.5 ms after it was latched
        confirming.event_late(0.01)
        line.stats.frames_ahead_of_events += 2
        overload = diagnostics.metrics_payload()["overload"]
        assert overload == {"loop_lag_max_ms": 200.0, "loop_lag_ticks": 1,
                            "event_lag_max_ms": 812.5, "events_late": 1,
                            "frames_ahead_of_events": 2, "missing_deferred": 0}
        diagnostics.close()

    run_virtual(main)
