"""The serial frame codec: round trips, hostile input, CRC strength and the documented vectors."""

from __future__ import annotations

import ast
import contextlib
import itertools
import random
import re
import typing
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import ProtocolError
from controller.lineio import DivertReply
from drivers.lineio import wire
from drivers.lineio.wire import (
    MAX_BODY,
    MAX_FRAME,
    SPECS,
    Ack,
    BinEntered,
    BinLevelChanged,
    Cancel,
    Divert,
    DivertAnswer,
    Encoder,
    EyeEdge,
    Fault,
    Fired,
    FrameError,
    FrameReader,
    Heartbeat,
    Hello,
    HelloReply,
    Message,
    MessageError,
    Mode,
    Nak,
    NakReason,
    Packet,
    Reason,
    SetMode,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
    encode_frame,
    is_sequenced,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "serial-protocol.md"

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)
printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ids = st.text(printable, min_size=1, max_size=32)
texts = st.text(printable, max_size=64)
modes = st.sampled_from(Mode)

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, u32, u16),
    HelloReply: st.builds(HelloReply, u32, u32, u16, modes, u64, u16),
    Ack: st.builds(Ack),
    Nak: st.builds(Nak, u16, st.sampled_from(NakReason)),
    Heartbeat: st.builds(Heartbeat, u32, modes),
    Encoder: st.builds(Encoder, u64),
    EyeEdge: st.builds(EyeEdge, ids, st.booleans(), u64),
    BinEntered: st.builds(BinEntered, ids, u64),
    BinLevelChanged: st.builds(BinLevelChanged, ids, st.booleans()),
    DivertAnswer: st.builds(DivertAnswer, u32, st.booleans(), st.sampled_from(Reason)),
    Fired: st.builds(Fired, u32, ids, u64),
    Fault: st.builds(Fault, ids, u8, texts),
    Divert: st.builds(Divert, u32, u32, ids, u64, u16),
    Cancel: st.builds(Cancel, u32),
    SetMode: st.builds(SetMode, modes),
}


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    message = draw(st.one_of(*MESSAGES.values()))
    seq = draw(st.integers(1, 0xFFFF)) if is_sequenced(message) else 0
    direction = SPECS[type(message)].direction
    from_board = draw(st.booleans()) if direction == "both" else direction == "up"
    return Packet(seq, message, draw(u16), from_board)


def _encoded(packet: Packet) -> bytes:
    return encode_frame(packet.seq, packet.message, packet.ack, from_board=packet.from_board)


SAMPLE = [
    Packet(0, Ack(), 7),
    Packet(3, EyeEdge("induct", True, 1_000_000), 65535, from_board=True),
    Packet(7, Divert(1001, 42, "D3", 1_001_200, 80)),
    Packet(0, HelloReply(0xC0FFEE01, 0x1A2B3C4D, 1, Mode.RUN, 2**40 + 5, 3), from_board=True),
    Packet(9, Fault("io-board", 0, "diverter D3 coil open"), from_board=True),
]


def test_every_message_type_is_covered() -> None:
    assert set(MESSAGES) == set(SPECS) == set(typing.get_args(Message))


# --- round trips and the encoder's checks --------------------------------------------------

@given(packets())
def test_every_message_round_trips(packet: Packet) -> None:
    frame = _encoded(packet)
    assert frame.endswith(b"\x00")
    assert 0 not in frame[:-1]
    assert len(frame) - 1 <= MAX_FRAME
    assert decode_frame(frame) == packet
    assert decode_frame(frame[:-1]) == packet
    assert FrameReader().feed(frame) == [packet]


def test_the_longest_message_fits_one_cobs_block() -> None:
    frame = encode_frame(1, Fault("x" * 32, 255, "y" * 64))
    assert len(frame) - 1 == 1 + 6 + 1 + 32 + 1 + 1 + 64 + 2 <= MAX_FRAME


@pytest.mark.parametrize("message", [
    Cancel(-1), Cancel(2**32), Divert(1, 2, "D1", 2**64, 80),
    Divert(1, 2, "D1", 10, 65536), Fault("dev", 256, ""), EyeEdge("", True, 1),
    EyeEdge("x" * 33, True, 1), EyeEdge("é", True, 1), EyeEdge("a\nb", True, 1),
    Fault("dev", 1, "z" * 65),
    SetMode(3),  # type: ignore[arg-type]
    Nak(1, 0),  # type: ignore[arg-type]
    DivertAnswer(1, False, 9),  # type: ignore[arg-type]
])
def test_out_of_range_fields_raise_value_error(message: Message) -> None:
    seq = 1 if is_sequenced(message) else 0
    with pytest.raises(ValueError):  # noqa: PT011 - the field names vary
        encode_frame(seq, message, from_board=False)


