"""The one place that reaches into aiomqtt's private paho client: sends and receives without
aiomqtt's per-message task switches.

aiomqtt's ``publish()`` awaits the PUBACK through ``asyncio.wait_for``: an extra task switch
on every command's path, and in Python 3.11 a cancellation it may swallow. A divert's reply
is its real acknowledgement (a lost link fails the wait at once), and a heartbeat, a cancel
or a node's reply needs none. Even without the wait, paho hands a queued packet to aiomqtt's
writer through ``call_soon_threadsafe`` (a write to the loop's self-pipe), an ``add_writer``
and a ``remove_writer``: two loop turns and four system calls before the packet's ``send``.
:func:`send_now` writes it at once instead when nothing is queued before it.

:func:`write_soon` has every other packet paho queues (PUBACKs above all) written on the
loop's next turn through ``call_soon`` instead.

On the way in, aiomqtt wraps each message, queues it and wakes ``client.messages`` through a
new task and an ``asyncio.wait``. :class:`Inbox` hands each message to a handler straight
from paho's read callback.

aiomqtt 2.x (pinned ``<3`` in pyproject.toml) keeps its paho client in ``Client._client``, its
own writer registration in ``_on_socket_register_write`` and its connection's end in the
future ``_disconnected``; paho-mqtt 2.x its writer registration in ``_registered_write`` and
its callback lock in ``_in_callback_mutex``. tests/test_aiomqtt_fast.py fails if any of that
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt

PRIVATE_CLIENT = "_client"  # the attribute of aiomqtt.Client holding its paho client
AIOMQTT_REGISTER_WRITE = "_on_socket_register_write"  # aiomqtt's writer registration
DISCONNECTED = "_disconnected"  # aiomqtt's future of the connection's end
# paho's flag "a writer is registered (or its registration is on its way)"
REGISTERED_WRITE = "_registered_write"
IN_CALLBACK = "_in_callback_mutex"  # held by paho while it runs one of our callbacks
# Without TCP_NODELAY every QoS 1 round trip stalls about 88 ms (Nagle + delayed ACK).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

MessageHandler = Callable[[str, bytes], None]  # topic, payload
NOT_UTF8_TOPIC = "\ufffd"  # what a handler is given for a topic that is not UTF-8


def paho_client(client: aiomqtt.Client) -> paho_mqtt.Client:
    """The paho client under ``client``."""
    paho: paho_mqtt.Client = getattr(client, PRIVATE_CLIENT)
    return paho


def _outside_callbacks(paho: paho_mqtt.Client) -> bool:
    """Whether paho is not inside one of its callbacks: writing a QoS 0 PUBLISH (or a
    DISCONNECT) calls one under its non-reentrant callback lock."""
    lock = getattr(paho, IN_CALLBACK)
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def _writes_now(paho: paho_mqtt.Client, qos: int, registered: bool) -> bool:
    """Whether a packet may be written in the caller's turn. With no writer registered only
    it is queued; with :func:`write_soon`'s writer on its way (not aiomqtt's, which may still
    be on its way from the connecting thread), the packets before it go with it."""
    if not registered:
        return qos > 0 or _outside_callbacks(paho)
    writer = getattr(paho.on_socket_register_write, "__self__", None)
    return isinstance(writer, _SoonWriter) and not writer.foreign \
        and _outside_callbacks(paho)


def send_now(client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int,
             retain: bool = False) -> None:
    """Hand a message to paho and write it now, without awaiting its PUBACK (MqttError if it
    cannot be sent).

    Written in this call (with whatever paho queued before it) when :func:`_writes_now`
    allows; a part the socket does not take at once waits for the writer. Only from the
    event loop's thread.
    """
    paho = paho_client(client)
    registered: bool = getattr(paho, REGISTERED_WRITE)
    now = _writes_now(paho, qos, registered)
    hold = now and not registered
    if hold:
        setattr(paho, REGISTERED_WRITE, True)  # no deferred writer: it is written below
    try:
        info = paho.publish(topic, payload, qos, retain)
    finally:
        if hold:
            setattr(paho, REGISTERED_WRITE, False)
    if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
    if now:
        # a failed write closes the socket and tells aiomqtt, whose receivers then fail
        rc = paho.loop_write()
        if rc != paho_mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(rc, "Could not publish message")


class _SoonWriter:
    """paho's writer registration for one client: from the loop's thread, a ``call_soon`` of
    ``loop_write``; a part the socket does not take waits in ``add_writer`` until it is
    writable. From another thread (aiomqtt connects in an executor) aiomqtt's own."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._paho = paho_client(client)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._elsewhere: Callable[[paho_mqtt.Client, Any, Any], None] = getattr(
            client, AIOMQTT_REGISTER_WRITE)
        # the registration in force is aiomqtt's, from another thread: its add_writer may
        # still be on its way, so nothing may write (and remove the writer) before it
        self.foreign = False
        self._paho.on_socket_register_write = self._register

    def _register(self, paho: paho_mqtt.Client, userdata: Any, sock: Any) -> None:
        self.foreign = threading.get_ident() != self._thread
        if self.foreign:
            self._elsewhere(paho, userdata, sock)
            return
        self._loop.call_soon(self._write, sock)

    def _write(self, sock: Any) -> None:
        paho = self._paho
        try:
            paho.loop_write()  # all it holds; done, it unregisters (aiomqtt's remove_writer)
        except Exception as exc:  # as aiomqtt's own writer: the connection is over
            disconnected: asyncio.Future[None] = getattr(self._client, DISCONNECTED)
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        current = paho.socket()
        if paho.want_write() and current is not None and current is sock:
            self._loop.add_writer(current.fileno(), self._write, current)


