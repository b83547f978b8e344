"""The diverts a driver has sent and not yet had answered, each with its reply deadline."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


class PendingReplies(Generic[Answer]):
    """Futures for the answers still awaited, timed out with :class:`TimeoutError`.

    The timeout is the same for every request, so the deadlines come in the order the requests
    went out: one timer watches the oldest rather than one timer per request.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._deadlines: deque[tuple[float, asyncio.Future[Answer]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def expect(self, request_id: int) -> asyncio.Future[Answer]:
        """A future for the answer to ``request_id``, which times out after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._pending[request_id] = future
        deadline = loop.time() + self.timeout_s
        self._deadlines.append((deadline, future))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire_due)
        return future

    def answer(self, request_id: int, answer: Answer) -> None:
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(answer)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():
            deadlines.popleft()

    def forget(self, request_id: int) -> None:
        """The caller has its answer (or gave up): the request is no longer awaited."""
        self._pending.pop(request_id, None)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Every request still awaited fails now, with a fresh ``error()`` each."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire_due(self) -> None:
        """Time out the requests whose answer is overdue; watch the next one still waiting."""
        self._timer = None
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        now = loop.time()
        while deadlines:
            deadline, future = deadlines[0]
            if not future.done():
                if deadline > now:
                    self._timer = loop.call_at(deadline, self._expire_due)
                    return
                future.set_exception(TimeoutError())
            deadlines.popleft()
