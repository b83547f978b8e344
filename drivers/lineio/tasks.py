"""Task helpers the line I/O drivers and the emulated devices share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

POLL_S = 0.05  # how often a task that swallowed its cancellation is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], within_s: float = 5.0) -> bool:
    """Cancel ``tasks`` and wait until they end, cancelling again any that swallowed it.

    ``asyncio.wait_for`` in Python 3.11 can swallow a cancellation that races with its
    result, and aiomqtt awaits every publish through it: a loop of publishes then carries
    on. False if some task was still running after ``within_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=POLL_S)
        if pending and loop.time() > deadline:
            return False
    return True
