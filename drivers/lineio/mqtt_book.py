"""What the MQTT driver knows of its link, with no I/O: the sans-I/O half of MqttLineIO.

The command book correlates replies with the diverts waiting for them, remembers the
diverts given up on (their cancels go out again) and those each node accepted and still
has to carry out (sent again when the node comes back ``online``), follows each node's
status, and numbers the sensor events in (de-duplicated, in order). It never touches a
socket, a task or the clock: the time and the encoder count are passed in, and what the
shell must send comes back as values. docs/mqtt-protocol.md describes the rules.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from controller.lineio import DeviceFault, DivertCommand, DivertReply, LineEvent, LinkState
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.held import HeldDiverts
from drivers.lineio.mqtt_codec import Ack, BadPayload, NodeStatus, SensorEvent
from drivers.lineio.mqtt_events import EventQueue
from drivers.lineio.mqtt_stats import MqttStats

__all__ = ["CommandBook", "Inbound", "MqttStats"]

log = logging.getLogger(__name__)

DEVICE = "mqtt"

GAVE_UP_MEMORY = 4096  # command ids given up on, to tell a late reply from a stray one
RECANCEL_S = 30.0  # a divert given up on this recently may still be held by its node
SCHEDULED_MEMORY = 256  # accepted diverts kept to restore when no encoder count is known
ANSWER_MEMORY = 4096  # replies remembered per command id, to notice a second, different one
SENSOR_NODES = frozenset({"sensors"})  # the sensor node ids a line has by default


@dataclass(frozen=True, slots=True)
class Inbound:
    """What a message from the broker asks of the shell."""

    answer: DivertReply | None = None  # the reply a divert waits for: hand it over
    queued: bool = False  # line events were queued: wake their reader
    repeat_cancels: str | None = None  # this node is online: send it the recent cancels
    restore: str | None = None  # online after something else: send it its still-due diverts


NOTHING = Inbound()


@dataclass(slots=True)
class _Waiting:
    diverter: str
    answered: bool = False


class CommandBook:
    """Diverts in flight and held, node states and sensor event numbering of one link."""

    def __init__(self, topics: codec.Topics, diverters: Iterable[str], *, sensors: bool,
                 where: str = "", sensor_nodes: Iterable[str] = SENSOR_NODES) -> None:
        self.topics = topics
        self.diverters = frozenset(diverters)
        self.sensors = sensors
        # only these node ids are followed: state per node is bounded by the config
        self.sensor_nodes = frozenset(sensor_nodes) if sensors else frozenset()
        self.known_nodes = self.diverters | self.sensor_nodes
        self.where = where  # the broker, for log lines
        self.stats = MqttStats()
        self.queue = EventQueue()  # what the controller takes from the link, in order
        self.state = LinkState.CONNECTING
        self._down_since: float | None = None
        self._waiting: dict[int, _Waiting] = {}
        # given up on: id -> (diverter, when); their cancels go out again after a reconnect,
        # since one sent just before a loss may never have reached the broker
        self._gave_up: OrderedDict[int, tuple[str, float]] = OrderedDict()
        self._cancel_later: dict[int, str] = {}  # cancels that could not be sent yet
        self._nodes: dict[str, NodeStatus] = {}
        self._reported_offline: set[str] = set()
        self._seen: dict[str, tuple[str, int]] = {}  # node -> (boot, last seq delivered)
        self._held = HeldDiverts()  # accepted, not yet due: what each node should hold
        self._restoring: dict[int, str] = {}  # sent again, reply not yet taken: id -> node
        self._logged: set[str] = set()
        # command id -> (diverter, accepted, reason) of the first reply taken
        self._answers: OrderedDict[int, tuple[str, bool, str]] = OrderedDict()

    # --- the link ------------------------------------------------------------------------

    def went_up(self, now: float, client_id: str) -> None:
        """Connected and subscribed; statuses are rebuilt from the retained ones."""
        self.stats.connects += 1
        if self.state is LinkState.DOWN:
            self.stats.reconnects += 1
            down = now - (self._down_since if self._down_since is not None else now)
            log.warning("mqtt %s: link up again after %.1f s", self.where, down)
        else:
            log.info("mqtt %s: connected as %s", self.where, client_id)
        self._down_since = None
        self.state = LinkState.UP

    def went_down(self, reason: str, now: float) -> bool:
        """The link is lost (or could not be made); True if this begins an outage, whose
        fault is then queued for the controller."""
        self.stats.last_error = reason
        began = self.state is not LinkState.DOWN
        if began:
            self.stats.outages += 1
            self._down_since = now
            log.warning("mqtt %s: link down: %s (reconnecting with backoff)", self.where,
                        reason)
            self.queue.push(DeviceFault(DEVICE, f"link down: {reason}"))
        else:
            log.debug("mqtt %s: still down: %s", self.where, reason)
        self.state = LinkState.DOWN
        return began

    def closed(self) -> None:
        """Closed on purpose: down, but not an outage."""
        self.state = LinkState.DOWN
        self.stats.last_error = "closed"

    # --- what comes in ---------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes) -> Inbound:
        """Take one message from the broker; a bad one is counted, logged and ignored."""
        try:
            return self._take(topic, payload)
        except BadPayload as exc:
            self.refused(exc, topic, payload)
            return NOTHING

    def _take(self, topic: str, payload: bytes) -> Inbound:
        codec.check_size(payload)
        match self.topics.parse(topic):
            case codec.Route(kind="reply", name=diverter):
                if diverter not in self.diverters:
                    raise BadPayload("unknown_diverter")
                reply = codec.decode_reply(payload)
                return Inbound(answer=reply) if self.take_reply(diverter, reply) else NOTHING
            case codec.Route(kind="node_status", name=node):
                status = codec.decode_node_status(node, payload)
                if node not in self.known_nodes:  # another link's node, or a made-up one
                    self.stats.foreign_statuses += 1
                    return NOTHING
                return self.on_status(node, status)
            case codec.Route(kind="events") if self.sensors:
                message = codec.decode_event(payload)
                self._known_sensor(message.node)
                event = self.on_event(message)
                if event is None:
                    return NOTHING
                self.queue.push(event)
                return Inbound(queued=True)
            case codec.Route(kind="encoder") if self.sensors:
                enc = codec.decode_encoder(payload)
                self.forget_due(enc)
                self.queue.count(enc)
                return NOTHING
        raise BadPayload("unknown_topic")

    def _known_sensor(self, node: str) -> None:
        if node not in self.sensor_nodes:
            self.stats.unknown_nodes += 1
            raise BadPayload("unknown_node", f"node {node[:40]!r} is not configured")

    def refused(self, error: BadPayload, topic: str, payload: bytes) -> None:
        """Count a payload refused; log the first of each kind (the rest at debug)."""
        kind = error.kind
        self.stats.bad_payloads += 1
        self.stats.bad_by_kind[kind] = self.stats.bad_by_kind.get(kind, 0) + 1
        text = f"mqtt {self.where}: refused a message on {topic[:120]!r} ({kind}"
        text += f": {error.detail[:200]}" if error.detail else ""
        text += f"): {len(payload)} bytes {payload[:60]!r}"
        if kind in self._logged:
            log.debug("%s", text)
        else:
            self._logged.add(kind)
            log.warning("%s; further ones of this kind are only counted", text)

    # --- correlation -----------------------------------------------------------------------

    def is_waiting(self, command_id: int) -> bool:
        return command_id in self._waiting

    def sent(self, command: DivertCommand) -> None:
        """A divert went out; its reply is awaited under its command id."""
        self._waiting[command.command_id] = _Waiting(command.diverter_id)
        self.stats.commands += 1

    def take_reply(self, diverter: str, reply: DivertReply) -> bool:
        """Correlate a reply from ``diverter`` (a diverter of this link) by its command id:
        True if it is the answer a divert waits for, False if the book took it (a QoS 1
        duplicate, the answer to a divert sent again, a late one); BadPayload for a stray."""
        waiting = self._waiting.get(reply.command_id)
        if waiting is None:
            if self._restoring.get(reply.command_id) == diverter:
                self._restore_answered(diverter, reply)  # a new answer: may differ
            elif reply.command_id in self._gave_up:
                self._compare(diverter, reply)
                self.stats.late_replies += 1
                log.debug("mqtt: reply to divert %d after it was given up on", reply.command_id)
            elif reply.command_id in self._answers:
                self._compare(diverter, reply)  # answered already: a duplicate, or a liar
            else:
                raise BadPayload("unknown_corr")
            return False
        if diverter != waiting.diverter:
            raise BadPayload("wrong_diverter",
                             f"divert {reply.command_id} went to {waiting.diverter}")
        self._compare(diverter, reply)
        if waiting.answered:
            return False
        waiting.answered = True
        self.stats.replies += 1
        if not reply.accepted:
            self.stats.refused += 1
        return True

    def _compare(self, diverter: str, reply: DivertReply) -> None:
        """Remember the first reply per command id; count and log one that says otherwise."""
        first = self._answers.get(reply.command_id)
        now = (diverter, reply.accepted, reply.reason)
        if first is None:
            self._answers[reply.command_id] = now
            while len(self._answers) > ANSWER_MEMORY:
                self._answers.popitem(last=False)
        elif first != now:
            self.stats.conflicting_replies += 1
            log.warning("mqtt %s: divert %d answered twice, differently: %s then %s "
                        "(forged or confused node; the first was taken)", self.where,
                        reply.command_id, first, now)

    def settled(self, command_id: int) -> None:
        """The divert's caller stopped waiting (answered, timed out or failed)."""
        self._waiting.pop(command_id, None)

    # --- cancels ---------------------------------------------------------------------------

    def give_up(self, command_id: int, diverter: str, now: float) -> None:
        """No answer in time (or the link dropped): remember it, its cancel is due."""
        self._gave_up[command_id] = (diverter, now)
        while len(self._gave_up) > GAVE_UP_MEMORY:
            self._gave_up.popitem(last=False)

    def taken_back(self, command_id: int) -> None:
        """The controller cancelled a divert: not held any more, not to be restored."""
        self._held.drop(command_id)
        self._restoring.pop(command_id, None)

    def cancel_unsent(self, command_id: int, diverter: str) -> None:
        """A cancel that could not go out now: it goes with the next connection."""
        self._cancel_later[command_id] = diverter

    def cancel_sent(self, command_id: int) -> None:
        self._cancel_later.pop(command_id, None)

    def cancels_to_repeat(self, now: float, node: str | None = None) -> dict[int, str]:
        """Cancels to send on a new connection (or to ``node``, back): unsent and recent ones."""
        since = now - RECANCEL_S
        recent = {cid: d for cid, (d, at) in self._gave_up.items() if at >= since}
        cancels = recent | self._cancel_later
        if node is None:
            return cancels
        return {cid: d for cid, d in cancels.items() if d == node}

    # --- what the nodes hold ---------------------------------------------------------------

    def accepted(self, command: DivertCommand, enc: int | None) -> None:
        """An accepted divert: remember it until the count ``enc`` passes it."""
        self.forget_due(enc)
        self._held.hold(command)
        if enc is None:
            # no encoder count to tell which are due: bound what is kept (the node refuses
            # an older one sent again as late anyway)
            self._forgotten(self._held.keep_earliest_due(SCHEDULED_MEMORY))

    def forget_due(self, enc: int | None) -> None:
        """Forget the diverts due by ``enc``: their node carried them out, or never will."""
        if enc is None:
            return
        next_due = self._held.next_due()
        if next_due is not None and next_due <= enc:
            self._forgotten(self._held.forget_due(enc))

    def forget_held(self) -> None:
        """The line's count began again: none of the accepted diverts is to be sent again
        (restores on their way keep their entry: their replies are known)."""
        self._held.clear()

    def held(self, enc: int | None) -> dict[str, list[DivertCommand]]:
        """The accepted diverts not yet due, per diverter."""
        self.forget_due(enc)
        held: dict[str, list[DivertCommand]] = {}
        for command in self._held:
            held.setdefault(command.diverter_id, []).append(command)
        return held

    def to_restore(self, node: str, enc: int | None) -> list[DivertCommand]:
        """What ``node`` accepted and is still due: it goes to it again, same command ids."""
        self.forget_due(enc)
        return [c for c in self._held if c.diverter_id == node]

    def restore_sent(self, command: DivertCommand) -> None:
        self._restoring[command.command_id] = command.diverter_id
        self.stats.restored += 1

    def _restore_answered(self, diverter: str, reply: DivertReply) -> None:
        del self._restoring[reply.command_id]
        if reply.accepted:
            return
        self.stats.restore_refused += 1
        log.warning("mqtt: node %s refused restored divert %d (%s)", diverter,
                    reply.command_id, reply.reason)
        if reply.reason != "fault":  # "fault": in its fail-safe again; restored once armed
            self._held.drop(reply.command_id)

    def _forgotten(self, command_ids: list[int]) -> None:
        for command_id in command_ids:
            self._restoring.pop(command_id, None)

    # --- node states -----------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, NodeStatus]:
        return dict(self._nodes)

    def node_offline(self, node: str) -> bool:
        return self._nodes.get(node) == "offline"

    def connecting(self) -> None:
        """A new connection: statuses are rebuilt from the retained ones the broker has."""
        self._nodes.clear()

    def on_status(self, node: str, status: NodeStatus | None) -> Inbound:
        """A node's retained status (None: cleared)."""
        if status is None:
            self._nodes.pop(node, None)
            return NOTHING
        before = self._nodes.get(node)
        self._nodes[node] = status
        if status == "safe" and before == "online":
            self.stats.node_failsafes += 1
            log.warning("mqtt: node %s is in its fail-safe (it dropped the diverts it held)",
                        node)
        if status == "offline":
            if node in self._reported_offline:
                return NOTHING
            self._reported_offline.add(node)
            self.stats.nodes_offline += 1
            log.warning("mqtt: node %s is offline", node)
            self.queue.push(DeviceFault(f"node {node}", "offline (lost or shut down)"))
            return Inbound(queued=True)
        if status == "online":
            if node in self._reported_offline:
                self._reported_offline.discard(node)
                log.warning("mqtt: node %s is online again", node)
            # it may have lost what it held: harmless if not, it keeps a command id it holds
            return Inbound(repeat_cancels=node, restore=node if before != "online" else None)
        return NOTHING

    # --- sensor events ---------------------------------------------------------------------

    def acks(self) -> dict[str, Ack]:
        """For the heartbeat: the last event taken from each sensor node's boot."""
        return {node: Ack(boot, seq) for node, (boot, seq) in self._seen.items()}

    def on_event(self, message: SensorEvent) -> LineEvent | None:
        """The event to deliver, or None: a duplicate, or early (it comes again in order)."""
        seen = self._seen.get(message.node)
        first = message.seq if message.first is None else message.first
        if seen is not None and seen[0] == message.boot:
            last = seen[1]
            if message.seq <= last:
                self.stats.duplicate_events += 1
                return None
            due = max(last + 1, first)  # the next one we can still get
        else:
            if seen is not None:
                self.stats.node_restarts += 1
                log.warning("mqtt: sensor node %s restarted (boot %s)", message.node,
                            message.boot)
            last, due = first - 1, first
        if message.seq > due:
            # one before it was lost on the way (sent while we were not subscribed): in
            # order only, so this one waits for the node to send again from the gap
            self.stats.early_events += 1
            return None
        if due > last + 1:
            self.stats.missed_events += due - last - 1
            log.warning("mqtt: %d events of node %s were lost for good (its backlog "
                        "overflowed): seq %d after %d", due - last - 1, message.node,
                        message.seq, last)
        self._seen[message.node] = (message.boot, message.seq)
        self.stats.events += 1
        return message.event
