"""The Prometheus endpoint after a shift on the virtual clock: it says what the journal says."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from controller.app.metrics import LineMetrics, MetricsServer, node_states
from controller.app.simulate import DECODE_COST_S, Rig, _run_to_end, fresh_books
from controller.clock import VirtualClock, run_virtual
from controller.config import LineConfig, MetricsConfig, parse_config
from controller.errors import ConfigError
from controller.journal import Journal
from controller.sorter import Sorter
from controller.vision import BarcodeDecoder, Camera
from sim_hardware.scenario import Case, ScenarioSpec

PARCELS = 24


class _Nodes:
    """What an MQTT link says of its nodes (``MqttLineIO.nodes``)."""

    nodes = {"div1": "online", "div2": "safe"}  # noqa: RUF012


@dataclass
class Shift:
    metrics: LineMetrics
    sorter: Sorter
    journal: list[dict[str, Any]]


def _shift(config: LineConfig, spec: ScenarioSpec, workdir: Path) -> Shift:
    """A shift of the emulated line, its sorter built with the metrics' telemetry."""
    from drivers.decoders import make_decoder
    from sim_hardware.devices import SimCamera, SimLineIO
    from sim_hardware.line import PhysicalLine

    async def run(clock: VirtualClock) -> Shift:
        line_config, parcels, store = fresh_books(config, spec, workdir)
        line = PhysicalLine(line_config, spec, parcels, clock)
        cameras: list[Camera] = [SimCamera(line, c.id) for c in line_config.cameras]
        decoders: dict[str, BarcodeDecoder] = {
            c.id: make_decoder(c.decoder) for c in line_config.cameras}
        metrics = LineMetrics()
        sorter = Sorter(line_config, clock, line_io=SimLineIO(line), cameras=cameras,
                        decoders=decoders, order_store=store,
                        journal=Journal(line_config.journal.path, clock),
                        decode_cost_s=DECODE_COST_S, telemetry=metrics.telemetry)
        metrics.watch(sorter, lambda: {"sensors": "up", "diverters": "failed: gone"},
                      node_states({"diverters": _Nodes()}))
        records = await _run_to_end(sorter, Rig(line), clock, None)
        return Shift(metrics, sorter, records)

    return run_virtual(run)


