"""The one place that reads time: a real clock and a virtual one that jumps to the next deadline.

Everything timed in the project asks a :class:`Clock`. Both clocks read the running event
loop's ``time()``; the virtual clock runs on :class:`VirtualTimeEventLoop`, whose time only
moves when every task is blocked, and then straight to the next timer. ``asyncio.sleep``,
``asyncio.timeout`` and ``loop.call_at`` therefore all run on virtual time without knowing it.

Work handed to threads with :meth:`Clock.offload` takes a modelled virtual duration, its
``cost``: virtual time may run on while the thread works, up to the job's virtual deadline,
and waits there for the job if it is not done; the result is delivered exactly at that
deadline. So a run never depends on how fast this machine decodes (the same seed gives the
same run), and other tasks, such as an emulator rendering the next frame, overlap the work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Time as the controller and the emulator see it, in seconds."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, deadline: float) -> None: ...

    async def offload(self, executor: Executor | None, fn: Callable[..., T], *args: Any,
                      cost: float = 0.0) -> T:
        """Run blocking ``fn(*args)`` in ``executor`` (default pool if None) and await it.

        ``cost`` is the time the job is modelled to take on a virtual clock; the real clock
        takes what it takes.
        """
        ...


class RealClock:
    """The running loop's monotonic clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self._loop.time()))

    async def offload(self, executor: Executor | None, fn: Callable[..., T], *args: Any,
                      cost: float = 0.0) -> T:
        return await self._loop.run_in_executor(executor, fn, *args)


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector: waits for real I/O only when nothing can advance virtually."""

    def __init__(self, now: Callable[[], float], advance: Callable[[float], None]) -> None:
        self._real = selectors.DefaultSelector()
        self._now = now
        self._advance = advance
        # work running in threads, by virtual deadline then order of submission (a heap)
        self.jobs: list[tuple[float, int]] = []

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if self.jobs:
            until_job = self.jobs[0][0] - self._now()
            if until_job <= 0:
                # A thread's job is due and not done: wait for it for real (it wakes us
                # through the loop's self-pipe).
                return self._real.select(None)
            if timeout is None or timeout > until_job:
                self._advance(until_job)
                return []
        if timeout is None:
            return self._real.select(None)  # no timer pending: only real I/O moves things on
        self._advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual and jumps to the next timer when idle."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        self._virtual_selector = _VirtualSelector(self.time, self._advance)
        self._tickets = itertools.count()
        self._turns: dict[tuple[float, int], asyncio.Event] = {}  # set when a ticket is done
        super().__init__(selector=self._virtual_selector)

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    def hold_until(self, deadline: float) -> tuple[float, int]:
        """Virtual time must not pass ``deadline`` until :meth:`release` of the ticket."""
        ticket = (deadline, next(self._tickets))
        heapq.heappush(self._virtual_selector.jobs, ticket)
        return ticket

    async def turn_of(self, ticket: tuple[float, int]) -> None:
        """Wait until ``ticket`` is the first held one.

        Work in threads finishes in whatever order the machine lets it; handing results
        back by deadline, then by order of submission, keeps a virtual run the same however
        loaded the machine is.
        """
        jobs = self._virtual_selector.jobs
        while jobs[0] != ticket:
            turn = self._turns.setdefault(jobs[0], asyncio.Event())
            await turn.wait()

    def release(self, ticket: tuple[float, int]) -> None:
        jobs = self._virtual_selector.jobs
        jobs.remove(ticket)
        heapq.heapify(jobs)
        turn = self._turns.pop(ticket, None)
        if turn is not None:
            turn.set()


class VirtualClock(RealClock):
    """Clock for a :class:`VirtualTimeEventLoop`; offloaded work takes its modelled cost."""

    def __init__(self, loop: VirtualTimeEventLoop) -> None:
        super().__init__(loop)
        self._vloop = loop

    async def offload(self, executor: Executor | None, fn: Callable[..., T], *args: Any,
                      cost: float = 0.0) -> T:
        ticket = self._vloop.hold_until(self._vloop.time() + max(0.0, cost))
        try:
            failure: Exception | None = None
            try:
                result = await self._vloop.run_in_executor(executor, fn, *args)
            except Exception as exc:  # handed back in its turn, like a result
                failure = exc
            await asyncio.sleep(ticket[0] - self._vloop.time())
            await self._vloop.turn_of(ticket)
        finally:
            self._vloop.release(ticket)
        if failure is not None:
            raise failure
        return result


def running_clock() -> Clock:
    """The clock of the running loop: virtual on a :class:`VirtualTimeEventLoop`, else real."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeEventLoop):
        return VirtualClock(loop)
    return RealClock(loop)


def run_virtual(main: Callable[[VirtualClock], Awaitable[T]], *, start: float = 0.0) -> T:
    """Run ``main(clock)`` to completion on virtual time."""

    async def _main() -> T:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeEventLoop)
        return await main(VirtualClock(loop))

    with asyncio.Runner(loop_factory=lambda: VirtualTimeEventLoop(start)) as runner:
        return runner.run(_main())


def run_real(main: Callable[[RealClock], Awaitable[T]]) -> T:
    """Run ``main(clock)`` to completion on the real clock."""

    async def _main() -> T:
        return await main(RealClock())

    return asyncio.run(_main())
