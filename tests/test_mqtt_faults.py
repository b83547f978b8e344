"""Shifts whose sensors and diverters are nodes behind a real mosquitto, and a broker restart in
the middle of one: every parcel still gets exactly one disposition, no diverter pushes a parcel
the command did not name, and the controller and the nodes reconnect by themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.app.simulate import LinkOptions, Rig
from controller.config import LineConfig
from sim_hardware.broker import Mosquitto
from tests.test_serial_faults import SPEC, assert_nothing_lost_nothing_wrong, shift

pytestmark = pytest.mark.wallclock


def test_a_line_on_mqtt_nodes_sorts_every_parcel_into_its_bin(
        example_config: LineConfig, tmp_path: Path, mosquitto: Mosquitto) -> None:
    summary, records, result = shift(
        example_config, tmp_path, line_link="mqtt",
        options=LinkOptions(broker=(mosquitto.host, mosquitto.port)))
    assert_nothing_lost_nothing_wrong(summary, records, result)
    assert summary["dispositions"] == {"SORTED": SPEC.parcels}
    assert all(r["actual_bin"] == r["expected_bin"] for r in records)


def test_a_broker_restart_mid_shift_loses_nothing(
        example_config: LineConfig, tmp_path: Path, own_broker: Mosquitto) -> None:
    async def restart_broker(rig: Rig) -> None:
        await rig.line.clock.sleep(3.0)
        await own_broker.arestart(down_s=1.0)

    summary, records, result = shift(
        example_config, tmp_path, line_link="mqtt", during=restart_broker,
        options=LinkOptions(broker=(own_broker.host, own_broker.port)))
    assert_nothing_lost_nothing_wrong(summary, records, result)
    assert own_broker.starts == 2
    assert result.extra["link_mqtt"]["reconnects"] >= 1
    # Parcels inducted well after the broker is back are sorted as usual.
    late = [r for r in records if r["sim_id"] is not None and r["sim_id"] >= SPEC.parcels - 6]
    assert all(r["disposition"] == "SORTED" and r["actual_bin"] == r["expected_bin"]
               for r in late), late
