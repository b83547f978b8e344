"""MqttLineIO against the emulator's MqttNodes through a real mosquitto, on the real clock.

Each test uses its own line name, so its topics (and retained statuses) are its own on the
broker the module shares; the broker-restart test restarts that broker on the same port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.clock import RealClock
from controller.config import LineConfig, MqttLinkConfig
from controller.errors import DriverTimeout, DriverUnavailable, LinkDown
from controller.lineio import (
    INDUCTION_EYE,
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    LineEvent,
    LinkState,
    PhotoEyeEdge,
)
from drivers.lineio.mqtt import MqttLineIO
from sim_hardware.broker import DEPLOY_ACL, Mosquitto, deploy_settings, mosquitto_path
from sim_hardware.line import PhysicalLine
from sim_hardware.mqtt_nodes import MqttNodes
from sim_hardware.scenario import ScenarioSpec, generate
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None,
                       reason="mosquitto is not installed (apt-get install mosquitto)"),
    pytest.mark.timeout(60),
    pytest.mark.wallclock,
]

FAR = 200_000  # encoder counts ahead: 50 s of belt at 2 m/s, 2 counts/mm
_names = itertools.count(1)


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as mosquitto:
        yield mosquitto


@pytest.fixture
def mqtt(broker: Mosquitto) -> Mosquitto:
    """The module's broker, running (a failed restart test must not take the rest down)."""
    broker.start()
    return broker


@dataclass
class Rig:
    line: PhysicalLine
    nodes: MqttNodes
    io: MqttLineIO
    name: str

    def command(self, command_id: int, diverter: str = "D1", ahead: int = FAR,
                parcel_id: int = 1) -> DivertCommand:
        return DivertCommand(command_id, parcel_id, diverter, self.line.encoder() + ahead, 150.0)


def make_line(config: LineConfig, parcels: int = 0, seed: int = 3) -> PhysicalLine:
    spec = ScenarioSpec(parcels=parcels, seed=seed, scuffed_share=0.0)
    stream, _ = generate(spec, config)
    return PhysicalLine(config, spec, stream, RealClock(), render=False)


@asynccontextmanager
async def rig(broker: Mosquitto, config: LineConfig, *, line: PhysicalLine | None = None,
              sensors: bool = False, diverters: list[str] | None = None,
              **node_options: Any) -> AsyncIterator[Rig]:
    """Nodes for the line's diverters, and the driver, connected and armed."""
    name = f"t{next(_names)}"
    line = line or make_line(config)
    clock = line.clock
    ids = diverters or [d.id for d in config.diverters]
    link = MqttLinkConfig(host=broker.host, port=broker.port)
    try:
        async with (MqttNodes(line, broker.host, broker.port, line_name=name, clock=clock,
                              sensors=sensors, **node_options) as nodes,
                    MqttLineIO(link, line=name, clock=clock, diverters=ids,
                               sensors=sensors) as io):
            await io.wait_up(5.0)
            await nodes.wait_connected(5.0)
            await nodes.wait_armed(5.0)
            yield Rig(line, nodes, io, name)
    finally:
        # the diverts still scheduled far ahead, once the nodes are closed (a resend in flight
        # at the end, after a reconnect say, may have scheduled its divert anew)
        line.cancel_diverts()
    left = [t.get_name() for t in asyncio.all_tasks()
            if t.get_name().startswith(("lineio[mqtt]", "sim.node")) and not t.done()]
    assert not left, f"tasks left running: {left}"


async def until(predicate: Callable[[], bool], within_s: float = 3.0, what: str = "") -> None:
    """Poll ``predicate`` (counters and states have no event to wait on)."""
    try:
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110 - polling plain counters on purpose
                await asyncio.sleep(0.002)
    except TimeoutError:
        pytest.fail(f"not within {within_s} s: {what}")


