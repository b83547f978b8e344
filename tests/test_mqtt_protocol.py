"""docs/mqtt-protocol.md against the codec: its test vectors both ways, its tables, its limits."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from controller.errors import MessageError
from controller.lineio import (
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    PhotoEyeEdge,
)
from drivers.lineio import mqtt_codec as codec
from tests.conftest import ROOT

DOC = ROOT / "docs" / "mqtt-protocol.md"
TOPICS = codec.Topics("sorter", "line1")
VALUES: dict[str, Any] = {cls.__name__: cls for cls in (
    DivertCommand, DivertReply, codec.Cancel, codec.Heartbeat, codec.Ack, codec.SensorEvent,
    PhotoEyeEdge, BinEntry, BinLevel, DeviceFault)}


def _value(node: ast.expr) -> Any:
    """Evaluate a vector's ``value`` without eval: literals and the codec's value types."""
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name), ast.dump(node)
        assert not node.args, "values are written with keywords"
        cls = VALUES[node.func.id]
        return cls(**{str(k.arg): _value(k.value) for k in node.keywords})
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True)
                if k is not None}
    return ast.literal_eval(node)


def _vectors() -> list[dict[str, str]]:
    blocks = re.findall(r"```mqtt-vector\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    vectors = []
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.rstrip("\n").split("\n"):
            key, _, rest = line.partition(" ")
            assert key not in fields, f"{key} twice in {block!r}"
            fields[key] = rest.strip()
        vectors.append(fields)
    return vectors


def _payload(vector: dict[str, str]) -> bytes:
    if "hex" in vector:
        return bytes.fromhex(vector["hex"])
    return vector["payload"].encode()


def _encode(kind: str, value: Any) -> bytes:
    match kind:
        case "divert":
            return codec.encode_divert(value)
        case "reply":
            return codec.encode_reply(value)
        case "cancel":
            return codec.encode_cancel(value.command_id)
        case "heartbeat":
            return codec.encode_heartbeat(value)
        case "events":
            return codec.encode_event(value)
        case "encoder":
            return codec.encode_encoder(value)
        case _:
            return b"" if value is None else codec.encode_status(value)


VECTORS = _vectors()
VALID = [v for v in VECTORS if "value" in v]
REFUSED = [v for v in VECTORS if "error" in v]


def test_the_document_has_vectors_for_every_topic_and_every_refusal() -> None:
    assert len(VALID) + len(REFUSED) == len(VECTORS), "each vector has a value or an error"
    assert all(set(v) <= {"name", "topic", "payload", "hex", "value", "canonical", "error",
                          "corr"} for v in VECTORS)
    kinds = {route.kind for v in VALID if (route := TOPICS.parse(v["topic"])) is not None}
    assert kinds == set(codec.TopicKind.__args__)  # type: ignore[attr-defined]
    assert {v["error"] for v in REFUSED} == {
        "bad_reply", "bad_divert", "bad_cancel", "bad_heartbeat", "bad_event", "bad_encoder",
        "bad_status", "unknown_topic"}


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_a_valid_vector_decodes_to_its_value_and_encodes_back(vector: dict[str, str]) -> None:
    route = TOPICS.parse(vector["topic"])
    assert route is not None, vector["topic"]
    payload = _payload(vector)
    value = _value(ast.parse(vector["value"], mode="eval").body)
    assert codec.decode(route, payload) == value
    encoded = _encode(route.kind, value)
    canonical = vector.get("canonical", vector.get("payload", "")).encode()
    assert encoded == canonical
    assert codec.decode(route, encoded) == value
    if payload and payload[:1] == b"{":  # the JSON the codec writes says the same
        assert json.loads(encoded) == json.loads(canonical)


@pytest.mark.parametrize("vector", REFUSED, ids=[v["name"] for v in REFUSED])
def test_a_refused_vector_is_refused_with_its_kind(vector: dict[str, str]) -> None:
    route = TOPICS.parse(vector["topic"])
    payload = _payload(vector)
    if route is None:
        assert vector["error"] == "unknown_topic"
        return
    with pytest.raises(codec.BadPayload) as refused:
        codec.decode(route, payload)
    assert refused.value.kind == vector["error"]
    assert isinstance(refused.value, MessageError)
    if "corr" in vector:
        assert route.kind == "divert"
        expected = None if vector["corr"] == "none" else int(vector["corr"])
        assert codec.readable_corr(payload) == expected


def test_the_size_limit_comes_first() -> None:
    reply = TOPICS.parse(TOPICS.reply("D1"))
    assert reply is not None
    body = b'{"corr":1,"accepted":true}'
    at_limit = body[:-1] + b" " * (codec.MAX_PAYLOAD - len(body)) + b"}"
    assert len(at_limit) == codec.MAX_PAYLOAD
    assert codec.decode(reply, at_limit) == DivertReply(1, True, "")
    with pytest.raises(codec.BadPayload) as refused:
        codec.decode(reply, at_limit[:-1] + b" }")
    assert refused.value.kind == "too_large"


def test_a_long_fault_is_cut_to_what_its_receiver_takes() -> None:
    event = codec.SensorEvent("sensors", "b", 1, DeviceFault("d" * 100, "m" * 900))
    decoded = codec.decode_event(codec.encode_event(event))
    assert decoded.event == DeviceFault("d" * codec.MAX_DEVICE, "m" * codec.MAX_MESSAGE)


# --- the document's tables ------------------------------------------------------------------


def _section(number: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^### {re.escape(number)} .*?(?=^### |^## )", text, re.M | re.S)
    assert match is not None, number
    return match.group(0)


def _first_column(section: str) -> list[str]:
    rows = [line.split("|")[1].strip() for line in section.splitlines()
            if line.startswith("| `")]
    return [row.strip("`") for row in rows]


@pytest.mark.parametrize(("number", "model"), [
    ("2.1", codec.DivertPayload), ("2.2", codec.ReplyPayload), ("2.3", codec.CancelPayload),
    ("2.4", codec.HeartbeatPayload), ("2.6", codec.EncoderPayload)])
def test_a_payload_table_lists_its_models_fields(number: str, model: type[BaseModel]) -> None:
    assert _first_column(_section(number)) == list(model.model_fields)


def test_the_event_tables_list_the_event_models_fields() -> None:
    section = _section("2.5")
    common, by_kind = section.split("| `kind` | fields |")
    assert _first_column(common) == ["node", "boot", "seq", "kind", "first"]
    shared = {"node", "boot", "seq", "first", "kind"}
    models = {"eye": codec.EyePayload, "bin_entry": codec.BinEntryPayload,
              "bin_level": codec.BinLevelPayload, "fault": codec.FaultPayload}
    rows = [line.split("|")[1:3] for line in by_kind.splitlines() if line.startswith("| `")]
    assert {kind.strip(" `") for kind, _ in rows} == set(models)
    for kind, fields in rows:
        model = models[kind.strip(" `")]
        assert re.findall(r"`(\w+)`", fields) == [f for f in model.model_fields
                                                  if f not in shared], kind


def test_the_topic_table_is_what_the_codec_builds_and_parses() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("| topic (after")[1].split("\n\n")[0]
    topics = [line.split("|")[1].strip(" `") for line in table.splitlines()[2:]]
    built = {"divert/<diverter>": TOPICS.divert("D3"), "divert/<diverter>/reply":
             TOPICS.reply("D3"), "cancel/<diverter>": TOPICS.cancel("D3"),
             "heartbeat": TOPICS.heartbeat, "controller/status": TOPICS.controller_status,
             "nodes/<node>/status": TOPICS.node_status("D3"), "events": TOPICS.events,
             "encoder": TOPICS.encoder}
    assert topics == list(built)
    for pattern, topic in built.items():
        assert topic == "sorter/line1/io/" + pattern.replace("<diverter>", "D3").replace(
            "<node>", "D3")
        route = TOPICS.parse(topic)
        assert route is not None
        assert route.name in ("", "D3")
    assert TOPICS.parse("sorter/line2/io/heartbeat") is None
    assert TOPICS.parse("sorter/line1/io/divert") is None


def test_the_emulated_nodes_use_the_codec_not_the_driver() -> None:
    """DESIGN: one codec for both sides; the emulator is hardware, so never the driver."""
    code = ("import sys, sim_hardware.mqtt_nodes; "
            "print(sorted(m for m in sys.modules if m.startswith('drivers.lineio.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    loaded = set(ast.literal_eval(out))
    assert "drivers.lineio.mqtt_codec" in loaded
    assert not loaded & {"drivers.lineio.mqtt", "drivers.lineio.mqtt_book"}, loaded
