"""The emulated line's devices as in-process links, behind the controller's own interfaces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from controller.lineio import DivertCommand, DivertReply, LineEvent
from controller.vision import CameraState, Frame
from sim_hardware.line import PhysicalLine


class SimLineIO:
    """The line's I/O board, reached in-process."""

    def __init__(self, line: PhysicalLine) -> None:
        self._line = line
        self._events: asyncio.Queue[LineEvent] = asyncio.Queue()
        line.event_sinks.append(self._events.put_nowait)

    def encoder(self) -> int:
        return self._line.encoder()

    async def events(self) -> AsyncIterator[LineEvent]:
        while True:
            yield await self._events.get()

    async def divert(self, command: DivertCommand) -> DivertReply:
        return self._line.accept_divert(command)


class SimCamera:
    """An emulated camera; like a real one it drops the oldest frames when the reader lags."""

    def __init__(self, line: PhysicalLine, camera_id: str, buffer: int = 4) -> None:
        self.camera_id = camera_id
        self.dropped = 0
        self._line = line
        self._frames: asyncio.Queue[Frame] = asyncio.Queue(buffer)
        line.frame_sinks[camera_id].append(self._put)

    @property
    def state(self) -> CameraState:
        """Down while the scenario has it out, as a driver would report it."""
        return CameraState.DOWN if self._line.camera_down(self.camera_id) \
            else CameraState.STREAMING

    def _put(self, frame: Frame) -> None:
        if self._frames.full():
            self._frames.get_nowait()
            self.dropped += 1
        self._frames.put_nowait(frame)

    async def frames(self) -> AsyncIterator[Frame]:
        while True:
            yield await self._frames.get()
