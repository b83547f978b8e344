"""Confirmation and drop windows set in milliseconds hold at the belt's measured speed.

A slowed or stopped belt must neither widen nor narrow them: a bin's entry belongs to the
divert that fired ``drop_ms`` before it in time, and a divert that never landed is given up
``confirm_timeout_ms`` after its fire, whatever distance the belt travelled meanwhile.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from controller.app.simulate import LineLink, LinkOptions
from controller.clock import Clock
from controller.codes import ParcelReads
from controller.config import LineConfig
from controller.confirming import Confirmations
from controller.disposition import Disposition
from controller.encoder import EncoderHistory
from controller.journal import FinalRecord
from controller.kpis import ParcelOutcome
from controller.lineio import DivertCommand
from controller.parcel import Belt, BinState, ParcelState
from controller.tracking import Tracker, TrackingWindow
from sim_hardware.scenario import Case, ScenarioSpec
from tests.shifts import run_sim

# --- the encoder history: when the belt reached a count --------------------------------------


def test_the_first_moment_a_count_was_reached_is_interpolated() -> None:
    history = EncoderHistory(span_s=1.0)
    assert history.first_reached(0) is None
    history.record(0.00, 1000)
    history.record(0.01, 1040)
    history.record(0.02, 1040)  # stopped
    history.record(0.03, 1040)
    history.record(0.04, 1100)
    assert history.first_reached(1020) == pytest.approx(0.005)
    assert history.first_reached(1040) == pytest.approx(0.01)  # the first moment, not the last
    assert history.first_reached(1070) == pytest.approx(0.035)
    assert history.first_reached(1000) is None  # it may have been there before the history
    assert history.first_reached(900) is None
    assert history.first_reached(1101) is None  # not yet
    assert history.latest == (0.04, 1100)
    assert history.since == 0.0


def test_an_encoder_that_starts_again_is_looked_up_from_its_restart() -> None:
    history = EncoderHistory(span_s=10.0)
    for i in range(10):
        history.record(i * 0.01, 5000 + i * 10)
    history.record(0.10, 0)  # the board restarted
    history.record(0.11, 20)
    assert history.since == pytest.approx(0.10)
    assert history.first_reached(10) == pytest.approx(0.105)
    assert history.first_reached(5050) is None
    assert history.at(0.05) == 5050  # frames still find their counts


def test_old_samples_age_out_of_the_lookup() -> None:
    history = EncoderHistory(span_s=0.1)
    for i in range(100):
        history.record(i * 0.01, i * 10)
    assert history.since == pytest.approx(0.89)
    assert history.first_reached(500) is None
    assert history.first_reached(905) == pytest.approx(0.905)


# --- the confirmation window, parcel by parcel -----------------------------------------------

CPM = 2.0
NOMINAL_MM_S = 2000.0


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class _Line:
    """A controller's confirmations over a belt whose speed the test sets."""

    def __init__(self, config: LineConfig) -> None:
        self.clock = _Clock()
        self.history = EncoderHistory()
        self.enc = 0.0
        self.belt = Belt(Tracker(0.0, CPM), {b.id: BinState(b.capacity) for b in config.bins})
        self.finals: list[tuple[int, Disposition, str]] = []
        self.confirming = Confirmations(config, self.belt, self._finalise,
                                        self._as_clock(), history=self.history)
        self._next_id = 1

    def _as_clock(self) -> Clock:
        return self.clock  # type: ignore[return-value]  # only now() is used

    def _finalise(self, parcel: ParcelState, disposition: Disposition, where: str) -> None:
        if where in self.belt.bins:
            self.belt.unbook(parcel, where)
        del self.belt.parcels[parcel.parcel_id]
        self.finals.append((parcel.parcel_id, disposition, where))

    async def run(self, seconds: float, speed_mm_s: float) -> None:
        """The belt at ``speed_mm_s`` for ``seconds``, watched every 10 ms as the sorter does."""
        for _ in range(round(seconds / 0.01)):
            self.clock.t += 0.01
            self.enc += speed_mm_s * CPM * 0.01
            enc = round(self.enc)
            self.history.record(self.clock.t, enc)
            for parcel in list(self.belt.parcels.values()):
                self.confirming.at_position(parcel, enc)

    def fire_now(self, bin_id: str) -> ParcelState:
        """A parcel whose divert into ``bin_id`` fires at this moment's count."""
        pid, self._next_id = self._next_id, self._next_id + 1
        enc = round(self.enc)
        window = TrackingWindow(pid, enc - 4000, 0.0, CPM, enc - 3400)
        parcel = ParcelState(window, ParcelReads(2), self.clock.t, route=bin_id,
                             command=DivertCommand(pid, pid, "D1", enc, 150.0))
        self.belt.parcels[pid] = parcel
        self.belt.book(parcel, bin_id)
        return parcel


