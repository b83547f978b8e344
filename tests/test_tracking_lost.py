"""When the line says the belt positions are gone (an I/O board restarted and its encoder count
with it), the controller gives up every parcel it tracks: each ends LOST exactly once, nothing
is diverted for any of them afterwards, and the parcels inducted later sort as usual."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig
from controller.journal import Journal
from controller.lineio import DivertCommand, DivertReply, TrackingLost
from controller.sorter import Sorter
from drivers.decoders import make_decoder
from drivers.orders.sqlite import SqliteOrderStore
from sim_hardware.devices import SimCamera, SimLineIO
from sim_hardware.line import PhysicalLine
from sim_hardware.scenario import ScenarioSpec, generate
from tests.shifts import drain_and_stop


class RestartingBoard(SimLineIO):
    """The in-process line I/O, able to lose its schedule and say tracking is lost."""

    def __init__(self, line: PhysicalLine, clock: VirtualClock) -> None:
        super().__init__(line)
        self.line = line
        self.clock = clock
        self.sent: list[tuple[float, DivertCommand]] = []

    async def divert(self, command: DivertCommand) -> DivertReply:
        self.sent.append((self.clock.now(), command))
        return await super().divert(command)

    def restart(self) -> int:
        dropped = self.line.cancel_diverts()
        self._events.put_nowait(TrackingLost("io-board", "its encoder count began again"))
        return dropped


def test_tracking_lost_gives_up_every_tracked_parcel_once_and_diverts_none_of_them(
        example_config: LineConfig, tmp_path: Path) -> None:
    spec = ScenarioSpec(parcels=50, seed=5, scuffed_share=0.0, multi_parcel_share=0.0)
    parcels, orders = generate(spec, example_config)
    store_path = tmp_path / "orders.sqlite"
    SqliteOrderStore(store_path).add(orders)

    async def shift(clock: VirtualClock) -> tuple[list[dict[str, Any]], set[int], float,
                                                  RestartingBoard, Sorter, int]:
        line = PhysicalLine(example_config, spec, parcels, clock)
        board = RestartingBoard(line, clock)
        sorter = Sorter(example_config, clock, line_io=board,
                        cameras=[SimCamera(line, c.id) for c in example_config.cameras],
                        decoders={c.id: make_decoder(c.decoder) for c in example_config.cameras},
                        order_store=SqliteOrderStore(store_path),
                        journal=Journal(tmp_path / "journal.sqlite", clock))
        finals: list[object] = []
        sorter.listeners.append(finals.append)
        emulator = asyncio.create_task(line.run())
        running = asyncio.create_task(sorter.run())
        while len(finals) < 15:
            await clock.sleep(0.05)
        tracked = set(sorter.parcels)
        lost_at = clock.now()
        dropped = board.restart()
        await emulator
        rows = await drain_and_stop(sorter, running, clock)
        return rows, tracked, lost_at, board, sorter, dropped

    rows, tracked, lost_at, board, sorter, dropped = run_virtual(shift)
    assert tracked, "parcels should be on the belt when tracking is lost"
    assert dropped >= 1, "some of them should have had a divert scheduled"
    assert sorter.stats.tracking_lost == 1
    assert len({row["parcel_id"] for row in rows}) == len(rows)
    assert all(row["disposition"] is not None for row in rows)
    given_up = {row["parcel_id"]: row for row in rows if row["parcel_id"] in tracked}
    assert set(given_up) == tracked
    assert all(row["disposition"] == "LOST" and "tracking lost" in row["reason"]
               for row in given_up.values())
    assert not [c for at, c in board.sent if at >= lost_at and c.parcel_id in tracked]
    # The parcels inducted afterwards are tracked afresh and sorted right.
    later = [row for row in rows if row["parcel_id"] > max(tracked)]
    assert len(later) > 10
    assert all(row["disposition"] == "SORTED" for row in later), \
        [(r["parcel_id"], r["disposition"], r["reason"]) for r in later
         if r["disposition"] != "SORTED"]
