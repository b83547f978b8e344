"""Networked diverter nodes, and optionally the line's sensors, behind an MQTT broker.

Topics live under ``<topic_prefix>/<line>/io/`` (``sorter/line1/io/`` by default)::

    controller -> node
      divert/<diverter>         {"corr": command_id, "parcel": parcel_id, "fire_enc": n,
                                 "pulse_ms": x}                                   QoS qos
      cancel/<diverter>         {"corr": command_id}                              QoS qos
      heartbeat                 {"session": "<hex>", "n": k,                      QoS 0
                                 "ack": {node: {"boot": b, "seq": n}}}  every heartbeat_ms
      controller/status         "online" | "offline" (retained; "offline" is the Last Will)
    node -> controller
      divert/<diverter>/reply   {"corr": command_id, "accepted": bool,
                                 "reason": "" | "late" | "busy" | "unknown_diverter" | "fault"}
      nodes/<node>/status       "online" | "safe" | "offline" (retained; "offline" is the
                                Last Will; "safe": in its fail-safe, holding no divert)
    sensor node -> controller (``sensors=True``)
      events                    {"node": id, "boot": "<hex>", "seq": n, "first": m,   QoS qos
                                 "kind": ...}  (first: the oldest event the node still holds)
                                kind "eye" {eye, blocked, enc}, "bin_entry" {bin, enc},
                                "bin_level" {bin, full}, "fault" {device, message}
      encoder                   {"enc": n}  every 10 ms                           QoS 0

The correlation id of a divert is its ``command_id``; :meth:`MqttLineIO.divert` waits for the
reply with that id up to ``reply_timeout_ms``. If none comes (or the link drops first) it
publishes a ``cancel`` for that id, and raises. The cancel goes out again after the
controller's link or the node's comes back (a node subscribes before it announces itself
``online``), so a node never fires a command the controller gave up on. A node also stops
firing by itself when the controller's heartbeats stop (its fail-safe, see
:mod:`sim_hardware.mqtt_nodes`): it drops every divert it holds and says ``safe`` until it
hears the controller again, then ``online``.

The driver keeps the diverts each node accepted that are not yet due (forgotten once the
encoder passes their ``fire_enc``, or on a cancel). Whenever a node announces itself
``online`` after any other status (``safe``, ``offline``, or none known since the
controller's own link came back), the still-due ones go to it again with the same command
id (counted in ``restored``): a node keeps a command id it already holds as it is and
answers ``accepted``, so this is harmless when it had kept them, and refuses one it can no
longer carry out in time (``late``, counted in ``restore_refused``; the sorter settles that
parcel by its bin photo-eye or the end of the line, as for any divert that did not happen).

Sensor events are delivered end to end, at least once: the broker keeps nothing for a
controller that is not connected, so each heartbeat acknowledges the last event taken from
each sensor node (``ack``), and a node sends again whatever stays unacknowledged. Events are
de-duplicated by ``(node, boot, seq)`` and delivered in order: an event that overtakes a
missing one is dropped (the node sends again from the gap), unless the node says (``first``)
that it no longer holds the missing ones, which are then counted in ``missed_events``.
Encoder updates travel in order with the events: :meth:`MqttLineIO.encoder` never runs ahead
of events the controller has not taken yet. A node going offline (its Last Will or a
clean shutdown) is reported as a :class:`~controller.lineio.DeviceFault`, as is a lost link.

Everything from the network is validated (size first, then strict pydantic models); a bad
payload is counted and logged once per kind, and never stops the driver. One background task
(``lineio[mqtt]``) owns the connection: a fresh aiomqtt client per attempt (aiomqtt 2.x does
not reconnect, and a fresh client never resends a stale command), re-subscribed and with its
status re-published on every connect, reconnecting forever with backoff and jitter.
``TCP_NODELAY`` is set on the socket: without it (and ``set_tcp_nodelay true`` on the broker)
every QoS 1 round trip stalls about 88 ms (Nagle + delayed ACK, see FACTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal

import aiomqtt
import paho.mqtt.client as paho_mqtt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from controller.clock import Clock
from controller.config import MqttLinkConfig
from controller.errors import DriverTimeout, DriverUnavailable
from controller.lineio import (
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    LineEvent,
    LinkState,
    PhotoEyeEdge,
)
from drivers.backoff import Backoff
from drivers.lineio.held import HeldDiverts

log = logging.getLogger(__name__)

DEVICE = "mqtt"
MAX_PAYLOAD = 4096  # bytes; every legitimate message is far below this
CALL_TIMEOUT_S = 2.0  # aiomqtt's own bound on CONNACK, SUBACK and a clean DISCONNECT
CANCEL_TIMEOUT_S = 0.2
GAVE_UP_MEMORY = 4096  # command ids given up on, to tell a late reply from a stray one
RECANCEL_S = 30.0  # a divert given up on this recently may still be held by its node
SCHEDULED_MEMORY = 256  # accepted diverts kept to restore when no encoder count is known
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

# --- payloads -------------------------------------------------------------------------------

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
Count = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
CommandId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ReplyPayload(_Payload):
    corr: CommandId
    accepted: bool
    reason: Literal["", "late", "busy", "unknown_diverter", "fault"] = ""


class EncoderPayload(_Payload):
    enc: Count


class _EventPayload(_Payload):
    node: Ident
    boot: Annotated[str, Field(max_length=32)] = ""
    seq: Annotated[int, Field(ge=0, le=2**63 - 1)]
    first: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None  # oldest the node holds

    @model_validator(mode="after")
    def _first_not_after_seq(self) -> _EventPayload:
        if self.first is not None and self.first > self.seq:
            raise ValueError("first must not be after seq")
        return self


class EyePayload(_EventPayload):
    kind: Literal["eye"]
    eye: Ident
    blocked: bool
    enc: Count


class BinEntryPayload(_EventPayload):
    kind: Literal["bin_entry"]
    bin: Ident
    enc: Count


class BinLevelPayload(_EventPayload):
    kind: Literal["bin_level"]
    bin: Ident
    full: bool


class FaultPayload(_EventPayload):
    kind: Literal["fault"]
    device: Annotated[str, Field(min_length=1, max_length=64)]
    message: Annotated[str, Field(max_length=500)]


EventPayload = Annotated[EyePayload | BinEntryPayload | BinLevelPayload | FaultPayload,
                         Field(discriminator="kind")]
EVENT_PAYLOAD: TypeAdapter[EventPayload] = TypeAdapter(EventPayload)
NODE_STATUSES = (b"online", b"safe", b"offline")


def _line_event(payload: EventPayload) -> LineEvent:
    match payload:
        case EyePayload():
            return PhotoEyeEdge(payload.eye, payload.blocked, payload.enc)
        case BinEntryPayload():
            return BinEntry(payload.bin, payload.enc)
        case BinLevelPayload():
            return BinLevel(payload.bin, payload.full)
        case FaultPayload():
            return DeviceFault(payload.device, payload.message)


# --- the driver -----------------------------------------------------------------------------


@dataclass
class MqttStats:
    """Counters of the MQTT link for diagnostics."""

    connects: int = 0
    reconnects: int = 0  # links re-established after an outage
    outages: int = 0
    connect_failures: int = 0
    commands: int = 0
    replies: int = 0
    refused: int = 0  # replies with accepted = false
    timeouts: int = 0
    cancels: int = 0
    late_replies: int = 0  # replies to commands already given up on
    heartbeats: int = 0
    events: int = 0
    duplicate_events: int = 0
    early_events: int = 0  # overtook an event still on its way: dropped, it comes again
    missed_events: int = 0  # gaps in a node's sequence (its backlog overflowed)
    node_restarts: int = 0
    nodes_offline: int = 0
    node_failsafes: int = 0  # an online node said "safe": it dropped what it held
    restored: int = 0  # still-due diverts sent again to a node that came (back) online
    restore_refused: int = 0  # of those, refused by the node (mostly late: their time passed)
    bad_payloads: int = 0
    bad_by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


def _read_password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DriverUnavailable(DEVICE, f"cannot read the password file {path}: {exc}") from None


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
        self.base = f"{config.topic_prefix}/{line}/io"
        self.client_id = config.client_id or f"parcel-sorter-{line}"
        self.session = session or secrets.token_hex(8)
        self.stats = MqttStats()
        self._password = _read_password(config.password_file)
        self._backoff = backoff or Backoff(0.05, config.reconnect_max_s)
        self._state = LinkState.CONNECTING
        self._up = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._down_since: float | None = None
        self._heartbeat_n = 0
        self._pending: dict[int, tuple[str, asyncio.Future[DivertReply]]] = {}
        # commands given up on: id -> (diverter, when); their cancels go out again after a
        # reconnect, since one sent just before a loss may never have reached the broker
        self._gave_up: OrderedDict[int, tuple[str, float]] = OrderedDict()
        self._cancel_later: dict[int, str] = {}  # cancels that could not be sent yet
        self._nodes: dict[str, str] = {}  # node id -> "online" | "offline"
        self._reported_offline: set[str] = set()
        self._seen: dict[str, tuple[str, int]] = {}  # node -> (boot, last seq delivered)
        self._queue: deque[LineEvent | int] = deque()  # events, with encoder counts between
        self._queued_events = 0
        self._ready = asyncio.Event()
        self._enc_received = 0
        self._enc_delivered = 0
        self._logged: set[str] = set()
        self._encoder_source = encoder
        # Accepted diverts not yet due: what each node should hold, to send again when it
        # comes back online.
        self._scheduled = HeldDiverts()
        self._restoring: dict[int, str] = {}  # restored, reply not yet taken: id -> diverter

    # --- topics ----------------------------------------------------------------------------

    def divert_topic(self, diverter_id: str) -> str:
        return f"{self.base}/divert/{diverter_id}"

    def cancel_topic(self, diverter_id: str) -> str:
        return f"{self.base}/cancel/{diverter_id}"

    @property
    def status_topic(self) -> str:
        return f"{self.base}/controller/status"

    def _subscriptions(self) -> list[tuple[str, int]]:
        qos: int = self.config.qos
        subs = [(f"{self.base}/divert/+/reply", qos), (f"{self.base}/nodes/+/status", qos)]
        if self.sensors:
            subs += [(f"{self.base}/events", qos), (f"{self.base}/encoder", 0)]
        return subs

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
        client = self._client
        if client is not None and self._state is LinkState.UP:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(self.status_topic, b"offline", qos=1, retain=True,
                                     timeout=CANCEL_TIMEOUT_S)
        task, self._task = self._task, None
        if task is not None:
            if not await cancel_and_wait([task], CALL_TIMEOUT_S + 3.0):
                log.warning("mqtt %s: the link task did not stop in time", self._where)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("mqtt %s: the link task ended with %r", self._where,
                            task.exception())
        self._client = None
        self._up.clear()
        self._state = LinkState.DOWN  # closed: not an outage, so not counted as one
        self.stats.last_error = "closed"
        self._fail_pending("driver closed")

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
        return self._state

    @property
    def nodes(self) -> dict[str, str]:
        """The last status each node announced (``online`` / ``safe`` / ``offline``)."""
        return dict(self._nodes)

    @property
    def scheduled(self) -> dict[str, list[DivertCommand]]:
        """The accepted diverts not yet due, per diverter (what each node should hold)."""
        self._forget_due()
        held: dict[str, list[DivertCommand]] = {}
        for command in self._scheduled:
            held.setdefault(command.diverter_id, []).append(command)
        return held

    @property
    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # --- LineIO ----------------------------------------------------------------------------

    def encoder(self) -> int:
        """The latest count from the sensor node, but never ahead of events still queued."""
        return self._enc_received if self._queued_events == 0 else self._enc_delivered

    async def events(self) -> AsyncIterator[LineEvent]:
        """Sensor events in order, and faults (a node or the link lost), until cancelled."""
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            item = self._queue.popleft()
            if isinstance(item, int):
                self._enc_delivered = item
                continue
            self._queued_events -= 1
            yield item

    async def divert(self, command: DivertCommand) -> DivertReply:
        """Send a divert to its node and wait for the node's reply.

        Raises DriverUnavailable at once when the diverter is not on this link, its node is
        offline or the link is down; DriverTimeout when no reply comes in time (the node is
        then told to cancel it).
        """
        diverter = command.diverter_id
        device = f"diverter {diverter}"
        if diverter not in self.diverters:
            raise DriverUnavailable(device, "not on this MQTT link")
        client = self._client
        if self._state is not LinkState.UP or client is None:
            raise DriverUnavailable(DEVICE, f"link {self._state} ({self.stats.last_error})")
        if self._nodes.get(diverter) == "offline":
            raise DriverUnavailable(device, "its node is offline")
        if command.command_id in self._pending:
            raise ValueError(f"divert {command.command_id} is already waiting for its reply")
        payload = _divert_payload(command)
        future: asyncio.Future[DivertReply] = asyncio.get_running_loop().create_future()
        try:
            send_now(client, self.divert_topic(diverter), payload, qos=self.config.qos)
        except aiomqtt.MqttError as exc:
            raise DriverUnavailable(DEVICE, f"divert {command.command_id} not sent: "
                                            f"{_describe(exc)}") from None
        self._pending[command.command_id] = (diverter, future)
        self.stats.commands += 1
        timeout_ms = self.config.reply_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                reply = await future
        except TimeoutError:
            self.stats.timeouts += 1
            await self._give_up(command.command_id, diverter)
            raise DriverTimeout(device, f"no reply to divert {command.command_id} within "
                                        f"{timeout_ms:g} ms") from None
        except DriverUnavailable:  # the link dropped while waiting
            await self._give_up(command.command_id, diverter)
            raise
        finally:
            self._pending.pop(command.command_id, None)
        if reply.accepted:
            self._hold(command)
        return reply

    async def cancel(self, command_id: int, diverter_id: str) -> None:
        """Take back a divert the node may hold (sent after a reconnect if the link is down)."""
        self._scheduled.drop(command_id)
        self._restoring.pop(command_id, None)
        await self._send_cancel(command_id, diverter_id)

    # --- what the nodes hold ---------------------------------------------------------------

    def forget_scheduled(self) -> None:
        """Send no node the diverts it accepted so far again: the line's count began again,
        so their ``fire_enc`` mean nothing now."""
        self._scheduled.clear()  # restores on their way keep their entry: replies are known

    def _position(self) -> int | None:
        """The line's latest encoder count, if this link knows it."""
        if self._encoder_source is not None:
            return self._encoder_source()
        return self._enc_received if self.sensors else None

    def _hold(self, command: DivertCommand) -> None:
        """An accepted divert: remember it until it is due."""
        self._forget_due()
        self._scheduled.hold(command)
        if self._position() is None:
            # no encoder count to tell which are due: keep the latest ones (the node refuses
            # an older one sent again as late anyway)
            self._forgotten(self._scheduled.keep_earliest_due(SCHEDULED_MEMORY))

    def _forget_due(self, enc: int | None = None) -> None:
        """Forget the diverts due by ``enc`` (the latest count by default): their node has
        carried them out, or never will."""
        if enc is None:
            enc = self._position()
            if enc is None:
                return
        self._forgotten(self._scheduled.forget_due(enc))

    def _forgotten(self, command_ids: list[int]) -> None:
        for command_id in command_ids:
            self._restoring.pop(command_id, None)

    def _restore(self, node: str) -> None:
        """Send ``node`` again the diverts it accepted that are still due: it may have
        dropped them (its fail-safe, a restart). It keeps one it still holds as it is, and
        refuses one it can no longer carry out in time."""
        client = self._client
        if client is None:
            return
        self._forget_due()
        commands = [c for c in self._scheduled if c.diverter_id == node]
        if not commands:
            return
        log.warning("mqtt: node %s is online again: sending it its %d still-due diverts",
                    node, len(commands))
        for command in commands:
            try:
                send_now(client, self.divert_topic(node), _divert_payload(command),
                         qos=self.config.qos)
            except aiomqtt.MqttError as exc:  # the link is going: its reconnect restores
                log.debug("mqtt: restoring divert %d failed: %s", command.command_id, exc)
                return
            self._restoring[command.command_id] = node
            self.stats.restored += 1

    async def _give_up(self, command_id: int, diverter_id: str) -> None:
        self._gave_up[command_id] = (diverter_id, self.clock.now())
        while len(self._gave_up) > GAVE_UP_MEMORY:
            self._gave_up.popitem(last=False)
        await self._send_cancel(command_id, diverter_id)

    def _repeat_cancels(self, node: str) -> None:
        """A node (re)connected: it missed whatever was published while it was away, so
        send it again the cancels of diverts given up on recently."""
        client = self._client
        if client is None:
            return
        for command_id, diverter in self._cancels_to_repeat().items():
            if diverter == node:
                with contextlib.suppress(aiomqtt.MqttError):
                    send_now(client, self.cancel_topic(diverter),
                             json.dumps({"corr": command_id}).encode(), qos=self.config.qos)

    def _cancels_to_repeat(self) -> dict[int, str]:
        """Cancels to send on a new connection: unsent ones and recent ones (maybe lost)."""
        since = self.clock.now() - RECANCEL_S
        recent = {cid: d for cid, (d, at) in self._gave_up.items() if at >= since}
        return recent | self._cancel_later

    async def _send_cancel(self, command_id: int, diverter_id: str) -> None:
        self.stats.cancels += 1
        client = self._client
        if client is None or self._state is not LinkState.UP:
            self._cancel_later[command_id] = diverter_id
            return
        try:
            send_now(client, self.cancel_topic(diverter_id),
                     json.dumps({"corr": command_id}).encode(), qos=self.config.qos)
        except aiomqtt.MqttError:
            self._cancel_later[command_id] = diverter_id

    # --- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve until the link is lost, back off, again; until closed."""
        while not self._closing:
            try:
                reason = await self._connection()
            except aiomqtt.MqttError as exc:
                reason = _describe(exc)
            except OSError as exc:
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
        client = aiomqtt.Client(
            self.config.host, self.config.port, identifier=self.client_id,
            username=self.config.username, password=self._password,
            keepalive=self.config.keepalive_s, clean_session=True, timeout=CALL_TIMEOUT_S,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            socket_options=NODELAY, logger=log.getChild("client"))
        client.pending_calls_threshold = 100  # diverts in flight at once are normal
        return client

    async def _connection(self) -> str:
        """One connection; returns why it ended."""
        client = self._new_client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            self.stats.connect_failures += 1
            return f"cannot connect: {_describe(exc)}"
        try:
            self._nodes.clear()  # rebuilt from the retained statuses the broker still has
            await client.subscribe(self._subscriptions())
            for command_id, diverter in self._cancels_to_repeat().items():
                await client.publish(self.cancel_topic(diverter),
                                     json.dumps({"corr": command_id}).encode(),
                                     qos=self.config.qos)
                self._cancel_later.pop(command_id, None)
            await client.publish(self.status_topic, b"online", qos=1, retain=True)
            await self._heartbeat(client)
            self._client = client
            self._went_up()
            return await self._serve(client)
        finally:
            self._client = None
            # After a loss aiomqtt returns at once; otherwise a clean DISCONNECT (bounded).
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _serve(self, client: aiomqtt.Client) -> str:
        beats = asyncio.create_task(self._heartbeats(client), name="lineio[mqtt].heartbeat")
        try:
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes):  # pragma: no cover - paho gives bytes
                    payload = str(payload).encode()
                self._dispatch(message.topic.value, payload)
        except aiomqtt.MqttError as exc:
            return f"connection lost: {_describe(exc)}"
        finally:
            self._client = None  # the heartbeat loop ends even if it swallowed its cancel
            await cancel_and_wait([beats])
        return "message stream ended"  # pragma: no cover - the iterator never ends

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        period = self.config.heartbeat_ms / 1000
        next_at = self.clock.now() + period
        while self._client is client:
            await self.clock.sleep_until(next_at)
            try:
                await self._heartbeat(client)
            except aiomqtt.MqttError:
                return  # the receive loop sees the loss and reconnects
            next_at = max(next_at + period, self.clock.now())

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        self._heartbeat_n += 1
        beat: dict[str, object] = {"session": self.session, "n": self._heartbeat_n}
        if self._seen:
            beat["ack"] = {node: {"boot": boot, "seq": seq}
                           for node, (boot, seq) in self._seen.items()}
        send_now(client, f"{self.base}/heartbeat",
                 json.dumps(beat, separators=(",", ":")).encode(), qos=0)
        self.stats.heartbeats += 1

    def _went_up(self) -> None:
        self.stats.connects += 1
        self._backoff.reset()
        if self._state is LinkState.DOWN:
            self.stats.reconnects += 1
            down = self.clock.now() - (self._down_since or self.clock.now())
            log.warning("mqtt %s: link up again after %.1f s", self._where, down)
        else:
            log.info("mqtt %s: connected as %s", self._where, self.client_id)
        self._down_since = None
        self._state = LinkState.UP
        self._up.set()

    def _went_down(self, reason: str) -> None:
        self._up.clear()
        self.stats.last_error = reason
        if self._state is not LinkState.DOWN:
            self.stats.outages += 1
            self._down_since = self.clock.now()
            log.warning("mqtt %s: link down: %s (reconnecting with backoff)", self._where,
                        reason)
            self._push(DeviceFault(DEVICE, f"link down: {reason}"))
        else:
            log.debug("mqtt %s: still down: %s", self._where, reason)
        self._state = LinkState.DOWN
        self._fail_pending(f"link down: {reason}")

    def _fail_pending(self, reason: str) -> None:
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(DriverUnavailable(DEVICE, reason))

    # --- what comes in ---------------------------------------------------------------------

    def _bad(self, kind: str, topic: str, payload: bytes, detail: str = "") -> None:
        """Count a payload we refuse; log the first of each kind (the rest at debug)."""
        self.stats.bad_payloads += 1
        self.stats.bad_by_kind[kind] = self.stats.bad_by_kind.get(kind, 0) + 1
        text = f"mqtt {self._where}: refused a message on {topic[:120]!r} ({kind}"
        text += f": {detail[:200]}" if detail else ""
        text += f"): {len(payload)} bytes {payload[:60]!r}"
        if kind in self._logged:
            log.debug("%s", text)
        else:
            self._logged.add(kind)
            log.warning("%s; further ones of this kind are only counted", text)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD:
            self._bad("too_large", topic, payload, f"over {MAX_PAYLOAD} bytes")
            return
        if not topic.startswith(self.base + "/"):
            self._bad("unknown_topic", topic, payload)
            return
        parts = topic[len(self.base) + 1:].split("/")
        match parts:
            case ["divert", diverter, "reply"]:
                self._on_reply(topic, diverter, payload)
            case ["nodes", node, "status"]:
                self._on_status(topic, node, payload)
            case ["events"] if self.sensors:
                self._on_event(topic, payload)
            case ["encoder"] if self.sensors:
                self._on_encoder(topic, payload)
            case _:
                self._bad("unknown_topic", topic, payload)

    def _on_reply(self, topic: str, diverter: str, payload: bytes) -> None:
        if diverter not in self.diverters:
            self._bad("unknown_diverter", topic, payload)
            return
        try:
            reply = ReplyPayload.model_validate_json(payload)
        except ValidationError as exc:
            self._bad("bad_reply", topic, payload, _validation_summary(exc))
            return
        pending = self._pending.get(reply.corr)
        if pending is None:
            if self._restoring.get(reply.corr) == diverter:
                self._on_restore_reply(diverter, reply)
            elif reply.corr in self._gave_up:
                self.stats.late_replies += 1
                log.debug("mqtt: reply to divert %d after it was given up on", reply.corr)
            else:
                self._bad("unknown_corr", topic, payload)
            return
        expected, future = pending
        if diverter != expected:
            self._bad("wrong_diverter", topic, payload, f"divert {reply.corr} went to {expected}")
            return
        if future.done():
            return  # a QoS 1 duplicate of a reply already taken
        self.stats.replies += 1
        if not reply.accepted:
            self.stats.refused += 1
        future.set_result(DivertReply(reply.corr, reply.accepted, reply.reason))

    def _on_restore_reply(self, diverter: str, reply: ReplyPayload) -> None:
        del self._restoring[reply.corr]
        if reply.accepted:
            return
        self.stats.restore_refused += 1
        log.warning("mqtt: node %s refused restored divert %d (%s)", diverter, reply.corr,
                    reply.reason)
        if reply.reason != "fault":  # "fault": in its fail-safe again; restored once armed
            self._scheduled.drop(reply.corr)

    def _on_status(self, topic: str, node: str, payload: bytes) -> None:
        if not payload:
            self._nodes.pop(node, None)  # a retained status cleared
            return
        status = payload.strip()
        if status not in NODE_STATUSES or len(node) > 32:
            self._bad("bad_status", topic, payload)
            return
        text = status.decode()
        before = self._nodes.get(node)
        self._nodes[node] = text
        if text == "safe" and before == "online":
            self.stats.node_failsafes += 1
            log.warning("mqtt: node %s is in its fail-safe (it dropped the diverts it held)",
                        node)
        if text == "offline" and node not in self._reported_offline:
            self._reported_offline.add(node)
            self.stats.nodes_offline += 1
            log.warning("mqtt: node %s is offline", node)
            self._push(DeviceFault(f"node {node}", "offline (lost or shut down)"))
        elif text == "online":
            if node in self._reported_offline:
                self._reported_offline.discard(node)
                log.warning("mqtt: node %s is online again", node)
            self._repeat_cancels(node)
            if before != "online":  # it may have lost what it held: idempotent if not
                self._restore(node)

    def _on_event(self, topic: str, payload: bytes) -> None:
        try:
            event = EVENT_PAYLOAD.validate_json(payload)
        except ValidationError as exc:
            self._bad("bad_event", topic, payload, _validation_summary(exc))
            return
        seen = self._seen.get(event.node)
        first = event.seq if event.first is None else event.first
        if seen is not None and seen[0] == event.boot:
            last = seen[1]
            if event.seq <= last:
                self.stats.duplicate_events += 1
                return
            due = max(last + 1, first)  # the next one we can still get
        else:
            if seen is not None:
                self.stats.node_restarts += 1
                log.warning("mqtt: sensor node %s restarted (boot %s)", event.node, event.boot)
            last, due = first - 1, first
        if event.seq > due:
            # an event before it was lost on the way (sent while we were not subscribed):
            # in order only, so this one waits for the node to send again from the gap
            self.stats.early_events += 1
            return
        if due > last + 1:
            self.stats.missed_events += due - last - 1
            log.warning("mqtt: %d events of node %s were lost for good (its backlog "
                        "overflowed): seq %d after %d", due - last - 1, event.node, event.seq,
                        last)
        self._seen[event.node] = (event.boot, event.seq)
        self.stats.events += 1
        self._push(_line_event(event))

    def _on_encoder(self, topic: str, payload: bytes) -> None:
        try:
            enc = EncoderPayload.model_validate_json(payload).enc
        except ValidationError as exc:
            self._bad("bad_encoder", topic, payload, _validation_summary(exc))
            return
        self._enc_received = enc
        next_due = self._scheduled.next_due()
        if next_due is not None and next_due <= enc:
            self._forget_due(enc)
        if self._queued_events == 0:
            self._queue.clear()  # only encoder counts were left: this one supersedes them
            self._enc_delivered = enc
        elif self._queue and isinstance(self._queue[-1], int):
            self._queue[-1] = enc
        else:
            self._queue.append(enc)

    def _push(self, event: LineEvent) -> None:
        self._queue.append(event)
        self._queued_events += 1
        self._ready.set()