async def take(io: MqttLineIO, n: int, *, within_s: float = 5.0,
               keep: Callable[[LineEvent], bool] = lambda e: True) -> list[LineEvent]:
    """The next ``n`` events that ``keep`` accepts."""
    got: list[LineEvent] = []
    async with asyncio.timeout(within_s):
        async for event in io.events():
            if keep(event):
                got.append(event)
                if len(got) == n:
                    break
    return got


@asynccontextmanager
async def raw_client(broker: Mosquitto, **kwargs: Any) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port, **kwargs) as client:
        yield client


# --- divert round trips ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_divert_round_trip_fires_the_real_line(mqtt: Mosquitto,
                                                     example_config: LineConfig) -> None:
    """PE-IN edges come in over the sensor node, the divert goes out to D1's node, the real
    line fires at the commanded count and the parcel's landing in B1 comes back."""
    line = make_line(example_config, parcels=1)
    parcel = line.parcels[0]
    d1 = next(d for d in example_config.diverters if d.id == "D1")
    cpm = example_config.belt.encoder_counts_per_mm
    async with rig(mqtt, example_config, line=line, sensors=True) as r:
        line.start_belt()  # the parcel's journey counts from now, not from the set-up
        running = asyncio.create_task(line.run(), name="sim.line")
        try:
            blocked, cleared = await take(r.io, 2, keep=lambda e: isinstance(e, PhotoEyeEdge)
                                          and e.eye == INDUCTION_EYE)
            assert isinstance(blocked, PhotoEyeEdge)
            assert isinstance(cleared, PhotoEyeEdge)
            assert blocked.blocked
            assert not cleared.blocked
            assert blocked.enc == parcel.induct_enc
            fire_enc = blocked.enc + round(d1.position_mm * cpm) + (cleared.enc - blocked.enc) // 2
            reply = await r.io.divert(DivertCommand(41, 7, "D1", fire_enc, d1.pulse_ms))
            assert (reply.command_id, reply.accepted, reply.reason) == (41, True, "")
            assert r.line.scheduled_diverts(["D1"]) == 1
            (landed,) = await take(r.io, 1, within_s=6.0,
                                   keep=lambda e: isinstance(e, BinEntry))
            assert isinstance(landed, BinEntry)
            assert landed.bin_id == "B1"
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        (fire,) = line.fires
        assert (fire.command_id, fire.parcel_id, fire.diverter_id, fire.pushed) == \
            (41, 7, "D1", parcel.sim_id)
        assert parcel.actual == "B1"
        assert 0 < r.io.encoder() <= line.encoder()
        assert r.io.stats.bad_payloads == 0
        assert r.nodes.stats.bad_payloads == 0


@pytest.mark.asyncio
async def test_late_unknown_and_offline(mqtt: Mosquitto, example_config: LineConfig) -> None:
    async with rig(mqtt, example_config, diverters=["D1", "D2"]) as r:
        reply = await r.io.divert(r.command(1, ahead=0))
        assert (reply.command_id, reply.accepted, reply.reason) == (1, False, "late")
        assert r.line.counters.late_commands == 1
        with pytest.raises(DriverUnavailable, match="D3"):
            await r.io.divert(r.command(2, diverter="D3"))
        assert r.io.stats.commands == 1
        assert r.nodes.stats.diverts == 1  # D3's never left
        reply = await r.io.divert(r.command(3, diverter="D2"))
        assert reply.accepted
        assert r.line.scheduled_diverts(["D2"]) == 1
        # D2's node shuts down: it says so, the driver reports it and refuses at once
        await r.nodes.diverter_nodes["D2"].say_offline()
        await until(lambda: r.io.nodes.get("D2") == "offline")
        (fault,) = await take(r.io, 1, keep=lambda e: isinstance(e, DeviceFault))
        assert fault == DeviceFault("node D2", "offline (lost or shut down)")
        with pytest.raises(LinkDown, match="offline"):
            await r.io.divert(r.command(4, diverter="D2"))
    assert r.io.state is LinkState.DOWN
    assert r.io.stats.outages == 0  # closed, not lost
    with pytest.raises(LinkDown):
        await r.io.divert(r.command(5))


