"""MQTT devices are who they say: forged replies, statuses and sensor events (issue 10).

On an anonymous broker a forger can answer a divert before its node, or retain a node's
``offline``; the deploy broker config (accounts and ACL, deploy/mosquitto.*) drops its
publishes, and the driver counts a second, different reply for one command id. Sensor
events from made-up node ids are refused whatever the broker, so the heartbeat's
acknowledgements and the book stay bounded and no node falls into its fail-safe.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from controller.config import LineConfig, MqttLinkConfig
from controller.lineio import (
    INDUCTION_EYE,
    BinEntry,
    BinLevel,
    DivertCommand,
    DivertReply,
    PhotoEyeEdge,
)
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.mqtt import MqttLineIO
from drivers.lineio.mqtt_stats import MqttStats
from sim_hardware.broker import Mosquitto, acl_users, mosquitto_path
from sim_hardware.line import PhysicalLine
from sim_hardware.mqtt_nodes import MqttNodes
from tests.test_mqtt_lineio import FAR, make_line, raw_client, take, until

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None,
                       reason="mosquitto is not installed (apt-get install mosquitto)"),
    pytest.mark.timeout(60),
    pytest.mark.wallclock,
]

LINE = "line1"  # the line deploy/mosquitto.acl grants
DIVERTS = 10
FAILSAFE_MS = 300.0


@pytest.fixture
def deploy_broker() -> Iterator[Mosquitto]:
    """A broker with the deploy config's accounts and ACL, passwords made for this test."""
    with Mosquitto(deploy=True) as broker:
        yield broker


@pytest.fixture
def anonymous_broker() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


@dataclass
class Line:
    line: PhysicalLine
    nodes: MqttNodes
    io: MqttLineIO

    def command(self, command_id: int, diverter: str = "D1") -> DivertCommand:
        return DivertCommand(command_id, command_id, diverter, self.line.encoder() + FAR, 150.0)


@asynccontextmanager
async def served(broker: Mosquitto, config: LineConfig, tmp_path: Path, *,
                 sensors: bool = False, parcels: int = 0) -> AsyncIterator[Line]:
    """D1 and D2 (and the sensor node) of ``line1`` as nodes, and the driver, connected."""
    line = make_line(config, parcels=parcels)
    diverters = ["D1", "D2"]
    link = MqttLinkConfig(host=broker.host, port=broker.port)
    if broker.deploy:
        secret = tmp_path / "controller.password"
        secret.write_text(broker.passwords["controller"] + "\n")
        link = MqttLinkConfig(host=broker.host, port=broker.port, username="controller",
                              password_file=str(secret))
    try:
        async with (MqttNodes(line, broker.host, broker.port, line_name=LINE,
                              clock=line.clock, diverters=diverters, sensors=sensors,
                              failsafe_ms=FAILSAFE_MS,
                              credentials=broker.node_credentials(LINE)) as nodes,
                    MqttLineIO(link, line=LINE, clock=line.clock, diverters=diverters,
                               sensors=sensors) as io):
            await io.wait_up(5.0)
            await nodes.wait_connected(5.0)
            await nodes.wait_armed(5.0)
            yield Line(line, nodes, io)
    finally:
        line.cancel_diverts()  # once the nodes are closed: nothing can schedule one after it


def forger_login(broker: Mosquitto) -> dict[str, str]:
    """The forger: anonymous, or on the deploy broker a node's own account (D2's)."""
    if not broker.deploy:
        return {}
    user, password = broker.credentials(f"{LINE}-D2")
    return {"username": user, "password": password}


async def forge_late_replies(client: aiomqtt.Client) -> None:
    """Answer every divert to any diverter with "refused: late", as fast as it can."""
    async for message in client.messages:
        body = json.loads(bytes(message.payload))
        await client.publish(f"{message.topic}/reply", codec.encode_reply(
            DivertReply(body["corr"], False, "late")), qos=1)


@dataclass
class Race:
    replies: list[DivertReply]
    scheduled: int  # diverts the emulated line has scheduled: the nodes' truth
    stats: MqttStats


async def race(broker: Mosquitto, config: LineConfig, tmp_path: Path) -> Race:
    async with (served(broker, config, tmp_path) as rig,
                raw_client(broker, **forger_login(broker)) as forger):
        await forger.subscribe(f"sorter/{LINE}/io/divert/+", qos=1)
        forging = asyncio.create_task(forge_late_replies(forger))
        try:
            replies = [await rig.io.divert(rig.command(n)) for n in range(1, DIVERTS + 1)]
            await asyncio.sleep(0.3)  # the later of each pair of replies
        finally:
            forging.cancel()
            await asyncio.gather(forging, return_exceptions=True)
        return Race(replies, rig.line.scheduled_diverts(), rig.io.stats)


