"""Run a simulated shift in a test and hand back the report's records and summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.app.shift_report import parcel_records, summarise
from controller.app.simulate import ShiftResult, run_shift
from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig
from controller.kpis import ParcelOutcome
from sim_hardware.scenario import Case, ScenarioSpec


def run_sim(config: LineConfig, spec: ScenarioSpec, workdir: Path,
            **kwargs: Any) -> tuple[dict[str, Any], list[ParcelOutcome], ShiftResult]:
    async def shift(clock: VirtualClock) -> ShiftResult:
        return await run_shift(config, spec, workdir, clock, **kwargs)

    result = run_virtual(shift)
    records = parcel_records(result)
    return summarise(result, records), records, result


def only(case: Case, parcels: int, seed: int, **kwargs: Any) -> ScenarioSpec:
    """A stream of one case, its parcels between nominal ones so the line must keep going."""
    return ScenarioSpec(parcels=parcels, seed=seed, mix={case: 1.0, Case.NOMINAL: 1.0},
                        scuffed_share=0.0, **kwargs)
