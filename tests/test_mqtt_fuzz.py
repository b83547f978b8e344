"""Fuzzing the MQTT codec and the command book: random and mutated payloads on every topic.

Whatever arrives, ``mqtt_codec.decode`` either returns a value or raises ``BadPayload``, and
``CommandBook.receive`` never raises and keeps its per-node state to the configured nodes.
A few seconds by default; ``FUZZ_SECONDS=60`` for longer, ``FUZZ_SEED`` to replay a run.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

import pytest

from controller.lineio import BinEntry, BinLevel, DivertCommand, DivertReply, PhotoEyeEdge
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.mqtt_book import CommandBook
from drivers.lineio.mqtt_codec import Ack, BadPayload, Heartbeat, SensorEvent

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "2"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "1"))
TOPICS = codec.Topics("sorter", "line1")
DIVERTERS = ["D1", "D2"]
NAMES = ["D1", "D2", "D9", "sensors", "", "..", "x" * 40, "D1/../D2", "Ö", "+", "#"]

SEEDS: list[bytes] = [
    codec.encode_divert(DivertCommand(1001, 42, "D1", 1_001_200, 80.0)),
    codec.encode_reply(DivertReply(1001, True, "")),
    codec.encode_reply(DivertReply(7, False, "late")),
    codec.encode_cancel(1001),
    codec.encode_heartbeat(Heartbeat("9f3c2a1b4d5e6f70", 57, {"sensors": Ack("c0ffee01", 41)})),
    codec.encode_encoder(1_000_000),
    codec.encode_event(SensorEvent("sensors", "c0ffee01", 42,
                                   PhotoEyeEdge("induct", True, 1_000_000), 42)),
    codec.encode_event(SensorEvent("sensors", "c0ffee01", 43, BinEntry("B07", 1_002_500), 40)),
    codec.encode_event(SensorEvent("sensors", "c0ffee01", 44, BinLevel("B07", True))),
    b"online", b"offline", b"safe", b"",
]
ODD_VALUES: list[object] = [None, True, -1, 0, 2**63, -(2**63) - 1, 10**400, 1e308, -0.0, "",
                            "x" * 5000, "late", [], {}, [[[[[]]]]], {"a": {"b": {}}}, "\u0000"]
ODD_TEXT = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"\xff\xfe", b"\x00", b"[" * 5000,
            b'{"corr":', b"\"\\ud800\"", b" ", b"\n", b",,", b"}"]


def _mutate_json(rng: random.Random, payload: bytes) -> bytes:
    """A value of the decoded object replaced, dropped or added (still JSON)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(body, dict) or not body:
        return payload
    key = rng.choice(sorted(body))
    match rng.randrange(3):
        case 0:
            body[key] = rng.choice(ODD_VALUES)
        case 1:
            del body[key]
        case _:
            body[rng.choice(["extra", "kind", "first", "ack", key.upper()])] = rng.choice(
                ODD_VALUES)
    return json.dumps(body).encode()


def _mutate_bytes(rng: random.Random, payload: bytes) -> bytes:
    """Bits flipped, bytes cut, inserted or spliced from odd text."""
    data = bytearray(payload or b"{}")
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        match rng.randrange(4):
            case 0 if data:
                data[at % len(data)] ^= 1 << rng.randrange(8)
            case 1:
                del data[at:at + rng.randint(1, 8)]
            case 2:
                data[at:at] = rng.choice(ODD_TEXT)
            case _:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)


def _random(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 8, 64, 512, codec.MAX_PAYLOAD, codec.MAX_PAYLOAD + 1])
    return rng.randbytes(size)


MAKERS: list[Callable[[random.Random], bytes]] = [
    lambda rng: _mutate_json(rng, rng.choice(SEEDS)),
    lambda rng: _mutate_bytes(rng, rng.choice(SEEDS)),
    lambda rng: _mutate_bytes(rng, _mutate_json(rng, rng.choice(SEEDS))),
    _random,
]


def _topic(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    return rng.choice([TOPICS.divert(name), TOPICS.reply(name), TOPICS.cancel(name),
                       TOPICS.node_status(name), TOPICS.heartbeat, TOPICS.events,
                       TOPICS.encoder, f"{TOPICS.base}/controller/status", f"{TOPICS.base}/x",
                       "sorter/line2/io/events", ""])


def _fresh_book() -> CommandBook:
    book = CommandBook(TOPICS, DIVERTERS, sensors=True, where="fuzz")
    for n in range(1, 50):
        book.sent(DivertCommand(n, n, DIVERTERS[n % 2], 1_000_000 + n, 150.0))
    return book


@pytest.mark.timeout(FUZZ_SECONDS + 60)
def test_fuzzed_payloads_only_raise_handled_errors() -> None:
    rng = random.Random(FUZZ_SEED)
    book = _fresh_book()
    until = time.monotonic() + FUZZ_SECONDS
    runs = decoded = 0
    while time.monotonic() < until:
        for _ in range(200):
            topic, payload = _topic(rng), rng.choice(MAKERS)(rng)
            route = TOPICS.parse(topic)
            context = f"seed {FUZZ_SEED}, run {runs}: {topic!r} {payload[:200]!r}"
            if route is not None:
                try:
                    codec.decode(route, payload)
                    decoded += 1
                except BadPayload:
                    pass
                except Exception as exc:  # the finding this test is for
                    pytest.fail(f"decode raised {exc!r} ({context})")
            try:
                book.receive(topic, payload)
            except Exception as exc:
                pytest.fail(f"receive raised {exc!r} ({context})")
            runs += 1
        assert set(book.nodes) <= book.known_nodes, f"seed {FUZZ_SEED}"
        assert set(book.acks()) <= book.sensor_nodes, f"seed {FUZZ_SEED}"
        while book.queue.pop() is not None:
            pass
    assert runs > 0
    assert decoded > 0  # the mutations leave some messages valid: the fuzz reaches past parsing
    assert book.stats.bad_payloads > 0