def _divert_payload(command: DivertCommand) -> bytes:
    return json.dumps({"corr": command.command_id, "parcel": command.parcel_id,
                       "fire_enc": command.fire_enc, "pulse_ms": command.pulse_ms},
                      separators=(",", ":")).encode()


def send_now(client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int,
             retain: bool = False) -> None:
    """Hand a message to paho now, without awaiting its PUBACK (MqttError if it cannot).

    aiomqtt's ``publish()`` awaits the PUBACK through ``asyncio.wait_for``: an extra task
    switch on every command's path, and in Python 3.11 a cancellation it may swallow. A
    divert's reply is its real acknowledgement (a lost link fails the wait at once), and a
    heartbeat or a cancel needs none. aiomqtt 2.x (pinned ``<3``) keeps its paho client in
    ``_client``; paho queues the message and aiomqtt's writer sends it.
    """
    info = client._client.publish(topic, payload, qos, retain)
    if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], within_s: float = 5.0) -> bool:
    """Cancel ``tasks`` and wait until they end, cancelling again any that swallowed it.

    ``asyncio.wait_for`` in Python 3.11 can swallow a cancellation that races with its
    result, and aiomqtt awaits every publish through it: a loop of publishes then carries
    on. False if some task was still running after ``within_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
        if pending and loop.time() > deadline:
            return False
    return True


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "(payload)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"
