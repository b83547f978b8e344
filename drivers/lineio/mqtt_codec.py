"""The MQTT line I/O protocol of docs/mqtt-protocol.md as one codec: topics, payloads, both ways.

The driver (:mod:`drivers.lineio.mqtt`) and the emulated nodes (:mod:`sim_hardware.mqtt_nodes`)
both speak through it, so the two sides cannot drift apart. Nothing here does I/O. Decoding
is strict (exact types, no extra fields, statuses byte for byte) and refuses with a
:class:`BadPayload` whose ``kind`` names the receiver's counter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from controller.errors import MessageError
from controller.lineio import (
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    PhotoEyeEdge,
)
from drivers.lineio.mqtt_topics import Route as Route  # noqa: PLC0414 - re-exported
from drivers.lineio.mqtt_topics import TopicKind as TopicKind  # noqa: PLC0414 - re-exported
from drivers.lineio.mqtt_topics import Topics as Topics  # noqa: PLC0414 - re-exported

MAX_PAYLOAD = 4096  # bytes; every legitimate message is far below this
MAX_DEVICE = 64  # characters of a fault's device name
MAX_MESSAGE = 500  # characters of a fault's text

Reason = Literal["", "late", "busy", "unknown_diverter", "fault"]  # why a divert was refused
NodeStatus = Literal["online", "safe", "offline"]
ControllerStatus = Literal["online", "offline"]
SensorLineEvent = PhotoEyeEdge | BinEntry | BinLevel | DeviceFault
NODE_STATUSES: dict[bytes, NodeStatus] = {b"online": "online", b"safe": "safe",
                                          b"offline": "offline"}
_COMPACT = (",", ":")
M = TypeVar("M", bound=BaseModel)


class BadPayload(MessageError):
    """A message its receiver refuses; ``kind`` is the counter it goes to (``bad_reply``, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}" if detail else kind)


# --- the decoded values ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancel:
    """Drop the divert with this command id if it has not fired."""

    command_id: int


@dataclass(frozen=True, slots=True)
class Ack:
    """The last event the controller took from a sensor node's boot."""

    boot: str
    seq: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The controller is alive (session, count) and has taken these sensor events."""

    session: str
    n: int
    ack: dict[str, Ack] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SensorEvent:
    """A line event numbered by its node; ``first``: the oldest event the node still holds."""

    node: str
    boot: str
    seq: int
    event: SensorLineEvent
    first: int | None = None


# --- payload models -------------------------------------------------------------------------

ID_PATTERN = r"[A-Za-z0-9_.-]{1,32}"  # the line config's ids, as they appear in topics
Ident = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
Count = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
Boot = Annotated[str, Field(max_length=32)]
_IDENT = re.compile(ID_PATTERN)


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DivertPayload(_Payload):
    corr: Seq
    parcel: Count
    fire_enc: Count
    pulse_ms: Annotated[float, Field(gt=0, le=5000)]


class ReplyPayload(_Payload):
    corr: Seq
    accepted: bool
    reason: Reason = ""


class CancelPayload(_Payload):
    corr: Seq


class AckPayload(_Payload):
    boot: Boot
    seq: Seq


class HeartbeatPayload(_Payload):
    session: Annotated[str, Field(min_length=1, max_length=64)]
    n: Seq
    ack: Annotated[dict[str, AckPayload], Field(max_length=64)] = Field(default_factory=dict)


class EncoderPayload(_Payload):
    enc: Count


class _EventPayload(_Payload):
    node: Ident
    boot: Boot = ""
    seq: Seq
    first: Seq | None = None

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
    device: Annotated[str, Field(min_length=1, max_length=MAX_DEVICE)]
    message: Annotated[str, Field(max_length=MAX_MESSAGE)]


EventPayload = Annotated[EyePayload | BinEntryPayload | BinLevelPayload | FaultPayload,
                         Field(discriminator="kind")]
_EVENT: TypeAdapter[EventPayload] = TypeAdapter(EventPayload)


# --- encoding -------------------------------------------------------------------------------


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=_COMPACT).encode()


def encode_divert(command: DivertCommand) -> bytes:
    """The body of ``divert/<diverter>`` (the diverter is in the topic)."""
    return _json({"corr": command.command_id, "parcel": command.parcel_id,
                  "fire_enc": command.fire_enc, "pulse_ms": command.pulse_ms})


def encode_reply(reply: DivertReply) -> bytes:
    return _json({"corr": reply.command_id, "accepted": reply.accepted, "reason": reply.reason})


def encode_cancel(command_id: int) -> bytes:
    return b'{"corr":%d}' % command_id


def encode_heartbeat(beat: Heartbeat) -> bytes:
    body: dict[str, object] = {"session": beat.session, "n": beat.n}
    if beat.ack:
        body["ack"] = {node: {"boot": a.boot, "seq": a.seq} for node, a in beat.ack.items()}
    return _json(body)


def encode_encoder(enc: int) -> bytes:
    return b'{"enc":%d}' % enc


def encode_status(status: NodeStatus | ControllerStatus) -> bytes:
    return status.encode()


def encode_event(message: SensorEvent) -> bytes:
    body: dict[str, object] = {"node": message.node, "boot": message.boot, "seq": message.seq}
    match message.event:
        case PhotoEyeEdge(eye=eye, blocked=blocked, enc=enc):
            body |= {"kind": "eye", "eye": eye, "blocked": blocked, "enc": enc}
        case BinEntry(bin_id=bin_id, enc=enc):
            body |= {"kind": "bin_entry", "bin": bin_id, "enc": enc}
        case BinLevel(bin_id=bin_id, full=full):
            body |= {"kind": "bin_level", "bin": bin_id, "full": full}
        case DeviceFault(device=device, message=text):
            body |= {"kind": "fault", "device": device[:MAX_DEVICE], "message": text[:MAX_MESSAGE]}
    if message.first is not None:
        body["first"] = message.first
    return _json(body)


# --- decoding -------------------------------------------------------------------------------


def summary(exc: ValidationError) -> str:
    """The first of a validation's errors, short enough for a log line."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "(payload)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def check_size(payload: bytes) -> None:
    """Refuse a payload over :data:`MAX_PAYLOAD` before anything parses it."""
    if len(payload) > MAX_PAYLOAD:
        raise BadPayload("too_large", f"over {MAX_PAYLOAD} bytes")


