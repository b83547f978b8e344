"""The ``parcel-sorter`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.config import load_config
from controller.errors import ConfigError, SorterError
from controller.simulate import DECODE_COST_S
from controller.tools import TOOL_COMMANDS, add_archive_command, add_decode_command, run_tool

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "line.example.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parcel-sorter", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run a sorting shift against the emulator and report it")
    sim.add_argument("--config", type=Path, default=EXAMPLE_CONFIG,
                     help="line config TOML (default: deploy/line.example.toml)")
    sim.add_argument("--parcels", type=int, default=None, help="parcels in the shift")
    sim.add_argument("--seed", type=int, default=None, help="seed of the parcel stream")
    sim.add_argument("--scenario", type=Path, default=None,
                     help="scenario TOML (spec = 1); --parcels and --seed override it")
    sim.add_argument("--mix", choices=("demo", "nominal"), default="demo",
                     help="parcel mix when no scenario is given (default: demo, with exceptions)")
    sim.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    sim.add_argument("--workdir", type=Path, default=None,
                     help="where the shift's order book and journal go (default: a temp dir)")
    sim.add_argument("--realtime", action="store_true", help="run on the real clock")
    sim.add_argument("--cameras", choices=("inprocess", "mjpeg", "opencv"), default="inprocess",
                     help="how frames reach the controller: in-process, or the emulator's "
                          "MJPEG-over-HTTP streams read by the MJPEG driver or by OpenCV "
                          "(those two need --realtime)")
    sim.add_argument("--decode-threads", type=int, default=None,
                     help="decoding threads (default: one per core, at most 4)")
    sim.add_argument("--decode-ms", type=float, default=DECODE_COST_S * 1000,
                     help="a frame's modelled decode time on the virtual clock (default: "
                          "%(default)g; the real clock takes what decoding really takes)")

    check = sub.add_parser("check-config", help="validate a line config and print its layout")
    check.add_argument("config", type=Path)
    add_decode_command(sub)
    add_archive_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "sim":
            return _sim(args)
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command in TOOL_COMMANDS:
            return run_tool(args)
    except SorterError as exc:
        print(f"parcel-sorter: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_config(path: Path) -> int:
    from drivers.cameras import needs_latency

    config = load_config(path)
    print(f"{path}: valid line {config.line.name!r}")
    print(f"  belt {config.belt.speed_mm_s:.0f} mm/s, {config.belt.encoder_counts_per_mm} "
          f"counts/mm, PE-IN at {config.induction.photo_eye_mm:.0f} mm")
    for cam in config.cameras:
        print(f"  camera {cam.id}: {cam.view_start_mm:.0f}-{cam.view_end_mm:.0f} mm, "
              f"{cam.resolution[0]}x{cam.resolution[1]} @ {cam.fps:g} fps, "
              f"{cam.mm_per_px:.3f} mm/px, decoder {cam.decoder}, source {cam.source}")
        if needs_latency(cam.source) and cam.latency_ms == 0:
            offset = config.belt.speed_mm_s * 0.016
            print(f"  WARNING camera {cam.id}: its frames carry no encoder count, and "
                  f"latency_ms is 0: measure its capture-to-arrival delay and set it (each "
                  f"16 ms uncorrected puts reads {offset:.0f} mm off at full belt speed, "
                  f"onto the neighbouring parcel when gaps are small)")
    for d in config.diverters:
        print(f"  diverter {d.id} at {d.position_mm:.0f} mm -> bin {d.bin} "
              f"(capacity {config.bin(d.bin).capacity})")
    print(f"  end of line ({config.end_of_line.role}) at {config.end_of_line.position_mm:.0f} mm")
    print(f"  sort plan: {len(config.sort_plan.rules)} rules, "
          f"overflow {config.sort_plan.overflow or 'none'}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from controller.clock import run_real, run_virtual
    from controller.report import format_summary, parcel_records, summarise, write_report
    from controller.simulate import run_shift
    from sim_hardware.scenario import DEMO_MIX, ScenarioSpec, load_scenario

    if args.cameras != "inprocess" and not args.realtime:
        raise ConfigError("--cameras", [("--cameras", f"{args.cameras} streams run on the real "
                                                      "clock: add --realtime")], "option")
    config = load_config(args.config)
    spec = load_scenario(args.scenario) if args.scenario else ScenarioSpec(
        mix=DEMO_MIX if args.mix == "demo" else ScenarioSpec().mix)
    updates: dict[str, Any] = {}
    if args.parcels is not None:
        updates["parcels"] = args.parcels
    if args.seed is not None:
        updates["seed"] = args.seed
    spec = spec.model_copy(update=updates)
    progress = _Progress(spec.parcels)

    with tempfile.TemporaryDirectory(prefix="parcel-sorter-") as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()

        async def shift(clock: Any) -> Any:
            return await run_shift(config, spec, workdir, clock, on_final=progress.update,
                                   decode_threads=args.decode_threads,
                                   decode_cost_s=args.decode_ms / 1000,
                                   camera_link=args.cameras)

        result = run_real(shift) if args.realtime else run_virtual(shift)
        result.wall_time_s = time.perf_counter() - started
    progress.finish()
    records = parcel_records(result)
    summary = summarise(result, records)
    print(format_summary(summary))
    if args.report:
        write_report(args.report, summary, records)
        print(f"report written to {args.report}")
    return 0


class _Progress:
    """A progress line on stderr: parcels finished out of the shift."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._tty = sys.stderr.isatty()
        self._last_shown = -1

    def update(self, _record: object) -> None:
        self.done += 1
        step = max(1, self.total // 10)
        if self._tty:
            print(f"\r{self.done}/{self.total} parcels finished", end="", file=sys.stderr)
        elif self.done // step != self._last_shown:
            self._last_shown = self.done // step
            print(f"{self.done}/{self.total} parcels finished", file=sys.stderr)

    def finish(self) -> None:
        if self._tty:
            print(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
