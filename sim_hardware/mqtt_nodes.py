"""The emulated line's networked diverter nodes (and sensor node) on a real MQTT broker.

Each diverter is its own node, as on a real line: one MQTT client whose id is the diverter's
id, with a retained ``nodes/<id>/status`` (below) and ``offline`` as its Last Will. It
takes ``divert/<id>`` commands to :meth:`PhysicalLine.accept_divert` and answers on
``divert/<id>/reply`` with the command's correlation id; a command id it already holds is
answered ``accepted`` and kept as it is, not scheduled twice (the controller sends its
still-due diverts again when a node comes back online); ``cancel/<id>`` drops a scheduled
divert (a cancel that arrives before its divert is remembered, so the divert is then
ignored). The topics and payloads are those of :mod:`drivers.lineio.mqtt`, parsed here by the
node's own validating parser, as a separate device would: a bad payload is counted and
logged once per kind; a divert whose body is bad but whose ``corr`` is readable is refused
with reason ``fault``.

**Fail-safe.** A node that has seen no controller heartbeat for ``failsafe_ms`` (also when
it is the node that lost the broker) drops every divert it holds, refuses new ones with
reason ``fault`` and counts a trip; the next heartbeat arms it again. A node starts unarmed:
it takes commands once it has heard the controller. Its retained status says which: ``safe``
while unarmed (holding nothing), ``online`` while armed; it is published on every connect
and again on every change, so ``online`` after anything else tells the controller that the
node may have lost its schedule and takes diverts now.

With ``sensors=True`` a ``sensors`` node forwards the line's events (photo-eye edges, bin
entries and levels, faults) on ``events`` with a per-node increasing ``seq`` and a ``boot``
id, and the encoder count on ``encoder`` every 10 ms (QoS 0). QoS 1 only covers node ->
broker, and the broker keeps nothing for a controller that is not connected, so delivery is
end to end: an event stays in a bounded backlog (oldest dropped beyond ``backlog``) until the
controller's heartbeat acknowledges it (``"ack": {"sensors": {"boot": b, "seq": n}}``); after
a reconnect, or when an event the broker took is still unacknowledged ``resend_s`` later, the
node sends again from the first unacknowledged one, in order (the driver drops duplicates,
and events that overtake a missing one; each event says which is the oldest the node still
holds, ``"first"``, so the driver can tell a gap that will be filled from one that won't).
Events raised while the broker is down thus arrive, in order, once everyone is back. The
encoder is published only when no event is waiting to be sent, so it never runs ahead of one.

Every client reconnects with backoff and jitter, like a real node. Fault hooks for tests:
``drop_replies`` (probability a reply is not sent, the divert still being taken) and
``reply_delay_s``, drawn from a seeded generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import secrets
import socket
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.clock import Clock
from controller.lineio import (
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    LineEvent,
    PhotoEyeEdge,
)
from drivers.backoff import Backoff
from drivers.lineio.mqtt import cancel_and_wait, send_now
from sim_hardware.line import PhysicalLine

log = logging.getLogger(__name__)

SENSOR_NODE = "sensors"
MAX_PAYLOAD = 4096
CALL_TIMEOUT_S = 2.0
TOMBSTONES = 1024  # cancels remembered for diverts not (yet) seen
PUBLISH_BATCH = 32  # events in flight at once from the sensor node
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

CommandId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class DivertPayload(_Payload):
    corr: CommandId
    parcel: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    fire_enc: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    pulse_ms: Annotated[float, Field(gt=0, le=5000)]


class CancelPayload(_Payload):
    corr: CommandId


class AckPayload(_Payload):
    boot: Annotated[str, Field(max_length=32)]
    seq: Annotated[int, Field(ge=0, le=2**63 - 1)]


class HeartbeatPayload(_Payload):
    session: Annotated[str, Field(min_length=1, max_length=64)]
    n: Annotated[int, Field(ge=0, le=2**63 - 1)]
    ack: Annotated[dict[str, AckPayload], Field(max_length=64)] = Field(default_factory=dict)


@dataclass
class NodeStats:
    """Counters over all the emulated nodes."""

    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    diverts: int = 0
    accepted: int = 0
    refused: int = 0
    refused_unarmed: int = 0  # refused with "fault" by a node in its fail-safe
    already_held: int = 0  # accepted again as held: a command id the node already had
    cancels: int = 0
    cancelled: int = 0  # cancels that dropped a scheduled divert
    ignored_after_cancel: int = 0  # diverts that came after their own cancel
    replies: int = 0
    replies_dropped: int = 0  # by the drop_replies fault hook
    heartbeats: int = 0
    failsafe_trips: int = 0
    failsafe_dropped: int = 0  # scheduled diverts dropped by the fail-safe
    events_published: int = 0
    events_resent: int = 0  # taken by the broker but not acknowledged by the controller
    events_overflowed: int = 0  # dropped from a full backlog
    backlog_max: int = 0
    bad_payloads: int = 0
    bad_by_kind: dict[str, int] = field(default_factory=dict)


class _Node:
    """One networked device: its own client, reconnecting with backoff for its whole life."""

    def __init__(self, owner: MqttNodes, node_id: str) -> None:
        self.owner = owner
        self.node_id = node_id
        self.connected = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.backoff = Backoff(0.05, owner.backoff_cap_s, rng=random.Random(owner.rng.random()))
        self._ever_connected = False
        self._down_logged = False
        self._announced: bytes | None = None  # the status published on this connection

    @property
    def status_topic(self) -> str:
        return f"{self.owner.base}/nodes/{self.node_id}/status"

    def _new_client(self) -> aiomqtt.Client:
        owner = self.owner
        username, password = owner.credentials.get(self.node_id, (None, None))
        client = aiomqtt.Client(
            owner.host, owner.port, identifier=f"{owner.line_name}-node-{self.node_id}",
            username=username, password=password, keepalive=owner.keepalive_s,
            clean_session=True, timeout=CALL_TIMEOUT_S, socket_options=NODELAY,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            logger=log.getChild("client"))
        client.pending_calls_threshold = 2 * PUBLISH_BATCH + 16  # a batch of events in flight
        return client

    async def run(self) -> None:
        clock = self.owner.clock
        while True:
            client = self._new_client()
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                self.owner.stats.connect_failures += 1
                self._lost(f"cannot connect: {exc}")
                await clock.sleep(self.backoff.next_delay())
                continue
            try:
                await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._lost(str(exc))
            except Exception:  # a bug must not take the node off the line for good
                log.exception("node %s: unexpected error", self.node_id)
            finally:
                self.connected.clear()
                self.client = None
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
            await clock.sleep(self.backoff.next_delay())

    async def _serve(self, client: aiomqtt.Client) -> None:
        await self.on_connect(client)
        status = self.status()
        await client.publish(self.status_topic, status, qos=1, retain=True)
        self._announced = status
        self.client = client
        self.owner.stats.connects += 1
        if self._ever_connected:
            self.owner.stats.reconnects += 1
            log.info("node %s: connected again", self.node_id)
        self._ever_connected = True
        self._down_logged = False
        self.backoff.reset()
        self.connected.set()
        self.announce()  # in case it changed while the first one was on its way
        helpers = [asyncio.create_task(coro, name=f"sim.node[{self.node_id}].{name}")
                   for name, coro in self.helpers(client)]
        try:
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes):  # pragma: no cover - paho gives bytes
                    payload = str(payload).encode()
                topic = message.topic.value
                if len(payload) > MAX_PAYLOAD:
                    self.owner.bad("too_large", self.node_id, topic, payload)
                    continue
                self.on_message(client, topic, payload)
        finally:
            # the helpers loop only while this is their connection, so one that swallowed
            # its cancellation still ends
            self.client = None
            self.connected.clear()
            self.wake_helpers()
            await cancel_and_wait(helpers)

    def _lost(self, reason: str) -> None:
        if not self._down_logged:
            self._down_logged = True
            log.info("node %s: no broker (%s), reconnecting", self.node_id, reason)

    async def say_offline(self) -> None:
        """A clean shutdown: say so, since the broker sends the Will only on a loss."""
        client = self.client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.status_topic, b"offline", qos=1, retain=True,
                                     timeout=0.5)

    def announce(self) -> None:
        """Publish the node's status (retained) if it changed since last published."""
        client = self.client
        status = self.status()
        if client is None or status == self._announced:
            return  # a connect publishes it anyway
        try:
            send_now(client, self.status_topic, status, qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            log.debug("node %s: status not sent: %s", self.node_id, exc)
            return
        self._announced = status

    # --- what a kind of node does ----------------------------------------------------------

    def status(self) -> bytes:
        """The retained status to announce while connected."""
        return b"online"

    async def on_connect(self, client: aiomqtt.Client) -> None:
        """Subscribe to what this node listens to."""

    def helpers(self, client: aiomqtt.Client) -> list[tuple[str, Any]]:
        """Coroutines that run while connected (they loop while ``self.client is client``)."""
        return []

    def wake_helpers(self) -> None:
        """Let waiting helpers see that their connection is gone."""

    def on_message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        self.owner.bad("unknown_topic", self.node_id, topic, payload)


class _DiverterNode(_Node):
    def __init__(self, owner: MqttNodes, diverter_id: str) -> None:
        super().__init__(owner, diverter_id)
        base = owner.base
        self.divert_topic = f"{base}/divert/{diverter_id}"
        self.cancel_topic = f"{base}/cancel/{diverter_id}"
        self.reply_topic = f"{base}/divert/{diverter_id}/reply"
        self.heartbeat_topic = f"{base}/heartbeat"
        self.armed = False
        self.last_heartbeat = owner.clock.now()
        self.session: str | None = None
        self._heard = asyncio.Event()
        self._tombstones: OrderedDict[int, None] = OrderedDict()
        self._replies: set[asyncio.Task[None]] = set()

    async def on_connect(self, client: aiomqtt.Client) -> None:
        qos = self.owner.qos
        await client.subscribe([(self.divert_topic, qos), (self.cancel_topic, qos),
                                (self.heartbeat_topic, 0)])

    def status(self) -> bytes:
        return b"online" if self.armed else b"safe"

    def on_message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        if topic == self.heartbeat_topic:
            self._on_heartbeat(topic, payload)
        elif topic == self.divert_topic:
            self._on_divert(client, topic, payload)
        elif topic == self.cancel_topic:
            self._on_cancel(topic, payload)
        else:
            super().on_message(client, topic, payload)

    # --- the fail-safe ---------------------------------------------------------------------

    def _on_heartbeat(self, topic: str, payload: bytes) -> None:
        try:
            beat = HeartbeatPayload.model_validate_json(payload)
        except ValidationError:
            self.owner.bad("bad_heartbeat", self.node_id, topic, payload)
            return
        self.owner.stats.heartbeats += 1
        self.last_heartbeat = self.owner.clock.now()
        if beat.session != self.session:
            if self.session is not None:
                log.info("node %s: a new controller session %s", self.node_id, beat.session)
            self.session = beat.session
        if not self.armed:
            self.armed = True
            log.info("node %s: armed (controller heartbeats)", self.node_id)
            self.announce()
        self._heard.set()

    async def watchdog(self) -> None:
        """Disarm and drop every held divert when heartbeats stop for ``failsafe_ms``."""
        clock = self.owner.clock
        limit = self.owner.failsafe_s
        while True:
            if not self.armed:
                self._heard.clear()
                await self._heard.wait()
                continue
            deadline = self.last_heartbeat + limit
            if clock.now() < deadline:
                await clock.sleep_until(deadline)
                continue
            self.armed = False
            dropped = self.owner.line.cancel_diverts([self.node_id])
            self.owner.stats.failsafe_trips += 1
            self.owner.stats.failsafe_dropped += dropped
            log.warning("node %s: no controller heartbeat for %.0f ms: fail-safe, %d "
                        "scheduled diverts dropped", self.node_id, limit * 1000, dropped)
            self.announce()

    # --- commands --------------------------------------------------------------------------

    def _on_divert(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        stats = self.owner.stats
        try:
            body = DivertPayload.model_validate_json(payload)
        except ValidationError:
            self.owner.bad("bad_divert", self.node_id, topic, payload)
            corr = _readable_corr(payload)
            if corr is not None:
                self._reply(client, DivertReply(corr, False, "fault"))
            return
        stats.diverts += 1
        if body.corr in self._tombstones:
            stats.ignored_after_cancel += 1
            return
        line = self.owner.line
        if not self.armed:
            stats.refused_unarmed += 1
            reply = DivertReply(body.corr, False, "fault")
        else:
            # the line keeps a command id it already holds as it is and answers accepted
            held = line.scheduled_diverts([self.node_id])
            reply = line.accept_divert(DivertCommand(
                body.corr, body.parcel, self.node_id, body.fire_enc, body.pulse_ms))
            if reply.accepted and line.scheduled_diverts([self.node_id]) == held:
                stats.already_held += 1
        if reply.accepted:
            stats.accepted += 1
        else:
            stats.refused += 1
        self._reply(client, reply)

    def _on_cancel(self, topic: str, payload: bytes) -> None:
        try:
            body = CancelPayload.model_validate_json(payload)
        except ValidationError:
            self.owner.bad("bad_cancel", self.node_id, topic, payload)
            return
        self.owner.stats.cancels += 1
        if self.owner.line.cancel_divert(body.corr):
            self.owner.stats.cancelled += 1
        else:  # not held (yet): if its divert comes later, it must not be taken
            self._tombstones[body.corr] = None
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _reply(self, client: aiomqtt.Client, reply: DivertReply) -> None:
        owner = self.owner
        if owner.drop_replies and owner.rng.random() < owner.drop_replies:
            owner.stats.replies_dropped += 1
            return
        payload = json.dumps({"corr": reply.command_id, "accepted": reply.accepted,
                              "reason": reply.reason}, separators=(",", ":")).encode()
        if owner.reply_delay_s <= 0:
            self._send_reply_now(client, payload)
            return
        task = asyncio.create_task(self._send_reply(client, payload),
                                   name=f"sim.node[{self.node_id}].reply")
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    def replies_in_flight(self) -> list[asyncio.Task[None]]:
        return list(self._replies)

    async def _send_reply(self, client: aiomqtt.Client, payload: bytes) -> None:
        await self.owner.clock.sleep(self.owner.reply_delay_s)
        self._send_reply_now(client, payload)

    def _send_reply_now(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            send_now(client, self.reply_topic, payload, qos=self.owner.qos)
        except aiomqtt.MqttError as exc:
            log.debug("node %s: reply not sent: %s", self.node_id, exc)
            return
        self.owner.stats.replies += 1


@dataclass(slots=True)
class _Unacked:
    seq: int
    body: dict[str, Any]
    sent_at: float | None = None  # when the broker acknowledged it on this connection


class _SensorNode(_Node):
    """Forwards the line's events until the controller acknowledges them (on its heartbeat).

    QoS 1 is only node -> broker: events published while the controller is not connected
    would be lost. So an event stays in the backlog until a heartbeat's ``ack`` for this
    node's boot covers it; one the broker took but the controller has not acknowledged within
    ``resend_s`` is sent again, with everything after it (the driver drops duplicates).
    """

    def __init__(self, owner: MqttNodes) -> None:
        super().__init__(owner, SENSOR_NODE)
        self.events_topic = f"{owner.base}/events"
        self.encoder_topic = f"{owner.base}/encoder"
        self.heartbeat_topic = f"{owner.base}/heartbeat"
        self.boot = secrets.token_hex(4)
        self.seq = 0
        self.backlog: deque[_Unacked] = deque()
        self.sent_upto = 0  # highest seq the broker has taken on this connection
        self._generation = 0  # bumped when sending starts over from an earlier event
        self._wake = asyncio.Event()

    def on_line_event(self, event: LineEvent) -> None:
        """A line event: numbered and queued for publishing (a sink of the PhysicalLine)."""
        self.seq += 1
        body: dict[str, Any] = {"node": self.node_id, "boot": self.boot, "seq": self.seq}
        match event:
            case PhotoEyeEdge(eye=eye, blocked=blocked, enc=enc):
                body |= {"kind": "eye", "eye": eye, "blocked": blocked, "enc": enc}
            case BinEntry(bin_id=bin_id, enc=enc):
                body |= {"kind": "bin_entry", "bin": bin_id, "enc": enc}
            case BinLevel(bin_id=bin_id, full=full):
                body |= {"kind": "bin_level", "bin": bin_id, "full": full}
            case DeviceFault(device=device, message=message):
                body |= {"kind": "fault", "device": device[:64], "message": message[:500]}
        stats = self.owner.stats
        if len(self.backlog) >= self.owner.backlog_size:
            self.backlog.popleft()
            stats.events_overflowed += 1
        self.backlog.append(_Unacked(self.seq, body))
        stats.backlog_max = max(stats.backlog_max, len(self.backlog))
        self._wake.set()

    def unsent(self) -> int:
        """Events the broker has not taken on this connection."""
        return sum(1 for e in self.backlog if e.seq > self.sent_upto)

    def _send_again_from(self, seq: int) -> None:
        self.sent_upto = seq - 1
        self._generation += 1
        self._wake.set()

    async def on_connect(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.heartbeat_topic, qos=0)
        if self.backlog:  # the broker may not have passed on what it took before the loss
            self._send_again_from(self.backlog[0].seq)

    def on_message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        if topic != self.heartbeat_topic:
            super().on_message(client, topic, payload)
            return
        try:
            beat = HeartbeatPayload.model_validate_json(payload)
        except ValidationError:
            self.owner.bad("bad_heartbeat", self.node_id, topic, payload)
            return
        ack = beat.ack.get(self.node_id)
        if ack is not None and ack.boot == self.boot:
            while self.backlog and self.backlog[0].seq <= ack.seq:
                self.backlog.popleft()
        head = self.backlog[0] if self.backlog else None
        if head is not None and head.sent_at is not None \
                and self.owner.clock.now() - head.sent_at > self.owner.resend_s:
            self.owner.stats.events_resent += self.sent_upto - head.seq + 1
            self._send_again_from(head.seq)

    def helpers(self, client: aiomqtt.Client) -> list[tuple[str, Any]]:
        return [("events", self._publish_events(client)), ("encoder", self._encoder(client))]

    def wake_helpers(self) -> None:
        self._wake.set()

    async def _publish_events(self, client: aiomqtt.Client) -> None:
        """Publish the unsent part of the backlog in order, a batch in flight at a time."""
        qos = self.owner.qos
        while self.client is client:
            if not self.backlog or self.backlog[-1].seq <= self.sent_upto:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = max(0, self.sent_upto + 1 - self.backlog[0].seq)
            batch = list(itertools.islice(self.backlog, first, first + PUBLISH_BATCH))
            generation = self._generation
            # "first": the oldest event still held, so the controller can tell events that
            # are on their way again from ones lost for good (the backlog overflowed)
            held = self.backlog[0].seq
            payloads = [json.dumps(e.body | {"first": held}, separators=(",", ":")).encode()
                        for e in batch]
            try:
                # gather starts the publishes in order, so they go out in order
                await asyncio.gather(*(client.publish(self.events_topic, payload, qos=qos)
                                       for payload in payloads))
            except aiomqtt.MqttError as exc:
                log.debug("node %s: events not acknowledged: %s", self.node_id, exc)
                await self.owner.clock.sleep(0.05)
                continue
            now = self.owner.clock.now()
            for e in batch:
                e.sent_at = now
            self.owner.stats.events_published += len(batch)
            if generation == self._generation:
                self.sent_upto = max(self.sent_upto, batch[-1].seq)

    async def _encoder(self, client: aiomqtt.Client) -> None:
        clock = self.owner.clock
        period = self.owner.encoder_period_s
        next_at = clock.now()
        while self.client is client:
            if not self.backlog or self.backlog[-1].seq <= self.sent_upto:
                # only behind the events: never ahead of one still to be sent
                with contextlib.suppress(aiomqtt.MqttError):  # the receive loop sees a loss
                    send_now(client, self.encoder_topic,
                             b'{"enc":%d}' % self.owner.line.encoder(), qos=0)
            next_at = max(next_at + period, clock.now())
            await clock.sleep_until(next_at)


def _readable_corr(payload: bytes) -> int | None:
    """The ``corr`` of a divert whose body is otherwise bad, to refuse it by name."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    corr = data.get("corr") if isinstance(data, dict) else None
    if isinstance(corr, int) and not isinstance(corr, bool) and 0 <= corr < 2**63:
        return corr
    return None


class MqttNodes:
    """The line's diverters (and sensors) as networked MQTT nodes; an async context manager."""

    def __init__(self, line: PhysicalLine, host: str, port: int, *, line_name: str,
                 topic_prefix: str = "sorter", diverters: Sequence[str] | None = None,
                 sensors: bool = False, failsafe_ms: float = 500.0, clock: Clock,
                 qos: int = 1, keepalive_s: int = 10,
                 credentials: Mapping[str, tuple[str, str]] | None = None,
                 drop_replies: float = 0.0, reply_delay_s: float = 0.0, seed: int = 0,
                 backlog: int = 10_000, encoder_period_s: float = 0.01, resend_s: float = 0.5,
                 backoff_cap_s: float = 2.0) -> None:
        self.line = line
        self.host = host
        self.port = port
        self.line_name = line_name
        self.base = f"{topic_prefix}/{line_name}/io"
        self.clock = clock
        self.qos = qos
        self.keepalive_s = keepalive_s
        self.credentials = dict(credentials or {})
        self.failsafe_s = failsafe_ms / 1000
        self.drop_replies = drop_replies
        self.reply_delay_s = reply_delay_s
        self.rng = random.Random(seed)
        self.backlog_size = backlog
        self.encoder_period_s = encoder_period_s
        self.resend_s = resend_s
        self.backoff_cap_s = backoff_cap_s
        self.stats = NodeStats()
        ids = [d.id for d in line.config.diverters] if diverters is None else list(diverters)
        self.diverter_nodes = {d: _DiverterNode(self, d) for d in ids}
        self.sensor_node = _SensorNode(self) if sensors else None
        self._bad_logged: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def _nodes(self) -> list[_Node]:
        nodes: list[_Node] = list(self.diverter_nodes.values())
        if self.sensor_node is not None:
            nodes.append(self.sensor_node)
        return nodes

    async def __aenter__(self) -> MqttNodes:
        if self.sensor_node is not None:
            self.line.event_sinks.append(self.sensor_node.on_line_event)
        for node in self._nodes:
            self._tasks.append(asyncio.create_task(node.run(), name=f"sim.node[{node.node_id}]"))
        for d in self.diverter_nodes.values():
            self._tasks.append(asyncio.create_task(d.watchdog(),
                                                   name=f"sim.node[{d.node_id}].watchdog"))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Say offline and disconnect every node cleanly."""
        if self.sensor_node is not None:
            with contextlib.suppress(ValueError):
                self.line.event_sinks.remove(self.sensor_node.on_line_event)
        await asyncio.gather(*(node.say_offline() for node in self._nodes))
        tasks, self._tasks = self._tasks, []
        for d in self.diverter_nodes.values():
            tasks += d.replies_in_flight()
        if not await cancel_and_wait(tasks):
            log.warning("nodes of %s: some tasks did not stop", self.line_name)

    def connected(self) -> bool:
        """Whether every node is connected to the broker now."""
        return all(node.connected.is_set() for node in self._nodes)

    async def wait_connected(self, within_s: float = 5.0) -> None:
        """Wait until every node is connected; TimeoutError otherwise."""
        async with asyncio.timeout(within_s):
            for node in self._nodes:
                await node.connected.wait()

    def armed(self, diverter_id: str) -> bool:
        """Whether the node takes diverts (it hears the controller's heartbeats)."""
        return self.diverter_nodes[diverter_id].armed

    async def wait_armed(self, within_s: float = 5.0) -> None:
        """Wait until every diverter node has heard the controller; TimeoutError otherwise."""
        async with asyncio.timeout(within_s):
            while not all(d.armed for d in self.diverter_nodes.values()):
                await self.clock.sleep(0.005)

    def backlog(self) -> int:
        """Events the sensor node holds that the controller has not acknowledged."""
        return len(self.sensor_node.backlog) if self.sensor_node is not None else 0

    def bad(self, kind: str, node: str, topic: str, payload: bytes) -> None:
        """Count a payload a node refused; log the first of each kind."""
        self.stats.bad_payloads += 1
        self.stats.bad_by_kind[kind] = self.stats.bad_by_kind.get(kind, 0) + 1
        text = (f"node {node}: refused a message on {topic[:120]!r} ({kind}): "
                f"{len(payload)} bytes {payload[:60]!r}")
        if kind in self._bad_logged:
            log.debug("%s", text)
        else:
            self._bad_logged.add(kind)
            log.warning("%s; further ones of this kind are only counted", text)
