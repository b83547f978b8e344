"""A journal the storage stops taking (disk full, I/O error) stops the line safely."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.app import simulate
from controller.app.simulate import Rig, ShiftResult, run_shift
from controller.clock import Clock, VirtualClock, run_virtual
from controller.config import LineConfig
from controller.errors import JournalError
from controller.journal import Journal, read_records
from controller.lineio import DivertCommand, DivertReply
from sim_hardware.scenario import ScenarioSpec

PARCELS = 30
FAIL_AFTER = 12


@dataclass
class Commands:
    """Every divert the emulated line accepted, with the time it arrived."""

    clock: Clock | None = None
    sent: dict[int, float] = field(default_factory=dict)  # command id -> arrival time


class FailingJournal(Journal):
    """A journal whose storage fails for good after ``FAIL_AFTER`` parcels were inducted."""

    failed_at: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inserts = 0

    def _fail(self) -> None:
        if self._inserts >= FAIL_AFTER:
            if FailingJournal.failed_at is None:
                FailingJournal.failed_at = self._clock.now()
            raise sqlite3.OperationalError("disk I/O error")

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        self._fail()
        super()._write(sql, params)
        self._inserts += 1

    def _finalise(self, r: Any) -> bool:
        self._fail()
        return super()._finalise(r)


def _watch_commands(commands: Commands) -> Any:
    async def during(rig: Rig) -> None:
        accept = rig.line.accept_divert

        def logged(command: DivertCommand) -> DivertReply:
            reply = accept(command)
            if reply.accepted and commands.clock is not None:
                commands.sent[command.command_id] = commands.clock.now()
            return reply

        rig.line.accept_divert = logged  # type: ignore[method-assign]

    return during


def _shift(config: LineConfig, workdir: Path, commands: Commands) -> ShiftResult:
    async def shift(clock: VirtualClock) -> ShiftResult:
        commands.clock = clock
        return await run_shift(config, ScenarioSpec(parcels=PARCELS, seed=11), workdir, clock,
                               during=_watch_commands(commands))

    return run_virtual(shift)


def _assert_stopped_safely(result: ShiftResult, commands: Commands, fault_at: float,
                           journal_path: Path) -> None:
    assert result.fault is not None
    assert result.stats.dispositions.total() < PARCELS  # it did stop
    # No diverter fired for a command sent after the fault.
    fired = {f.command_id for f in result.fires}
    assert fired <= set(commands.sent)
    assert [c for c in fired if commands.sent[c] > fault_at] == []
    # Nothing journaled before the fault is lost: the rows on disk are those the run read.
    rows = read_records(journal_path)
    assert rows == result.journal
    assert rows, "nothing was journaled before the fault"
    assert [r["parcel_id"] for r in rows] == list(range(1, len(rows) + 1))
    # No parcel inducted after the fault was fired for.
    last_tracked = max(r["parcel_id"] for r in rows)
    assert [f for f in result.fires if f.parcel_id > last_tracked] == []


def test_an_injected_write_error_stops_the_line_safely(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    FailingJournal.failed_at = None
    monkeypatch.setattr(simulate, "Journal", FailingJournal)
    commands = Commands()
    result = _shift(example_config, tmp_path, commands)
    assert isinstance(result.fault, JournalError)
    assert "disk I/O error" in str(result.fault)
    assert FailingJournal.failed_at is not None
    assert result.faulted_at == FailingJournal.failed_at
    _assert_stopped_safely(result, commands, FailingJournal.failed_at,
                           tmp_path / "journal.sqlite")
    assert len(result.journal) == FAIL_AFTER
    stopped = [r for r in caplog.records if "stopped" in r.getMessage() and r.levelname == "ERROR"]
    assert len(stopped) == 1  # logged clearly, once
    assert stopped[0].exc_info is None


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_journal_stops_the_line_safely(
        example_config: LineConfig, small_tmpfs: Path) -> None:
    commands = Commands()
    filled: list[float] = []

    original = _watch_commands(commands)

    async def during(rig: Rig) -> None:
        await original(rig)
        assert commands.clock is not None
        await commands.clock.sleep(8.0)  # mid-shift
        with (small_tmpfs / "filler").open("wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        filled.append(commands.clock.now())

    async def shift(clock: VirtualClock) -> ShiftResult:
        commands.clock = clock
        return await run_shift(example_config, ScenarioSpec(parcels=PARCELS, seed=11),
                               small_tmpfs, clock, during=during)

    result = run_virtual(shift)
    assert filled, "the disk was never filled"
    assert isinstance(result.fault, JournalError), result.stats
    assert "full" in str(result.fault)
    assert result.faulted_at is not None
    assert result.faulted_at >= filled[0]
    _assert_stopped_safely(result, commands, result.faulted_at, small_tmpfs / "journal.sqlite")
