"""bench/board_stub.c as the emulated line's I/O board: a far end that shares no code with the
driver, so a bug shared by both ends of our own link cannot hide behind it.

The stub is firmware in C, built from docs/serial-protocol.md alone; this module is only its
machine: it feeds the line's encoder, photo-eyes and bin sensors to the stub's stdin and
carries out on the line what the stub holds and drops (see the top of bench/board_stub.c).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.clock import Clock
from controller.lineio import (
    BinEntry,
    BinLevel,
    DivertCommand,
    DivertReply,
    LineEvent,
    PhotoEyeEdge,
)
from sim_hardware.line import PhysicalLine

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parents[1] / "bench" / "board_stub.c"
ENCODER_S = 0.01  # the board's encoder input is read this often


def build_stub(workdir: Path) -> Path | None:
    """Compile the stub into ``workdir``; None when there is no C compiler."""
    compiler = shutil.which("cc")
    if compiler is None:
        return None
    binary = workdir / "board_stub"
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
    return binary


class CBoard:
    """The C stub driving ``line``'s diverters and reading its sensors."""

    def __init__(self, binary: Path, line: PhysicalLine, clock: Clock) -> None:
        self.binary = binary
        self.line = line
        self.clock = clock
        self.port = ""
        self.held: list[DivertCommand] = []
        self.dropped: list[int] = []
        self.fired: list[tuple[int, str, int]] = []
        self._held_seen: dict[int, asyncio.Event] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> CBoard:
        config = self.line.config
        belt = config.belt
        counts_per_s = belt.speed_mm_s * belt.encoder_counts_per_mm
        leads = [f"{d.id}={round(d.actuation_ms / 1000 * counts_per_s)}"
                 for d in config.diverters]
        self._process = await asyncio.create_subprocess_exec(
            str(self.binary), "board", *leads, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        self.port = (await self._process.stdout.readline()).decode().strip()
        self._input(f"enc {self.line.encoder()}")
        self.line.event_sinks.append(self._line_event)
        self._tasks = [asyncio.create_task(self._encoder(), name="c-board.enc"),
                       asyncio.create_task(self._outputs(), name="c-board.out")]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ValueError):
            self.line.event_sinks.remove(self._line_event)
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()  # by its own handle, i.e. its PID
            await self._process.wait()

    def _input(self, line: str) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")

    def _line_event(self, event: LineEvent) -> None:
        match event:
            case PhotoEyeEdge(eye=eye, blocked=blocked, enc=enc):
                self._input(f"eye {eye} {int(blocked)} {enc}")
            case BinEntry(bin_id=bin_id, enc=enc):
                self._input(f"bin {bin_id} {enc}")
            case BinLevel(bin_id=bin_id, full=full):
                self._input(f"level {bin_id} {int(full)}")

    async def _encoder(self) -> None:
        while True:
            await self.clock.sleep(ENCODER_S)
            self._input(f"enc {self.line.encoder()}")

    async def _outputs(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            words = raw.decode().split()
            match words:
                case ["hold", command, parcel, diverter, fire_enc, pulse]:
                    held = DivertCommand(int(command), int(parcel), diverter, int(fire_enc),
                                         float(pulse))
                    self.held.append(held)
                    self._seen(held.command_id).set()
                    reply = self.line.accept_divert(held)  # the diverter's count compare
                    if not reply.accepted:
                        log.warning("c-board: the line refused %s: %s", held, reply.reason)
                case ["drop", command]:
                    self.dropped.append(int(command))
                    self.line.cancel_divert(int(command))
                case ["fired", command, diverter, enc]:
                    self.fired.append((int(command), diverter, int(enc)))
                case _:
                    log.warning("c-board: unknown output %r", raw)

    def _seen(self, command_id: int) -> asyncio.Event:
        return self._held_seen.setdefault(command_id, asyncio.Event())

    async def held_reported(self, command_id: int, within_s: float = 1.0) -> None:
        """Wait until the stub's ``hold`` line for this divert has been carried out."""
        async with asyncio.timeout(within_s):
            await self._seen(command_id).wait()


class CBoardLineIO:
    """The serial driver talking to the stub, seen as a LineIO.

    The stub holds a divert before it answers, but its ``hold`` line (stdout) and its answer
    (the pty) are two pipes: an accepted reply waits for the line to be told, so the
    emulated diverter is scheduled when the controller hears "accepted", as on a board.
    """

    def __init__(self, link: Any, board: CBoard) -> None:
        self.link = link
        self.board = board

    def encoder(self) -> int:
        return int(self.link.encoder())

    def events(self) -> AsyncIterator[LineEvent]:
        events: AsyncIterator[LineEvent] = self.link.events()
        return events

    async def divert(self, command: DivertCommand) -> DivertReply:
        reply: DivertReply = await self.link.divert(command)
        if reply.accepted:
            await self.board.held_reported(command.command_id)
        return reply

    async def __aenter__(self) -> CBoardLineIO:
        await self.link.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.link.__aexit__(exc_type, exc, tb)
