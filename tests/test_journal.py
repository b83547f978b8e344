"""The journal writes each final disposition exactly once and survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.clock import VirtualClock, run_virtual
from controller.disposition import Disposition
from controller.errors import JournalError
from controller.journal import AuditRecord, FinalRecord, Journal, read_parcel


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


def test_the_audit_trail_keeps_each_command_and_its_result(tmp_path: Path) -> None:
    async def main(clock: VirtualClock) -> list[dict[str, object]]:
        journal = Journal(tmp_path / "j.sqlite", clock)
        await journal.open()
        await journal.audit(AuditRecord(at=1.5, wall="2026-12-02T04:05:06.789Z", who="anna",
                                        verb="pause", args={"reason": "jam"}, status="ok",
                                        result={"state": "paused"}))
        await journal.audit(AuditRecord(at=2.0, wall="2026-12-02T04:05:07.289Z", who="unknown",
                                        verb="test-fire", args={"diverter": "D3"},
                                        status="error", result="test-fire needs maintenance"))
        rows = await journal.audit_records()
        await journal.close()
        return rows

    first, second = run_virtual(main)
    assert first == {"at": 1.5, "wall": "2026-12-02T04:05:06.789Z", "who": "anna",
                     "verb": "pause", "args": {"reason": "jam"}, "status": "ok",
                     "result": {"state": "paused"}}
    assert second["result"] == "test-fire needs maintenance"
    assert second["status"] == "error"


def test_a_parcel_is_found_by_id_or_by_the_newest_of_its_code(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def main(clock: VirtualClock) -> list[dict[str, object] | None]:
        journal = Journal(path, clock)
        await journal.open()
        for parcel_id in (1, 2, 3):
            await journal.inducted(parcel_id, 100 * parcel_id, float(parcel_id))
        await journal.finalise(_final(1, Disposition.DIVERT_FAULT))
        await journal.finalise(_final(2))  # the same code, read again after a re-induction
        found = [await journal.find_parcel(parcel_id=3),
                 await journal.find_parcel(code="001442827149"),
                 await journal.find_parcel(parcel_id=4),
                 await journal.find_parcel(code="nope"),
                 await journal.find_parcel()]
        await journal.close()
        return found

    open_one, newest, missing, no_code, nothing = run_virtual(main)
    assert open_one is not None
    assert open_one["parcel_id"] == 3
    assert open_one["disposition"] is None
    assert newest is not None
    assert (newest["parcel_id"], newest["disposition"]) == (2, "SORTED")
    assert missing is None
    assert no_code is None
    assert nothing is None
    # The CLI reads the file while the controller may hold it: read-only.
    by_id = read_parcel(path, "1")
    assert by_id is not None
    assert by_id["disposition"] == "DIVERT_FAULT"
    by_code = read_parcel(path, "001442827149")
    assert by_code is not None
    assert by_code["parcel_id"] == 2
    assert read_parcel(path, "99") is None
    assert read_parcel(path, "9" * 40) is None
    assert read_parcel(path, "²") is None  # a digit to isdigit(), not to int()
    assert read_parcel(tmp_path / "absent.sqlite", "1") is None
    assert not (tmp_path / "absent.sqlite").exists()  # read-only: nothing created