async def _scrape(metrics: LineMetrics) -> str:
    async with MetricsServer(metrics.registry, "127.0.0.1", 0) as server, \
            aiohttp.ClientSession() as session, \
            session.get(f"http://{server.address}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def _samples(text: str) -> dict[str, list[Sample]]:
    """Every family by name; the parser refuses a malformed exposition."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    (value,) = [s.value for s in samples if s.name == name and s.labels == labels]
    return value


@pytest.fixture(scope="module")
def shift(tmp_path_factory: pytest.TempPathFactory) -> tuple[Shift, dict[str, list[Sample]]]:
    config = parse_config({**_example_data(), "metrics": {"enabled": True}})
    spec = ScenarioSpec(parcels=PARCELS, seed=11, scuffed_share=0.0,
                        mix={Case.NOMINAL: 3.0, Case.NO_LABEL: 1.0, Case.UNKNOWN_ORDER: 1.0})
    result = _shift(config, spec, tmp_path_factory.mktemp("metrics"))
    return result, _samples(asyncio.run(_scrape(result.metrics)))


def _example_data() -> dict[str, Any]:
    import tomllib

    from controller.app.example_line import EXAMPLE_CONFIG

    return tomllib.loads(Path(EXAMPLE_CONFIG).read_text())


def test_dispositions_are_the_journals(shift: tuple[Shift, dict[str, list[Sample]]]) -> None:
    result, families = shift
    journal = Counter(r["disposition"] for r in result.journal)
    assert len(result.journal) == PARCELS
    assert None not in journal
    assert {"SORTED", "NO_READ", "NO_ORDER"} <= set(journal)
    parcels = families["parcel_sorter_parcels"]
    for sample in parcels:
        assert sample.value == journal.get(sample.labels["disposition"], 0), sample
    assert sum(s.value for s in parcels if s.name.endswith("_total")) == PARCELS
    assert _value(families["parcel_sorter_open_parcels"], "parcel_sorter_open_parcels") == 0


def test_histograms_count_each_divert_and_journal_write(
        shift: tuple[Shift, dict[str, list[Sample]]]) -> None:
    result, families = shift
    sorted_ = sum(r["disposition"] == "SORTED" for r in result.journal)
    diverts = families["parcel_sorter_divert_round_trip_seconds"]
    assert _value(diverts, "parcel_sorter_divert_round_trip_seconds_count") == sorted_
    writes = families["parcel_sorter_journal_write_seconds"]
    # Each parcel is written twice: inducted, then its final disposition.
    assert _value(writes, "parcel_sorter_journal_write_seconds_count") == 2 * PARCELS
    assert 0 < _value(writes, "parcel_sorter_journal_write_seconds_sum") < 2 * PARCELS
    inf = _value(writes, "parcel_sorter_journal_write_seconds_bucket", le="+Inf")
    assert inf == 2 * PARCELS


def test_decisions_and_frames_per_camera(shift: tuple[Shift, dict[str, list[Sample]]]) -> None:
    result, families = shift
    decisions = families["parcel_sorter_decision_seconds"]
    assert _value(decisions, "parcel_sorter_decision_seconds_count") == PARCELS
    for camera in result.sorter.cameras:
        cid = camera.camera_id
        received = _value(families["parcel_sorter_camera_frames_received"],
                          "parcel_sorter_camera_frames_received_total", camera=cid)
        decoded = _value(families["parcel_sorter_camera_frames_decoded"],
                         "parcel_sorter_camera_frames_decoded_total", camera=cid)
        assert 0 < decoded <= received
    assert sum(_value(families["parcel_sorter_camera_frames_received"],
                      "parcel_sorter_camera_frames_received_total", camera=c.camera_id)
               for c in result.sorter.cameras) == result.sorter.stats.frames


def test_overload_counters_are_the_sorters(shift: tuple[Shift, dict[str, list[Sample]]]) -> None:
    result, families = shift
    stats = result.sorter.stats
    for name in ("events_late", "frames_ahead_of_events", "missing_deferred", "loop_lag_ticks"):
        family = families[f"parcel_sorter_{name}"]
        assert _value(family, f"parcel_sorter_{name}_total") == getattr(stats, name), name
    lag = families["parcel_sorter_loop_lag_max_seconds"]
    assert _value(lag, "parcel_sorter_loop_lag_max_seconds") == stats.loop_lag_max_ms / 1000
    events = families["parcel_sorter_event_lag_max_seconds"]
    assert _value(events, "parcel_sorter_event_lag_max_seconds") \
        == stats.event_lag_max_ms / 1000


def test_states_bins_and_cameras(shift: tuple[Shift, dict[str, list[Sample]]]) -> None:
    result, families = shift
    links = families["parcel_sorter_link_state"]
    assert _value(links, "parcel_sorter_link_state", link="sensors",
                  parcel_sorter_link_state="up") == 1
    assert _value(links, "parcel_sorter_link_state", link="sensors",
                  parcel_sorter_link_state="down") == 0
    assert _value(links, "parcel_sorter_link_state", link="diverters",
                  parcel_sorter_link_state="failed") == 1
    devices = {(s.labels["device"], s.labels["parcel_sorter_device_state"])
               for s in families["parcel_sorter_device_state"] if s.value == 1}
    assert devices == {("div1", "online"), ("div2", "safe")}
    fills = families["parcel_sorter_bin_parcels"]
    for bin_id, state in result.sorter.bins.items():
        assert _value(fills, "parcel_sorter_bin_parcels", bin=bin_id) == state.confirmed
    assert sum(s.value for s in fills) == sum(
        r["disposition"] == "SORTED" for r in result.journal)
    for camera in result.sorter.cameras:
        states = [s for s in families["parcel_sorter_camera_state"]
                  if s.labels["camera"] == camera.camera_id and s.value == 1]
        assert [s.labels["parcel_sorter_camera_state"] for s in states] == [camera.state.value]
        assert _value(families["parcel_sorter_camera_frames_dropped"],
                      "parcel_sorter_camera_frames_dropped_total",
                      camera=camera.camera_id) == camera.dropped


def test_every_name_follows_the_conventions(
        shift: tuple[Shift, dict[str, list[Sample]]]) -> None:
    _, families = shift
    for name, samples in families.items():
        assert name.startswith("parcel_sorter_"), name
        assert not name.endswith(("_ms", "_milliseconds")), name
        for sample in samples:
            assert sample.name.startswith(name), sample


def test_the_endpoint_is_loopback_unless_meant() -> None:
    assert not MetricsConfig().enabled
    data = _example_data()
    with pytest.raises(ConfigError, match="loopback"):
        parse_config({**data, "metrics": {"enabled": True, "listen": "0.0.0.0:9108"}})
    wide = parse_config({**data, "metrics": {"listen": "0.0.0.0:9108", "allow_remote": True}})
    assert (wide.metrics.host, wide.metrics.port) == ("0.0.0.0", 9108)
    assert parse_config({**data, "metrics": {"listen": "[::1]:9108"}}).metrics.host == "::1"


def test_a_taken_port_is_refused_and_nothing_stays_open() -> None:
    async def main() -> None:
        metrics = LineMetrics()
        async with MetricsServer(metrics.registry, "127.0.0.1", 0) as first:
            port = int(first.address.rpartition(":")[2])
            with pytest.raises(OSError, match="in use"):
                await MetricsServer(metrics.registry, "127.0.0.1", port).start()

    asyncio.run(main())


def test_the_config_says_whether_there_is_an_endpoint() -> None:
    async def main() -> None:
        metrics = LineMetrics()
        async with metrics.serving(MetricsConfig()) as off:
            assert off is None
        async with metrics.serving(MetricsConfig(enabled=True, listen="127.0.0.1:0")) as on:
            assert on is not None
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://{on.address}/metrics") as response:
                text = await response.text()
        assert "parcel_sorter_journal_write_seconds_count 0.0" in text

    asyncio.run(main())


@pytest.mark.wallclock
def test_run_serves_the_metrics_its_config_asks_for(tmp_path: Path) -> None:
    """``emulate`` and ``run`` as processes; a scrape of ``run`` after the shift."""
    import json
    import signal
    import socket
    import subprocess
    import urllib.request

    from tests.bench_processes import start_emulate, start_run, stop, wait_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator, report, config = start_emulate(tmp_path, parcels=8, seed=3)
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        with config.open("a") as toml:
            toml.write(f'\n[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n')
        controller = start_run(config)
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as got:
            families = _samples(got.read().decode())
        controller.send_signal(signal.SIGINT)
        output, _ = controller.communicate(timeout=30)
        assert controller.returncode == 0, output
    finally:
        stop(emulator, controller)
    parcels = json.loads(report.read_text())["parcels"]
    journal = Counter(p["disposition"] for p in parcels)
    for sample in families["parcel_sorter_parcels"]:
        if sample.name.endswith("_total"):
            assert sample.value == journal.get(sample.labels["disposition"], 0), sample
    assert _value(families["parcel_sorter_decision_seconds"],
                  "parcel_sorter_decision_seconds_count") == len(parcels)
    links = {s.labels["link"] for s in families["parcel_sorter_link_state"]}
    assert links