@pytest.mark.asyncio
async def test_reply_timeout_cancels_the_divert(mqtt: Mosquitto,
                                                example_config: LineConfig) -> None:
    """No reply in time: DriverTimeout, and the node drops the divert it had taken; its reply,
    arriving after all, is a late reply, not a bad one."""
    async with rig(mqtt, example_config, reply_delay_s=0.4) as r:
        started = asyncio.get_running_loop().time()
        with pytest.raises(DriverTimeout, match="no reply to divert 9"):
            await r.io.divert(r.command(9))
        waited = asyncio.get_running_loop().time() - started
        assert 0.14 <= waited < 0.35
        await until(lambda: r.nodes.stats.cancelled == 1, what="the node got the cancel")
        assert r.line.scheduled_diverts() == 0
        assert r.line.counters.cancelled_commands == 1
        assert r.io.stats.timeouts == 1
        assert r.io.stats.cancels == 1
        await until(lambda: r.io.stats.late_replies == 1, within_s=2.0)
        assert r.io.stats.bad_payloads == 0
    assert not r.line.fires


@pytest.mark.asyncio
async def test_dropped_reply_times_out_and_cancel(mqtt: Mosquitto,
                                                  example_config: LineConfig) -> None:
    async with rig(mqtt, example_config, drop_replies=1.0) as r:
        with pytest.raises(DriverTimeout):
            await r.io.divert(r.command(11, diverter="D4"))
        await until(lambda: r.line.scheduled_diverts() == 0)
        assert r.nodes.stats.replies_dropped == 1
        assert r.nodes.stats.cancelled == 1


@pytest.mark.asyncio
async def test_link_lost_while_waiting_cancels_after_reconnect(
        mqtt: Mosquitto, example_config: LineConfig) -> None:
    """The broker goes away while a divert waits for its reply: LinkDown at once,
    and once everyone is back the node is told to drop it (its fail-safe is not the reason)."""
    async with rig(mqtt, example_config, reply_delay_s=1.0, failsafe_ms=10_000) as r:
        waiting = asyncio.create_task(r.io.divert(r.command(13, diverter="D6")))
        await until(lambda: r.line.scheduled_diverts(["D6"]) == 1)
        await mqtt.arestart()
        with pytest.raises(LinkDown, match="link down"):
            await asyncio.wait_for(waiting, 1.0)
        await until(lambda: r.line.scheduled_diverts() == 0, within_s=5.0,
                    what="the node dropped the divert given up on")
        assert r.nodes.stats.cancelled >= 1
        assert r.nodes.stats.failsafe_trips == 0
        await r.io.wait_up(5.0)  # the cancels go out just before the link counts as up
    assert not r.line.fires


