"""The topics of the MQTT line I/O protocol (docs/mqtt-protocol.md): names and their parsing.

Part of the one codec, :mod:`drivers.lineio.mqtt_codec`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TopicKind = Literal["divert", "reply", "cancel", "heartbeat", "controller_status",
                    "node_status", "events", "encoder"]
_FIXED_TOPICS: dict[str, TopicKind] = {
    "heartbeat": "heartbeat", "controller/status": "controller_status", "events": "events",
    "encoder": "encoder"}


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic is: its kind and the diverter or node it names (``""`` if none)."""

    kind: TopicKind
    name: str = ""


class Topics:
    """The topics of one line under ``<prefix>/<line>/io``."""

    def __init__(self, prefix: str, line: str) -> None:
        self.base = f"{prefix}/{line}/io"
        self.heartbeat = f"{self.base}/heartbeat"
        self.controller_status = f"{self.base}/controller/status"
        self.events = f"{self.base}/events"
        self.encoder = f"{self.base}/encoder"

    def divert(self, diverter_id: str) -> str:
        return f"{self.base}/divert/{diverter_id}"

    def reply(self, diverter_id: str) -> str:
        return f"{self.base}/divert/{diverter_id}/reply"

    def cancel(self, diverter_id: str) -> str:
        return f"{self.base}/cancel/{diverter_id}"

    def node_status(self, node_id: str) -> str:
        return f"{self.base}/nodes/{node_id}/status"

    def controller_subscriptions(self, qos: int, *, sensors: bool) -> list[tuple[str, int]]:
        """What the controller subscribes to: replies and statuses, with sensors their feed."""
        subs = [(f"{self.base}/divert/+/reply", qos), (f"{self.base}/nodes/+/status", qos)]
        if sensors:
            subs += [(self.events, qos), (self.encoder, 0)]
        return subs

    def parse(self, topic: str) -> Route | None:
        """The route of ``topic``; None for a topic outside this protocol."""
        if not topic.startswith(self.base + "/"):
            return None
        rest = topic[len(self.base) + 1:]
        kind = _FIXED_TOPICS.get(rest)
        if kind is not None:
            return Route(kind)
        match rest.split("/"):
            case ["divert", name, "reply"]:
                return Route("reply", name)
            case ["divert", name]:
                return Route("divert", name)
            case ["cancel", name]:
                return Route("cancel", name)
            case ["nodes", name, "status"]:
                return Route("node_status", name)
        return None
