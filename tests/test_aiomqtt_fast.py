"""aiomqtt_fast leans on aiomqtt's private paho client: these fail loudly if it moves."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho_mqtt
import pytest

from drivers.lineio.aiomqtt_fast import NODELAY, PRIVATE_CLIENT, paho_client, send_now
from sim_hardware.broker import Mosquitto

pytestmark = [pytest.mark.timeout(30), pytest.mark.wallclock]


def test_the_installed_aiomqtt_is_the_major_version_it_was_written_for() -> None:
    major = int(version("aiomqtt").split(".")[0])
    assert major == 2, (
        f"aiomqtt {version('aiomqtt')}: aiomqtt_fast reaches into aiomqtt 2.x's private "
        f"Client.{PRIVATE_CLIENT}; check it still holds the paho client, then update the pin")


@pytest.mark.asyncio
async def test_the_aiomqtt_client_keeps_its_paho_client_where_send_now_looks() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)  # never connected
    assert hasattr(client, PRIVATE_CLIENT), (
        f"aiomqtt.Client has no {PRIVATE_CLIENT!r} any more: send_now cannot publish")
    paho = paho_client(client)
    assert isinstance(paho, paho_mqtt.Client), type(paho)
    assert getattr(client, PRIVATE_CLIENT) is paho
    # send_now calls publish(topic, payload, qos, retain) positionally
    assert list(inspect.signature(paho.publish).parameters)[:4] == [
        "topic", "payload", "qos", "retain"]


@pytest.mark.asyncio
async def test_send_now_refuses_when_not_connected() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        send_now(client, "t/x", b"x", qos=1)
    assert refused.value.rc == paho_mqtt.MQTT_ERR_NO_CONN


@pytest.mark.asyncio
async def test_send_now_is_delivered_in_order_through_a_broker(mosquitto: Mosquitto) -> None:
    """paho queues what send_now hands it and aiomqtt's writer sends it: nothing awaited."""
    topic = "test/aiomqtt_fast"
    async with (aiomqtt.Client(mosquitto.host, mosquitto.port, socket_options=NODELAY) as rx,
                aiomqtt.Client(mosquitto.host, mosquitto.port, socket_options=NODELAY) as tx):
        await rx.subscribe(topic, qos=1)
        sent = [b"%d" % i for i in range(20)]
        for payload in sent:
            send_now(tx, topic, payload, qos=1)
        got: list[bytes] = []
        async with asyncio.timeout(5):
            async for message in rx.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if len(got) == len(sent):
                    break
        assert got == sent
        retained = "test/aiomqtt_fast/retained"
        send_now(tx, retained, b"kept", qos=1, retain=True)
        await tx.publish(retained + "/done", b"", qos=1)  # its PUBACK: the broker has both
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as late:
        await late.subscribe(retained, qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(late.messages))
        assert (message.topic.value, message.payload, message.retain) == (retained, b"kept", True)
        await late.publish(retained, b"", qos=1, retain=True)  # leave the broker clean
