"""The technicians' MQTT connection against a real mosquitto (docs/diagnostics-protocol.md):
retained status across a broker restart, the Will when the controller's process is killed,
a broker that is down, command round trips for MQTT 3.1.1 and 5 clients, hostile requests."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.app.simulate import run_shift
from controller.clock import RealClock
from controller.config import DiagnosticsConfig, LineConfig, load_config
from controller.diagnostics import Diagnostics, RollingTelemetry
from controller.operating import LineState, OperatingMode
from controller.parcel import SorterStats
from drivers.backoff import Backoff
from drivers.diagnostics_mqtt import MqttDiagnostics
from sim_hardware.broker import Mosquitto, mosquitto_path
from sim_hardware.scenario import Case, ScenarioSpec

from .conftest import EXAMPLE_CONFIG

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None,
                       reason="mosquitto is not installed (apt-get install mosquitto)"),
    pytest.mark.timeout(60),
    pytest.mark.wallclock,
]

ROOT = Path(__file__).resolve().parents[1]
LINE = "line1"
BASE = f"sorter/{LINE}"
WITHIN_S = 5.0


class Watcher:
    """A technician's client: every message under the line's topics, as it comes."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()

    async def collect(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._arrived.set()

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.messages
                if m.topic.value == topic]

    async def until(self, found: Callable[[], object], within_s: float = WITHIN_S) -> None:
        async with asyncio.timeout(within_s):
            while not found():
                self._arrived.clear()
                await self._arrived.wait()


@asynccontextmanager
async def watching(broker: Mosquitto, topic: str = f"{BASE}/#", *,
                   v5: bool = True) -> AsyncIterator[Watcher]:
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(broker.host, broker.port, protocol=protocol,
                              timeout=WITHIN_S) as client:
        watcher = Watcher(client)
        await client.subscribe(topic, qos=1)
        task = asyncio.create_task(watcher.collect())
        try:
            yield watcher
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class StandInLine:
    """What Diagnostics reads of a Sorter, without a line (the transport is under test)."""

    def __init__(self) -> None:
        self.mode = OperatingMode(RealClock())
        self.notices: list[Any] = []
        self.listeners: list[Any] = []
        self.stats = SorterStats()
        self.cameras: list[Any] = []
        self.bins: dict[str, Any] = {}
        self.open_parcels = 0


async def echo(verb: str, payload: bytes) -> Mapping[str, Any]:
    """A stand-in command desk: what it was asked, or why it could not read it."""
    request = json.loads(payload)  # hostile input raises here: the transport must answer
    if verb == "slow":
        await asyncio.sleep(1.0)
    return {"transaction": request.get("transaction"), "verb": verb, "status": "ok",
            "data": {"asked": request}, "error": None}


def config_for(broker: Mosquitto, **changes: Any) -> DiagnosticsConfig:
    return DiagnosticsConfig(port=broker.port, keepalive_s=1, **changes)


@asynccontextmanager
async def diagnostics_on(broker: Mosquitto, **changes: Any
                         ) -> AsyncIterator[tuple[MqttDiagnostics, Diagnostics, StandInLine]]:
    line = StandInLine()
    found: list[Diagnostics] = []
    sink = MqttDiagnostics(config_for(broker, **changes), line=LINE, on_command=echo,
                           on_connect=lambda: found and found[0].rebirth(),
                           backoff=Backoff(0.05, 0.2), version="0.1.0")
    clock = RealClock()
    diagnostics = Diagnostics(line, clock, sink, line=LINE, version="0.1.0", every_s=0.5,
                              telemetry=RollingTelemetry(clock),
                              link_states=lambda: {"serial": "up"})
    found.append(diagnostics)
    async with sink:
        await sink.wait_up(WITHIN_S)
        yield sink, diagnostics, line


