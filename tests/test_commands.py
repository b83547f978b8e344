"""The command desk against hostile requests: an error reply, nothing carried out, no crash.

The desk commands a real Sorter (built on the emulated line, not running) whose journal is a
real SQLite file, so what is audited and what is carried out is read back from them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.clock import RealClock
from controller.commands import MAX_REQUEST_BYTES, VERBS, CommandDesk
from controller.config import LineConfig
from controller.journal import Journal
from controller.operating import LineState
from controller.sorter import Sorter
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.devices import SimLineIO
from sim_hardware.line import PhysicalLine
from sim_hardware.scenario import ScenarioSpec

REPLY_KEYS = {"transaction", "verb", "status", "data", "error"}


class Desk:
    """A desk on an idle Sorter, run on its own event loop for synchronous tests."""

    def __init__(self, runner: asyncio.Runner, config: LineConfig, tmp_path: Path) -> None:
        self.runner = runner

        async def build() -> Sorter:
            clock = RealClock()
            line = PhysicalLine(config, ScenarioSpec(parcels=0), [], clock, render=False)
            journal = Journal(tmp_path / "journal.sqlite", clock)
            await journal.open()
            return Sorter(config, clock, line_io=SimLineIO(line), cameras=[], decoders={},
                          order_store=SqliteOrderStore(tmp_path / "orders.sqlite"),
                          journal=journal)

        self.sorter = runner.run(build())
        self.desk = CommandDesk(self.sorter, config_path=None, clock=self.sorter.clock)

    def __call__(self, verb: str, payload: bytes | dict[str, Any]) -> dict[str, object]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reply = self.runner.run(self.desk.handle(verb, raw))
        _well_formed(verb, reply)
        return reply

    def audit(self) -> list[dict[str, Any]]:
        return self.runner.run(self.sorter.journal.audit_records())


def _well_formed(verb: str, reply: dict[str, object]) -> None:
    assert set(reply) == REPLY_KEYS
    assert reply["verb"] == verb
    json.dumps(reply)  # it can be published as it is
    if reply["status"] == "ok":
        assert reply["error"] is None
        assert isinstance(reply["data"], dict)
    else:
        assert reply["status"] == "error"
        assert reply["data"] is None
        assert isinstance(reply["error"], str)
        assert reply["error"]
        assert "\n" not in reply["error"]


@pytest.fixture
def desk(example_config: LineConfig, tmp_path: Path) -> Iterator[Desk]:
    with asyncio.Runner() as runner:
        bench = Desk(runner, example_config, tmp_path)
        try:
            yield bench
        finally:
            runner.run(bench.sorter.aclose())


@pytest.mark.parametrize(("payload", "why"), [
    (b"{" + b" " * MAX_REQUEST_BYTES + b"}", "too big: 4098 bytes"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{'on': true}", "not JSON"),
    (b"", "not nothing"),
    (b"[1, 2]", "not an array"),
    (b'"pause"', "not a string"),
    (b"null", "not null"),
    (b'{"on": NaN}', "not JSON"),
    (b"[" * 2000 + b"]" * 2000, "not JSON"),
    (b'{"on": true, "colour": "red"}', "colour: unknown field"),
    (b'{"on": "yes"}', "on: Input should be a valid boolean"),
    (b'{}', "on: Field required"),
    (b'{"on": true, "by": 12}', "by: Input should be a valid string"),
])
def test_a_malformed_request_is_answered_and_not_carried_out(
        desk: Desk, payload: bytes, why: str) -> None:
    desk.sorter.mode.set(LineState.RUNNING, "sorting")
    reply = desk("maintenance", payload)
    assert reply["status"] == "error"
    assert why in str(reply["error"]), reply
    assert desk.sorter.mode.state is LineState.RUNNING
    assert desk.desk.stats.malformed == 1
    assert desk.audit() == []


def test_a_transaction_comes_back_when_it_could_be_read(desk: Desk) -> None:
    bad_value = desk("maintenance", {"transaction": "t-17", "on": "maybe"})
    assert bad_value["transaction"] == "t-17"
    assert desk("pause", {"transaction": 17, "size": 1})["transaction"] == 17
    for transaction in (True, 1.5, "x" * 65, 10**70, [1]):
        reply = desk("resume", {"transaction": transaction})
        assert reply["transaction"] is None
        assert str(reply["error"]).startswith("transaction"), reply
    unknown = desk("self-destruct", {"transaction": "t-1"})
    assert unknown["transaction"] == "t-1"
    assert "unknown verb 'self-destruct'" in str(unknown["error"])
    assert desk.desk.stats.malformed == 8
    assert desk.desk.stats.accepted == desk.desk.stats.refused == 0
    assert desk.audit() == []


def test_commands_that_reach_their_verb_are_audited_refused_or_not(desk: Desk) -> None:
    starting = desk("pause", {"by": "anna", "transaction": "a"})
    assert starting["status"] == "error"
    assert "still starting" in str(starting["error"])
    desk.sorter.mode.set(LineState.RUNNING, "sorting")
    assert desk("pause", {"by": "anna", "reason": "jam"})["data"] == {"state": "paused"}
    assert desk.sorter.mode.state is LineState.PAUSED
    assert desk.sorter.mode.reason == "jam"
    assert "not in maintenance" in str(desk("maintenance", {"on": False})["error"])
    assert desk("maintenance", {"on": True})["data"] == {"state": "maintenance"}
    assert desk("resume", {})["data"] == {"state": "running"}
    desk.sorter.bins["B2"].confirmed = 7
    assert desk("bin-emptied", {"bin": "B2"})["data"] == {"bin": "B2", "was": 7}
    assert desk.sorter.bins["B2"].confirmed == 0
    desk.sorter.bins["B3"].full_sensor = True
    desk.sorter.bins["B3"].confirmed = 3
    assert desk("bin-emptied", {"bin": "B3"})["data"] == {"bin": "B3", "was": 3}
    assert not desk.sorter.bins["B3"].available  # its sensor, still on, says it is full
    assert "no config file" in str(desk("reload-plan", {})["error"])
    assert "diagnostics connection" in str(desk("rebirth", {})["error"])
    assert "no parcel 5 in the journal" in str(desk("trace", {"parcel": 5})["error"])
    audit = desk.audit()
    assert [(a["who"], a["verb"], a["status"]) for a in audit] == [
        ("anna", "pause", "error"), ("anna", "pause", "ok"), ("unknown", "maintenance", "error"),
        ("unknown", "maintenance", "ok"), ("unknown", "resume", "ok"),
        ("unknown", "bin-emptied", "ok"), ("unknown", "bin-emptied", "ok"),
        ("unknown", "reload-plan", "error"),
        ("unknown", "rebirth", "error"), ("unknown", "trace", "error")]
    assert audit[0]["args"] == {"transaction": "a", "reason": None}
    assert "still starting" in audit[0]["result"]
    assert audit[5]["result"] == {"bin": "B2", "was": 7}
    assert all(a["wall"].endswith("Z") for a in audit)
    assert (desk.desk.stats.accepted, desk.desk.stats.refused) == (5, 5)


def test_rebirth_republishes_through_the_callback(desk: Desk) -> None:
    calls: list[int] = []

    def rebirth() -> int:
        calls.append(1)
        return 12

    desk.desk = CommandDesk(desk.sorter, config_path=None, clock=desk.sorter.clock,
                            rebirth=rebirth)
    assert desk("rebirth", {"by": "ops"})["data"] == {"republished": 12}
    assert calls == [1]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
_fields = st.sampled_from(["transaction", "by", "reason", "on", "diverter", "pulse_ms", "bin",
                           "parcel", "code", "extra"])
_verbs = st.sampled_from(VERBS) | st.text(max_size=20)


def test_no_request_crashes_the_desk(desk: Desk) -> None:
    before = desk.sorter.mode.changes

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(verb=_verbs, payload=st.binary(max_size=MAX_REQUEST_BYTES + 10)
           | st.dictionaries(_fields, _json, max_size=5).map(lambda d: json.dumps(d).encode()))
    def check(verb: str, payload: bytes) -> None:
        desk(verb, payload)

    check()
    stats = desk.desk.stats
    assert stats.malformed > 0
    audited = len(desk.audit())
    assert audited == stats.accepted + stats.refused
    assert desk.sorter.mode.changes == before  # an idle line: starting refuses every change


def test_a_payload_that_is_not_bytes_is_an_error_too(desk: Desk) -> None:
    reply = desk.runner.run(desk.desk.handle("pause", None))  # type: ignore[arg-type]
    _well_formed("pause", reply)
    assert "not readable" in str(reply["error"])
    framed = desk.runner.run(desk.desk.handle("pause", bytearray(b'{"transaction": 3, "by": 1}')))
    assert framed["transaction"] == 3
    assert "by: Input should be a valid string" in str(framed["error"])
