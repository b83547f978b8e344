"""The journal writes each final disposition exactly once and survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.clock import VirtualClock, run_virtual
from controller.disposition import Disposition
from controller.errors import JournalError
from controller.journal import FinalRecord, Journal


def _final(parcel_id: int, disposition: Disposition = Disposition.SORTED) -> FinalRecord:
    return FinalRecord(parcel_id=parcel_id, disposition=disposition, bin="B1", reason="rule x",
                       code="001442827149", order_id="SO-1", length_mm=300.0, decided_at=1.0,
                       final_at=2.0, order_created_at=-60.0)


def test_final_disposition_is_written_once(tmp_path: Path) -> None:
    async def main(clock: VirtualClock) -> list[dict[str, object]]:
        journal = Journal(tmp_path / "j.sqlite", clock)
        await journal.open()
        await journal.inducted(1, 100, clock.now())
        assert await journal.finalise(_final(1))
        assert not await journal.finalise(_final(1, Disposition.LOST))  # never overwritten
        assert not await journal.finalise(_final(7))  # never inducted: refused
        rows = await journal.records()
        await journal.close()
        return rows

    (row,) = run_virtual(main)
    assert row["disposition"] == "SORTED"
    assert row["bin"] == "B1"


def test_parcels_open_at_a_crash_become_lost_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def before_crash(clock: VirtualClock) -> None:
        journal = Journal(path, clock)
        await journal.open()
        for parcel_id in (1, 2, 3):
            await journal.inducted(parcel_id, parcel_id * 1000, clock.now())
        await journal.finalise(_final(1))
        await journal.close()  # parcels 2 and 3 were still on the belt

    async def after_restart(clock: VirtualClock) -> tuple[list[int], int, list[str]]:
        journal = Journal(path, clock)
        recovered = await journal.open()
        next_id = await journal.next_parcel_id()
        rows = await journal.records()
        await journal.close()
        return recovered, next_id, [r["disposition"] for r in rows]

    run_virtual(before_crash)
    recovered, next_id, dispositions = run_virtual(after_restart)
    assert recovered == [2, 3]
    assert next_id == 4  # ids are never reused across restarts
    assert dispositions == ["SORTED", "LOST", "LOST"]


def test_storage_failures_are_journal_errors(tmp_path: Path) -> None:
    """Opening a directory, or a write the database refuses: JournalError naming the journal."""
    (tmp_path / "dir.sqlite").mkdir()

    async def main(clock: VirtualClock) -> list[str]:
        errors = []
        journal = Journal(tmp_path / "dir.sqlite", clock)
        with pytest.raises(JournalError) as info:
            await journal.open()
        errors.append(str(info.value))
        await journal.close()
        journal = Journal(tmp_path / "j.sqlite", clock)
        await journal.open()
        await journal.inducted(1, 100, clock.now())
        with pytest.raises(JournalError) as info:
            await journal.inducted(1, 200, clock.now())  # the same id again: refused
        errors.append(str(info.value))
        rows = await journal.records()
        await journal.close()
        assert [r["inducted_enc"] for r in rows] == [100]  # what was written stays
        return errors

    opened, written = run_virtual(main)
    assert opened.startswith(f"journal {tmp_path / 'dir.sqlite'}: open failed: ")
    assert written == (f"journal {tmp_path / 'j.sqlite'}: writing parcel 1 failed: "
                       "UNIQUE constraint failed: parcels.parcel_id")
