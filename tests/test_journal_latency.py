"""The line's events never wait for the journal's storage.

A slow disk, or a writer thread the decoders starve of the GIL, once held every photo-eye
edge behind the write before it: at about 100,000 parcels/h the line's events came in seconds
late and most parcels ended NO_READ or LATE.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeVar

import pytest

from controller.app import simulate
from controller.config import LineConfig
from controller.errors import JournalError
from controller.journal import Journal
from sim_hardware.scenario import ScenarioSpec
from tests.shifts import run_sim

T = TypeVar("T")
WRITE_S = 0.1  # each write's time on the virtual clock


class SlowStorage(Journal):
    """A journal whose every write takes ``WRITE_S`` of the shift's clock."""

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return await self._clock.offload(self._writer, fn, *args, cost=WRITE_S)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal {self.path}: {what} failed: {exc}") from exc


def test_a_slow_journal_holds_up_no_event_and_no_parcel(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "Journal", SlowStorage)
    spec = ScenarioSpec(parcels=80, seed=44, scuffed_share=0.0, multi_parcel_share=0.0,
                        length_mm=(150.0, 250.0), gap_mm=(60.0, 120.0))
    _, records, result = run_sim(example_config, spec, tmp_path, frames="truth")
    assert len(records) == 80
    wrong = [(r["parcel_id"], r["disposition"], r["reason"]) for r in records
             if r["disposition"] != r["expected_disposition"]]
    assert wrong == []
    assert result.stats.events_late == 0
    assert len(result.journal) == 80  # every parcel written, each once
    assert sum(result.stats.dispositions.values()) == 80