# --- hostile input --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hostile_payloads_are_counted_and_survived(mqtt: Mosquitto,
                                                         example_config: LineConfig) -> None:
    async with rig(mqtt, example_config, sensors=True) as r:
        base = f"sorter/{r.name}/io"
        to_driver = [
            (f"{base}/divert/D1/reply", b"not json"),
            (f"{base}/divert/D1/reply", b'{"corr": "1", "accepted": 1}'),
            (f"{base}/divert/D1/reply", b'{"corr": 1.5, "accepted": true}'),
            (f"{base}/divert/D1/reply", b'{"corr": 1, "accepted": true, "reason": "boom"}'),
            (f"{base}/divert/D1/reply", b"[]"),
            (f"{base}/divert/D1/reply", b"x" * 1_000_000),
            (f"{base}/divert/D1/reply", b'{"corr": 987654, "accepted": true}'),  # unknown
            (f"{base}/divert/D99/reply", b'{"corr": 1, "accepted": true}'),
            (f"{base}/nodes/D1/status", b"maybe"),
            (f"{base}/events", b'{"node": "x", "seq": "1", "kind": "eye"}'),
            (f"{base}/events", b'{"node": "x", "seq": 1, "kind": "meteor"}'),
            (f"{base}/events", b'{"node": "../..", "seq": 1, "kind": "bin_level", '
                               b'"bin": "B1", "full": true}'),
            (f"{base}/events", b'{"node": "x", "seq": 1, "kind": "eye", "eye": "induct", '
                               b'"blocked": true, "enc": 1e999}'),
            (f"{base}/events", b"[" * 4000),  # deep nesting, under the size limit
            (f"{base}/encoder", b'{"enc": null}'),
        ]
        to_nodes = [
            (f"{base}/divert/D2", b"\xff\xfe"),
            (f"{base}/divert/D2", b'{"corr": 77, "fire_enc": "soon", "pulse_ms": 150}'),
            (f"{base}/divert/D2", b'{"corr": 78, "parcel": 1, "fire_enc": 1, "pulse_ms": NaN}'),
            (f"{base}/cancel/D2", b'{"corr": -4}'),
            (f"{base}/heartbeat", b'{"session": 5}'),
            (f"{base}/divert/D2", b"y" * 1_000_000),
        ]
        async with raw_client(mqtt) as hostile:
            for topic, payload in to_driver + to_nodes:
                await hostile.publish(topic, payload, qos=1)
        # the node refuses corr 77 and 78 by name: two more replies the driver cannot match;
        # the bad heartbeat reaches every node (the sensor node too, for its acks)
        await until(lambda: r.io.stats.bad_payloads == len(to_driver) + 2, what=str(r.io.stats))
        nodes = len(example_config.diverters) + 1
        await until(lambda: r.nodes.stats.bad_payloads == len(to_nodes) - 1 + nodes,
                    what=str(r.nodes.stats))
        assert r.io.stats.bad_by_kind == {
            "bad_reply": 5, "too_large": 1, "unknown_corr": 3, "unknown_diverter": 1,
            "bad_status": 1, "bad_event": 5, "bad_encoder": 1}
        assert r.nodes.stats.bad_by_kind == {
            "bad_divert": 3, "bad_cancel": 1, "bad_heartbeat": nodes, "too_large": 1}
        assert r.io.state is LinkState.UP
        assert r.nodes.connected()
        reply = await r.io.divert(r.command(12, diverter="D2"))
        assert reply.accepted
        assert r.io.stats.events == 0  # nothing bad got through
        assert r.io.stats.replies == 1


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_broker_restart_reconnects_everyone(mqtt: Mosquitto,
                                                  example_config: LineConfig) -> None:
    async with rig(mqtt, example_config, sensors=True) as r:
        assert (await r.io.divert(r.command(21))).accepted
        seen: list[LinkState] = []

        async def watch() -> None:
            while True:
                if not seen or seen[-1] is not r.io.state:
                    seen.append(r.io.state)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        await mqtt.arestart()
        await until(lambda: r.io.state is LinkState.DOWN or r.io.stats.reconnects > 0)
        await r.io.wait_up(5.0)
        await r.nodes.wait_connected(5.0)
        await r.nodes.wait_armed(5.0)
        watcher.cancel()
        if seen[-1] is not r.io.state:
            seen.append(r.io.state)
        assert seen[:3] == [LinkState.UP, LinkState.DOWN, LinkState.UP]
        assert r.io.stats.outages == 1
        assert r.io.stats.reconnects == 1
        assert r.nodes.stats.reconnects == len(example_config.diverters) + 1
        # mosquitto may send some nodes' Wills as it shuts down: they are back online too
        await until(lambda: set(r.io.nodes.values()) == {"online"})
        reply = await r.io.divert(r.command(22, diverter="D5"))
        assert reply.accepted
        (fault,) = await take(r.io, 1, keep=lambda e: isinstance(e, DeviceFault)
                              and e.device == "mqtt")
        assert isinstance(fault, DeviceFault)
        assert "link down" in fault.message


