"""One emulated networked device on the broker: its own client, reconnecting for its whole life.

A node announces a retained ``nodes/<id>/status`` on every connect and on every change, with
``offline`` as its Last Will (docs/mqtt-protocol.md). The kinds of node
(:mod:`sim_hardware.mqtt_diverter`, :mod:`sim_hardware.mqtt_sensors`) say what they
subscribe to, what they do with a message and which helpers run while connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from drivers.backoff import Backoff
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.aiomqtt_fast import NODELAY, Inbox, end_misc_loop, send_now, write_soon
from drivers.lineio.tasks import cancel_and_wait

if TYPE_CHECKING:
    from sim_hardware.mqtt_nodes import MqttNodes

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0
PUBLISH_BATCH = 32  # events in flight at once from the sensor node
SAY_OFFLINE_S = 0.5

Helper = tuple[str, Coroutine[Any, Any, None]]


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


class MqttNode:
    """One networked device: its own client, reconnecting with backoff for its whole life."""

    def __init__(self, owner: MqttNodes, node_id: str) -> None:
        self.owner = owner
        self.node_id = node_id
        self.topics: codec.Topics = owner.topics
        self.status_topic = self.topics.node_status(node_id)
        self.connected = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.backoff = Backoff(0.05, owner.backoff_cap_s, rng=random.Random(owner.rng.random()))
        self._ever_connected = False
        self._down_logged = False
        self._announced: codec.NodeStatus | None = None  # published on this connection

    def _new_client(self) -> aiomqtt.Client:
        owner = self.owner
        username, password = owner.credentials.get(self.node_id, (None, None))
        client = aiomqtt.Client(
            owner.host, owner.port, identifier=f"{owner.line_name}-node-{self.node_id}",
            username=username, password=password, keepalive=owner.keepalive_s,
            clean_session=True, timeout=CALL_TIMEOUT_S, socket_options=NODELAY,
            will=aiomqtt.Will(self.status_topic, codec.encode_status("offline"), qos=1,
                              retain=True),
            logger=log.getChild("client"))
        client.pending_calls_threshold = 2 * PUBLISH_BATCH + 16  # a batch of events in flight
        return client

    async def run(self) -> None:
        clock = self.owner.clock
        while True:
            entered = False
            client: aiomqtt.Client | None = None
            try:
                client = self._new_client()
                inbox = Inbox(client, functools.partial(self._take, client))
                write_soon(client)
                async with client:
                    entered = True
                    await self._serve(client, inbox)
            except aiomqtt.MqttError as exc:
                if not entered:
                    self.owner.stats.connect_failures += 1
                self._lost(f"cannot connect: {exc}" if not entered else str(exc))
            except Exception:  # a bug must not take the node off the line for good
                log.exception("node %s: unexpected error", self.node_id)
            finally:
                self.connected.clear()
                self.client = None
                if client is not None:
                    await end_misc_loop(client)
            await clock.sleep(self.backoff.next_delay())

    async def _serve(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        await self.on_connect(client)
        status = self.status()
        await client.publish(self.status_topic, codec.encode_status(status), qos=1, retain=True)
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
            inbox.open()  # what came while connecting, then each message as it comes
            await inbox.until_lost()
        finally:
            # the helpers loop only while this is their connection, so one that swallowed
            # its cancellation still ends
            self.client = None
            self.connected.clear()
            self.wake_helpers()
            await cancel_and_wait(helpers)

    def _take(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """One message, in paho's read callback (the Inbox): it must not raise there."""
        try:
            codec.check_size(payload)
            self.on_message(client, topic, payload)
        except codec.BadPayload as exc:
            self.owner.bad(exc.kind, self.node_id, topic, payload)
        except Exception:  # a bug must not take the node off the broker
            log.exception("node %s: unexpected error on a message on %r", self.node_id,
                          topic[:120])

    def _lost(self, reason: str) -> None:
        if not self._down_logged:
            self._down_logged = True
            log.info("node %s: no broker (%s), reconnecting", self.node_id, reason)

    async def say_offline(self) -> None:
        """A clean shutdown: say so, since the broker sends the Will only on a loss."""
        client = self.client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.status_topic, codec.encode_status("offline"), qos=1,
                                     retain=True, timeout=SAY_OFFLINE_S)

    def announce(self) -> None:
        """Publish the node's status (retained) if it changed since last published."""
        client = self.client
        status = self.status()
        if client is None or status == self._announced:
            return  # a connect publishes it anyway
        try:
            send_now(client, self.status_topic, codec.encode_status(status), qos=1,
                     retain=True)
        except aiomqtt.MqttError as exc:
            log.debug("node %s: status not sent: %s", self.node_id, exc)
            return
        self._announced = status

    # --- what a kind of node does ----------------------------------------------------------

    def status(self) -> codec.NodeStatus:
        """The retained status to announce while connected."""
        return "online"

    async def on_connect(self, client: aiomqtt.Client) -> None:
        """Subscribe to what this node listens to."""

    def helpers(self, client: aiomqtt.Client) -> list[Helper]:
        """Coroutines that run while connected (they loop while ``self.client is client``)."""
        return []

    def wake_helpers(self) -> None:
        """Let waiting helpers see that their connection is gone."""

    def on_message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """One message on a subscribed topic; BadPayload to have it counted."""
        raise codec.BadPayload("unknown_topic")
