"""aiomqtt_fast leans on aiomqtt's private paho client: these fail loudly if it moves."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho_mqtt
import pytest

from drivers.lineio.aiomqtt_fast import (
    AIOMQTT_REGISTER_WRITE,
    DISCONNECTED,
    IN_CALLBACK,
    NODELAY,
    PRIVATE_CLIENT,
    REGISTERED_WRITE,
    Inbox,
    paho_client,
    send_now,
    write_soon,
)
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
    # end_misc_loop ends the housekeeping task aiomqtt keeps here
    assert hasattr(client, "_misc_task"), "aiomqtt.Client has no '_misc_task' any more"
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



@pytest.mark.asyncio
async def test_paho_and_aiomqtt_keep_what_the_fast_path_reaches_into() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)  # never connected
    paho = paho_client(client)
    assert getattr(paho, REGISTERED_WRITE) is False, "paho's writer registration flag moved"
    lock = getattr(paho, IN_CALLBACK)
    assert lock.acquire(blocking=False), "paho's callback lock moved"
    lock.release()
    assert callable(getattr(client, AIOMQTT_REGISTER_WRITE)), "aiomqtt's writer moved"
    assert paho.on_socket_register_write == getattr(client, AIOMQTT_REGISTER_WRITE)
    assert isinstance(getattr(client, DISCONNECTED), asyncio.Future), "aiomqtt's end moved"
    assert paho.on_message == client._on_message  # what an Inbox replaces


class Received:
    """What an Inbox handed over, with a wait for a count of them."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._want = 0
        self._enough = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))
        if len(self.got) >= self._want:
            self._enough.set()

    async def wait_for(self, count: int, within_s: float = 5.0) -> None:
        self._want = count
        self._enough.clear()
        if len(self.got) < count:
            async with asyncio.timeout(within_s):
                await self._enough.wait()


def _clients(broker: Mosquitto, received: Received, *, send_buffer: int | None = None
             ) -> tuple[aiomqtt.Client, aiomqtt.Client, Inbox]:
    rx = aiomqtt.Client(broker.host, broker.port, socket_options=NODELAY)
    inbox = Inbox(rx, received)
    write_soon(rx)
    options: tuple[tuple[int, int, int], ...] = NODELAY
    if send_buffer is not None:
        options += ((socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer),)
    tx = aiomqtt.Client(broker.host, broker.port, socket_options=options)
    write_soon(tx)
    return rx, tx, inbox


@pytest.mark.asyncio
async def test_send_now_writes_at_once_and_the_inbox_hands_over_in_order(
        mosquitto: Mosquitto) -> None:
    """send_now leaves nothing queued in paho (it wrote the packet in the call); the inbox
    holds back what came before open() and then hands over every message, in order, from
    the read callback: aiomqtt's queue stays empty."""
    topic = "test/aiomqtt_fast/inbox"
    received = Received()
    rx, tx, inbox = _clients(mosquitto, received)
    async with rx, tx:
        await rx.subscribe([(topic, 1), (topic + "/0", 1)])
        tx_paho = paho_client(tx)
        sent = [b"%d" % i for i in range(50)]  # more than paho's 20 QoS 1 in flight
        for payload in sent:
            send_now(tx, topic, payload, qos=1)
            assert not tx_paho.want_write(), "send_now left its packet queued"
        await tx.publish(topic + "/0", b"fence", qos=1)  # its PUBACK: the broker has them
        async with asyncio.timeout(5):
            while inbox.held < len(sent) + 1:  # noqa: ASYNC110 - the inbox has no event
                await asyncio.sleep(0.001)
        assert received.got == []  # held back until open()
        inbox.open()
        assert inbox.held == 0
        await received.wait_for(len(sent) + 1)
        assert received.got == [(topic, p) for p in sent] + [(topic + "/0", b"fence")]
        assert len(rx.messages) == 0  # nothing went through aiomqtt's queue
        # after open(), each message is handed over as it comes; QoS 0 in order too
        later = [b"q0-%d" % i for i in range(20)]
        for payload in later:
            send_now(tx, topic + "/0", payload, qos=0)
            assert not tx_paho.want_write()
        await received.wait_for(len(sent) + 1 + len(later))
        assert received.got[len(sent) + 1:] == [(topic + "/0", p) for p in later]


@pytest.mark.asyncio
async def test_a_packet_larger_than_the_socket_takes_arrives_whole(
        mosquitto: Mosquitto) -> None:
    """A part the socket does not take at once waits for it to be writable (add_writer)."""
    topic = "test/aiomqtt_fast/large"
    received = Received()
    rx, tx, inbox = _clients(mosquitto, received, send_buffer=8192)
    async with rx, tx:
        await rx.subscribe(topic, qos=1)
        inbox.open()
        big = bytes(range(256)) * (4 * 1024)  # 1 MiB: far more than the socket takes
        send_now(tx, topic, big, qos=1)
        assert paho_client(tx).want_write(), "the socket took it all: the test tests nothing"
        send_now(tx, topic, b"after", qos=1)  # queued behind it, so written after it
        await tx.publish(topic, b"awaited", qos=1)  # aiomqtt's own path still works
        await received.wait_for(3, within_s=20)
        assert [p for _, p in received.got] == [big, b"after", b"awaited"]
        assert not paho_client(tx).want_write()


@pytest.mark.asyncio
async def test_until_lost_ends_with_the_connection(own_broker: Mosquitto) -> None:
    rx = aiomqtt.Client(own_broker.host, own_broker.port, socket_options=NODELAY)
    inbox = Inbox(rx, Received())
    write_soon(rx)
    with contextlib.suppress(aiomqtt.MqttError):
        async with rx:
            inbox.open()
            waiting = asyncio.create_task(inbox.until_lost())
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await own_broker.astop()
            async with asyncio.timeout(5):
                with pytest.raises(aiomqtt.MqttError):
                    await waiting