@pytest.mark.asyncio
async def test_status_is_retained_and_republished_after_a_broker_restart(
        own_broker: Mosquitto) -> None:
    async with diagnostics_on(own_broker) as (sink, _, line):
        line.mode.set(LineState.RUNNING, "sorting")
        async with watching(own_broker) as early:
            await early.until(lambda: early.on(f"{BASE}/status")
                              and early.on(f"{BASE}/devices/link-serial"))
            assert early.on(f"{BASE}/status")[-1]["state"] == "running"
            assert early.on(f"{BASE}/devices/link-serial")[-1]["state"] == "up"
        # the broker keeps nothing across a restart (no persistence): the rebirth puts it back
        await own_broker.arestart()
        await eventually(lambda: sink.stats.connects == 2 and not sink.queued)
        async with watching(own_broker) as late:
            await late.until(lambda: late.on(f"{BASE}/devices/broker")
                             and late.on(f"{BASE}/status")
                             and late.on(f"{BASE}/devices/link-serial"))
            status = late.on(f"{BASE}/status")[-1]
            assert (status["state"], status["reason"], status["line"]) == \
                ("running", "sorting", LINE)
            assert all(m.retain for m in late.messages)
            assert late.on(f"{BASE}/devices/broker")[-1]["errors"]["reconnects"] >= 1
        assert sink.stats.connects >= 2
    # a clean stop leaves the retained status offline, "stopped"
    async with watching(own_broker) as after:
        await after.until(lambda: after.on(f"{BASE}/status"))
        assert after.on(f"{BASE}/status")[-1]["state"] == "offline"
        assert after.on(f"{BASE}/status")[-1]["reason"] == "stopped"


CHILD = """
import asyncio, sys
from controller.config import DiagnosticsConfig
from drivers.diagnostics_mqtt import MqttDiagnostics

async def on_command(verb, payload):
    return {}

async def main():
    config = DiagnosticsConfig(port=int(sys.argv[1]), keepalive_s=1)
    sink = MqttDiagnostics(config, line="line1", on_command=on_command,
                           on_connect=lambda: None, version="9.9")
    async with sink:
        sink.publish("status", {"state": "running", "reason": "sorting"}, retain=True)
        await sink.wait_up(5)
        while sink.queued:
            await asyncio.sleep(0.01)
        print("up", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_the_will_says_offline_when_the_controller_is_killed(
        mosquitto: Mosquitto) -> None:
    base = "sorter/line1"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(mosquitto.port), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(WITHIN_S * 2):
            assert child.stdout is not None
            assert await child.stdout.readline() == b"up\n"
        async with watching(mosquitto, f"{base}/status") as watcher:
            await watcher.until(lambda: watcher.on(f"{base}/status"))
            assert watcher.on(f"{base}/status")[-1]["state"] == "running"
            child.kill()  # SIGKILL: no clean disconnect, only the keepalive runs out
            started = time.monotonic()
            await watcher.until(lambda: watcher.on(f"{base}/status")[-1]["state"] == "offline")
            offline = watcher.on(f"{base}/status")[-1]
            assert offline["reason"] == "connection lost"
            assert (offline["line"], offline["version"]) == ("line1", "9.9")
            assert watcher.messages[-1].retain is False  # live, not from the store
            assert time.monotonic() - started < 4.0  # 1.5 keepalives, and some slack
    finally:
        if child.returncode is None:
            child.kill()
        await child.communicate()
    # and the broker keeps it for whoever looks later
    async with watching(mosquitto, f"{base}/status") as later:
        await later.until(lambda: later.on(f"{base}/status"))
        assert later.on(f"{base}/status")[-1]["state"] == "offline"
        assert later.messages[-1].retain


@pytest.mark.asyncio
async def test_a_broker_that_is_down_never_blocks_publishing(own_broker: Mosquitto) -> None:
    limit = 50
    async with diagnostics_on(own_broker, queue_limit=limit) as (sink, diagnostics, line):
        await eventually(lambda: not sink.queued)
        await own_broker.astop()
        await eventually(lambda: sink.state != "up")
        started = time.perf_counter()
        for n in range(2000):
            sink.publish("events/no_read", {"kind": "no_read", "parcel": n})
        line.mode.set(LineState.RUNNING, "sorting")
        line.mode.set(LineState.PAUSED, "lunch")
        spent = time.perf_counter() - started
        assert spent < 0.5, f"2000 publishes took {spent:.3f} s"
        assert sink.queued == limit
        assert sink.stats.dropped == 2000 - limit + 1  # the status took one place
        assert diagnostics.metrics_payload()["diagnostics"] == {"dropped": sink.stats.dropped,
                                                                "queued": limit}
        published = sink.stats.published
        await own_broker.astart()
        await sink.wait_up(WITHIN_S)
        async with watching(own_broker) as watcher:
            await watcher.until(lambda: watcher.on(f"{BASE}/status"))
            assert watcher.on(f"{BASE}/status")[-1]["state"] == "paused"  # the latest only
            assert watcher.on(f"{BASE}/status")[-1]["reason"] == "lunch"
            assert [p["state"] for p in watcher.on(f"{BASE}/status")] == ["paused"]
        await eventually(lambda: not sink.queued)
        assert sink.stats.published - published >= limit  # the queue went out
        assert sink.stats.last_error is not None


async def eventually(found: Callable[[], object], within_s: float = WITHIN_S) -> None:
    """Wait until ``found()`` (the sink's own state, which has no event to wait on)."""
    for _ in range(round(within_s / 0.01)):
        if found():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within_s} s")