@pytest.mark.parametrize("message", [
    Cancel("1"),  # type: ignore[arg-type]
    Cancel(1.0),  # type: ignore[arg-type]
    EyeEdge("x", 1, 5),  # type: ignore[arg-type]
    EyeEdge(b"x", True, 5),  # type: ignore[arg-type]
    Heartbeat(True, 1),  # type: ignore[arg-type]
])
def test_wrong_field_types_raise_type_error(message: Message) -> None:
    with pytest.raises(TypeError):
        encode_frame(1 if is_sequenced(message) else 0, message, from_board=False)


@pytest.mark.parametrize(("seq", "message"), [
    (0, Cancel(1)), (65536, Cancel(1)), (-1, Cancel(1)), (1, Ack()), (5, Heartbeat(1, Mode.RUN)),
])
def test_seq_must_suit_the_message(seq: int, message: Message) -> None:
    with pytest.raises(ValueError, match="seq"):
        encode_frame(seq, message, from_board=False)


@pytest.mark.parametrize("ack", [-1, 65536])
def test_ack_must_fit_its_field(ack: int) -> None:
    with pytest.raises(ValueError, match="ack"):
        encode_frame(0, Ack(), ack, from_board=False)


def test_reason_maps_to_the_controllers_divert_reply() -> None:
    literal = typing.get_type_hints(DivertReply)["reason"]
    assert {reason.text for reason in Reason} == set(typing.get_args(literal))
    assert all(Reason.from_text(reason.text) is reason for reason in Reason)
    assert Reason.OK.text == ""
    assert Reason.UNKNOWN_DIVERTER.text == "unknown_diverter"


# --- hostile input -------------------------------------------------------------------------

def _intact(body: bytes) -> bytes:
    """A frame with a good CRC around whatever body: what a buggy peer would send."""
    return cobs_encode(body + crc16(body).to_bytes(2, "big"))


@given(st.binary(max_size=600))
def test_decoding_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(data)


@given(st.binary(max_size=MAX_BODY + 10))
def test_intact_frames_with_arbitrary_bodies_decode_or_raise_protocol_error(body: bytes) -> None:
    try:
        packet = decode_frame(_intact(body))
    except ProtocolError:
        return
    assert _encoded(packet) == _intact(body) + b"\x00"


@given(st.sampled_from(list(SPECS)), st.binary(max_size=40), st.integers(0, 0xFFFF))
def test_valid_headers_with_arbitrary_payloads(cls: type[Message], payload: bytes,
                                               seq: int) -> None:
    version = 0x83 if SPECS[cls].direction == "up" else 3
    body = bytes([version, SPECS[cls].code]) + seq.to_bytes(2, "big") + b"\x00\x07" + payload
    outcome: Packet | ProtocolError
    try:
        outcome = decode_frame(_intact(body))
    except ProtocolError as exc:
        outcome = exc
    if isinstance(outcome, Packet):
        assert type(outcome.message) is cls
    else:
        assert isinstance(outcome, MessageError)
        assert outcome.seq == seq


@pytest.mark.parametrize(("body", "why"), [
    (bytes([1, 0x22, 0, 1, 0, 0, 0, 0, 0, 1]), "version"),
    (bytes([3, 0x7F, 0, 1, 0, 0]), "unknown message type"),
    (bytes([3, 0x22, 0, 0, 0, 0, 0, 0, 0, 1]), "seq 0"),
    (bytes([3, 0x03, 0, 1, 0, 1]), "unsequenced"),
    (bytes([3, 0x22, 0, 1, 0, 0, 0, 0, 0, 1, 9]), "after"),
    (bytes([3, 0x22, 0, 1, 0, 0, 0, 0, 1]), "short"),
    (bytes([3, 0x03, 0, 0, 0, 5, 9]), "after"),
    (bytes([0x83, 0x13, 0, 1, 0, 0, 1, 0x41, 2]), "boolean"),
    (bytes([0x83, 0x13, 0, 1, 0, 0, 1, 0x07, 1]), "printable"),
    (bytes([0x83, 0x13, 0, 1, 0, 0, 0, 1]), "string of 0 bytes"),
    (bytes([3, 0x23, 0, 1, 0, 0, 3]), "Mode"),
    (bytes([3, 0x04, 0, 0, 0, 0, 0, 1, 0]), "NakReason"),
])
def test_malformed_bodies_raise_message_error(body: bytes, why: str) -> None:
    with pytest.raises(MessageError, match=why):
        decode_frame(_intact(body))


