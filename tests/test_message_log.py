"""The bounded message log: the latest messages kept, each parcel's found, the oldest forgotten."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.message_log import LoggedMessage, MessageLog


def test_a_parcels_messages_come_back_in_order_with_their_latency() -> None:
    log = MessageLog(limit=10)
    log.record(7, "sent", "serial", "divert", {"command": 1, "diverter": "D2", "fire_enc": 900},
               at=1.0)
    log.record(8, "sent", "mqtt", "divert", {"command": 2}, at=1.1)
    log.record(7, "received", "serial", "divert_answer", {"command": 1, "accepted": True},
               at=1.002, latency_s=0.002)
    assert log.for_parcel(7) == [
        LoggedMessage(7, "sent", "serial", "divert",
                      {"command": 1, "diverter": "D2", "fire_enc": 900}, 1.0),
        LoggedMessage(7, "received", "serial", "divert_answer",
                      {"command": 1, "accepted": True}, 1.002, 0.002)]
    assert [m.link for m in log.for_parcel(8)] == ["mqtt"]
    assert log.for_parcel(9) == []


def test_beyond_its_limit_the_oldest_are_dropped_and_their_parcels_forgotten() -> None:
    log = MessageLog(limit=5)
    for parcel_id in range(1, 5):
        log.record(parcel_id, "sent", "serial", "divert", {}, at=float(parcel_id))
        log.record(parcel_id, "received", "serial", "divert_answer", {}, at=parcel_id + 0.5)
    assert len(log) == 5
    assert log.for_parcel(1) == []
    assert [m.kind for m in log.for_parcel(2)] == ["divert_answer"]  # its first one dropped
    assert len(log.for_parcel(3)) == 2
    assert len(log.for_parcel(4)) == 2
    assert log.parcels() == 3  # the index holds nothing for dropped parcels


@given(st.lists(st.integers(0, 6), max_size=200), st.integers(1, 30))
def test_the_log_is_the_latest_limit_messages(parcels: list[int], limit: int) -> None:
    log = MessageLog(limit)
    for seq, parcel_id in enumerate(parcels):
        log.record(parcel_id, "sent", "serial", "divert", {"seq": seq}, at=float(seq))
    kept = list(enumerate(parcels))[-limit:]
    for parcel_id in set(parcels):
        assert [m.detail["seq"] for m in log.for_parcel(parcel_id)] == [
            seq for seq, p in kept if p == parcel_id]
    assert len(log) == len(kept)
    assert log.parcels() == len({p for _, p in kept})


def test_recording_costs_the_same_however_full_the_log() -> None:
    log = MessageLog(limit=1000)
    detail = {"command": 1}

    def cost(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            log.record(i % 50, "sent", "serial", "divert", detail, at=0.0)
        return (time.perf_counter() - started) / n

    cost(2000)  # full from here on
    assert cost(20_000) < 20e-6  # per message: far below a parcel's budget at 40,000/h


def test_a_log_keeps_at_least_one_message() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MessageLog(0)
