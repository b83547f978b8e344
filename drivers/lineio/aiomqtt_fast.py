"""The one place that reaches into aiomqtt's private paho client, to publish without a wait.

aiomqtt's ``publish()`` awaits the PUBACK through ``asyncio.wait_for``: an extra task switch
on every command's path, and in Python 3.11 a cancellation it may swallow. A divert's reply
is its real acknowledgement (a lost link fails the wait at once), and a heartbeat, a cancel
or a node's reply needs none. aiomqtt 2.x (pinned ``<3`` in pyproject.toml) keeps its paho
client in ``Client._client``; tests/test_aiomqtt_fast.py fails if that changes.
"""

from __future__ import annotations

import socket

import aiomqtt
import paho.mqtt.client as paho_mqtt

PRIVATE_CLIENT = "_client"  # the attribute of aiomqtt.Client holding its paho client
# Without TCP_NODELAY every QoS 1 round trip stalls about 88 ms (Nagle + delayed ACK).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def paho_client(client: aiomqtt.Client) -> paho_mqtt.Client:
    """The paho client under ``client``."""
    paho: paho_mqtt.Client = getattr(client, PRIVATE_CLIENT)
    return paho


def send_now(client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int,
             retain: bool = False) -> None:
    """Hand a message to paho now, without awaiting its PUBACK (MqttError if it cannot).

    paho queues the message and aiomqtt's writer callback sends it from the event loop.
    """
    info = client._client.publish(topic, payload, qos, retain)
    if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