@pytest.mark.parametrize(("frame", "why"), [
    (b"", "empty"), (b"\x00", "empty"), (b"\x05\x01\x02", "past the end"),
    (b"\x03\x01\x00\x02", "inside"), (b"\x02\x01", "too short"),
    (_intact(bytes(MAX_BODY + 1)), "> 253"), (b"\x01" * (MAX_FRAME + 1), "> 253"),
])
def test_garbled_frames_raise_frame_error(frame: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        decode_frame(frame)


def test_a_wrong_crc_is_a_frame_error() -> None:
    raw = bytearray(cobs_decode(encode_frame(7, Cancel(1))[:-1]))
    raw[-1] ^= 1
    with pytest.raises(FrameError, match="CRC"):
        decode_frame(cobs_encode(bytes(raw)))


# --- the incremental reader ----------------------------------------------------------------

def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


@settings(max_examples=200)
@given(st.lists(st.one_of(packets(), st.binary(max_size=700)), max_size=12),
       st.lists(st.integers(0, 10_000), max_size=30))
def test_reader_survives_any_stream_in_any_chunks(parts: list[Packet | bytes],
                                                  cuts: list[int]) -> None:
    stream = b"".join(p if isinstance(p, bytes)
                      else b"\x00" + _encoded(p) for p in parts)
    reader = FrameReader()
    items: list[Packet | ProtocolError] = []
    for chunk in _chunks(stream, cuts):
        items += reader.feed(chunk)
        assert reader.buffered <= MAX_FRAME
    assert all(isinstance(item, Packet | ProtocolError) for item in items)
    got = iter([item for item in items if isinstance(item, Packet)])
    expected = [p for p in parts if isinstance(p, Packet)]
    assert all(any(packet == item for item in got) for packet in expected), "a frame was lost"
    assert reader.stats.frames == sum(isinstance(item, Packet) for item in items)
    assert reader.stats.errors == len(items) - reader.stats.frames


@given(st.binary(max_size=2000), packets(), st.lists(st.integers(0, 3000), max_size=10))
def test_reader_resyncs_after_garbage(garbage: bytes, packet: Packet, cuts: list[int]) -> None:
    reader = FrameReader()
    items: list[Packet | ProtocolError] = []
    frame = _encoded(packet)
    for chunk in _chunks(garbage + b"\x00" + frame, cuts):
        items += reader.feed(chunk)
    assert items[-1] == packet
    assert reader.buffered == 0


def test_an_endless_run_is_dropped_and_reported_once() -> None:
    reader = FrameReader()
    items = []
    for _ in range(100):
        items += reader.feed(b"\x55" * 100)
        assert reader.buffered <= MAX_FRAME
    assert len(items) == 1
    assert isinstance(items[0], FrameError)
    assert reader.stats.bytes_discarded == 10_000
    frame = encode_frame(1, Cancel(5))
    assert reader.feed(b"\x00" + frame) == [Packet(1, Cancel(5))]
    assert reader.stats.errors == 1
    assert reader.stats.frames == 1


def test_empty_frames_are_ignored() -> None:
    frame = encode_frame(0, Ack(), 1, from_board=False)
    assert FrameReader().feed(b"\x00\x00" + frame + b"\x00" + frame) == [Packet(0, Ack(), 1)] * 2


# --- COBS and CRC --------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "encoded"), [
    ("00", "01 01"),
    ("00 00", "01 01 01"),
    ("00 11 00", "01 02 11 01"),
    ("11 22 00 33", "03 11 22 02 33"),
    ("11 22 33 44", "05 11 22 33 44"),
    ("11 00 00 00", "02 11 01 01 01"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(255)).hex(), "01 ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02 ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "01 01"),
    (bytes(range(3, 256)).hex() + "00 01", "fe" + bytes(range(3, 256)).hex() + "02 01"),
])
def test_cobs_matches_the_published_examples(raw: str, encoded: str) -> None:
    """The examples of the COBS article on Wikipedia, without the trailing delimiter."""
    assert cobs_encode(bytes.fromhex(raw)) == bytes.fromhex(encoded)
    assert cobs_decode(bytes.fromhex(encoded)) == bytes.fromhex(raw)


