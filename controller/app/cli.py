"""The ``parcel-sorter`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.app.archive_tool import add_archive_command
from controller.app.decode_tool import add_decode_command
from controller.app.diag import add_diag_command
from controller.app.example_line import EXAMPLE_CONFIG
from controller.app.orders_tool import add_orders_command
from controller.app.plan_tool import add_plan_command
from controller.app.report_tool import add_report_command
from controller.app.simulate import DECODE_COST_S, ShiftResult
from controller.app.trace_tool import add_trace_command
from controller.clock import Clock
from controller.config import DiagnosticsConfig, LineConfig, load_config
from controller.errors import ConfigError, SorterError

if TYPE_CHECKING:
    from controller.sorter import SorterStats
    from sim_hardware.scenario import ScenarioSpec

log = logging.getLogger(__name__)

EXIT_BROKEN_PIPE = 128 + 13
"""The exit status of a command whose reader closed its output early (as killed by SIGPIPE)."""
EXIT_STORAGE_FAULT = 3
"""The exit status of ``run`` stopped because the journal could no longer be written."""
EXIT_NEVER_READY = 4
"""The exit status of ``run`` whose cameras, links or order store never came up in time."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parcel-sorter", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text (default), or one JSON object a line; under journald "
                             "each line carries its syslog priority")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run a sorting shift against the emulator and report it")
    sim.add_argument("--config", type=Path, default=EXAMPLE_CONFIG,
                     help="line config TOML (default: the packaged example line)")
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
    _diagnostics_options(sim)

    run = sub.add_parser("run", help="run the controller on the line a config names, until "
                                      "SIGINT or SIGTERM")
    run.add_argument("--config", type=Path, required=True, help="line config TOML")
    run.add_argument("--ready-timeout", type=float, default=None, metavar="SECONDS",
                     help="give up (exit 4) if the cameras, line I/O links or order store "
                          "are not all up by then (default: 60)")
    _diagnostics_options(run)

    emu = sub.add_parser("emulate", help="run the emulated line as hardware (a pty I/O board, "
                                         "MQTT diverter nodes, MJPEG cameras) for a controller "
                                         "in another process, and report the shift")
    emu.add_argument("--config", type=Path, default=EXAMPLE_CONFIG,
                     help="the line to emulate (default: the packaged example line)")
    emu.add_argument("--parcels", type=int, default=None, help="parcels in the shift")
    emu.add_argument("--seed", type=int, default=None, help="seed of the parcel stream")
    emu.add_argument("--scenario", type=Path, default=None, help="scenario TOML (spec = 1)")
    emu.add_argument("--mix", choices=("demo", "nominal"), default="nominal",
                     help="parcel mix when no scenario is given (default: nominal)")
    emu.add_argument("--report", type=Path, required=True, help="write the JSON report here")
    emu.add_argument("--write-config", type=Path, required=True,
                     help="write the line config a controller uses to reach the emulator here")
    emu.add_argument("--workdir", type=Path, default=None,
                     help="the shift's order book, journal and port link (default: a folder "
                          "beside --write-config)")
    emu.add_argument("--mqtt", type=_host_port, default=None, metavar="HOST:PORT",
                     help="serve the diverters as MQTT nodes through this broker")
    emu.add_argument("--mqtt-secrets", type=Path, default=None, metavar="FILE",
                     help="user:password lines of the broker's deploy accounts (deploy/"
                          "mosquitto.acl): each node logs in as itself, and the written "
                          "config logs the controller in with its own account")
    emu.add_argument("--baud", type=int, default=115200,
                     help="pace the serial wire like this baud rate (0: as fast as the pty)")
    emu.add_argument("--garble", type=float, default=0.0,
                     help="share of bytes with a bit flipped, both directions")
    emu.add_argument("--drop-bytes", type=float, default=0.0, help="share of bytes lost")
    emu.add_argument("--drop-acks", type=float, default=0.0, help="share of board ACKs lost")
    emu.add_argument("--ack-delay-ms", type=float, default=0.0, help="delay every board ACK")
    emu.add_argument("--unplug", type=_unplug, action="append", default=[],
                     metavar="AT:SECONDS", help="pull the serial cable AT s into the shift "
                                                "for SECONDS (repeatable)")
    emu.add_argument("--restart", type=_unplug, action="append", default=[],
                     metavar="AT:SECONDS", help="power-cycle the I/O board AT s into the shift: "
                     "off the bus for SECONDS, back with a new boot id and nothing scheduled "
                     "(repeatable)")
    emu.add_argument("--jam", action="append", default=[], metavar="DIVERTER",
                     help="this diverter's arm is stuck: it fires, nothing moves (repeatable)")
    emu.add_argument("--wait-controller", type=float, default=120.0,
                     help="seconds to wait for a controller before giving up")
    emu.add_argument("--drain", type=float, default=30.0,
                     help="seconds to wait after the last parcel for the controller's journal")

    check = sub.add_parser("check-config", help="validate a line config and print its layout")
    check.add_argument("config", type=Path)
    check.add_argument("--for", dest="purpose", choices=("run", "sim"), default="run",
                       help="check it for `run` on a real line (default; what the unit's "
                            "ExecStartPre= runs) or for `sim` against the emulator")
    for add_tool in (add_decode_command, add_archive_command, add_diag_command,
                     add_trace_command, add_orders_command, add_report_command,
                     add_plan_command):
        add_tool(sub)
    return parser


