"""A controller that dies mid-shift and comes back loses no parcel from its journal."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig
from controller.journal import Journal
from controller.sorter import Sorter
from drivers.decoders import make_decoder
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.devices import SimCamera, SimLineIO
from sim_hardware.line import PhysicalLine
from sim_hardware.scenario import ScenarioSpec, SimParcel, generate
from tests.shifts import drain_and_stop


def _controller(config: LineConfig, clock: VirtualClock, line: PhysicalLine,
                store_path: Path, journal_path: Path) -> Sorter:
    return Sorter(config, clock, line_io=SimLineIO(line),
                  cameras=[SimCamera(line, c.id) for c in config.cameras],
                  decoders={c.id: make_decoder(c.decoder) for c in config.cameras},
                  order_store=SqliteOrderStore(store_path),
                  journal=Journal(journal_path, clock))


def test_restart_mid_shift_leaves_every_parcel_one_disposition(
        example_config: LineConfig, tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=60, seed=31, scuffed_share=0.0)
    parcels, orders = generate(spec, example_config)
    store_path, journal_path = tmp_path / "orders.sqlite", tmp_path / "journal.sqlite"
    SqliteOrderStore(store_path).add(orders)

    async def shift(clock: VirtualClock) -> tuple[list[dict[str, Any]], list[SimParcel], int]:
        line = PhysicalLine(example_config, spec, parcels, clock)
        first = _controller(example_config, clock, line, store_path, journal_path)
        finals: list[object] = []
        first.listeners.append(finals.append)
        emulator = asyncio.create_task(line.run())
        running = asyncio.create_task(first.run())
        while len(finals) < 20:
            await clock.sleep(0.05)
        in_flight = first.open_parcels
        running.cancel()  # the process dies: no goodbye, parcels still on the belt
        await asyncio.gather(running, return_exceptions=True)
        await first.aclose()

        second = _controller(example_config, clock, line, store_path, journal_path)
        running = asyncio.create_task(second.run())
        await emulator
        rows = await drain_and_stop(second, running, clock)
        return rows, parcels, in_flight

    rows, truth, in_flight = run_virtual(shift)
    assert in_flight > 0
    by_enc = {row["inducted_enc"]: row for row in rows}
    assert len(by_enc) == len(rows)  # one journal row per induction edge
    lost = [row for row in rows if row["disposition"] == "LOST"]
    assert all(row["disposition"] is not None for row in rows)
    assert len(lost) == in_flight  # those it was tracking when it died
    assert all("controller restarted" in row["reason"] for row in lost)
    assert len({row["parcel_id"] for row in rows}) == len(rows)  # no id used twice
    # Parcels inducted after the restart are sorted right, checked against the truth.
    after = [p for p in truth if p.induct_enc is not None and p.induct_enc in by_enc
             and by_enc[p.induct_enc]["parcel_id"] > max(r["parcel_id"] for r in lost)]
    assert len(after) > 20
    for parcel in after:
        row = by_enc[parcel.induct_enc]
        assert row["disposition"] == "SORTED", row
        assert row["bin"] == parcel.actual == parcel.expected_bin
    # The restart took no belt time, so every induction edge reached one of the two.
    assert all(p.induct_enc in by_enc for p in truth)
    assert len(rows) == len(truth)
