"""A shift that holds no truth: parcels generated as the line reaches them, let go once settled.

A streamed shift must be the same shift as one that keeps its truth, parcel by parcel, and
hold only the parcels near the belt whatever its length.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controller.app.simulate import Rig, ShiftResult, run_shift
from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig, load_config
from sim_hardware import scenario as scenario_module
from sim_hardware.line import PhysicalLine
from sim_hardware.parcel_stream import order_book, stream
from sim_hardware.parcel_window import ParcelWindow
from sim_hardware.scenario import DEMO_MIX, Case, ScenarioSpec, SimParcel, generate

ROOT = Path(__file__).resolve().parents[1]
LINE = ROOT / "deploy" / "line.example.toml"
LOOP = ROOT / "deploy" / "line.loop.example.toml"
EVERY_CASE = dict.fromkeys(Case, 1.0)


def _truth(parcel: SimParcel) -> tuple[Any, ...]:
    return (parcel.sim_id, parcel.case, parcel.code, parcel.order, parcel.induct_enc,
            parcel.offset_mm, parcel.expected_disposition, tuple(parcel.expected_bins),
            parcel.actual, parcel.laps, tuple(parcel.events))


def _shift(config: LineConfig, spec: ScenarioSpec, workdir: Path, *,
           streamed: bool) -> tuple[ShiftResult, list[SimParcel], Rig]:
    handed: list[SimParcel] = []
    rigs: list[Rig] = []

    async def keep_rig(rig: Rig) -> None:
        rigs.append(rig)

    async def shift(clock: VirtualClock) -> ShiftResult:
        return await run_shift(config, spec, workdir, clock, frames="truth", during=keep_rig,
                               truth_sink=handed.append if streamed else None)

    return run_virtual(shift), handed, rigs[0]


@pytest.mark.slow
@pytest.mark.parametrize("config_path", [LINE, LOOP], ids=["straight", "loop"])
def test_a_streamed_shift_is_the_shift_that_keeps_its_truth(tmp_path: Path,
                                                            config_path: Path) -> None:
    config = load_config(config_path)
    spec = ScenarioSpec(parcels=300, seed=21, mix=EVERY_CASE, multi_parcel_share=0.3)
    kept, _, _ = _shift(config, spec, tmp_path / "kept", streamed=False)
    streamed, handed, rig = _shift(config, spec, tmp_path / "streamed", streamed=True)

    assert len(kept.truth) == spec.parcels
    assert streamed.truth == []
    assert streamed.fires == []
    assert sorted(p.sim_id for p in handed) == list(range(1, spec.parcels + 1))  # each once
    assert sorted(map(_truth, handed)) == sorted(map(_truth, kept.truth))
    assert {p.actual for p in handed} > {"END"}  # bins too, not only the end
    dispositions = Counter(r["disposition"] for r in streamed.journal)
    assert dispositions == Counter(r["disposition"] for r in kept.journal)
    assert len(dispositions) > 4, dispositions
    assert streamed.bins == kept.bins
    assert streamed.line_counters == kept.line_counters
    # Only the parcels near the belt were ever held, and none is left behind.
    assert 0 < rig.line.parcels.most_held < 40
    assert not rig.line.live
    assert not rig.line.on_belt


def test_a_line_stopped_mid_stream_still_accounts_for_every_parcel() -> None:
    """Settled parcels went to the sink; the rest (on the belt, never inducted) are the
    line's unsettled ones, each parcel in exactly one of the two."""
    config = load_config(LINE)
    spec = ScenarioSpec(parcels=60, seed=5, mix=DEMO_MIX)

    async def stopped(clock: VirtualClock) -> tuple[list[SimParcel], list[SimParcel]]:
        line = PhysicalLine(config, spec, stream(spec, config), clock, render=False)
        handed: list[SimParcel] = []
        line.settled_sinks.append(handed.append)
        running = asyncio.create_task(line.run())
        while len(handed) < 5:
            await clock.sleep(0.05)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return handed, list(line.unsettled())

    handed, rest = run_virtual(stopped)
    assert sorted(p.sim_id for p in handed + rest) == list(range(1, spec.parcels + 1))
    assert all(p.actual is not None for p in handed)
    assert all(p.actual is None for p in rest)
    assert any(p.induct_enc is None for p in rest)  # never inducted
    assert any(p.induct_enc is not None for p in rest)  # inducted, still on the belt