def _diagnostics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt", type=_host_port, default=None, metavar="HOST:PORT",
                   help="publish diagnostics (docs/diagnostics-protocol.md) through this broker, "
                        "with or instead of the config's [diagnostics] broker")
    p.add_argument("--mqtt-user", default=None, metavar="USER",
                   help="the diagnostics broker's username")
    p.add_argument("--mqtt-password-file", type=Path, default=None, metavar="FILE",
                   help="file holding the diagnostics broker's password")


def with_diagnostics(config: LineConfig, args: argparse.Namespace) -> LineConfig:
    """``config`` with its diagnostics broker set by ``--mqtt`` (and login by ``--mqtt-user``,
    ``--mqtt-password-file``); the config's other [diagnostics] settings stay, or default."""
    login_given = args.mqtt_user is not None or args.mqtt_password_file is not None
    if args.mqtt is None and not login_given:
        return config
    if args.mqtt is None and config.diagnostics is None:
        raise ConfigError("--mqtt-user", [("--mqtt", "--mqtt-user and --mqtt-password-file "
                                                     "need --mqtt HOST:PORT (the config has "
                                                     "no [diagnostics])")], "option")
    if args.mqtt_password_file is not None and not args.mqtt_password_file.is_file():
        raise ConfigError("--mqtt-password-file", [
            ("--mqtt-password-file", f"no such file: {args.mqtt_password_file}")], "option")
    update: dict[str, Any] = {}
    if args.mqtt is not None:
        update["host"], update["port"] = args.mqtt
    if login_given:
        update["username"] = args.mqtt_user
        update["password_file"] = (str(args.mqtt_password_file.resolve())
                                   if args.mqtt_password_file is not None else None)
    section = config.diagnostics or DiagnosticsConfig()
    return config.model_copy(update={"diagnostics": section.model_copy(update=update)})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; its exit status (2 for a bad config or option)."""
    args = _parser().parse_args(argv)
    from controller.app.logs import configure_logging

    configure_logging(logging.WARNING - 10 * min(args.verbose, 2), args.log_format)
    try:
        status = _command(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as a traceback
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more, and keep the interpreter's
        # last flush at exit from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except SorterError as exc:
        print(f"parcel-sorter: {exc}", file=sys.stderr)
        return 2
    return status


def _command(args: argparse.Namespace) -> int:
    if args.command == "sim":
        return _sim(args)
    if args.command == "run":
        return _run(args)
    if args.command == "emulate":
        return _emulate(args)
    if args.command == "check-config":
        from controller.app.check_config import check_config

        return check_config(args.config, args.purpose)
    status: int = args.tool_handler(args)  # decode and archive name their own handler
    return status


def _sim(args: argparse.Namespace) -> int:
    from controller.app.shift_report import parcel_records, summarise
    from controller.app.simulate import run_shift
    from controller.clock import run_real, run_virtual
    from controller.report import format_summary, write_report

    if args.cameras != "inprocess" and not args.realtime:
        raise ConfigError("--cameras", [("--cameras", f"{args.cameras} streams run on the real "
                                                      "clock: add --realtime")], "option")
    config = with_diagnostics(load_config(args.config), args)
    if config.diagnostics is not None and not args.realtime:
        raise ConfigError("--mqtt", [("diagnostics", "a shift on the virtual clock runs faster "
                                                     "than a broker answers: add --realtime")],
                          "option")
    spec = _scenario(args)
    progress = _Progress(spec.parcels)

    with tempfile.TemporaryDirectory(prefix="parcel-sorter-") as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()

        async def shift(clock: Clock) -> ShiftResult:
            return await run_shift(config, spec, workdir, clock, on_final=progress.update,
                                   decode_threads=args.decode_threads,
                                   decode_cost_s=args.decode_ms / 1000,
                                   camera_link=args.cameras, config_path=args.config)

        result = run_real(shift) if args.realtime else run_virtual(shift)
        result.wall_time_s = time.perf_counter() - started
    progress.finish()
    records = parcel_records(result)
    summary = summarise(result, records)
    print(format_summary(summary))
    if args.report:
        write_report(args.report, summary, records)
        print(f"report written to {args.report}")
    if result.fault is not None:
        print(f"parcel-sorter: line stopped, storage fault: {result.fault}", file=sys.stderr)
        return EXIT_STORAGE_FAULT
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _unplug(text: str) -> tuple[float, float]:
    try:
        at, length = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AT:SECONDS, got {text!r}") from None
    if at < 0 or length <= 0:
        raise argparse.ArgumentTypeError(f"AT must be >= 0 and SECONDS > 0: {text!r}")
    return at, length


def _scenario(args: argparse.Namespace) -> ScenarioSpec:
    from sim_hardware.scenario import DEMO_MIX, ScenarioSpec, load_scenario

    spec = load_scenario(args.scenario) if args.scenario else ScenarioSpec(
        mix=DEMO_MIX if args.mix == "demo" else ScenarioSpec().mix)
    updates: dict[str, Any] = {}
    if args.parcels is not None:
        updates["parcels"] = args.parcels
    if args.seed is not None:
        updates["seed"] = args.seed
    return spec.model_copy(update=updates)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from controller.app.run import READY_TIMEOUT_S, NeverReady, run_line
    from controller.app.sd_notify import Notifier
    from controller.clock import RealClock
    from controller.errors import JournalError
    from controller.line_lock import LineLock
    from controller.state_paths import require_paths
    from drivers.decoders import make_line_decoders

    config = with_diagnostics(load_config(args.config), args)
    require_paths(config, str(args.config), "run")
    make_line_decoders(config, str(args.config))  # refused here, before anything opens
    lock = LineLock(config.journal.path)
    if config.journal.path != ":memory:":
        lock.acquire()  # before the journal or any link is opened; held until exit

    def say(line: str) -> None:
        print(f"parcel-sorter: {line}", file=sys.stderr, flush=True)

    async def main(notifier: Notifier) -> SorterStats:
        stop, stop_now, reload = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            (stop_now if stop.is_set() else stop).set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        say(f"running line {config.line.name!r}; SIGINT or SIGTERM stops (a second one at "
            f"once), SIGHUP reloads the sort plan")
        return await run_line(config, RealClock(), stop, stop_now=stop_now, notifier=notifier,
                              say=say, ready_timeout_s=args.ready_timeout or READY_TIMEOUT_S,
                              config_path=args.config, reload=reload)

    try:
        with Notifier.from_env() as notifier:
            stats = asyncio.run(main(notifier))
    except JournalError as exc:
        say(f"line stopped, storage fault: {exc}")
        return EXIT_STORAGE_FAULT
    except NeverReady as exc:
        say(f"line never ready: {exc}")
        return EXIT_NEVER_READY
    finally:
        lock.release()
    finished = ", ".join(f"{k} {v}" for k, v in sorted(stats.dispositions.items()))
    print(f"parcel-sorter: stopped; parcels finished: {finished or 'none'}", flush=True)
    return 0


def _emulate(args: argparse.Namespace) -> int:
    import dataclasses

    from controller.app.emulate import EmulateOptions, emulate
    from controller.app.shift_report import emulated_summary, parcel_records
    from controller.clock import run_real
    from controller.report import format_summary, write_report

    config = load_config(args.config)
    spec = _scenario(args)
    workdir = args.workdir or args.write_config.with_name(args.write_config.stem + ".d")
    options = EmulateOptions(
        config_path=args.config, write_config=args.write_config, workdir=workdir.resolve(),
        mqtt=args.mqtt, mqtt_secrets=args.mqtt_secrets, baudrate=args.baud or None,
        garble=args.garble, drop=args.drop_bytes,
        drop_acks=args.drop_acks, ack_delay_ms=args.ack_delay_ms, unplug=args.unplug,
        restart=args.restart, jam=args.jam, wait_controller_s=args.wait_controller,
        drain_s=args.drain)
    started = time.perf_counter()

    async def shift(clock: Clock) -> ShiftResult:
        return await emulate(config, spec, options, clock, lambda line: print(line, flush=True))

    result = run_real(shift)
    result.wall_time_s = time.perf_counter() - started
    records = parcel_records(result)
    summary = emulated_summary(result, records)
    # Every fire the emulated diverters made, for the controller parcel its command named.
    summary["fires"] = [dataclasses.asdict(fire) for fire in result.fires]
    print(format_summary(summary), flush=True)
    write_report(args.report, summary, records)
    print(f"report written to {args.report}", flush=True)
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