@pytest.mark.asyncio
async def test_forged_replies_race_the_node_on_an_anonymous_broker_and_are_counted(
        anonymous_broker: Mosquitto, example_config: LineConfig, tmp_path: Path) -> None:
    """The finding itself: the forger's "late" and the node's "accepted" both arrive, the
    node still fires; every command id with two different replies is counted."""
    got = await race(anonymous_broker, example_config, tmp_path)
    assert got.scheduled == DIVERTS  # the nodes took them all, whatever the driver believed
    assert got.stats.conflicting_replies == DIVERTS


@pytest.mark.asyncio
async def test_forged_replies_are_dropped_by_the_deploy_acl(
        deploy_broker: Mosquitto, example_config: LineConfig, tmp_path: Path) -> None:
    """Under the deploy ACL D2's account neither sees D1's diverts nor may answer for it:
    every divert is answered by its node alone, accepted, and scheduled on the line."""
    got = await race(deploy_broker, example_config, tmp_path)
    assert all(r.accepted for r in got.replies)
    assert got.scheduled == DIVERTS
    assert (got.stats.conflicting_replies, got.stats.refused, got.stats.bad_payloads) == (0, 0, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("deploy", [False, True], ids=["anonymous", "deploy-acl"])
async def test_a_parcel_raced_by_a_forger_lands_where_truth_says(
        deploy: bool, example_config: LineConfig, tmp_path: Path) -> None:
    """One parcel on the running line, its divert raced by the forger. Anonymous: the node
    fires and the parcel is in B1 whatever the driver was told, and the two replies are
    counted as conflicting. Deploy ACL: the driver hears the node alone, "accepted", which
    the line's truth confirms (the controller journals SORTED, not MISSORT)."""
    d1 = next(d for d in example_config.diverters if d.id == "D1")
    cpm = example_config.belt.encoder_counts_per_mm
    with Mosquitto(deploy=deploy) as broker:
        async with (served(broker, example_config, tmp_path, sensors=True, parcels=1) as rig,
                    raw_client(broker, **forger_login(broker)) as forger):
            await forger.subscribe(f"sorter/{LINE}/io/divert/+", qos=1)
            forging = asyncio.create_task(forge_late_replies(forger))
            rig.line.start_belt()
            running = asyncio.create_task(rig.line.run(), name="sim.line")
            try:
                blocked, cleared = await take(rig.io, 2, keep=lambda e: isinstance(
                    e, PhotoEyeEdge) and e.eye == INDUCTION_EYE)
                assert isinstance(blocked, PhotoEyeEdge)
                assert isinstance(cleared, PhotoEyeEdge)
                fire_enc = (blocked.enc + round(d1.position_mm * cpm)
                            + (cleared.enc - blocked.enc) // 2)
                reply = await rig.io.divert(DivertCommand(41, 7, "D1", fire_enc, d1.pulse_ms))
                (landed,) = await take(rig.io, 1, within_s=6.0,
                                       keep=lambda e: isinstance(e, BinEntry))
            finally:
                for task in (running, forging):
                    task.cancel()
                await asyncio.gather(running, forging, return_exceptions=True)
            (parcel,) = rig.line.parcels
            assert parcel.actual == "B1"  # the truth: the node fired, whatever was forged
            assert isinstance(landed, BinEntry)
            assert landed.bin_id == "B1"
            if deploy:
                assert (reply.accepted, reply.reason) == (True, "")
                assert rig.io.stats.conflicting_replies == 0
            else:
                await until(lambda: rig.io.stats.conflicting_replies == 1, what="conflict")


async def forge_offline(broker: Mosquitto) -> None:
    async with raw_client(broker, **forger_login(broker)) as forger:
        await forger.publish(f"sorter/{LINE}/io/nodes/D1/status", b"offline", qos=1,
                             retain=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("deploy", [False, True], ids=["anonymous", "deploy-acl"])
async def test_a_forged_retained_offline_status(deploy: bool, example_config: LineConfig,
                                                tmp_path: Path) -> None:
    """Anonymous: the forged retained ``offline`` takes D1 out, also for a driver that
    connects later. Deploy ACL: it is dropped, D1 stays online and takes its diverts."""
    with Mosquitto(deploy=deploy) as broker:
        async with served(broker, example_config, tmp_path) as rig:
            await forge_offline(broker)
            await asyncio.sleep(0.3)
            assert rig.io.book.node_offline("D1") is not deploy
        async with served(broker, example_config, tmp_path) as later:
            # the node re-publishes "online" on connect: the retained lie lives until then
            await until(lambda: later.io.book.nodes.get("D1") == "online", what="D1 online")
            await forge_offline(broker)
            await asyncio.sleep(0.3)
            assert later.io.book.node_offline("D1") is not deploy
            if deploy:
                assert (await later.io.divert(later.command(1))).accepted
                assert later.line.scheduled_diverts() == 1


@pytest.mark.asyncio
async def test_events_from_made_up_nodes_leave_the_heartbeat_bounded(
        anonymous_broker: Mosquitto, example_config: LineConfig, tmp_path: Path) -> None:
    """Events from 100 made-up node ids (more than a heartbeat may acknowledge) are refused
    and counted; the heartbeats acknowledge the real sensor node only and no node trips."""
    fakes = 100
    async with (served(anonymous_broker, example_config, tmp_path, sensors=True) as rig,
                raw_client(anonymous_broker) as forger):
        await forger.subscribe(f"sorter/{LINE}/io/heartbeat", qos=0)
        for n in range(fakes):
            await forger.publish(f"sorter/{LINE}/io/events", codec.encode_event(
                codec.SensorEvent(f"fake{n}", "b", 1, BinLevel("B1", True), 1)), qos=1)
        await until(lambda: rig.io.stats.unknown_nodes == fakes, what="fakes refused")
        beats: list[codec.Heartbeat] = []
        async with asyncio.timeout(5.0):
            async for message in forger.messages:
                beats.append(codec.decode_heartbeat(bytes(message.payload)))
                if len(beats) == 5:
                    break
        await asyncio.sleep(2 * FAILSAFE_MS / 1000)
        assert all(set(b.ack) <= {"sensors"} for b in beats)
        assert set(rig.io.book.acks()) <= {"sensors"}
        assert set(rig.io.book.nodes) <= {"D1", "D2", "sensors"}
        assert rig.nodes.stats.failsafe_trips == 0
        assert rig.io.stats.bad_by_kind.get("unknown_node") == fakes


@pytest.mark.asyncio
async def test_the_deploy_broker_refuses_anonymous_and_unknown_clients(
        deploy_broker: Mosquitto) -> None:
    """No anonymous access, no wrong password; every ACL user got a password of its own."""
    assert set(deploy_broker.passwords) == set(acl_users())
    assert len(set(deploy_broker.passwords.values())) == len(deploy_broker.passwords)
    for login in ({}, {"username": "controller", "password": "guess"},
                  {"username": "nobody", "password": "x"}):
        with pytest.raises(aiomqtt.MqttError):
            async with raw_client(deploy_broker, **login):
                pass
    async with raw_client(deploy_broker, username="controller",
                          password=deploy_broker.passwords["controller"]):
        pass


def private_text(path: Path) -> str:
    """A secret file's text, once it is sure nobody but its owner may read it."""
    assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    return path.read_text(encoding="utf-8")


@pytest.mark.asyncio
async def test_emulate_wires_each_node_and_the_controller_to_its_own_account(
        deploy_broker: Mosquitto, example_config: LineConfig, tmp_path: Path) -> None:
    """``emulate --mqtt`` with the broker's secrets: each node logs in as itself, and the
    written line config names the controller's account and a password file of its own."""
    from controller.app.emulate import (
        EmulateOptions,
        _node_credentials,
        _write_line_config,
    )
    from controller.config import load_config
    from tests.conftest import EXAMPLE_CONFIG

    secrets = tmp_path / "broker.secrets"
    deploy_broker.write_secrets(secrets)
    assert private_text(secrets).count("\n") == len(deploy_broker.passwords)
    options = EmulateOptions(config_path=EXAMPLE_CONFIG, write_config=tmp_path / "emu.toml",
                             workdir=tmp_path / "emu.d",
                             mqtt=(deploy_broker.host, deploy_broker.port),
                             mqtt_secrets=secrets)
    credentials = _node_credentials(options, LINE)
    assert credentials == deploy_broker.node_credentials(LINE)
    books = example_config.model_copy(update={"archive": example_config.archive.model_copy(
        update={"path": str(tmp_path / "archive")})})
    _write_line_config(options, books,
                       {c.id: f"http://127.0.0.1:1/{c.id}" for c in example_config.cameras})
    written = load_config(options.write_config)
    assert written.line_io is not None
    assert written.line_io.mqtt is not None
    link = written.line_io.mqtt
    assert link.username == "controller"
    assert link.password_file is not None
    assert private_text(Path(link.password_file)) == deploy_broker.passwords["controller"] + "\n"
    line = make_line(example_config)
    async with (MqttNodes(line, deploy_broker.host, deploy_broker.port, line_name=LINE,
                          clock=line.clock, diverters=["D1"], credentials=credentials) as nodes,
                MqttLineIO(link, line=LINE, clock=line.clock, diverters=["D1"],
                           sensors=False) as io):
        await io.wait_up(5.0)
        await nodes.wait_armed(5.0)
        command = DivertCommand(1, 1, "D1", line.encoder() + FAR, 150.0)
        assert (await io.divert(command)).accepted
        assert line.scheduled_diverts() == 1
        line.cancel_diverts()
