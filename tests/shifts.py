"""Run a simulated shift in a test and hand back the report's records and summary."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from controller.app.shift_report import parcel_records, summarise
from controller.app.simulate import ShiftResult, run_shift
from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig
from controller.kpis import ParcelOutcome
from controller.sorter import Sorter
from sim_hardware.scenario import Case, ScenarioSpec


def run_sim(config: LineConfig, spec: ScenarioSpec, workdir: Path,
            **kwargs: Any) -> tuple[dict[str, Any], list[ParcelOutcome], ShiftResult]:
    async def shift(clock: VirtualClock) -> ShiftResult:
        return await run_shift(config, spec, workdir, clock, **kwargs)

    result = run_virtual(shift)
    records = parcel_records(result)
    return summarise(result, records), records, result


async def drain_and_stop(sorter: Sorter, running: asyncio.Task[None],
                         clock: VirtualClock) -> list[dict[str, Any]]:
    """Wait until every parcel the sorter tracks has ended, then stop it: its journal's rows."""
    while sorter.open_parcels:
        await clock.sleep(0.05)
    rows = await sorter.journal.records()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await sorter.aclose()
    return rows


def only(case: Case, parcels: int, seed: int, **kwargs: Any) -> ScenarioSpec:
    """A stream of one case, its parcels between nominal ones so the line must keep going."""
    return ScenarioSpec(parcels=parcels, seed=seed, mix={case: 1.0, Case.NOMINAL: 1.0},
                        scuffed_share=0.0, **kwargs)
