"""A technician's commands on a running line, checked against the emulator's truth.

Each shift runs in-process on the virtual clock; the commands go through the real command
desk to the real Sorter, and the emulator knows where every parcel went.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.app.simulate import Rig
from controller.clock import Clock
from controller.commands import CommandDesk
from controller.config import LineConfig, SortPlanConfig
from controller.errors import ConfigError
from controller.kpis import ParcelOutcome
from controller.lineio import BinLevel, DeviceFault, TrackingLost
from controller.operating import LineState, ModeRefused, Notice, OperatingMode
from controller.sorter import Sorter
from sim_hardware.scenario import Case, ScenarioSpec

from .shifts import run_sim

EXAMPLE = Path(__file__).parents[1] / "controller/app/examples/line.example.toml"


def _nominal(parcels: int, seed: int, **kwargs: Any) -> ScenarioSpec:
    return ScenarioSpec(parcels=parcels, seed=seed, mix={Case.NOMINAL: 1.0}, scuffed_share=0.0,
                        multi_parcel_share=0.0, bin_empty_after_s=None, **kwargs)


class Bench:
    """The technician at the line: the Sorter handed over before it starts, and a desk."""

    def __init__(self, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self.sorter: Sorter | None = None
        self.desk: CommandDesk | None = None
        self.notices: list[Notice] = []
        self.states: list[LineState] = []

    def attach(self, sorter: Sorter) -> None:
        self.sorter = sorter
        self.desk = CommandDesk(sorter, config_path=self.config_path, clock=sorter.clock)
        sorter.notices.append(self.notices.append)
        sorter.mode.listeners.append(lambda mode: self.states.append(mode.state))

    @property
    def clock(self) -> Clock:
        assert self.sorter is not None
        return self.sorter.clock

    async def command(self, verb: str, **request: object) -> dict[str, object]:
        assert self.desk is not None
        return await self.desk.handle(verb, json.dumps(request).encode())


def _audit(workdir: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{workdir / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT who, verb, args, status, result FROM audit ORDER BY rowid")
        return [{"who": w, "verb": v, "args": json.loads(a), "status": s,
                 "result": json.loads(r)} for w, v, a, s, r in rows]
    finally:
        db.close()


def _one_outcome_each(records: list[ParcelOutcome], *,
                      plan_as_generated: bool = True) -> dict[int, ParcelOutcome]:
    """Each parcel of the truth has one outcome; none mis-sorted (by the truth's plan, if
    that is still the plan the line sorts by)."""
    assert records
    assert all(r["sim_id"] is not None for r in records), "a phantom parcel"
    assert all(r["disposition"] not in (None, "UNTRACKED") for r in records), records
    assert not any(r["disposition"] == "MISSORT" for r in records)
    assert not plan_as_generated or not any(r["missort"] for r in records)
    ids = [r["parcel_id"] for r in records]
    assert len(ids) == len(set(ids))
    return {r["parcel_id"]: r for r in records if r["parcel_id"] is not None}


def test_a_pause_stops_induction_and_finishes_the_belt(example_config: LineConfig,
                                                       tmp_path: Path) -> None:
    bench = Bench()
    on_belt: list[int] = []
    window: list[float] = []

    async def technician(rig: Rig) -> None:
        assert bench.sorter is not None
        sorter = bench.sorter
        await sorter.ready.wait()
        await bench.clock.sleep(3.0)
        on_belt.extend(sorter.parcels)
        window.append(bench.clock.now())
        reply = await bench.command("pause", transaction="t-1", by="anna", reason="jam")
        assert reply == {"transaction": "t-1", "verb": "pause", "status": "ok",
                         "data": {"state": "paused"}, "error": None}
        await bench.clock.sleep(3.0)
        window.append(bench.clock.now())
        reply = await bench.command("resume", transaction=2)
        assert reply["data"] == {"state": "running"}, reply

    _, records, result = run_sim(example_config, _nominal(36, 5), tmp_path,
                                 with_sorter=bench.attach, during=technician)
    by_id = _one_outcome_each(records)
    paused_at, resumed_at = window
    assert on_belt, "nothing was on the belt when the line was paused"
    for parcel_id in on_belt:  # finished as the truth says
        r = by_id[parcel_id]
        assert r["disposition"] == r["expected_disposition"] == "SORTED", r
        assert r["actual_bin"] == r["expected_bin"], r
    journal = {row["parcel_id"]: row for row in result.journal}
    during_pause = [i for i, row in journal.items() if paused_at <= row["inducted_at"] < resumed_at]
    assert during_pause, "no parcel reached the induction eye while paused"
    for parcel_id in during_pause:
        r = by_id[parcel_id]
        assert r["disposition"] == "NOT_READY", r
        assert r["reason"] == "inducted while the line was paused", r
        assert r["actual_bin"] == "END", r  # never fired at
    after = [i for i, row in journal.items() if row["inducted_at"] >= resumed_at + 0.01]
    assert after
    assert all(by_id[i]["disposition"] == by_id[i]["expected_disposition"]
                         for i in after)
    assert {f.parcel_id for f in result.fires} & set(during_pause) == set()
    assert bench.states[-3:] == [LineState.RUNNING, LineState.PAUSED, LineState.RUNNING]
    audit = _audit(tmp_path)
    assert [(a["who"], a["verb"], a["status"]) for a in audit] == [
        ("anna", "pause", "ok"), ("unknown", "resume", "ok")]
    assert audit[0]["args"]["reason"] == "jam"
    assert audit[0]["result"] == {"state": "paused"}


def test_test_fire_needs_maintenance_and_a_clear_belt(example_config: LineConfig,
                                                      tmp_path: Path) -> None:
    bench = Bench()
    replies: dict[str, dict[str, object]] = {}
    fired_at: list[int] = []

    async def technician(rig: Rig) -> None:
        assert bench.sorter is not None
        sorter = bench.sorter
        await sorter.ready.wait()
        while not sorter.parcels:
            await bench.clock.sleep(0.01)
        replies["running"] = await bench.command("test-fire", diverter="D3")
        replies["on"] = await bench.command("maintenance", on=True, by="ben")
        replies["open"] = await bench.command("test-fire", diverter="D3")
        while sorter.parcels:
            await bench.clock.sleep(0.01)
        replies["unknown"] = await bench.command("test-fire", diverter="D9")
        fired_at.append(rig.line.belt.encoder())
        replies["clear"] = await bench.command("test-fire", diverter="D3", pulse_ms=90)
        await bench.clock.sleep(0.5)
        replies["off"] = await bench.command("maintenance", on=False)

    # Parcels far apart: the belt is clear between them.
    _, records, result = run_sim(example_config, _nominal(3, 7, gap_mm=(14000.0, 14000.0)),
                                 tmp_path, with_sorter=bench.attach, during=technician)
    _one_outcome_each(records)
    assert replies["running"]["status"] == "error"
    assert "needs maintenance" in str(replies["running"]["error"])
    assert replies["on"]["data"] == {"state": "maintenance"}
    assert replies["open"]["status"] == "error"
    assert "clear belt" in str(replies["open"]["error"])
    assert "no diverter 'D9'" in str(replies["unknown"]["error"])
    assert replies["clear"] == {"transaction": None, "verb": "test-fire", "status": "ok",
                                "data": {"diverter": "D3", "accepted": True}, "error": None}
    assert replies["off"]["data"] == {"state": "running"}
    tests = [f for f in result.fires if f.parcel_id == 0]
    assert len(tests) == 1
    assert tests[0].diverter_id == "D3"
    assert tests[0].pushed is None
    assert tests[0].enc > fired_at[0]
    assert all(r["disposition"] == r["expected_disposition"] for r in records)
    verbs = [(a["verb"], a["status"]) for a in _audit(tmp_path)]
    assert verbs == [("test-fire", "error"), ("maintenance", "ok"), ("test-fire", "error"),
                     ("test-fire", "error"), ("test-fire", "ok"), ("maintenance", "ok")]
    assert bench.sorter is not None
    trace = bench.sorter.messages.for_parcel(0)
    assert [m.kind for m in trace] == ["test_fire", "divert_answer"]
    assert trace[0].detail["pulse_ms"] == 90


def _with_plan(tmp_path: Path, plan: str) -> Path:
    text = EXAMPLE.read_text(encoding="utf-8")
    path = tmp_path / "line.toml"
    path.write_text(text[:text.index("[sort_plan]")] + plan, encoding="utf-8")
    return path


ALL_TO_B5 = '[sort_plan]\n[[sort_plan.rules]]\nname = "all"\nbins = ["B5"]\n'
UNKNOWN_BIN = '[sort_plan]\n[[sort_plan.rules]]\nname = "nowhere"\nbins = ["B9"]\n'


def test_a_reloaded_plan_sorts_the_parcels_decided_after_it(example_config: LineConfig,
                                                            tmp_path: Path) -> None:
    path = _with_plan(tmp_path, ALL_TO_B5)
    bench = Bench(path)
    replies: list[dict[str, object]] = []
    reloaded_at: list[float] = []

    async def technician(rig: Rig) -> None:
        assert bench.sorter is not None
        await bench.sorter.ready.wait()
        await bench.clock.sleep(3.0)
        replies.append(await bench.command("reload-plan", by="carl"))
        reloaded_at.append(bench.clock.now())
        path.write_text(path.read_text().replace(ALL_TO_B5, UNKNOWN_BIN))
        await bench.clock.sleep(1.0)
        replies.append(await bench.command("reload-plan"))

    _, records, result = run_sim(example_config, _nominal(30, 11), tmp_path / "shift",
                                 with_sorter=bench.attach, during=technician)
    _one_outcome_each(records, plan_as_generated=False)
    assert replies[0]["status"] == "ok"
    assert replies[0]["data"] == {"rules": 1}
    assert replies[1]["status"] == "error"
    assert "rule 'nowhere' names unknown bin 'B9'" in str(replies[1]["error"])
    journal = {row["parcel_id"]: row for row in result.journal}
    before = [r for r in journal.values() if r["decided_at"] < reloaded_at[0] - 0.01]
    after = [r for r in journal.values() if r["decided_at"] > reloaded_at[0] + 0.01]
    assert before
    assert after
    assert {r["bin"] for r in before if r["disposition"] == "SORTED"} != {"B5"}
    assert all(r["bin"] == "B5" for r in after if r["disposition"] == "SORTED")
    assert sum(r["disposition"] == "SORTED" for r in after) >= 5
    by_id = {r["parcel_id"]: r for r in records}
    assert all(by_id[r["parcel_id"]]["actual_bin"] == r["bin"] for r in journal.values())
    assert bench.sorter is not None
    assert bench.sorter.config.sort_plan.rules[0].name == "all"  # the refused one never ran
    assert [(a["who"], a["status"]) for a in _audit(tmp_path / "shift")] == [
        ("carl", "ok"), ("unknown", "error")]


def test_an_emptied_bin_counts_from_zero_and_takes_parcels_again(
        example_config: LineConfig, tmp_path: Path) -> None:
    plan = SortPlanConfig.model_validate({"rules": [{"name": "all", "bins": ["B5", "B6"]}]})
    small = example_config.model_copy(update={"sort_plan": plan})
    bench = Bench()
    seen: dict[str, object] = {}

    def counted_full_at_two(sorter: Sorter) -> None:
        bench.attach(sorter)
        sorter.bins["B5"].capacity = 2  # full by the controller's count; its sensor stays off

    async def technician(rig: Rig) -> None:
        sorter = bench.sorter
        assert sorter is not None
        while sorter.bins["B5"].confirmed < 2:
            await bench.clock.sleep(0.01)
        seen["full"] = "B5" in sorter._belt.full_bins()
        seen["reply"] = await bench.command("bin-emptied", bin="B5")
        seen["after"] = sorter.bins["B5"].confirmed
        seen["available"] = sorter.bins["B5"].available
        seen["unknown"] = await bench.command("bin-emptied", bin="B42")

    _, records, result = run_sim(small, _nominal(16, 3), tmp_path,
                                 with_sorter=counted_full_at_two, during=technician)
    _one_outcome_each(records)
    assert seen["full"] is True
    assert seen["reply"] == {"transaction": None, "verb": "bin-emptied", "status": "ok",
                             "data": {"bin": "B5", "was": 2}, "error": None}
    assert seen["after"] == 0
    assert seen["available"] is True
    assert "no bin 'B42'" in str(seen["unknown"]["error"])  # type: ignore[index]
    in_b5 = [r for r in result.journal if r["bin"] == "B5"]
    assert len(in_b5) > 2  # it took parcels again after it was emptied
    assert any(r["disposition"] == "DEST_FULL" and r["bin"] == "B6" for r in result.journal)


def test_trace_shows_the_record_and_the_divert_with_its_latency(example_config: LineConfig,
                                                               tmp_path: Path) -> None:
    bench = Bench()
    traces: list[dict[str, object]] = []

    async def technician(rig: Rig) -> None:
        sorter = bench.sorter
        assert sorter is not None
        while sorter.stats.dispositions["SORTED"] < 3:
            await bench.clock.sleep(0.05)
        rows = await sorter.journal.records()
        sorted_row = next(r for r in rows if r["disposition"] == "SORTED")
        traces.append(await bench.command("trace", parcel=sorted_row["parcel_id"]))
        traces.append(await bench.command("trace", code=sorted_row["code"], transaction="x"))
        traces.append(await bench.command("trace", parcel=999_999))
        traces.append(await bench.command("trace", parcel=1, code="1"))

    run_sim(example_config, _nominal(8, 13), tmp_path, with_sorter=bench.attach,
            during=technician)
    by_id, by_code, missing, both = traces
    assert by_id["status"] == "ok", by_id
    data = by_id["data"]
    assert isinstance(data, dict)
    assert data["disposition"] == "SORTED"
    assert str(data["reason"]).startswith("rule ")
    assert str(data["inducted_at"]).endswith("Z")
    assert str(data["final_at"]).endswith("Z")
    kinds = [m["kind"] for m in data["messages"]]
    assert kinds == ["divert", "divert_answer", "bin_entry"], kinds
    sent, answer, entry = data["messages"]
    assert sent["direction"] == "sent"
    assert sent["link"] == "inprocess"  # the in-process line has no [line_io]
    assert sent["detail"]["diverter"] == f"D{str(data['bin'])[1:]}"
    assert answer["detail"] == {"command": sent["detail"]["command"], "accepted": True}
    assert answer["latency_ms"] >= 0
    assert "latency_ms" not in sent
    assert entry["detail"]["bin"] == data["bin"]
    assert entry["link"] == "inprocess"
    assert by_code["transaction"] == "x"
    assert by_code["data"] == data
    assert missing["status"] == "error"
    assert "no parcel 999999" in str(missing["error"])
    assert both["status"] == "error"
    assert "either parcel or code" in str(both["error"])


@pytest.mark.asyncio
async def test_the_operating_mode_refuses_what_a_state_does_not_allow() -> None:
    from controller.clock import RealClock

    heard: list[tuple[LineState, str]] = []
    mode = OperatingMode(RealClock())
    mode.listeners.append(lambda m: heard.append((m.state, m.reason)))
    assert not mode.inducting
    with pytest.raises(ModeRefused, match="still starting"):
        mode.set(LineState.PAUSED, "too early")
    assert mode.set(LineState.STARTING, "waiting for camera cam1")
    assert not mode.set(LineState.STARTING, "waiting for camera cam1")
    assert mode.set(LineState.RUNNING, "sorting")
    assert mode.inducting
    assert mode.set(LineState.PAUSED, "jam")
    assert not mode.inducting
    assert mode.set(LineState.MAINTENANCE, "fixing D3")
    assert mode.set(LineState.FAULTED, "journal: disk full")
    with pytest.raises(ModeRefused, match="must be restarted"):
        mode.set(LineState.RUNNING, "sorting")
    assert mode.state is LineState.FAULTED
    assert mode.changes == 5
    assert mode.set(LineState.OFFLINE, "stopped")
    assert heard[-1] == (LineState.OFFLINE, "stopped")
    assert len(heard) == 6
    stopping = OperatingMode(RealClock(), LineState.STOPPING, "graceful stop")
    with pytest.raises(ModeRefused, match="stopping"):
        stopping.set(LineState.PAUSED, "no")


def test_a_plan_naming_an_unknown_bin_is_refused_whole(example_config: LineConfig) -> None:
    from controller.config import parse_config

    plan = SortPlanConfig.model_validate({"rules": [{"name": "x", "bins": ["B9"]}],
                                          "overflow": "B10"})
    with pytest.raises(ConfigError) as refused:
        parse_config(example_config.model_copy(update={"sort_plan": plan}).model_dump())
    text = str(refused.value)
    assert "unknown bin 'B9'" in text
    assert "unknown bin 'B10'" in text


def test_notices_tell_of_full_bins_device_faults_and_lost_tracking(
        example_config: LineConfig, tmp_path: Path) -> None:
    bench = Bench()

    async def devices(rig: Rig) -> None:
        assert bench.sorter is not None
        await bench.sorter.ready.wait()
        await bench.clock.sleep(1.0)
        for event in (BinLevel("B3", True), BinLevel("B3", False),
                      DeviceFault("node-D4", "arm jammed"), TrackingLost("board", "restarted")):
            for sink in rig.line.event_sinks:
                sink(event)
        await bench.clock.sleep(0.1)

    _, records, _ = run_sim(example_config, _nominal(6, 17), tmp_path, with_sorter=bench.attach,
                            during=devices)
    assert [(n.kind, n.device, n.message) for n in bench.notices] == [
        ("bin_full", "B3", "bin B3 is full"), ("device_fault", "node-D4", "arm jammed"),
        ("tracking_lost", "board", "restarted")]
    assert all(n.at > 0 for n in bench.notices)
    assert all(r["disposition"] is not None for r in records)


def test_a_journal_fault_faults_the_mode_and_refuses_a_resume(example_config: LineConfig,
                                                               tmp_path: Path) -> None:
    bench = Bench()
    replies: list[dict[str, object]] = []

    def broken(sql: str, params: tuple[Any, ...]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def disk_full(rig: Rig) -> None:
        sorter = bench.sorter
        assert sorter is not None
        await sorter.ready.wait()
        await bench.clock.sleep(1.0)
        sorter.journal._write = broken  # type: ignore[method-assign]
        while sorter.fault is None:
            await bench.clock.sleep(0.05)
        replies.append(await bench.command("resume"))

    _, _, result = run_sim(example_config, _nominal(12, 19), tmp_path,
                           with_sorter=bench.attach, during=disk_full)
    assert result.fault is not None
    assert bench.sorter is not None
    mode = bench.sorter.mode
    assert mode.state is LineState.FAULTED
    assert "disk I/O error" in mode.reason
    assert [(n.kind, n.device) for n in bench.notices] == [("line_fault", "journal")]
    assert "must be restarted" in str(replies[0]["error"])
    assert bench.desk is not None
    assert bench.desk.stats.audit_errors == 1  # the journal cannot take its audit either