@pytest.mark.asyncio
async def test_heartbeat_fail_safe_drops_and_refuses(mqtt: Mosquitto,
                                                     example_config: LineConfig) -> None:
    """The controller goes away with a divert scheduled far ahead: after failsafe_ms the node
    drops it (no fire) and refuses diverts with "fault" until heartbeats come back."""
    line = make_line(example_config)
    link = MqttLinkConfig(host=mqtt.host, port=mqtt.port)
    ids = [d.id for d in example_config.diverters]
    async with rig(mqtt, example_config, line=line, failsafe_ms=300.0) as r:
        assert (await r.io.divert(r.command(31, diverter="D3"))).accepted
        assert line.scheduled_diverts(["D3"]) == 1
        await r.io.aclose()
        gone = asyncio.get_running_loop().time()
        await until(lambda: line.scheduled_diverts() == 0, within_s=2.0)
        after = asyncio.get_running_loop().time() - gone
        assert 0.15 < after < 1.0, after  # the last heartbeat was up to 100 ms before
        assert r.nodes.stats.failsafe_dropped == 1
        await until(lambda: r.nodes.stats.failsafe_trips == len(ids))
        assert not r.nodes.armed("D3")
        # a divert now (by anyone) is refused by name
        base = f"sorter/{r.name}/io"
        async with raw_client(mqtt) as other:
            await other.subscribe(f"{base}/divert/D3/reply", qos=1)
            await other.publish(f"{base}/divert/D3", json.dumps(
                {"corr": 32, "parcel": 2, "fire_enc": line.encoder() + FAR,
                 "pulse_ms": 150.0}), qos=1)
            async with asyncio.timeout(2.0):
                message = await anext(aiter(other.messages))
            assert json.loads(message.payload) == {"corr": 32, "accepted": False,
                                                   "reason": "fault"}
        # the controller is back: the nodes arm again and take diverts
        async with MqttLineIO(link, line=r.name, clock=line.clock, diverters=ids,
                              sensors=False) as again:
            await again.wait_up(5.0)
            await r.nodes.wait_armed(2.0)
            assert (await again.divert(r.command(33, diverter="D3"))).accepted
    assert not line.fires


@pytest.mark.asyncio
async def test_sensor_events_in_order_deduplicated_across_outage(
        mqtt: Mosquitto, example_config: LineConfig) -> None:
    async with rig(mqtt, example_config, sensors=True) as r:
        emit = r.line.event_sinks[-1]  # the sensor node's sink on the line
        sent: list[LineEvent] = []

        def raise_events(n: int) -> None:
            for _ in range(n):
                k = len(sent)
                event: LineEvent = (PhotoEyeEdge(INDUCTION_EYE, k % 2 == 0, 1000 + k)
                                    if k % 3 else BinLevel(f"B{k % 8 + 1}", k % 2 == 1))
                sent.append(event)
                emit(event)

        raise_events(40)
        await until(lambda: r.nodes.backlog() == 0)
        await mqtt.astop()
        raise_events(60)  # held by the node while the broker is down
        await until(lambda: r.io.state is LinkState.DOWN)
        assert r.nodes.backlog() == 60
        await mqtt.astart()
        await r.io.wait_up(5.0)
        got = await take(r.io, len(sent), keep=lambda e: not isinstance(e, DeviceFault))
        assert got == sent
        # a QoS 1 duplicate of an event already delivered is dropped
        node = r.nodes.sensor_node
        assert node is not None
        async with raw_client(mqtt) as resender:
            await resender.publish(f"sorter/{r.name}/io/events", json.dumps(
                {"node": "sensors", "boot": node.boot, "seq": 5, "kind": "bin_level",
                 "bin": "B1", "full": True}), qos=1)
        await until(lambda: r.io.stats.duplicate_events >= 1)
        raise_events(1)
        (last,) = await take(r.io, 1, keep=lambda e: not isinstance(e, DeviceFault))
        assert last == sent[-1]
        assert r.io.stats.events == len(sent)
        assert r.io.stats.missed_events == 0
        await until(lambda: r.io.encoder() > 0)


