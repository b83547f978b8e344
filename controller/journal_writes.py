"""Journal writes kept off the line's event path.

The line's events (photo-eyes, bins) and the position watcher never wait for storage: a
thread round trip per event, on a box whose cores the decoders keep busy, made the events
queue up seconds behind the belt. Each write is handed to the journal's one writer thread in
the order it was made (a parcel's final record always after its induction) and awaited by a
task of its own. The first write that fails is handed to ``on_failure`` at once (the line
stops firing) and kept: :meth:`JournalWrites.failed` returns it, so the run ends with the
error, as it did when the event path raised it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from controller.errors import JournalError


class JournalWrites:
    """The journal writes in flight: started in order, awaited together, failures kept."""

    def __init__(self, on_failure: Callable[[JournalError], None]) -> None:
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[None]] = set()
        self._inductions: dict[int, asyncio.Task[None]] = {}
        self._failure: JournalError | None = None
        self._failed = asyncio.Event()

    def start(self, write: Coroutine[Any, Any, None], name: str, *,
              induction_of: int | None = None) -> None:
        """Start ``write`` now: its storage call is queued before any write started later."""
        task = asyncio.get_running_loop().create_task(write, name=name)
        self._tasks.add(task)
        if induction_of is not None:
            self._inductions[induction_of] = task
        task.add_done_callback(lambda done: self._done(done, induction_of))

    def _done(self, task: asyncio.Task[None], induction_of: int | None) -> None:
        self._tasks.discard(task)
        if induction_of is not None and self._inductions.get(induction_of) is task:
            del self._inductions[induction_of]
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, JournalError):
            if self._failure is None:
                self._failure = exc
                self._failed.set()
                self._on_failure(exc)
        elif exc is not None:  # a bug in the write's own accounting: surfaced, not lost
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"journal write {task.get_name()} failed", "exception": exc,
                 "task": task})

    async def inducted(self, parcel_id: int) -> None:
        """Wait until ``parcel_id``'s induction is written (at once if it is, or failed)."""
        task = self._inductions.get(parcel_id)
        if task is not None:
            await asyncio.wait([task])

    async def failed(self) -> JournalError:
        """The first write that failed, once one has."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    async def drain(self) -> None:
        """Wait for every write started so far, and those they start, to end."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
