"""Starting: the line counts parcels only once cameras, links and order store are all up."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from controller.app.shift_report import parcel_records
from controller.app.simulate import ShiftResult, run_shift
from controller.clock import Clock, RealClock, VirtualClock, run_real, run_virtual
from controller.config import LineConfig
from controller.errors import OrderStoreError
from controller.orders import Order, OrderStore
from controller.readiness import READY_POLL_S, STORE_RETRY_S
from controller.vision import Camera, CameraState, Frame
from sim_hardware.scenario import ScenarioSpec
from tests.bench_processes import cli
from tests.conftest import ROOT
from tests.shifts import drain_and_stop

NOMINAL = ScenarioSpec().mix


class StoreDownUntil:
    """An order store that does not answer until ``until`` on the shift's clock."""

    def __init__(self, inner: OrderStore, clock: Clock, until: float) -> None:
        self.inner, self.clock, self.until = inner, clock, until

    def _check(self) -> None:
        if self.clock.now() < self.until:
            raise OrderStoreError("order store: connection refused")

    async def lookup(self, code: str) -> Order | None:
        self._check()
        return await self.inner.lookup(code)

    async def released(self, limit: int) -> list[Order]:
        self._check()
        return await self.inner.released(limit)

    async def close(self) -> None:
        await self.inner.close()


def test_parcels_inducted_before_the_store_answers_end_not_ready(
        example_config: LineConfig, tmp_path: Path) -> None:
    """An infeed that does not wait for the sorter: the parcels inducted while the store is
    still down end NOT_READY (at the end, saying what it waited for), not NO_ORDER; those
    after are sorted as the emulator's truth says."""
    from controller.journal import Journal
    from controller.sorter import Sorter
    from drivers.decoders import make_decoder
    from drivers.orders.sqlite import SqliteOrderStore
    from sim_hardware.devices import SimCamera, SimLineIO
    from sim_hardware.line import PhysicalLine
    from sim_hardware.scenario import SimParcel, generate

    spec = ScenarioSpec(parcels=30, seed=21, mix=NOMINAL, scuffed_share=0.0)
    parcels, orders = generate(spec, example_config)
    SqliteOrderStore(tmp_path / "orders.sqlite").add(orders)

    async def shift(clock: VirtualClock) -> tuple[list[dict[str, Any]], list[SimParcel]]:
        line = PhysicalLine(example_config, spec, parcels, clock)
        store = StoreDownUntil(SqliteOrderStore(tmp_path / "orders.sqlite"), clock, 3.0)
        sorter = Sorter(example_config, clock, line_io=SimLineIO(line),
                        cameras=[SimCamera(line, c.id) for c in example_config.cameras],
                        decoders={c.id: make_decoder(c.decoder) for c in example_config.cameras},
                        order_store=store, journal=Journal(tmp_path / "journal.sqlite", clock))
        running = asyncio.create_task(sorter.run())
        await line.run()  # no infeed gate: parcels come whether the sorter is ready or not
        rows = await drain_and_stop(sorter, running, clock)
        return rows, parcels

    rows, truth = run_virtual(shift)
    ready_at = 2 * STORE_RETRY_S  # asked at 0, 2 (down) and 4 s (up)
    early = [r for r in rows if r["inducted_at"] < 3.0]
    late = [r for r in rows if r["inducted_at"] > ready_at + READY_POLL_S]
    assert early
    assert late
    assert {r["disposition"] for r in early} == {"NOT_READY"}
    assert all("waiting for order store" in r["reason"] for r in early)
    assert all(r["bin"] == "END" for r in early)
    by_enc = {r["inducted_enc"]: r for r in late}
    checked = [p for p in truth if p.induct_enc in by_enc]
    assert len(checked) == len(late)
    for parcel in checked:
        assert by_enc[parcel.induct_enc]["disposition"] == "SORTED"
        assert by_enc[parcel.induct_enc]["bin"] == parcel.actual == parcel.expected_bin


class SlowToStream:
    """A camera whose first frames come only ``after_s`` after it was opened (as an IP
    camera negotiating its stream): the frames before are not delivered."""

    def __init__(self, inner: Camera, clock: Clock, after_s: float) -> None:
        self.inner, self.clock, self.after_s = inner, clock, after_s
        self.camera_id = inner.camera_id

    @property
    def state(self) -> CameraState:
        return self.inner.state

    @property
    def dropped(self) -> int:
        return self.inner.dropped

    async def frames(self) -> AsyncIterator[Frame]:
        opened = self.clock.now()
        async for frame in self.inner.frames():
            if self.clock.now() - opened >= self.after_s:
                yield frame


@pytest.mark.wallclock
def test_the_first_parcels_of_a_realtime_mjpeg_shift_sort_like_the_rest(
        example_config: LineConfig, tmp_path: Path) -> None:
    """The infeed waits for the first frames (2 s late here): parcel 1 is read like parcel 10.

    Without the wait, the parcels under the camera in those 2 s would end NO_READ.
    """
    spec = ScenarioSpec(parcels=14, seed=31, mix=NOMINAL)

    async def shift(clock: RealClock) -> ShiftResult:
        return await run_shift(example_config, spec, tmp_path, clock, camera_link="mjpeg",
                               camera_wrapper=lambda c: SlowToStream(c, clock, 2.0))

    started = time.monotonic()
    result = run_real(shift)
    records = sorted(parcel_records(result), key=lambda r: r["sim_id"])
    first = [(r["disposition"], r["expected_disposition"]) for r in records[:10]]
    assert first == [(expected, expected) for _, expected in first]
    assert all(r["disposition"] != "NOT_READY" for r in records)
    assert time.monotonic() - started > 2.0 + result.line_time_s - 0.5  # it did wait


def _unreachable_line(tmp_path: Path) -> Path:
    data = tomllib.loads((ROOT / "deploy" / "line.example.toml").read_text(encoding="utf-8"))
    data["cameras"][0]["source"] = "mjpeg+http://127.0.0.1:9/cam1"  # nothing listens
    data["order_store"]["path"] = str(tmp_path / "orders.sqlite")
    data["journal"]["path"] = str(tmp_path / "journal.sqlite")
    data["archive"] = {"path": str(tmp_path / "noread")}
    data["line_io"] = {"sensors": "serial", "diverters": "serial",
                       "serial": {"port": str(tmp_path / "ttyNOBOARD")}}
    from drivers.orders.sqlite import SqliteOrderStore

    SqliteOrderStore(tmp_path / "orders.sqlite").add([])  # a book with its table, no orders
    path = tmp_path / "line.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.mark.wallclock
def test_a_line_that_never_comes_up_ends_run_with_exit_4_naming_it(tmp_path: Path) -> None:
    path = _unreachable_line(tmp_path)
    done = subprocess.run(cli("run", "--config", str(path), "--ready-timeout", "2"),
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert "parcel-sorter: starting: waiting for line I/O serial, camera cam1" in lines
    assert lines[-1] == ("parcel-sorter: line never ready: line I/O serial: never came up "
                         "within 2 s (also waiting for camera cam1)")
    assert sqlite3.connect(tmp_path / "journal.sqlite").execute(
        "SELECT COUNT(*) FROM parcels").fetchone() == (0,)