# --- the production broker config -----------------------------------------------------------


def _deploy_settings(passwd: Path) -> list[str]:
    """deploy/mosquitto.conf's settings, with our password file and the deploy ACL, for a
    loopback test broker (listener, logging and persistence are the test broker's own)."""
    return [*deploy_settings(), f"password_file {passwd}", f"acl_file {DEPLOY_ACL}"]


USERS = ["controller", "technician", "line1-D1", "line1-D2", "line1-sensors"]


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    """A mosquitto password file for USERS, each with the password ``pw-<user>``."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
    path = tmp_path / "passwd"
    path.touch(mode=0o600)
    for user in USERS:
        subprocess.run([tool, "-b", str(path), user, f"pw-{user}"], check=True,
                       capture_output=True)
    return path


@pytest.mark.asyncio
async def test_deploy_broker_config_auth_and_acl(tmp_path: Path, passwd: Path,
                                                 example_config: LineConfig) -> None:
    """The production config: no anonymous access, nodes limited to their own topics, a
    read-only technician; the controller still drives a node through it."""
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert re.search(r"^set_tcp_nodelay true$", conf, re.M)
    assert re.search(r"^allow_anonymous false$", conf, re.M)
    users = USERS
    secret = tmp_path / "controller.password"
    secret.write_text("pw-controller\n")
    line = make_line(example_config)
    credentials = {u.removeprefix("line1-"): (u, f"pw-{u}") for u in users[2:]}
    with Mosquitto(allow_anonymous=False, settings=_deploy_settings(passwd)) as broker:
        link = MqttLinkConfig(host=broker.host, port=broker.port, username="controller",
                              password_file=str(secret))
        async with (MqttNodes(line, broker.host, broker.port, line_name="line1",
                              diverters=["D1", "D2"], sensors=True, clock=line.clock,
                              credentials=credentials) as nodes,
                    MqttLineIO(link, line="line1", clock=line.clock, diverters=["D1", "D2"],
                               sensors=True) as io):
            await io.wait_up(5.0)
            await nodes.wait_connected(5.0)
            await nodes.wait_armed(5.0)
            assert (await io.divert(DivertCommand(1, 1, "D1", line.encoder() + FAR,
                                                  150.0))).accepted
            await until(lambda: io.encoder() > 0)  # the sensor node may publish
            with pytest.raises(aiomqtt.MqttError):  # no anonymous access
                async with raw_client(broker):
                    pass
            async with raw_client(broker, username="technician",
                                  password="pw-technician") as tech:
                await tech.subscribe("sorter/#", qos=1)  # reading is fine
                await tech.publish("sorter/line1/io/divert/D2", json.dumps(
                    {"corr": 50, "parcel": 1, "fire_enc": line.encoder() + FAR,
                     "pulse_ms": 150.0}), qos=1)
            async with raw_client(broker, username="line1-D1", password="pw-line1-D1") as d1:
                # a node cannot answer for another one, nor command one
                await d1.publish("sorter/line1/io/divert/D2/reply",
                                 b'{"corr": 2, "accepted": true}', qos=1)
                await d1.publish("sorter/line1/io/divert/D2", json.dumps(
                    {"corr": 51, "parcel": 1, "fire_enc": line.encoder() + FAR,
                     "pulse_ms": 150.0}), qos=1)
            assert (await io.divert(DivertCommand(3, 1, "D2", line.encoder() + FAR,
                                                  150.0))).accepted
            await asyncio.sleep(0.1)
            assert nodes.stats.diverts == 2  # the technician's and D1's never arrived
            assert io.stats.bad_payloads == 0  # D1's forged reply never arrived
            assert line.scheduled_diverts() == 2
            line.cancel_diverts()
