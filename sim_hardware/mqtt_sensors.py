"""The emulated sensor node: the line's events and encoder count, delivered end to end.

It forwards the line's events (photo-eye edges, bin entries and levels, faults) on
``events`` with a per-node increasing ``seq`` and a ``boot`` id, and the encoder count on
``encoder`` every 10 ms (QoS 0). QoS 1 only covers node -> broker, and the broker keeps
nothing for a controller that is not connected, so delivery is end to end: an event stays in
a bounded backlog (oldest dropped beyond ``backlog``) until the controller's heartbeat
acknowledges it (``"ack": {"sensors": {"boot": b, "seq": n}}``); after a reconnect, or when
an event the broker took is still unacknowledged ``resend_s`` later, the node sends again
from the first unacknowledged one, in order. Each event says which is the oldest the node
still holds (``first``), so the driver can tell a gap that will be filled from one that
won't. The encoder is published only when no event is waiting to be sent, so it never runs
ahead of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import aiomqtt

from controller.lineio import LineEvent, TrackingLost
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.aiomqtt_fast import send_now
from sim_hardware.mqtt_node import PUBLISH_BATCH, Helper, MqttNode

if TYPE_CHECKING:
    from sim_hardware.mqtt_nodes import MqttNodes

log = logging.getLogger(__name__)

SENSOR_NODE = "sensors"
RETRY_S = 0.05  # after a batch of events the broker did not acknowledge


@dataclass(slots=True)
class _Unacked:
    message: codec.SensorEvent
    sent_at: float | None = None  # when the broker acknowledged it on this connection

    @property
    def seq(self) -> int:
        return self.message.seq


class SensorNode(MqttNode):
    """Forwards the line's events until the controller acknowledges them (on its heartbeat).

    An event stays in the backlog until a heartbeat's ``ack`` for this node's boot covers
    it; one the broker took but the controller has not acknowledged within ``resend_s`` is
    sent again, with everything after it (the driver drops duplicates).
    """

    def __init__(self, owner: MqttNodes) -> None:
        super().__init__(owner, SENSOR_NODE)
        self.events_topic = self.topics.events
        self.encoder_topic = self.topics.encoder
        self.heartbeat_topic = self.topics.heartbeat
        self.boot = secrets.token_hex(4)
        self.seq = 0
        self.backlog: deque[_Unacked] = deque()
        self.sent_upto = 0  # highest seq the broker has taken on this connection
        self._generation = 0  # bumped when sending starts over from an earlier event
        self._wake = asyncio.Event()

    def on_line_event(self, event: LineEvent) -> None:
        """A line event: numbered and queued for publishing (a sink of the PhysicalLine)."""
        if isinstance(event, TrackingLost):  # a board's, when its count began again: not ours
            return
        self.seq += 1
        stats = self.owner.stats
        if len(self.backlog) >= self.owner.backlog_size:
            self.backlog.popleft()
            stats.events_overflowed += 1
        self.backlog.append(_Unacked(codec.SensorEvent(self.node_id, self.boot, self.seq,
                                                       event)))
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
        beat = codec.decode_heartbeat(payload)
        ack = beat.ack.get(self.node_id)
        if ack is not None and ack.boot == self.boot:
            while self.backlog and self.backlog[0].seq <= ack.seq:
                self.backlog.popleft()
        head = self.backlog[0] if self.backlog else None
        if head is not None and head.sent_at is not None \
                and self.owner.clock.now() - head.sent_at > self.owner.resend_s:
            self.owner.stats.events_resent += self.sent_upto - head.seq + 1
            self._send_again_from(head.seq)

    def helpers(self, client: aiomqtt.Client) -> list[Helper]:
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
            payloads = [codec.encode_event(replace(e.message, first=held)) for e in batch]
            try:
                # gather starts the publishes in order, so they go out in order
                await asyncio.gather(*(client.publish(self.events_topic, payload, qos=qos)
                                       for payload in payloads))
            except aiomqtt.MqttError as exc:
                log.debug("node %s: events not acknowledged: %s", self.node_id, exc)
                await self.owner.clock.sleep(RETRY_S)
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
                             codec.encode_encoder(self.owner.line.encoder()), qos=0)
            next_at = max(next_at + period, clock.now())
            await clock.sleep_until(next_at)