def _request(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.asyncio
async def test_a_command_round_trip_for_mqtt_3_and_5_clients(mosquitto: Mosquitto) -> None:
    async with diagnostics_on(mosquitto) as (sink, _, _):
        async with watching(mosquitto, f"{BASE}/cmd/+/response", v5=False) as old:
            await old.client.publish(f"{BASE}/cmd/pause",
                                     _request({"transaction": "t-17", "by": "anna"}), qos=1)
            await old.until(lambda: old.on(f"{BASE}/cmd/pause/response"))
            reply = old.on(f"{BASE}/cmd/pause/response")[0]
            assert reply["transaction"] == "t-17"
            assert (reply["verb"], reply["status"]) == ("pause", "ok")
        async with watching(mosquitto, f"{BASE}/replies/#") as new:
            asked = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            asked.ResponseTopic = f"{BASE}/replies/anna-laptop"
            asked.CorrelationData = b"\x00corr-1"
            await new.client.publish(f"{BASE}/cmd/resume", _request({}), qos=1,
                                     properties=asked)
            await new.until(lambda: new.on(f"{BASE}/replies/anna-laptop"))
            answer = next(m for m in new.messages
                          if m.topic.value == f"{BASE}/replies/anna-laptop")
            assert answer.properties is not None
            assert getattr(answer.properties, "CorrelationData", None) == b"\x00corr-1"
            assert json.loads(answer.payload)["verb"] == "resume"
            # a Response Topic outside replies/ is not answered on
            elsewhere = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            elsewhere.ResponseTopic = f"{BASE}/status"
            await new.client.publish(f"{BASE}/cmd/rebirth", _request({"transaction": 2}),
                                     qos=1, properties=elsewhere)
            await new.client.subscribe(f"{BASE}/cmd/rebirth/response", qos=1)
            await new.client.publish(f"{BASE}/cmd/rebirth", _request({"transaction": 3}),
                                     qos=1, properties=elsewhere)
            await new.until(lambda: new.on(f"{BASE}/cmd/rebirth/response"))
            assert [m.topic.value for m in new.messages].count(
                f"{BASE}/replies/anna-laptop") == 1
        assert sink.stats.commands == 4


@pytest.mark.asyncio
async def test_hostile_requests_never_break_the_connection(mosquitto: Mosquitto) -> None:
    # a retained request a broker kept is stale: never carried out
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=WITHIN_S) as client:
        await client.publish(f"{BASE}/cmd/stale", b"{}", qos=1, retain=True)
    async with diagnostics_on(mosquitto) as (sink, _, _):
        async with watching(mosquitto, f"{BASE}/cmd/#") as watcher:
            client = watcher.client
            hostile = [b"", b"\xff\xfe\x00garbage", b"[1, 2]", b"{" * 100_000,
                       b'{"transaction": ' + b"9" * 5000 + b"}", json.dumps("x").encode()]
            for payload in hostile:
                await client.publish(f"{BASE}/cmd/pause", payload, qos=1)
            await client.publish(f"{BASE}/cmd/\u00e9\u00e9", b"{}", qos=1)
            # a slow command does not hold the next one up
            await client.publish(f"{BASE}/cmd/slow", _request({"transaction": "s"}), qos=1)
            await client.publish(f"{BASE}/cmd/fast", _request({"transaction": "f"}), qos=1)
            await watcher.until(lambda: watcher.on(f"{BASE}/cmd/slow/response"))
            order = [m.topic.value for m in watcher.messages if m.topic.value.endswith(
                "/response")]
            assert order.index(f"{BASE}/cmd/fast/response") < \
                order.index(f"{BASE}/cmd/slow/response")
            errors = watcher.on(f"{BASE}/cmd/pause/response")
            assert len(errors) == len(hostile)
            for error in errors:
                assert (error["status"], error["transaction"]) == ("error", None)
                assert error["error"]
            assert watcher.on(f"{BASE}/cmd/\u00e9\u00e9/response")[0]["status"] == "ok"
            assert not watcher.on(f"{BASE}/cmd/stale/response")
        assert sink.stats.ignored == 1
        assert sink.stats.connects == 1
        assert sink.stats.last_error is None
        assert sink.stats.command_errors == len(hostile)
        await client_clears_retained(mosquitto, f"{BASE}/cmd/stale")


