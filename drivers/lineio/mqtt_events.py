"""Line events in arrival order with the encoder counts between them (no I/O)."""

from __future__ import annotations

from collections import deque

from controller.lineio import LineEvent


class EventQueue:
    """Line events in arrival order with the encoder counts between them, so the count the
    controller reads never runs ahead of an event it has not taken yet."""

    def __init__(self) -> None:
        self._queue: deque[LineEvent | int] = deque()
        self._events = 0  # events in the queue (the rest are counts)
        self._received = 0
        self._delivered = 0

    def __bool__(self) -> bool:
        return bool(self._queue)

    def push(self, event: LineEvent) -> None:
        self._queue.append(event)
        self._events += 1

    def count(self, enc: int) -> None:
        """A new encoder count."""
        self._received = enc
        if self._events == 0:
            self._queue.clear()  # only counts were left: this one supersedes them
            self._delivered = enc
        elif self._queue and isinstance(self._queue[-1], int):
            self._queue[-1] = enc
        else:
            self._queue.append(enc)

    @property
    def received(self) -> int:
        """The latest count that came in."""
        return self._received

    def encoder(self) -> int:
        """The latest count, but never ahead of events still queued."""
        return self._received if self._events == 0 else self._delivered

    def pop(self) -> LineEvent | None:
        """The next event (None if only counts were left), passing the counts before it."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, int):
                self._delivered = item
                continue
            self._events -= 1
            return item
        return None
