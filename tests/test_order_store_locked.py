"""The order database locked by another process mid-shift: the cache answers, the loop runs on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from controller.app.simulate import Rig, ShiftResult, run_shift
from controller.clock import Clock, RealClock, run_real
from controller.config import LineConfig
from sim_hardware.scenario import Case, ScenarioSpec

pytestmark = pytest.mark.wallclock

PARCELS = 16
CACHED = 8  # the warm cache holds this many released orders; the rest are not cached
LOCK_AT_S, LOCK_FOR_S = 1.5, 3.0
LOOKUP_TIMEOUT_MS = 300.0  # a lookup blocking the loop would stall it this long at least

HOLD_EXCLUSIVE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
db.close()
"""


def test_a_locked_order_store_fails_over_to_the_cache(example_config: LineConfig,
                                                      tmp_path: Path) -> None:
    config = example_config.model_copy(update={"order_store": example_config.order_store.model_copy(
        update={"cache_size": CACHED, "timeout_ms": LOOKUP_TIMEOUT_MS})})
    spec = ScenarioSpec(parcels=PARCELS, seed=3, mix={Case.NOMINAL: 1.0}, scuffed_share=0.0)
    lags: list[float] = []
    locked: list[float] = []

    async def during(rig: Rig) -> None:
        clock = RealClock()
        sampler = asyncio.create_task(_sample_lag(clock, lags))
        try:
            await clock.sleep(LOCK_AT_S)
            await _hold_lock(tmp_path / "orders.sqlite", locked, clock)
            await asyncio.Event().wait()
        finally:
            sampler.cancel()

    async def shift(clock: Clock) -> ShiftResult:
        return await run_shift(config, spec, tmp_path, clock, line_link="serial", during=during)

    result = run_real(shift)
    assert locked, "the order store was never locked"
    assert result.stats.order_store_errors > 0  # lookups did meet the lock
    assert result.extra["board"]["failsafes"] == 0  # heartbeats kept going
    stall = max(lags)
    assert stall < 0.8 * LOOKUP_TIMEOUT_MS / 1000, f"the loop stalled {stall:.3f} s"
    rows = result.journal
    assert len(rows) == PARCELS
    truth = {p.code: p for p in result.truth}
    window = (locked[0], locked[0] + LOCK_FOR_S + 0.5)  # and the lookups then in flight
    in_window = sorted_in_window = 0
    for row in rows:
        parcel = truth[row["code"]]
        assert parcel.order is not None
        during_lock = window[0] <= row["decided_at"] <= window[1]
        in_window += during_lock
        if row["disposition"] == "NO_ORDER":  # only while locked, and only if not cached
            assert during_lock, row
            assert row["reason"].startswith("order store unavailable and order not cached"), row
        else:  # answered by the store, or by the cache while it was locked: the truth's bin
            assert row["disposition"] == parcel.expected_disposition == "SORTED", row
            assert row["bin"] == parcel.expected_bin
            sorted_in_window += during_lock
    assert in_window > 0, "no parcel was decided while the store was locked"
    assert sorted_in_window > 0, "the cache answered for no parcel while the store was locked"
    assert [f for f in result.fires if f.pushed is None] == []


async def _hold_lock(path: Path, locked: list[float], clock: Clock) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_EXCLUSIVE, str(path), str(LOCK_FOR_S),
        stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert await holder.stdout.readline() == b"locked\n"
    locked.append(clock.now())
    assert await holder.wait() == 0


async def _sample_lag(clock: Clock, lags: list[float]) -> None:
    while True:
        before = clock.now()
        await clock.sleep(0.01)
        lags.append(clock.now() - before - 0.01)
