"""When a line may sort: its order store answers (the cache warmed), each camera has sent a
first frame (where asked), and nothing else the face names is still missing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from controller.clock import Clock
from controller.config import OrderStoreConfig
from controller.errors import OrderStoreError
from controller.lookup import OrderLookup
from controller.operating import LineState
from controller.orders import OrderStore
from controller.parcel import SorterStats

log = logging.getLogger(__name__)

READY_POLL_S = 0.05
STORE_RETRY_S = 2.0

Starting = Callable[[str, LineState], None]  # what the line says while it waits, and when ready


class Readiness:
    """Waits for what the line needs before it sorts; ``ready`` is set once nothing is missing."""

    def __init__(self, config: OrderStoreConfig, order_store: OrderStore, lookup: OrderLookup,
                 stats: SorterStats, clock: Clock, *,
                 cameras_without_frames: Callable[[], Iterable[str]] | None = None,
                 prerequisites: Callable[[], list[str]] | None = None) -> None:
        self.ready = asyncio.Event()
        self._config = config
        self._order_store = order_store
        self._lookup = lookup
        self._stats = stats
        self._clock = clock
        self._cameras_without_frames = cameras_without_frames
        self._prerequisites = prerequisites
        self._store_ready = False

    def waiting_for(self) -> list[str]:
        """What the line still waits for (empty once ready)."""
        if self.ready.is_set():
            return []
        waiting = list(self._prerequisites()) if self._prerequisites is not None else []
        if self._cameras_without_frames is not None:
            waiting += [f"camera {c}" for c in self._cameras_without_frames()]
        if not self._store_ready:
            waiting.append("order store")
        return waiting

    async def become_ready(self, starting: Starting) -> None:
        """Wait for the store to answer (cache warmed), then for the rest; say each wait."""
        while not await self._store_answers():
            await self._clock.sleep(STORE_RETRY_S)
        self._store_ready = True
        while waiting := self.waiting_for():
            starting(f"waiting for {', '.join(waiting)}", LineState.STARTING)
            await self._clock.sleep(READY_POLL_S)
        self.ready.set()
        starting("sorting", LineState.RUNNING)

    async def _store_answers(self) -> bool:
        errors = self._stats.order_store_errors
        if self._config.cache_size:
            await self._lookup.warm()
            return self._stats.order_store_errors == errors
        try:
            async with asyncio.timeout(self._config.timeout_ms / 1000):
                await self._order_store.released(1)  # a probe: nothing is cached
        except (OrderStoreError, TimeoutError) as exc:
            log.warning("order store: not answering: %s", str(exc) or "timed out")
            return False
        return True
