"""``run`` killed with SIGKILL mid-shift against ``emulate``, then started again.

The first ``run`` publishes diagnostics (``--mqtt``) to a real mosquitto: a technician
watching its status sees it turn ``offline`` through the Will the broker publishes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.config import load_config
from controller.journal import read_records
from sim_hardware.broker import Mosquitto, mosquitto_path
from tests.bench_processes import start_emulate, start_run, stop, wait_for
from tests.test_graceful_stop import wait_finals

pytestmark = pytest.mark.wallclock

PARCELS = 40
RESTARTED = "controller restarted while the parcel was tracked"
FAILSAFE_S = 0.5 + 0.25  # the emulated board's heartbeat fail-safe, and a heartbeat's slack


def test_sigkill_then_restart_leaves_one_disposition_each_and_no_stray_fire(
        tmp_path: Path) -> None:
    subscriber = shutil.which("mosquitto_sub")
    if mosquitto_path() is None or subscriber is None:
        pytest.skip("mosquitto and mosquitto_sub are not installed (apt-get install mosquitto "
                    "mosquitto-clients)")
    emulator, report, config_path = start_emulate(tmp_path, parcels=PARCELS, seed=12,
                                                  extra=("--drain", "1"))
    first: subprocess.Popen[str] | None = None
    second: subprocess.Popen[str] | None = None
    technician: subprocess.Popen[str] | None = None
    seen: list[str] = []
    broker = Mosquitto()
    try:
        broker.start()
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        config = load_config(config_path)
        first = start_run(config_path, "--mqtt", f"{broker.host}:{broker.port}")
        wait_finals(config.journal.path, 8, within_s=90)
        # a technician's mosquitto_sub: the retained status first, then what comes next
        technician = subprocess.Popen(  # the broker's own client, on our broker
            [subscriber, "-h", broker.host, "-p", str(broker.port), "-t", "sorter/+/status",
             "-C", "2", "-W", "20"], stdout=subprocess.PIPE, text=True)
        assert technician.stdout is not None
        assert json.loads(technician.stdout.readline())["state"] == "running"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        will = json.loads(technician.stdout.readline())
        assert (will["state"], will["reason"]) == ("offline", "connection lost"), will
        # What the dead process left: its journal is intact, some parcels were still open.
        left = read_records(config.journal.path)
        in_flight = {r["parcel_id"] for r in left if r["disposition"] is None}
        assert in_flight, "the kill should come while parcels are on the belt"
        first_ids = {r["parcel_id"] for r in left}
        # A controller restarted within the fail-safe's silence would void the dead one's
        # diverts by its new session instead: this test is of the fail-safe.
        time.sleep(max(0.0, killed_at + FAILSAFE_S + 0.5 - time.monotonic()))
        second = start_run(config_path)
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=180) == 0, "".join(seen)
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=40)
        assert second.returncode == 0, output
    finally:
        stop(emulator, first, second, technician)
        broker.close()

    rows = {r["parcel_id"]: r for r in read_records(config.journal.path)}
    assert [r for r in rows.values() if r["disposition"] is None] == []
    # The first process's finals stand; each of its parcels in flight ends LOST, saying why.
    for parcel_id in first_ids - in_flight:
        before = next(r for r in left if r["parcel_id"] == parcel_id)
        assert rows[parcel_id]["disposition"] == before["disposition"]
    for parcel_id in in_flight:
        assert rows[parcel_id]["disposition"] == "LOST"
        assert rows[parcel_id]["reason"] == RESTARTED
    second_ids = set(rows) - first_ids
    assert second_ids, "the second process tracked parcels of its own"
    assert min(second_ids) > max(first_ids)  # numbering goes on, never reused

    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["summary"]["wrong_parcel_fires"] == 0
    fires = data["summary"]["fires"]
    assert fires
    # A fire is for a parcel the process that sent it tracked. One for a parcel in flight
    # at the kill comes before the new process tracked anything: the board dropped the dead
    # controller's diverts (fail-safe, then the new session voids them).
    # A fire for a parcel in flight at the kill is one the dead process had scheduled: the
    # board fires it only until its fail-safe drops what is left (FAILSAFE_S of silence),
    # never once the new process runs. The new process's first parcel came to PE-IN after
    # the kill (the dead one never tracked it): the fires are bounded by that count.
    restarted_enc = min(rows[i]["inducted_enc"] for i in second_ids)
    failsafe_counts = FAILSAFE_S * config.belt.speed_mm_s * config.belt.encoder_counts_per_mm
    for fire in fires:
        assert fire["parcel_id"] in rows, fire
        if fire["parcel_id"] in in_flight:
            assert fire["enc"] <= restarted_enc + failsafe_counts, fire
    board = data["summary"]["board"]
    assert board["sessions"] == 2
    assert board["failsafes"] == 1  # the dead controller's diverts still scheduled: dropped
    fired_after_restart = [f for f in fires if f["parcel_id"] in second_ids]
    assert fired_after_restart
    by_sim = {p["sim_id"]: p for p in data["parcels"]}
    for fire in fired_after_restart:
        pushed = by_sim[fire["pushed"]]
        assert pushed["parcel_id"] == fire["parcel_id"]
        assert rows[fire["parcel_id"]]["disposition"] in {"SORTED", "DEST_FULL", "ORDER_HELD"}
