"""An emulated diverter node: takes diverts to the physical line, answers, cancels, fails safe.

It takes ``divert/<id>`` commands to :meth:`PhysicalLine.accept_divert` and answers on
``divert/<id>/reply`` with the command's correlation id; a command id it already holds is
answered ``accepted`` and kept as it is, not scheduled twice. ``cancel/<id>`` drops a
scheduled divert (a cancel that arrives before its divert is remembered, so the divert is
then ignored). A divert whose body is bad but whose ``corr`` is readable is refused with
reason ``fault``.

**Fail-safe.** A node that has seen no controller heartbeat for ``failsafe_ms`` (also when
it is the node that lost the broker) drops every divert it holds, refuses new ones with
reason ``fault`` and counts a trip; the next heartbeat arms it again. A node starts unarmed:
it takes commands once it has heard the controller. Its retained status says which: ``safe``
while unarmed (holding nothing), ``online`` while armed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import aiomqtt

from controller.lineio import DivertReply
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.aiomqtt_fast import send_now
from sim_hardware.mqtt_node import MqttNode

if TYPE_CHECKING:
    from sim_hardware.mqtt_nodes import MqttNodes

log = logging.getLogger(__name__)

TOMBSTONES = 1024  # cancels remembered for diverts not (yet) seen
TAKEN_MEMORY = 65_536  # command ids this node took, so only one of them is looked up as held


class DiverterNode(MqttNode):
    """One diverter as its own networked node."""

    def __init__(self, owner: MqttNodes, diverter_id: str) -> None:
        super().__init__(owner, diverter_id)
        topics = self.topics
        self.divert_topic = topics.divert(diverter_id)
        self.cancel_topic = topics.cancel(diverter_id)
        self.reply_topic = topics.reply(diverter_id)
        self.heartbeat_topic = topics.heartbeat
        self.armed = False
        self.last_heartbeat = owner.clock.now()
        self.session: str | None = None
        self._heard = asyncio.Event()
        self._tombstones: OrderedDict[int, None] = OrderedDict()
        self._taken: OrderedDict[int, None] = OrderedDict()  # accepted by the line, ever
        self._replies: set[asyncio.Task[None]] = set()

    async def on_connect(self, client: aiomqtt.Client) -> None:
        qos = self.owner.qos
        await client.subscribe([(self.divert_topic, qos), (self.cancel_topic, qos),
                                (self.heartbeat_topic, 0)])

    def status(self) -> codec.NodeStatus:
        return "online" if self.armed else "safe"

    def on_message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        if topic == self.heartbeat_topic:
            self._on_heartbeat(payload)
        elif topic == self.divert_topic:
            self._on_divert(client, topic, payload)
        elif topic == self.cancel_topic:
            self._on_cancel(payload)
        else:
            super().on_message(client, topic, payload)

    # --- the fail-safe ---------------------------------------------------------------------

    def _on_heartbeat(self, payload: bytes) -> None:
        beat = codec.decode_heartbeat(payload)
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
            command = codec.decode_divert(payload, self.node_id)
        except codec.BadPayload as exc:
            self.owner.bad(exc.kind, self.node_id, topic, payload)
            corr = codec.readable_corr(payload)
            if corr is not None:
                self._reply(client, DivertReply(corr, False, "fault"))
            return
        stats.diverts += 1
        if command.command_id in self._tombstones:
            stats.ignored_after_cancel += 1
            return
        line = self.owner.line
        if not self.armed:
            stats.refused_unarmed += 1
            reply = DivertReply(command.command_id, False, "fault")
        elif command.command_id in self._taken:
            # the line keeps a command id it already holds as it is and answers accepted
            held = line.scheduled_diverts([self.node_id])
            reply = line.accept_divert(command)
            if reply.accepted and line.scheduled_diverts([self.node_id]) == held:
                stats.already_held += 1
        else:  # not taken through this node: no look-up (it walks every divert the line holds)
            reply = line.accept_divert(command)
            if reply.accepted:
                self._taken[command.command_id] = None
                if len(self._taken) > TAKEN_MEMORY:
                    self._taken.popitem(last=False)
        if reply.accepted:
            stats.accepted += 1
        else:
            stats.refused += 1
        self._reply(client, reply)

    def _on_cancel(self, payload: bytes) -> None:
        cancel = codec.decode_cancel(payload)
        self.owner.stats.cancels += 1
        if self.owner.line.cancel_divert(cancel.command_id):
            self.owner.stats.cancelled += 1
        else:  # not held (yet): if its divert comes later, it must not be taken
            self._tombstones[cancel.command_id] = None
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _reply(self, client: aiomqtt.Client, reply: DivertReply) -> None:
        owner = self.owner
        if owner.drop_replies and owner.rng.random() < owner.drop_replies:
            owner.stats.replies_dropped += 1
            return
        payload = codec.encode_reply(reply)
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
