"""A diverter node that dropped its schedule (its heartbeat fail-safe, during a broker outage
longer than ``failsafe_ms``) gets the still-due diverts again once it is back online, through
a real mosquitto: the parcels they were for are pushed into their bins after all, by the
divert that named them, and a command id a node already holds is never scheduled twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from controller.app.simulate import LinkOptions, Rig
from controller.config import LineConfig
from controller.lineio import DivertCommand
from drivers.lineio.mqtt import MqttLineIO
from sim_hardware.broker import Mosquitto, mosquitto_path
from sim_hardware.mqtt_nodes import MqttNodes
from tests.test_mqtt_lineio import FAR, make_line, raw_client, rig, until
from tests.test_serial_faults import SPEC, assert_nothing_lost_nothing_wrong, shift

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None,
                       reason="mosquitto is not installed (apt-get install mosquitto)"),
    pytest.mark.timeout(60),
    pytest.mark.wallclock,
]

OUTAGE_S = 1.0  # twice the nodes' fail-safe (500 ms)
RECONNECT_CAP_S = 0.2  # everyone retries at least this often: back soon after the broker
HEADROOM_S = 2.0  # belt time a divert must still have to go when the broker stops
SHORT = SPEC.model_copy(update={"parcels": 14})


def test_a_broker_outage_past_the_fail_safe_restores_the_diverts_still_due(
        example_config: LineConfig, tmp_path: Path, own_broker: Mosquitto) -> None:
    """The broker stops while diverts are scheduled for parcels still well upstream of their
    diverter, for longer than the fail-safe: the nodes drop them; once back, the driver sends
    them again and each parcel is pushed into its own bin by its own divert."""
    cps = example_config.belt.speed_mm_s * example_config.belt.encoder_counts_per_mm
    bins = {d.id: d.bin for d in example_config.diverters}
    chosen: list[DivertCommand] = []

    async def outage_with_diverts_ahead(r: Rig) -> None:
        nodes: MqttNodes = r.nodes
        for node in nodes.diverter_nodes.values():
            node.backoff.cap = RECONNECT_CAP_S
        if nodes.sensor_node is not None:
            nodes.sensor_node.backoff.cap = RECONNECT_CAP_S
        io: MqttLineIO = r.line_io.links["mqtt"]
        # the first moment some accepted divert is still HEADROOM_S of belt from firing
        async with asyncio.timeout(8.0):
            while not chosen:  # polling the driver's schedule
                enc = r.line.encoder()
                chosen.extend(c for held in io.scheduled.values() for c in held
                              if c.fire_enc - enc >= HEADROOM_S * cps)
                await asyncio.sleep(0.005)
        assert r.line.scheduled_diverts() >= len(chosen)
        await own_broker.arestart(down_s=OUTAGE_S)

    summary, records, result = shift(
        example_config, tmp_path, line_link="mqtt", during=outage_with_diverts_ahead,
        options=LinkOptions(broker=(own_broker.host, own_broker.port),
                            mqtt={"reconnect_max_s": RECONNECT_CAP_S}), spec=SHORT)
    # every parcel tracked, with exactly one outcome; no push at a parcel not named
    assert_nothing_lost_nothing_wrong(summary, records, result, parcels=SHORT.parcels)
    assert own_broker.starts == 2
    assert chosen
    nodes, link = result.extra["nodes"], result.extra["link_mqtt"]
    assert nodes["failsafe_trips"] >= 1
    assert nodes["failsafe_dropped"] >= len(chosen), nodes
    assert link["reconnects"] >= 1
    assert link["restored"] >= len(chosen), link
    # Each chosen divert fired exactly once, at the parcel it named, which is in its bin.
    by_parcel = {r["parcel_id"]: r for r in records}
    fires = Counter(f.command_id for f in result.fires)
    for command in chosen:
        assert fires[command.command_id] == 1, (command, result.fires)
        (fire,) = [f for f in result.fires if f.command_id == command.command_id]
        record = by_parcel[command.parcel_id]
        assert fire.pushed == record["sim_id"], (fire, record)
        assert record["disposition"] == "SORTED", record
        assert record["actual_bin"] == record["expected_bin"] == bins[command.diverter_id], \
            record
    assert max(fires.values()) == 1  # no divert fired twice


@pytest.mark.asyncio
async def test_a_node_keeps_a_command_id_it_already_holds(
        mosquitto: Mosquitto, example_config: LineConfig) -> None:
    """The same divert sent twice to a node is accepted twice, held once and fired once."""
    line = make_line(example_config)
    async with rig(mosquitto, example_config, line=line, diverters=["D1"]) as r:
        line.start_belt()
        command = r.command(61, ahead=1200)  # 0.3 s of belt
        for _ in range(2):
            reply = await r.io.divert(command)
            assert (reply.command_id, reply.accepted, reply.reason) == (61, True, "")
        assert line.scheduled_diverts(["D1"]) == 1
        assert r.nodes.stats.accepted == 2
        assert r.nodes.stats.already_held == 1
        await until(lambda: line.scheduled_diverts() == 0, within_s=2.0, what="fired")
        assert [f.command_id for f in line.fires] == [61]
        # once fired, the same id again is late: it is never carried out a second time
        reply = await r.io.divert(command)
        assert (reply.accepted, reply.reason) == (False, "late")
        await asyncio.sleep(0.1)
        assert [f.command_id for f in line.fires] == [61]


@pytest.mark.asyncio
async def test_a_node_back_from_its_fail_safe_gets_its_due_diverts_again(
        own_broker: Mosquitto, example_config: LineConfig) -> None:
    """Driver and nodes alone: a node trips its fail-safe in a broker outage; once it is
    armed again the driver restores the divert still due (same id, held once) and counts the
    one whose time passed meanwhile as refused; one given up on is not restored."""
    line = make_line(example_config)
    cps = example_config.belt.speed_mm_s * example_config.belt.encoder_counts_per_mm
    async with rig(own_broker, example_config, line=line, sensors=True,
                   diverters=["D1", "D2"], failsafe_ms=300.0) as r:
        line.start_belt()
        far = r.command(71, ahead=FAR)
        soon = r.command(72, ahead=round(0.8 * cps))  # due during the outage
        other = r.command(73, diverter="D2", ahead=FAR)
        for command in (far, soon, other):
            assert (await r.io.divert(command)).accepted
        await r.io.cancel(73, "D2")
        await until(lambda: line.scheduled_diverts(["D2"]) == 0, what="D2's cancelled")
        assert line.scheduled_diverts(["D1"]) == 2
        assert {d: [c.command_id for c in held] for d, held in r.io.scheduled.items()} == \
            {"D1": [71, 72]}
        await own_broker.astop()
        await until(lambda: r.nodes.stats.failsafe_dropped == 2, what="D1's fail-safe")
        await until(lambda: line.encoder() > soon.fire_enc, what="72's time passes")
        assert line.scheduled_diverts() == 0
        await own_broker.astart()
        await r.io.wait_up(5.0)
        await r.nodes.wait_armed(5.0)
        # 72 is forgotten by the encoder count, or refused as late if restored before it came
        await until(lambda: line.scheduled_diverts(["D1"]) == 1
                    and r.io.scheduled == {"D1": [far]}, within_s=5.0,
                    what=f"restored: {r.io.stats}, {r.io.scheduled}")
        assert r.io.stats.restored >= 1
        assert r.io.stats.restore_refused <= r.io.stats.restored - 1
        assert line.scheduled_diverts(["D2"]) == 0  # a cancelled divert is not restored
        assert r.nodes.stats.refused_unarmed == 0  # restored only once armed again
        # any later return to "online" restores again, harmlessly: the node keeps it as it is
        held = r.nodes.stats.already_held
        restored = r.io.stats.restored
        async with raw_client(own_broker) as other:
            for status in (b"safe", b"online"):
                await other.publish(f"sorter/{r.name}/io/nodes/D1/status", status, qos=1,
                                    retain=True)
        await until(lambda: r.nodes.stats.already_held == held + 1, what=str(r.nodes.stats))
        assert r.io.stats.restored == restored + 1
        assert r.io.stats.node_failsafes >= 1
        assert line.scheduled_diverts() == 1
        # once the line's count began again (tracking lost), nothing from before goes out
        r.io.forget_scheduled()
        assert r.io.scheduled == {}
        async with raw_client(own_broker) as other:
            for status in (b"safe", b"online"):
                await other.publish(f"sorter/{r.name}/io/nodes/D1/status", status, qos=1,
                                    retain=True)
        await until(lambda: r.io.nodes.get("D1") == "online" and r.io.stats.node_failsafes >= 2,
                    what="the second safe/online seen")
        assert r.io.stats.restored == restored + 1
        assert r.io.stats.bad_payloads == 0
    assert not line.fires
