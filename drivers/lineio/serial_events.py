"""The I/O board's events and encoder counts, queued for the controller in the order they came.

Encoder updates travel in the same queue as the events, so :meth:`BoardEvents.encoder` never
runs ahead of the events the controller has taken: after a reconnect the belt position does
not jump past parcels whose buffered photo-eye edges are still on their way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from controller.lineio import LineEvent, TrackingLost

__all__ = ["BoardEvents"]


class BoardEvents:
    """The serial driver's event stream: what the board reported, not yet taken."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[LineEvent | int] = asyncio.Queue()
        self.received = 0  # the board's latest encoder count
        self.delivered = 0  # the count as of the events taken so far
        self._undelivered = 0  # events queued, not yet taken by the controller
        self.tracking_lost = 0  # TrackingLost events queued, not yet taken

    def encoder(self) -> int:
        return self.delivered if self._undelivered else self.received

    async def events(self) -> AsyncIterator[LineEvent]:
        while True:
            item = await self._queue.get()
            if isinstance(item, int):
                self.delivered = item
                continue
            self._undelivered -= 1
            if isinstance(item, TrackingLost):
                self.tracking_lost -= 1
            yield item

    def event(self, event: LineEvent) -> None:
        if isinstance(event, TrackingLost):
            self.tracking_lost += 1
        self._undelivered += 1
        self._queue.put_nowait(event)

    def enc(self, enc: int) -> None:
        self.received = enc
        self._queue.put_nowait(enc)