def write_soon(client: aiomqtt.Client) -> None:
    """Have paho's queued packets written on the loop's next turn (``call_soon``) rather than
    through aiomqtt's ``call_soon_threadsafe`` (a self-pipe write), ``add_writer`` and
    ``remove_writer`` each. Call from the event loop, before connecting."""
    _SoonWriter(client)


class Inbox:
    """Every message of one client, handed to ``handler`` straight from paho's read callback
    (``client.messages`` then yields none), held back until :meth:`open`.

    The handler runs inside paho's callback: it must not raise (paho would take the
    connection down) nor block, and what it sends goes out through :func:`send_now`.
    """

    def __init__(self, client: aiomqtt.Client, handler: MessageHandler) -> None:
        self._client = client
        self._handler = handler
        self._held: list[tuple[str, bytes]] | None = []
        paho_client(client).on_message = self._on_message

    def _on_message(self, _paho: paho_mqtt.Client, _userdata: Any,
                    message: paho_mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = NOT_UTF8_TOPIC
        payload = bytes(message.payload)  # paho's type says bytearray too; it reads bytes
        if self._held is not None:
            self._held.append((topic, payload))
        else:
            self._handler(topic, payload)

    @property
    def held(self) -> int:
        """Messages held back, waiting for :meth:`open`."""
        return len(self._held) if self._held is not None else 0

    def open(self) -> None:
        """Hand over the messages held back so far, in order, then each one as it comes."""
        held, self._held = self._held, None
        for topic, payload in held or ():
            self._handler(topic, payload)

    async def until_lost(self) -> None:
        """Wait while connected: aiomqtt's MqttError when the connection is lost."""
        await anext(aiter(self._client.messages))
        raise RuntimeError("a message reached aiomqtt's queue past the inbox")


async def end_misc_loop(client: aiomqtt.Client) -> None:
    """End the client's housekeeping task once its connection is over.

    aiomqtt creates that task from a callback scheduled when the socket opens, and cancels it
    when the socket closes; a socket that closes before the callback ran leaves it running
    (up to a second, or for good while ``loop_misc`` still succeeds).
    """
    # aiomqtt connects in an executor thread, which may still open the socket after a
    # cancelled connect: then nothing may start the task any more.
    paho = paho_client(client)
    paho.on_socket_open = None
    await asyncio.sleep(0)  # the scheduled creation runs first, if it is still to come
    task: asyncio.Task[None] | None = getattr(client, "_misc_task", None)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
