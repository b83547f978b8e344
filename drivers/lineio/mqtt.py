"""Networked diverter nodes, and optionally the line's sensors, behind an MQTT broker.

The protocol (topics, payloads, QoS, correlation, heartbeat, fail-safe, restore, event
numbering) is docs/mqtt-protocol.md. This module is the connection shell around three parts:
:mod:`drivers.lineio.mqtt_codec` (topics and payloads), :mod:`drivers.lineio.mqtt_book`
(the sans-I/O state: diverts in flight and held, node statuses, event de-duplication) and
:mod:`drivers.lineio.mqtt_dispatch` (what is sent on the connection, what each message does).

:meth:`MqttLineIO.divert` publishes a divert and waits for the reply with its command id up
to ``reply_timeout_ms``; if none comes (or the link drops first) it publishes a ``cancel``,
and raises. One background task (``lineio[mqtt]``) owns the connection: a fresh aiomqtt
client per attempt, entered with ``async with`` (aiomqtt 2.x does not reconnect, and a fresh
client never resends a stale command), re-subscribed, its status re-published and the
cancels repeated on every connect, reconnecting forever with backoff and jitter.
Everything from the network is validated by the codec; a bad payload is counted and logged
once per kind, and never stops the driver. Messages are taken in paho's read callback
(:class:`~drivers.lineio.aiomqtt_fast.Inbox`) and commands written to the socket in the call
that sends them (:func:`~drivers.lineio.aiomqtt_fast.send_now`), without aiomqtt's
per-message tasks and loop turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType

import aiomqtt

from controller.clock import Clock
from controller.config import MqttLinkConfig
from controller.errors import DriverTimeout, DriverUnavailable, LinkDown
from controller.lineio import DivertCommand, DivertReply, LineEvent, LinkState
from drivers.backoff import Backoff
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.aiomqtt_fast import NODELAY, Inbox, end_misc_loop, write_soon
from drivers.lineio.mqtt_book import DEVICE, CommandBook, MqttStats
from drivers.lineio.mqtt_dispatch import MqttDispatch
from drivers.lineio.tasks import cancel_and_wait
from drivers.mqtt_client import login

__all__ = ["DEVICE", "MqttLineIO", "MqttStats"]

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0  # aiomqtt's own bound on CONNACK, SUBACK and a clean DISCONNECT
CANCEL_TIMEOUT_S = 0.2


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, aiomqtt.MqttError) else text


class MqttLineIO:
    """:class:`~controller.lineio.LineIO` over MQTT: diverter nodes and, with ``sensors``, the
    sensor node. An async context manager; it keeps the link up until closed."""

    def __init__(self, config: MqttLinkConfig, *, line: str, clock: Clock,
                 diverters: Sequence[str], sensors: bool, backoff: Backoff | None = None,
                 session: str | None = None, encoder: Callable[[], int] | None = None) -> None:
        """``encoder``: where the line's encoder count comes from when the sensors are on
        another link (it tells which accepted diverts are due); with ``sensors``, this
        link's own count."""
        self.config = config
        self.line = line
        self.clock = clock
        self.diverters = frozenset(diverters)
        self.sensors = sensors
        self.topics = codec.Topics(config.topic_prefix, line)
        self.base = self.topics.base
        self.client_id = config.client_id or f"parcel-sorter-{line}"
        self.session = session or secrets.token_hex(8)
        self.book = CommandBook(self.topics, diverters, sensors=sensors,
                                where=f"{config.host}:{config.port}")
        self.stats: MqttStats = self.book.stats
        self._login = login(config, DEVICE)  # a bad password or TLS file fails here
        self._backoff = backoff or Backoff(0.05, config.reconnect_max_s)
        self._up = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._encoder_source = encoder
        self._dispatch = MqttDispatch(self.book, self.topics, qos=config.qos, clock=clock,
                                      session=self.session, position=self._position)

    # --- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> MqttLineIO:
        if self._task is not None:
            raise RuntimeError("MqttLineIO is already running")
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="lineio[mqtt]")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop heartbeats (the nodes fall back to their fail-safe) and disconnect cleanly."""
        self._closing = True
        client = self._dispatch.client
        if client is not None and self.book.state is LinkState.UP:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(self.topics.controller_status,
                                     codec.encode_status("offline"), qos=1, retain=True,
                                     timeout=CANCEL_TIMEOUT_S)
        task, self._task = self._task, None
        if task is not None:
            if not await cancel_and_wait([task], CALL_TIMEOUT_S + 3.0):
                log.warning("mqtt %s: the link task did not stop in time", self._where)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("mqtt %s: the link task ended with %r", self._where,
                            task.exception())
        self._dispatch.client = None
        self._up.clear()
        self.book.closed()
        self._dispatch.fail_waiting("driver closed")

    async def wait_up(self, within_s: float) -> None:
        """Wait until the link is connected and subscribed; DriverTimeout otherwise."""
        try:
            async with asyncio.timeout(within_s):
                await self._up.wait()
        except TimeoutError:
            raise DriverTimeout(DEVICE, f"no connection to {self._where} within {within_s:g} s"
                                        f" ({self.stats.last_error or 'no error yet'})") from None

    @property
    def state(self) -> LinkState:
        return self.book.state

    @property
    def nodes(self) -> dict[str, str]:
        """The last status each node announced (``online`` / ``safe`` / ``offline``)."""
        return dict(self.book.nodes)

    @property
    def scheduled(self) -> dict[str, list[DivertCommand]]:
        """The accepted diverts not yet due, per diverter (what each node should hold)."""
        return self.book.held(self._position())

    @property
    def _where(self) -> str:
        return self.book.where

    # --- LineIO ----------------------------------------------------------------------------

    def encoder(self) -> int:
        """The latest count from the sensor node, but never ahead of events still queued."""
        return self.book.queue.encoder()

    async def events(self) -> AsyncIterator[LineEvent]:
        """Sensor events in order, and faults (a node or the link lost), until cancelled."""
        while True:
            event = self.book.queue.pop()
            if event is None:
                self._dispatch.ready.clear()
                await self._dispatch.ready.wait()
                continue
            yield event

    async def divert(self, command: DivertCommand) -> DivertReply:
        """Send a divert to its node and wait for the node's reply.

        Raises DriverUnavailable at once when the diverter is not on this link, LinkDown when
        its node is offline or the link is down (also while waiting); DriverTimeout when no
        reply comes in time (the node is then told to cancel it).
        """
        diverter = command.diverter_id
        device = f"diverter {diverter}"
        if diverter not in self.diverters:
            raise DriverUnavailable(device, "not on this MQTT link")
        client = self._dispatch.client
        if self.book.state is not LinkState.UP or client is None:
            raise LinkDown(DEVICE, f"link {self.book.state} ({self.stats.last_error})")
        if self.book.node_offline(diverter):
            raise LinkDown(device, "its node is offline")
        if self.book.is_waiting(command.command_id):
            raise ValueError(f"divert {command.command_id} is already waiting for its reply")
        try:
            future = self._dispatch.send_divert(client, command)
        except aiomqtt.MqttError as exc:
            raise LinkDown(DEVICE, f"divert {command.command_id} not sent: "
                                   f"{_describe(exc)}") from None
        timeout_ms = self.config.reply_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                reply = await future
        except TimeoutError:
            self.stats.timeouts += 1
            self._dispatch.give_up(command.command_id, diverter)
            raise DriverTimeout(device, f"no reply to divert {command.command_id} within "
                                        f"{timeout_ms:g} ms") from None
        except LinkDown:  # the link dropped while waiting
            self._dispatch.give_up(command.command_id, diverter)
            raise
        finally:
            self._dispatch.settled(command.command_id)
        if reply.accepted:
            self.book.accepted(command, self._position())
        return reply

    async def cancel(self, command_id: int, diverter_id: str) -> None:
        """Take back a divert the node may hold (sent after a reconnect if the link is down)."""
        self.book.taken_back(command_id)
        self._dispatch.send_cancel(command_id, diverter_id)

    def forget_scheduled(self) -> None:
        """Send no node the diverts it accepted so far again: the line's count began again,
        so their ``fire_enc`` mean nothing now."""
        self.book.forget_held()

    # --- where the line is -----------------------------------------------------------------

    def _position(self) -> int | None:
        """The line's latest encoder count, if this link knows it."""
        if self._encoder_source is not None:
            return self._encoder_source()
        return self.book.queue.received if self.sensors else None

    # --- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve until the link is lost, back off, again; until closed."""
        while not self._closing:
            try:
                reason = await self._connection()
            except (aiomqtt.MqttError, OSError) as exc:
                reason = _describe(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the link: report it, reconnect
                log.exception("mqtt %s: unexpected error", self._where)
                reason = f"unexpected {_describe(exc)}"
            if self._closing:
                return
            self._went_down(reason)
            await self.clock.sleep(self._backoff.next_delay())

    def _new_client(self) -> aiomqtt.Client:
        broker = self._login
        client = aiomqtt.Client(
            broker.hostname, broker.port, identifier=self.client_id,
            username=broker.username, password=broker.password,
            tls_context=broker.tls_context,
            keepalive=self.config.keepalive_s, clean_session=True, timeout=CALL_TIMEOUT_S,
            will=aiomqtt.Will(self.topics.controller_status, codec.encode_status("offline"), qos=1,
                              retain=True),
            socket_options=NODELAY, logger=log.getChild("client"))
        client.pending_calls_threshold = 100  # diverts in flight at once are normal
        return client

    async def _connection(self) -> str:
        """One connection; returns why it ended."""
        entered = False
        reason: str | None = None
        client = self._new_client()
        inbox = Inbox(client, functools.partial(self._dispatch.message, client))
        write_soon(client)
        try:
            async with client:
                entered = True
                reason = await self._connected(client, inbox)
        except aiomqtt.MqttError as exc:
            if not entered:
                self.stats.connect_failures += 1
                return f"cannot connect: {_describe(exc)}"
            if reason is None:
                return f"connection lost: {_describe(exc)}"
            # after a loss aiomqtt's exit returns at once; a clean DISCONNECT may fail
            log.debug("mqtt %s: no clean disconnect: %s", self._where, _describe(exc))
        finally:
            await end_misc_loop(client)
        return reason or "connection ended"

    async def _connected(self, client: aiomqtt.Client, inbox: Inbox) -> str:
        try:
            self.book.connecting()  # statuses are rebuilt from the retained ones
            await client.subscribe(self.topics.controller_subscriptions(
                self.config.qos, sensors=self.sensors))
            for command_id, diverter in self.book.cancels_to_repeat(self.clock.now()).items():
                await client.publish(self.topics.cancel(diverter),
                                     codec.encode_cancel(command_id), qos=self.config.qos)
                self.book.cancel_sent(command_id)
            await client.publish(self.topics.controller_status,
                                 codec.encode_status("online"), qos=1, retain=True)
            self._dispatch.heartbeat(client)
        except aiomqtt.MqttError as exc:
            return f"connection lost: {_describe(exc)}"
        self._dispatch.client = client
        self._went_up()
        try:
            return await self._serve(client, inbox)
        finally:
            self._dispatch.client = None

    async def _serve(self, client: aiomqtt.Client, inbox: Inbox) -> str:
        beats = asyncio.create_task(self._heartbeats(client), name="lineio[mqtt].heartbeat")
        try:
            inbox.open()  # what came while connecting (retained statuses), then each message
            await inbox.until_lost()
        except aiomqtt.MqttError as exc:
            return f"connection lost: {_describe(exc)}"
        finally:
            self._dispatch.client = None  # the heartbeat loop ends even if it swallowed its cancel
            await cancel_and_wait([beats])
        return "message stream ended"  # pragma: no cover - until_lost only raises

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        period = self.config.heartbeat_ms / 1000
        next_at = self.clock.now() + period
        while self._dispatch.client is client:
            await self.clock.sleep_until(next_at)
            try:
                self._dispatch.heartbeat(client)
            except aiomqtt.MqttError:
                return  # the receive loop sees the loss and reconnects
            next_at = max(next_at + period, self.clock.now())

    def _went_up(self) -> None:
        self._backoff.reset()
        self.book.went_up(self.clock.now(), self.client_id)
        self._up.set()

    def _went_down(self, reason: str) -> None:
        self._up.clear()
        if self.book.went_down(reason, self.clock.now()):
            self._dispatch.ready.set()
        self._dispatch.fail_waiting(f"link down: {reason}")