def test_the_stream_makes_parcels_only_as_they_are_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = Counter[str]()
    real = scenario_module.ParcelGenerator.parcel

    def counted(self: scenario_module.ParcelGenerator, sim_id: int) -> SimParcel:
        made["parcels"] += 1
        return real(self, sim_id)

    monkeypatch.setattr(scenario_module.ParcelGenerator, "parcel", counted)
    spec = ScenarioSpec(parcels=1_000_000, seed=3, mix=DEMO_MIX, multi_parcel_share=0.5)
    first = list(itertools.islice(stream(spec, load_config(LINE)), 50))
    assert [p.sim_id for p in first] == list(range(1, 51))
    assert made["parcels"] <= 50 + 3  # a group of three, and gap control's one behind


@pytest.mark.parametrize("config_path", [LINE, LOOP], ids=["straight", "loop"])
def test_the_streamed_book_is_the_book_of_the_whole_scenario(config_path: Path) -> None:
    config = load_config(config_path)
    spec = ScenarioSpec(parcels=400, seed=8, mix=DEMO_MIX, multi_parcel_share=0.4,
                        order_book=700)
    parcels, orders = generate(spec, config)
    assert list(order_book(spec, config)) == orders
    assert len(orders) == 700
    # orders of several parcels: consecutive nominal parcels, one order, its count on each
    by_order: dict[str, list[int]] = {}
    for parcel in parcels:
        if parcel.order is not None:
            by_order.setdefault(parcel.order.order_id, []).append(parcel.sim_id)
    groups = [ids for ids in by_order.values() if len(ids) > 1]
    assert groups
    for ids in groups:
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert len(ids) <= 3
        assert all(parcels[i - 1].order.parcels_in_order == len(ids)  # type: ignore[union-attr]
                   for i in ids)


def _parcel(sim_id: int) -> SimParcel:
    return SimParcel(sim_id, Case.NOMINAL, 300.0, 200.0, 0.0, 150, 300.0, (), None, None,
                     "SORTED", [])


def test_a_window_lets_go_of_what_every_reader_has_passed() -> None:
    made: list[int] = []

    def parcels() -> Any:
        for i in range(1, 11):
            made.append(i)
            yield _parcel(i)

    window = ParcelWindow(parcels(), 10)
    ahead, behind = window.reader(), window.reader()
    for _ in range(4):
        ahead.current()
        ahead.advance()
    assert made == [1, 2, 3, 4]
    assert window[0].sim_id == 1  # behind still needs it
    behind.current()
    behind.advance()
    with pytest.raises(IndexError, match="let go"):
        window[0]
    with pytest.raises(RuntimeError, match="miss"):
        window.reader()
    assert [p.sim_id for p in window.rest(behind)] == list(range(2, 11))
    with pytest.raises(IndexError, match="outside"):
        window[10]


def test_a_window_over_a_list_keeps_it_whole() -> None:
    parcels = [_parcel(i) for i in range(1, 6)]
    window = ParcelWindow(parcels)
    reader = window.reader()
    for _ in range(5):
        reader.advance()
    assert list(window) == parcels
    assert window[-1] is parcels[-1]
    assert window.keeps_all


def test_a_failing_task_of_the_line_ends_the_shift_and_is_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fire (a task the line spawns, outside its task group) that raises is not lost in
    a log at collection: the line stops and the shift raises it."""
    fired: list[int] = []

    async def jammed(self: PhysicalLine, diverter: Any, command: Any) -> None:
        fired.append(command.command_id)
        raise RuntimeError("diverter jammed")

    monkeypatch.setattr(PhysicalLine, "_fire", jammed)
    config = load_config(LINE)
    spec = ScenarioSpec(parcels=200, seed=4, mix=DEMO_MIX)

    async def shift(clock: VirtualClock) -> ShiftResult:
        return await run_shift(config, spec, tmp_path, clock, frames="truth")

    with pytest.raises(BaseExceptionGroup) as raised:
        run_virtual(shift)
    jams = raised.value.subgroup(lambda e: isinstance(e, RuntimeError)
                                 and str(e) == "diverter jammed")
    assert jams is not None
    assert len(fired) == 1  # the first failure stopped the line
