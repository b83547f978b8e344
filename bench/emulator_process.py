"""The emulated line in a process of its own, as a bench's hardware: ``parcel-sorter emulate``.

On a real line the cameras, the I/O board and the diverter nodes are separate devices: their
work (rendering, JPEG encoding, the belt's physics) is not on the controller's cores' event
loop. A bench that runs its controller in its own process starts the emulator with
:class:`EmulatorProcess` for a line config and a scenario (:func:`scenario_for_rate` makes one
for a rate in parcels an hour), runs a controller on the config it wrote
(:attr:`EmulatorProcess.controller_config`), and stops the emulator by its PID.

    with EmulatorProcess(config, scenario_for_rate(40_000, 40), workdir,
                         mqtt=(broker.host, broker.port)) as emulator:
        line_toml = emulator.start()          # waits for the written controller config
        ...                                   # a controller on load_config(line_toml)
        report = emulator.wait(timeout_s=120) # the emulator's JSON report (truth + journal)

The emulator waits for a controller's HELLO on its serial port, feeds its infeed once that
controller says it sorts (mode RUN), and exits once the controller's journal has a final
record for every parcel (or ``drain_s`` after the belt emptied).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.config import LineConfig  # noqa: E402
from sim_hardware.scenario import ScenarioSpec  # noqa: E402

__all__ = ["EmulatorFailed", "EmulatorProcess", "scenario_for_rate"]


class EmulatorFailed(RuntimeError):
    """The emulator's process ended, or did not say what it was asked to, in time."""


def scenario_for_rate(rate_per_h: float, seconds: float, *, speed_mm_s: float = 3000.0,
                      gap_mm: tuple[float, float] = (40.0, 90.0),
                      length_mm: tuple[float, float] | None = None, seed: int = 40,
                      **spec: Any) -> ScenarioSpec:
    """A nominal stream of ``seconds`` of belt time at about ``rate_per_h`` parcels an hour:
    the parcel lengths (+-25 %) are what the rate leaves of the pitch beside the gaps, as
    bench/realtime.py's ``--rate`` (``length_mm`` given: the rate follows from it instead)."""
    if length_mm is None:
        mean_length = speed_mm_s * 3600 / rate_per_h - sum(gap_mm) / 2
        if mean_length < 40:
            raise ValueError(f"{rate_per_h:g} parcels/h leaves parcels {mean_length:.0f} mm long")
        length_mm = (0.75 * mean_length, 1.25 * mean_length)
    pitch = sum(length_mm) / 2 + sum(gap_mm) / 2
    fields: dict[str, Any] = {"width_mm": (150.0, 300.0), "qr_share": 0.3,
                              "scuffed_share": 0.05, "multi_parcel_share": 0.0, **spec}
    return ScenarioSpec(parcels=int(seconds * speed_mm_s / pitch), seed=seed,
                        length_mm=length_mm, gap_mm=gap_mm, **fields)


def _toml(model: Any) -> str:
    return tomli_w.dumps(model.model_dump(mode="json", exclude_none=True))


class EmulatorProcess:
    """``parcel-sorter emulate`` for ``config`` and ``scenario`` in a child process.

    ``mqtt`` puts the diverters on that broker as the emulator's MQTT nodes (the sensors stay
    on the serial board); ``cpus`` pins the child to those CPUs; ``nice`` lowers its priority
(so that on a shared machine it takes only the CPU the controller leaves, as a separate
device would: its frames may then come late or be dropped); ``args`` are more
    ``emulate`` options (``["--jam", "D3"]``). Its output lines are kept in :attr:`lines`.
    """

    def __init__(self, config: LineConfig, scenario: ScenarioSpec, workdir: Path, *,
                 mqtt: tuple[str, int] | None = None, baudrate: int | None = 115200,
                 cpus: set[int] | None = None, nice: int = 0, args: list[str] | None = None,
                 wait_controller_s: float = 120.0, drain_s: float = 30.0) -> None:
        self.config = config
        self.scenario = scenario
        self.workdir = Path(workdir).resolve()
        self.mqtt = mqtt
        self.baudrate = baudrate
        self.cpus = cpus
        self.nice = nice
        self.args = list(args or [])
        self.wait_controller_s = wait_controller_s
        self.drain_s = drain_s
        self.controller_config = self.workdir / "controller.toml"
        self.report_path = self.workdir / "report.json"
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._said = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self) -> list[str]:
        """The child's command line (its config and scenario files written by start)."""
        cmd = [sys.executable, "-m", "controller", "emulate",
               "--config", str(self.workdir / "line.toml"),
               "--scenario", str(self.workdir / "scenario.toml"),
               "--report", str(self.report_path), "--write-config", str(self.controller_config),
               "--workdir", str(self.workdir / "shift"),
               "--baud", str(self.baudrate or 0),
               "--wait-controller", f"{self.wait_controller_s:g}", "--drain", f"{self.drain_s:g}"]
        if self.mqtt is not None:
            cmd += ["--mqtt", f"{self.mqtt[0]}:{self.mqtt[1]}"]
        return cmd + self.args

    def start(self, timeout_s: float = 60.0) -> Path:
        """Start the child; return the controller config it wrote, once it has."""
        if self.process is not None:
            raise RuntimeError("the emulator is already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "line.toml").write_text(_toml(self.config), encoding="utf-8")
        (self.workdir / "scenario.toml").write_text(_toml(self.scenario), encoding="utf-8")
        self.controller_config.unlink(missing_ok=True)
        self.report_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)  # noqa: PLW1509
        if self.cpus is not None:
            os.sched_setaffinity(self.process.pid, self.cpus)
        self._reader = threading.Thread(target=self._read, name="emulator-output", daemon=True)
        self._reader.start()
        self.wait_for("config: ", timeout_s)
        return self.controller_config

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._said:
                self.lines.append(line.rstrip("\n"))
                self._said.notify_all()
        with self._said:
            self._said.notify_all()

    def wait_for(self, prefix: str, timeout_s: float) -> str:
        """The first output line starting with ``prefix`` (blocking, up to ``timeout_s``)."""
        until = time.monotonic() + timeout_s
        with self._said:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.process is None or self.process.poll() is not None:
                    raise EmulatorFailed(f"the emulator ended before it said {prefix!r}: "
                                         + "\n".join(self.lines[-20:]))
                left = until - time.monotonic()
                if left <= 0:
                    raise EmulatorFailed(f"the emulator did not say {prefix!r} within "
                                         f"{timeout_s:g} s")
                self._said.wait(min(left, 0.5))

    def wait(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait for the child to end; its JSON report (EmulatorFailed if it failed)."""
        if self.process is None:
            raise RuntimeError("the emulator was not started")
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise EmulatorFailed(f"the emulator still runs after {timeout_s:g} s") from None
        if self._reader is not None:
            self._reader.join(5)
        if code != 0 or not self.report_path.exists():
            raise EmulatorFailed(f"the emulator exited {code}: " + "\n".join(self.lines[-20:]))
        report: dict[str, Any] = json.loads(self.report_path.read_text(encoding="utf-8"))
        return report

    def stop(self, grace_s: float = 5.0) -> int | None:
        """End the child by its PID (SIGTERM, then SIGKILL after ``grace_s``); its exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(grace_s)
        if self._reader is not None:
            self._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
