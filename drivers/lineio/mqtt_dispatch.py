"""What an MQTT link sends on its current connection and what it does with each message.

:class:`MqttDispatch` is the message side of :class:`~drivers.lineio.mqtt.MqttLineIO`: it
publishes diverts, cancels and heartbeats on the connection that is up, and dispatches each
message paho reads (a reply settles the divert waiting for it, an event wakes the reader, a
node that is back gets its cancels repeated and its still-due diverts restored). The state it
acts on is the :class:`~drivers.lineio.mqtt_book.CommandBook`; the connection shell
(connect, subscribe, reconnect, heartbeat timing) stays in :mod:`drivers.lineio.mqtt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiomqtt

from controller.clock import Clock
from controller.errors import LinkDown
from controller.lineio import DivertCommand, DivertReply, LinkState
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.aiomqtt_fast import send_now
from drivers.lineio.mqtt_book import DEVICE, CommandBook, Inbound

__all__ = ["MqttDispatch"]

log = logging.getLogger("drivers.lineio.mqtt")  # the driver's logger, as before the split


class MqttDispatch:
    """The messages of one MQTT link: what goes out on ``client`` and what comes in."""

    def __init__(self, book: CommandBook, topics: codec.Topics, *, qos: int, clock: Clock,
                 session: str, position: Callable[[], int | None]) -> None:
        """``position``: the line's latest encoder count, if the link knows it."""
        self.book = book
        self.topics = topics
        self.qos = qos
        self.clock = clock
        self.session = session
        self.client: aiomqtt.Client | None = None  # the connection that is up, if any
        self.futures: dict[int, asyncio.Future[DivertReply]] = {}
        self.ready = asyncio.Event()  # set when events were queued or the link went down
        self._position = position
        self._heartbeat_n = 0

    # --- what goes out ---------------------------------------------------------------------

    def send_divert(self, client: aiomqtt.Client,
                    command: DivertCommand) -> asyncio.Future[DivertReply]:
        """Publish ``command``; the future its reply settles. aiomqtt.MqttError if not sent."""
        future: asyncio.Future[DivertReply] = asyncio.get_running_loop().create_future()
        send_now(client, self.topics.divert(command.diverter_id), codec.encode_divert(command),
                 qos=self.qos)
        self.book.sent(command)
        self.futures[command.command_id] = future
        return future

    def settled(self, command_id: int) -> None:
        """The divert no longer waits for its reply (answered, timed out or failed)."""
        self.book.settled(command_id)
        self.futures.pop(command_id, None)

    def give_up(self, command_id: int, diverter_id: str) -> None:
        self.book.give_up(command_id, diverter_id, self.clock.now())
        self.send_cancel(command_id, diverter_id)

    def send_cancel(self, command_id: int, diverter_id: str) -> None:
        self.book.stats.cancels += 1
        client = self.client
        if client is None or self.book.state is not LinkState.UP:
            self.book.cancel_unsent(command_id, diverter_id)
            return
        try:
            send_now(client, self.topics.cancel(diverter_id), codec.encode_cancel(command_id),
                     qos=self.qos)
        except aiomqtt.MqttError:
            self.book.cancel_unsent(command_id, diverter_id)

    def heartbeat(self, client: aiomqtt.Client) -> None:
        self._heartbeat_n += 1
        beat = codec.Heartbeat(self.session, self._heartbeat_n, self.book.acks())
        send_now(client, self.topics.heartbeat, codec.encode_heartbeat(beat), qos=0)
        self.book.stats.heartbeats += 1

    def fail_waiting(self, reason: str) -> None:
        """Every divert waiting for its reply gets LinkDown(``reason``)."""
        for future in self.futures.values():
            if not future.done():
                future.set_exception(LinkDown(DEVICE, reason))

    def _repeat_cancels(self, client: aiomqtt.Client, node: str) -> None:
        """A node (re)connected: it missed whatever was published while it was away."""
        for command_id, diverter in self.book.cancels_to_repeat(self.clock.now(), node).items():
            with contextlib.suppress(aiomqtt.MqttError):
                send_now(client, self.topics.cancel(diverter), codec.encode_cancel(command_id),
                         qos=self.qos)

    def _restore(self, client: aiomqtt.Client, node: str) -> None:
        """Send ``node`` again the diverts it accepted that are still due: it may have
        dropped them (its fail-safe, a restart). It keeps one it still holds as it is, and
        refuses one it can no longer carry out in time."""
        commands = self.book.to_restore(node, self._position())
        if not commands:
            return
        log.warning("mqtt: node %s is online again: sending it its %d still-due diverts",
                    node, len(commands))
        for command in commands:
            try:
                send_now(client, self.topics.divert(node), codec.encode_divert(command),
                         qos=self.qos)
            except aiomqtt.MqttError as exc:  # the link is going: its reconnect restores
                log.debug("mqtt: restoring divert %d failed: %s", command.command_id, exc)
                return
            self.book.restore_sent(command)

    # --- what comes in ---------------------------------------------------------------------

    def message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """One message, taken in paho's read callback (the Inbox): it must not raise there."""
        try:
            self._take(client, topic, payload)
        except Exception:  # a bug must not take the link down: report it, go on
            self.book.stats.dispatch_errors += 1
            log.exception("mqtt %s: unexpected error on a message on %r", self.book.where,
                          topic[:120])

    def _take(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        inbound: Inbound = self.book.receive(topic, payload)
        if inbound.answer is not None:
            future = self.futures.get(inbound.answer.command_id)
            if future is not None and not future.done():
                future.set_result(inbound.answer)
        if inbound.queued:
            self.ready.set()
        if inbound.repeat_cancels is not None:
            self._repeat_cancels(client, inbound.repeat_cancels)
        if inbound.restore is not None:
            self._restore(client, inbound.restore)
