"""The one place that reads time: a real clock and a virtual one that jumps to the next deadline.

Everything timed in the project asks a :class:`Clock`. Both clocks read the running event
loop's ``time()``; the virtual clock runs on :class:`VirtualTimeEventLoop`, whose time only
moves when every task is blocked, and then straight to the next timer. ``asyncio.sleep``,
``asyncio.timeout`` and ``loop.call_at`` therefore all run on virtual time without knowing it.

Work handed to threads with :meth:`Clock.offload` holds virtual time still until it returns,
so a result never depends on how fast this machine decodes: the same seed gives the same run.
"""

from __future__ import annotations

import asyncio
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

    async def offload(self, executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in ``executor`` (default pool if None) and await it."""
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

    async def offload(self, executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(executor, fn, *args)


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector: waits for real I/O only when nothing can advance virtually."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        self._real = selectors.DefaultSelector()
        self._advance = advance
        self.busy = 0

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
        if self.busy or timeout is None:
            # Threads are working (they wake us through the loop's self-pipe), or no timer is
            # pending and only real I/O can move things on: wait for real.
            return self._real.select(None)
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
        self._virtual_selector = _VirtualSelector(self._advance)
        super().__init__(selector=self._virtual_selector)

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    @property
    def busy(self) -> int:
        return self._virtual_selector.busy

    def hold(self) -> None:
        """Hold virtual time still while real work runs elsewhere."""
        self._virtual_selector.busy += 1

    def release(self) -> None:
        self._virtual_selector.busy -= 1


class VirtualClock(RealClock):
    """Clock for a :class:`VirtualTimeEventLoop`; offloaded work takes no virtual time."""

    def __init__(self, loop: VirtualTimeEventLoop) -> None:
        super().__init__(loop)
        self._vloop = loop

    async def offload(self, executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
        self._vloop.hold()
        try:
            result = await self._vloop.run_in_executor(executor, fn, *args)
        finally:
            self._vloop.release()
        return result


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