@given(st.binary(max_size=1000))
def test_cobs_round_trips_and_never_emits_zero(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1


def _undetected(raw: bytes, bits: tuple[int, ...]) -> bool:
    value = int.from_bytes(raw, "big")
    for bit in bits:
        value ^= 1 << bit
    flipped = value.to_bytes(len(raw), "big")
    return crc16(flipped[:-2]) == int.from_bytes(flipped[-2:], "big")


def test_crc_catches_every_1_and_2_bit_error() -> None:
    for packet in SAMPLE:
        raw = cobs_decode(_encoded(packet)[:-1])
        width = 8 * len(raw)
        for bit in range(width):
            flipped = int.from_bytes(raw, "big") ^ (1 << bit)
            with pytest.raises(FrameError):
                decode_frame(cobs_encode(flipped.to_bytes(len(raw), "big")))
        missed = [pair for pair in itertools.combinations(range(width), 2)
                  if _undetected(raw, pair)]
        assert missed == [], type(packet.message).__name__


def test_crc_catches_every_3_bit_error() -> None:
    short = cobs_decode(encode_frame(0, Ack(), 7, from_board=False)[:-1])
    assert not any(_undetected(short, bits)
                   for bits in itertools.combinations(range(8 * len(short)), 3))
    rng = random.Random(3)
    for packet in SAMPLE[1:]:
        raw = cobs_decode(_encoded(packet)[:-1])
        triples = (tuple(rng.sample(range(8 * len(raw)), 3)) for _ in range(20_000))
        assert not any(_undetected(raw, bits) for bits in triples)


# --- the protocol document -----------------------------------------------------------------

_ENUMS = {"Mode": Mode, "Reason": Reason, "NakReason": NakReason}


def _message_from_doc(text: str) -> Message:
    """Read ``Divert(command_id=1001, mode=Mode.RUN, ...)`` without eval."""
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.Call)
    assert isinstance(call.func, ast.Name)
    values: dict[str, object] = {}
    for keyword in call.keywords:
        node = keyword.value
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            values[str(keyword.arg)] = _ENUMS[node.value.id][node.attr]
        else:
            values[str(keyword.arg)] = ast.literal_eval(node)
    cls = getattr(wire, call.func.id)
    assert cls in SPECS
    message: Message = cls(**values)
    return message


def _doc_vectors() -> list[dict[str, str]]:
    blocks = re.findall(r"```text\n(message .*?)```", DOC.read_text(), re.DOTALL)
    return [dict(line.split(None, 1) for line in block.strip().splitlines())
            for block in blocks]


def test_the_documents_vectors_decode_to_what_it_says() -> None:
    vectors = _doc_vectors()
    assert {type(_message_from_doc(v["message"])) for v in vectors} == set(SPECS)
    for vector in vectors:
        message = _message_from_doc(vector["message"])
        seq = int(vector["seq"])
        ack = int(vector["ack"])
        from_board = vector["from"] == "board"
        on_wire = bytes.fromhex(vector["wire"])
        body = bytes.fromhex(vector["body"].replace("|", ""))
        crc = bytes.fromhex(vector["crc"])
        packet = Packet(seq, message, ack, from_board)
        assert decode_frame(on_wire) == packet, vector["message"]
        assert FrameReader().feed(on_wire) == [packet]
        assert cobs_decode(on_wire[:-1]) == body + crc
        assert crc16(body).to_bytes(2, "big") == crc
        assert encode_frame(seq, message, ack, from_board=from_board) == on_wire


_TYPE_NAMES = {"mode": "Mode", "reason": "Reason", "nak": "NakReason"}


def test_the_documents_payload_tables_match_the_codec() -> None:
    sections = re.split(r"^### ", DOC.read_text(), flags=re.MULTILINE)[1:]
    tables: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    for section in sections:
        heading, _, rest = section.split("\n## ")[0].partition("\n")
        code, name = heading.split()
        cells = [line.split("|")[1:-1] for line in rest.splitlines()
                 if line.startswith("| ") and not line.startswith("| offset")]
        tables[name] = (int(code, 16), [(c[2].strip(" `"), c[3].strip()) for c in cells])
    for cls, spec in SPECS.items():
        code, rows = tables[cls.__name__]
        assert code == spec.code, cls.__name__
        assert rows == [(f.name, _TYPE_NAMES.get(kind, kind))
                        for f, kind in zip(fields(cls), spec.kinds, strict=True)], cls.__name__
