"""The order of a parcel code: the store's answer in time, else the local cache's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from controller.config import OrderStoreConfig
from controller.errors import OrderStoreError
from controller.orders import Order, OrderCache, OrderChanges, OrderStore
from controller.parcel import SorterStats

log = logging.getLogger(__name__)

WARM_TIMEOUT_FACTOR = 10  # warming reads many orders at once: at least ten lookups' time
WARM_S_PER_ORDER = 50e-6  # and time for each order it reads: 100,000 took 0.9-1.8 s here
#: An order asked for at a code's first read answers the parcel's decision if it was asked
#: for at most this long before; a later decision asks again.
EARLY_FRESH_S = 2.0
#: At most this many early lookups are kept (codes read on parcels that never settle on them).
EARLY_MAX = 256

Answer = tuple[Order | None, str]


def warm_budget_s(config: OrderStoreConfig) -> float:
    """How long the line lets warming its cache take."""
    return max(WARM_TIMEOUT_FACTOR * config.timeout_ms / 1000,
               WARM_S_PER_ORDER * config.cache_size)


class OrderLookup:
    """Asks the store with a timeout; while the store fails, sorts from the cache it warmed."""

    def __init__(self, store: OrderStore, config: OrderStoreConfig, stats: SorterStats, *,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._config = config
        self._stats = stats
        self._cache = OrderCache(config.cache_size)
        self._now = now
        #: code -> (when asked, the lookup), oldest first
        self._early: dict[str, tuple[float, asyncio.Task[Answer]]] = {}

    def read_early(self, code: str) -> None:
        """Start looking ``code`` up now, at its first read, so that the parcel's decision
        when its reads settle waits on no store (a thread's round trip, or a server's)."""
        now = self._now()
        early = self._early.get(code)
        if early is not None and now - early[0] <= EARLY_FRESH_S:
            return
        if early is not None:
            del self._early[code]
            early[1].cancel()
        self._forget_early(now)
        task = asyncio.get_running_loop().create_task(self._ask(code),
                                                      name=f"lookup.early[{code}]")
        task.add_done_callback(_retrieve)
        self._early[code] = (now, task)

    def _forget_early(self, now: float) -> None:
        for code, (asked, task) in list(self._early.items()):
            if now - asked <= EARLY_FRESH_S and len(self._early) < EARLY_MAX:
                break
            del self._early[code]
            task.cancel()

    async def aclose(self) -> None:
        """Cancel the early lookups nobody took."""
        tasks = [task for _, task in self._early.values()]
        self._early.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def warm(self) -> None:
        """Fill the cache with released orders, so an outage of the store does not stop us."""
        size = self._config.cache_size
        if not size:
            return
        try:
            async with asyncio.timeout(warm_budget_s(self._config)):
                orders = await self.store.released(size)
        except (OrderStoreError, TimeoutError) as exc:
            self._stats.order_store_errors += 1
            log.warning("order store: cannot warm the cache: %s", str(exc) or "timed out")
            return
        for order in reversed(orders):
            self._cache.put(order)

    async def follow(self) -> None:
        """Keep the cache fresh from the store's change feed, if it has one, until cancelled.
        A feed that fails is logged once; the line goes on with the cache as it is."""
        if not self._config.cache_size or not isinstance(self.store, OrderChanges):
            return
        try:
            async for order in self.store.changes():
                self._cache.put(order)
        except Exception:  # the feed is a help, never a reason to stop sorting
            self._stats.order_store_errors += 1
            log.exception("order store: its change feed stopped; the cache is no longer "
                          "kept fresh")

    async def order(self, code: str) -> Answer:
        """The order (it knows of holds and cancellations), and why there is none if none.

        The reason is empty when the store answered that it has no such order. Errors other
        than the store's own (and its timeout) are not the store being down: they propagate.
        An early lookup of the code (:meth:`read_early`) still fresh is the answer.
        """
        early = self._early.pop(code, None)
        if early is not None:
            asked, task = early
            if self._now() - asked <= EARLY_FRESH_S:
                return await task
            task.cancel()
        return await self._ask(code)

    async def _ask(self, code: str) -> Answer:
        try:
            async with asyncio.timeout(self._config.timeout_ms / 1000):
                order = await self.store.lookup(code)
        except (OrderStoreError, TimeoutError) as exc:
            self._stats.order_store_errors += 1
            cached = self._cache.get(code)
            why = str(exc) or "timed out"
            log.warning("order store: %s%s", why, "; sorting from the cache" if cached else "")
            if cached is None:
                return None, f"order store unavailable and order not cached: {why}"
            return cached, ""
        if order is not None:
            self._cache.put(order)
        return order, ""


def _retrieve(task: asyncio.Task[Answer]) -> None:
    """An early lookup nobody took may have failed: its decision, had it come, would see
    the error; unasked, it is no warning."""
    if not task.cancelled():
        task.exception()
