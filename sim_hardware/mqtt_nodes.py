"""The emulated line's networked diverter nodes (and sensor node) on a real MQTT broker.

Each diverter is its own node, as on a real line (:mod:`sim_hardware.mqtt_diverter`): one
MQTT client whose id is the diverter's id, with a retained ``nodes/<id>/status`` and
``offline`` as its Last Will. With ``sensors=True`` a ``sensors`` node
(:mod:`sim_hardware.mqtt_sensors`) forwards the line's events and encoder count. The topics
and payloads are docs/mqtt-protocol.md, encoded and decoded by the codec the driver uses too
(:mod:`drivers.lineio.mqtt_codec`), never by the driver itself: a bad payload is counted and
logged once per kind.

Every client reconnects with backoff and jitter, like a real node. Fault hooks for tests:
``drop_replies`` (probability a reply is not sent, the divert still being taken) and
``reply_delay_s``, drawn from a seeded generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from types import TracebackType

from controller.clock import Clock
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.tasks import cancel_and_wait
from sim_hardware.line import PhysicalLine
from sim_hardware.mqtt_diverter import DiverterNode
from sim_hardware.mqtt_node import MqttNode, NodeStats
from sim_hardware.mqtt_sensors import SENSOR_NODE, SensorNode

__all__ = ["SENSOR_NODE", "DiverterNode", "MqttNode", "MqttNodes", "NodeStats", "SensorNode"]

log = logging.getLogger(__name__)


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
        self.topics = codec.Topics(topic_prefix, line_name)
        self.base = self.topics.base
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
        self.diverter_nodes = {d: DiverterNode(self, d) for d in ids}
        self.sensor_node = SensorNode(self) if sensors else None
        self._bad_logged: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def _nodes(self) -> list[MqttNode]:
        nodes: list[MqttNode] = list(self.diverter_nodes.values())
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