@pytest.mark.parametrize("speed_mm_s", [NOMINAL_MM_S, NOMINAL_MM_S / 3, 0.0])
def test_a_divert_that_never_lands_is_given_up_after_its_time(
        example_config: LineConfig, speed_mm_s: float) -> None:
    async def main() -> None:
        line = _Line(example_config)
        await line.run(1.0, NOMINAL_MM_S)
        parcel = line.fire_now("B1")
        timeout_s = example_config.bin("B1").confirm_timeout_ms / 1000
        await line.run(timeout_s - 0.05, speed_mm_s)
        assert parcel.booked  # its window is not over yet, at any speed
        await line.run(0.1, speed_mm_s)
        assert not parcel.booked  # over in time: not later on a slow belt, not never on a stopped
        assert line.belt.bins["B1"].in_flight == 0

    asyncio.run(main())


def test_an_entry_goes_to_the_divert_that_fired_its_drop_time_before(
        example_config: LineConfig) -> None:
    """A divert that did not land is still booked when the next one into its bin lands."""
    async def main() -> None:
        line = _Line(example_config)
        await line.run(1.0, NOMINAL_MM_S)
        jammed = line.fire_now("B1")
        await line.run(0.8, NOMINAL_MM_S / 3)  # 533 mm further: 1,067 counts
        pushed = line.fire_now("B1")
        await line.run(example_config.bin("B1").drop_ms / 1000, NOMINAL_MM_S / 3)
        line.confirming.bin_entry("B1", round(line.enc))
        assert line.finals == [(pushed.parcel_id, Disposition.SORTED, "B1")]
        assert jammed.booked

    asyncio.run(main())


def test_an_entry_after_a_stop_goes_to_the_divert_that_fired_before_it(
        example_config: LineConfig) -> None:
    async def main() -> None:
        line = _Line(example_config)
        await line.run(1.0, NOMINAL_MM_S)
        jammed = line.fire_now("B1")
        await line.run(0.05, NOMINAL_MM_S)
        await line.run(2.0, 0.0)  # stopped: the jammed one's window ends while it stands
        assert not jammed.booked
        await line.run(0.3, NOMINAL_MM_S / 3)
        pushed = line.fire_now("B1")  # 600 counts past the jammed one's fire
        await line.run(0.3, NOMINAL_MM_S / 3)
        line.confirming.bin_entry("B1", round(line.enc))
        assert line.finals == [(pushed.parcel_id, Disposition.SORTED, "B1")]

    asyncio.run(main())


def test_without_history_the_window_is_the_nominal_distance(
        example_config: LineConfig) -> None:
    """Before the history reaches back, the least time the belt can have taken counts."""
    async def main() -> None:
        line = _Line(example_config)
        line.history = EncoderHistory(span_s=0.2)  # shorter than the window
        line.confirming = Confirmations(example_config, line.belt, line._finalise,
                                        line._as_clock(), history=line.history)
        await line.run(1.0, NOMINAL_MM_S)
        parcel = line.fire_now("B1")
        # Its fire ages out of the history at once: the window is then 1.5 s at 2 m/s, the
        # fastest the belt goes (4.5 s at a third of it), never shorter than in time.
        await line.run(4.4, NOMINAL_MM_S / 3)
        assert parcel.booked
        await line.run(0.2, NOMINAL_MM_S / 3)
        assert not parcel.booked

    asyncio.run(main())