async def client_clears_retained(broker: Mosquitto, topic: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port, timeout=WITHIN_S) as client:
        await client.publish(topic, b"", qos=1, retain=True)


# --- the whole face: a real-time shift, its Sorter and CommandDesk, a real broker -----------


def _fast_line(broker: Mosquitto) -> LineConfig:
    base = load_config(EXAMPLE_CONFIG)
    return base.model_copy(update={
        "belt": base.belt.model_copy(update={"speed_mm_s": 3000.0}),
        "diagnostics": DiagnosticsConfig(port=broker.port, keepalive_s=2,
                                         metrics_every_s=0.5)})


@pytest.mark.asyncio
async def test_a_real_shift_seen_and_commanded_over_mqtt(mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    config = _fast_line(mosquitto)
    spec = ScenarioSpec(parcels=16, seed=5, scuffed_share=0.0, length_mm=(150.0, 260.0),
                        gap_mm=(60.0, 120.0), multi_parcel_share=0.0,
                        mix={Case.NOMINAL: 2.0, Case.NO_LABEL: 1.0})
    clock = RealClock()
    traced: dict[str, Any] = {}

    async def technician(watcher: Watcher) -> None:
        await watcher.until(lambda: any(p["state"] == "running"
                                        for p in watcher.on(f"{BASE}/status")), 20.0)
        await watcher.until(lambda: watcher.on(f"{BASE}/events/no_read"), 20.0)
        parcel = watcher.on(f"{BASE}/events/no_read")[0]["parcel"]
        await watcher.client.publish(f"{BASE}/cmd/trace",
                                     _request({"transaction": "t1", "parcel": parcel}), qos=1)
        await watcher.until(lambda: watcher.on(f"{BASE}/cmd/trace/response"))
        traced.update(watcher.on(f"{BASE}/cmd/trace/response")[0])

    async with watching(mosquitto) as watcher:
        asking = asyncio.create_task(technician(watcher))
        result = await run_shift(config, spec, tmp_path, clock)  # [diagnostics]: published
        await asking
        await watcher.until(lambda: watcher.on(f"{BASE}/status")[-1]["state"] == "offline")
    journal = {row["parcel_id"]: row for row in result.journal}
    no_reads = {p for p, row in journal.items() if row["disposition"] == "NO_READ"}
    assert no_reads
    events = watcher.on(f"{BASE}/events/no_read")
    assert {e["parcel"] for e in events} == no_reads
    assert len(events) == len(no_reads)
    assert not [m for m in watcher.messages if m.topic.value.startswith(f"{BASE}/events/")
                and m.topic.value != f"{BASE}/events/no_read"]
    assert (traced["transaction"], traced["status"]) == ("t1", "ok"), traced
    data = traced["data"]
    assert data["disposition"] == "NO_READ"
    assert data["parcel"] in no_reads
    assert watcher.on(f"{BASE}/status")[-1]["reason"] == "stopped"
    metrics = watcher.on(f"{BASE}/metrics")
    assert metrics
    assert metrics[-1]["decision_ms"]["n"] > 0
    cameras = [d for t, d in ((m.topic.value, m) for m in watcher.messages)
               if t.startswith(f"{BASE}/devices/camera-")]
    assert cameras


@pytest.mark.asyncio
async def test_the_deploy_acl_lets_the_diagnostics_through(tmp_path: Path) -> None:
    """The controller's account publishes the view and answers; an operator commands."""
    with Mosquitto(deploy=True) as broker:
        secret = tmp_path / "controller.secret"
        secret.write_text(broker.passwords["controller"] + "\n", encoding="utf-8")
        line = StandInLine()
        found: list[Diagnostics] = []
        sink = MqttDiagnostics(
            DiagnosticsConfig(port=broker.port, username="controller",
                              password_file=str(secret)),
            line=LINE, on_command=echo, on_connect=lambda: found and found[0].rebirth())
        clock = RealClock()
        found.append(Diagnostics(line, clock, sink, line=LINE, version="0", every_s=1.0,
                                 telemetry=RollingTelemetry(clock),
                                 link_states=lambda: {"serial": "up"}))
        user, password = broker.credentials("operator")
        async with sink, aiomqtt.Client(broker.host, broker.port, username=user,
                                        password=password, timeout=WITHIN_S,
                                        protocol=aiomqtt.ProtocolVersion.V5) as operator:
            await sink.wait_up(WITHIN_S)
            watcher = Watcher(operator)
            await operator.subscribe(f"{BASE}/#", qos=1)
            collecting = asyncio.create_task(watcher.collect())
            try:
                await watcher.until(lambda: watcher.on(f"{BASE}/status")
                                    and watcher.on(f"{BASE}/devices/link-serial"))
                sink.publish("events/no_read", {"kind": "no_read"})
                asked = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                asked.ResponseTopic = f"{BASE}/replies/op"
                await operator.publish(f"{BASE}/cmd/pause", _request({"transaction": 1}),
                                       qos=1, properties=asked)
                await watcher.until(lambda: watcher.on(f"{BASE}/replies/op")
                                    and watcher.on(f"{BASE}/cmd/pause/response")
                                    and watcher.on(f"{BASE}/events/no_read"))
            finally:
                collecting.cancel()
                await asyncio.gather(collecting, return_exceptions=True)
        assert sink.stats.commands == 1


@pytest.mark.asyncio
async def test_pause_and_resume_over_the_deploy_broker_keep_every_parcel_right(
        tmp_path: Path) -> None:
    """A real-time shift on the deploy broker: the read-only technician's pause does nothing
    (no reply, the line keeps running); the operator's pause and resume are carried out, and
    every parcel still ends exactly once, where the emulator's truth says it should."""
    from controller.app.shift_report import parcel_records

    with Mosquitto(deploy=True) as broker:
        secret = tmp_path / "controller.secret"
        secret.write_text(broker.passwords["controller"] + "\n", encoding="utf-8")
        base = _fast_line(broker)
        assert base.diagnostics is not None
        config = base.model_copy(update={"diagnostics": base.diagnostics.model_copy(
            update={"username": "controller", "password_file": str(secret)})})
        spec = ScenarioSpec(parcels=40, seed=21, scuffed_share=0.0, length_mm=(150.0, 260.0),
                            gap_mm=(300.0, 400.0), multi_parcel_share=0.0)
        clock = RealClock()
        window: list[float] = []

        async def login(user: str) -> aiomqtt.Client:
            name, password = broker.credentials(user)
            return aiomqtt.Client(broker.host, broker.port, username=name, password=password,
                                  timeout=WITHIN_S, protocol=aiomqtt.ProtocolVersion.V5)

        async def command(client: aiomqtt.Client, verb: str, transaction: str) -> None:
            await client.publish(f"{BASE}/cmd/{verb}",
                                 _request({"transaction": transaction, "by": "anna"}), qos=1)

        async def technicians(watcher: Watcher) -> None:
            await watcher.until(lambda: any(p["state"] == "running"
                                            for p in watcher.on(f"{BASE}/status")), 20.0)
            await asyncio.sleep(1.5)
            async with await login("technician") as reader:
                await command(reader, "pause", "from-the-reader")  # dropped by the ACL
            async with await login("operator") as operator:
                await command(operator, "rebirth", "marker")  # after the reader's, in order
                await watcher.until(lambda: watcher.on(f"{BASE}/cmd/rebirth/response"))
                window.append(clock.now())
                await command(operator, "pause", "p1")
                await watcher.until(lambda: watcher.on(f"{BASE}/cmd/pause/response"))
                await asyncio.sleep(2.0)
                window.append(clock.now())
                await command(operator, "resume", "r1")
                await watcher.until(lambda: watcher.on(f"{BASE}/cmd/resume/response"))

        async with await login("technician") as reader:
            watcher = Watcher(reader)
            await reader.subscribe(f"{BASE}/#", qos=1)
            collecting = asyncio.create_task(watcher.collect())
            try:
                asking = asyncio.create_task(technicians(watcher))
                result = await run_shift(config, spec, tmp_path, clock)
                await asking
            finally:
                collecting.cancel()
                await asyncio.gather(collecting, return_exceptions=True)

    replies = [r for verb in ("pause", "resume", "rebirth")
               for r in watcher.on(f"{BASE}/cmd/{verb}/response")]
    assert sorted(r["transaction"] for r in replies) == ["marker", "p1", "r1"]
    assert all(r["status"] == "ok" for r in replies), replies
    states = [p["state"] for p in watcher.on(f"{BASE}/status")]
    assert "paused" in states
    assert states.index("paused") < len(states) - 1
    paused_at, resumed_at = window
    records = parcel_records(result)
    ids = [r["parcel_id"] for r in records]
    assert None not in ids
    assert len(ids) == len(set(ids)) == spec.parcels  # one outcome each
    journal = {row["parcel_id"]: row for row in result.journal}
    held = [r for r in records if paused_at <= journal[r["parcel_id"]]["inducted_at"]
            < resumed_at]
    assert held, "no parcel reached the induction eye while paused"
    for r in records:
        assert r["disposition"] != "MISSORT", r
        if r in held and r["disposition"] == "NOT_READY":
            assert r["reason"] == "inducted while the line was paused", r
            assert r["actual_bin"] == "END", r  # never fired at
        else:
            assert r["disposition"] == r["expected_disposition"], r
            assert r["actual_bin"] == r["controller_bin"], r
    assert any(r["disposition"] == "NOT_READY" for r in held)


@pytest.mark.asyncio
async def test_a_shift_sorts_as_the_truth_says_with_its_diagnostics_broker_down(
        tmp_path: Path) -> None:
    """[diagnostics] names a broker nobody runs: the line sorts every parcel as the truth
    says, nothing waits on the broker, and what could not be sent is counted as dropped."""
    from controller.app.shift_report import parcel_records
    from sim_hardware.broker import free_port

    base = load_config(EXAMPLE_CONFIG)
    config = base.model_copy(update={
        "belt": base.belt.model_copy(update={"speed_mm_s": 3000.0}),
        "diagnostics": DiagnosticsConfig(port=free_port(), metrics_every_s=0.5,
                                         queue_limit=10, reconnect_max_s=0.2)})
    spec = ScenarioSpec(parcels=24, seed=31, scuffed_share=0.0, length_mm=(150.0, 260.0),
                        gap_mm=(60.0, 120.0), multi_parcel_share=0.0)
    seen: dict[str, Any] = {}

    async def looking(rig: Any) -> None:
        assert rig.diagnostics is not None
        sink = rig.diagnostics.sink
        try:
            await asyncio.Event().wait()
        finally:
            seen.update(state=sink.state, dropped=sink.stats.dropped,
                        published=sink.stats.published)

    result = await run_shift(config, spec, tmp_path, RealClock(), during=looking)
    records = parcel_records(result)
    assert len(records) == spec.parcels
    assert all(r["disposition"] == r["expected_disposition"] for r in records), records
    assert all(r["actual_bin"] == r["controller_bin"] for r in records)
    assert seen["state"] != "up"
    assert seen["published"] == 0
    assert seen["dropped"] > 0  # metrics every 0.5 s and the events overflowed the queue
