"""The counters of an MQTT link, for diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    conflicting_replies: int = 0  # a second reply for one command id said otherwise
    unknown_nodes: int = 0  # sensor events from a node id not configured: refused
    foreign_statuses: int = 0  # statuses of nodes this link does not follow: not kept
    dispatch_errors: int = 0  # messages whose handling raised (a bug): logged and dropped
    bad_payloads: int = 0
    bad_by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