def _parse(model: type[M], payload: bytes, kind: str) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise BadPayload(kind, summary(exc)) from None


def decode_divert(payload: bytes, diverter_id: str) -> DivertCommand:
    body = _parse(DivertPayload, payload, "bad_divert")
    return DivertCommand(body.corr, body.parcel, diverter_id, body.fire_enc, body.pulse_ms)


def readable_corr(payload: bytes) -> int | None:
    """The ``corr`` of a divert whose body is otherwise bad, so a node can refuse it by name."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    corr = data.get("corr") if isinstance(data, dict) else None
    if isinstance(corr, int) and not isinstance(corr, bool) and 0 <= corr < 2**63:
        return corr
    return None


def decode_reply(payload: bytes) -> DivertReply:
    body = _parse(ReplyPayload, payload, "bad_reply")
    return DivertReply(body.corr, body.accepted, body.reason)


def decode_cancel(payload: bytes) -> Cancel:
    return Cancel(_parse(CancelPayload, payload, "bad_cancel").corr)


def decode_heartbeat(payload: bytes) -> Heartbeat:
    body = _parse(HeartbeatPayload, payload, "bad_heartbeat")
    return Heartbeat(body.session, body.n,
                     {node: Ack(a.boot, a.seq) for node, a in body.ack.items()})


def decode_encoder(payload: bytes) -> int:
    return _parse(EncoderPayload, payload, "bad_encoder").enc


def decode_event(payload: bytes) -> SensorEvent:
    try:
        body = _EVENT.validate_json(payload)
    except ValidationError as exc:
        raise BadPayload("bad_event", summary(exc)) from None
    event: SensorLineEvent
    match body:
        case EyePayload():
            event = PhotoEyeEdge(body.eye, body.blocked, body.enc)
        case BinEntryPayload():
            event = BinEntry(body.bin, body.enc)
        case BinLevelPayload():
            event = BinLevel(body.bin, body.full)
        case FaultPayload():
            event = DeviceFault(body.device, body.message)
    return SensorEvent(body.node, body.boot, body.seq, event, body.first)


def decode_node_status(node_id: str, payload: bytes) -> NodeStatus | None:
    """A node's retained status, exactly as written; None when it was cleared (empty)."""
    if not payload:
        return None
    status = NODE_STATUSES.get(payload)
    if status is None or _IDENT.fullmatch(node_id) is None:
        raise BadPayload("bad_status", "not online, safe or offline from a node id")
    return status


def decode_controller_status(payload: bytes) -> ControllerStatus | None:
    """The controller's retained status; None when cleared."""
    if not payload:
        return None
    status = NODE_STATUSES.get(payload)
    if status is None or status == "safe":
        raise BadPayload("bad_status", "not online or offline")
    return status


Decoded = (DivertCommand | DivertReply | Cancel | Heartbeat | SensorEvent | int
           | NodeStatus | ControllerStatus | None)


def decode(route: Route, payload: bytes) -> Decoded:
    """Any message of the protocol, by its route (size checked first)."""
    check_size(payload)
    match route.kind:
        case "divert":
            return decode_divert(payload, route.name)
        case "reply":
            return decode_reply(payload)
        case "cancel":
            return decode_cancel(payload)
        case "heartbeat":
            return decode_heartbeat(payload)
        case "events":
            return decode_event(payload)
        case "encoder":
            return decode_encoder(payload)
        case "node_status":
            return decode_node_status(route.name, payload)
        case "controller_status":
            return decode_controller_status(payload)