# --- shifts against the emulator's truth ----------------------------------------------------


def _one_bin_line(example: LineConfig) -> LineConfig:
    """Every parcel for B1, the nearest bin, so diverts into it follow each other closely."""
    plan = example.sort_plan.model_copy(update={"rules": [
        example.sort_plan.rules[0].model_copy(update={"when": {}, "bins": ["B1"]})]})
    return example.model_copy(update={"sort_plan": plan})


def _close_stream(seed: int, parcels: int, speed_changes: list[tuple[float, float]],
                  mix: dict[Case, float]) -> ScenarioSpec:
    return ScenarioSpec(parcels=parcels, seed=seed, mix=mix, scuffed_share=0.0,
                        length_mm=(250.0, 300.0), gap_mm=(250.0, 300.0),
                        multi_parcel_share=0.0, bin_empty_after_s=None,
                        speed_changes=speed_changes)


def _run_checked(config: LineConfig, spec: ScenarioSpec, workdir: Path,
                 **kwargs: Any) -> list[ParcelOutcome]:
    """The shift's records, each parcel's outcome checked against the emulator's truth, and
    each bin's confirmations in the order the emulator dropped the parcels in."""
    finals: list[FinalRecord] = []
    rigs: list[Any] = []

    async def keep_rig(rig: Any) -> None:
        rigs.append(rig)

    _, records, _ = run_sim(config, spec, workdir, frames="truth", on_final=finals.append,
                            during=keep_rig, **kwargs)
    assert len(records) == spec.parcels
    for r in records:
        assert r["disposition"] == r["expected_disposition"], r
        assert r["controller_bin"] == r["actual_bin"], r
        assert not r["missort"], r
    by_sim = {r["sim_id"]: r["parcel_id"] for r in records}
    for bin_id, model in rigs[0].line.bins.items():
        landed = [by_sim[sim_id] for sim_id in model.parcels]
        confirmed = [f.parcel_id for f in finals if f.bin == bin_id]
        assert confirmed == landed, bin_id  # each entry confirmed the parcel that fell in
    return records


SLOWDOWN = [(3.0, NOMINAL_MM_S / 3), (6.0, 0.0), (7.0, NOMINAL_MM_S / 3), (11.0, NOMINAL_MM_S)]


def test_parcels_diverted_in_quick_succession_on_a_slowing_belt_are_each_confirmed(
        example_config: LineConfig, tmp_path: Path) -> None:
    spec = _close_stream(61, 30, SLOWDOWN, {Case.NOMINAL: 1.0})
    records = _run_checked(_one_bin_line(example_config), spec, tmp_path)
    assert sum(r["actual_bin"] == "B1" for r in records) >= 25


@pytest.mark.parametrize("line_link", ["inprocess", "serial"])
def test_a_jammed_divert_does_not_take_the_next_parcels_entry_on_a_slow_belt(
        example_config: LineConfig, tmp_path: Path, line_link: LineLink) -> None:
    """Over the serial link too (the board on a null modem at 115200 baud, virtual clock),
    where bin entries arrive late, stamped with the count at which they happened."""
    spec = _close_stream(62, 30, SLOWDOWN, {Case.NOMINAL: 2.0, Case.JAMMED_DIVERTER: 1.0})
    random.seed(spec.seed)  # the link's session ids: the same shift every time
    options = LinkOptions(baudrate=115200) if line_link == "serial" else LinkOptions()
    records = _run_checked(_one_bin_line(example_config), spec, tmp_path,
                           line_link=line_link, link_options=options)
    jammed = [r for r in records if r["case"] == Case.JAMMED_DIVERTER]
    assert len(jammed) >= 5
    assert all(r["disposition"] == "DIVERT_FAULT" for r in jammed)
