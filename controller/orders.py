"""Orders as the controller needs them, and the store it asks (owned here, built by a backend)."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class OrderStatus(StrEnum):
    """Only a released order is sorted to a shipping bin; the others go where a rule naming
    their status says (a hold bin), else to the end of the line (ORDER_HELD)."""

    RELEASED = "released"
    HELD = "held"
    CANCELLED = "cancelled"
    BACKORDERED = "backordered"  # its lines are not in stock: it waits to be released
    SHIPPED = "shipped"  # already gone: a parcel of it on the belt is an error


@dataclass(frozen=True, slots=True)
class Order:
    """One parcel's order: where it comes from, its state and what routes it."""

    order_id: str
    code: str
    channel: str
    status: OrderStatus
    carrier: str
    service: str
    route: str
    postcode: str
    created_at: float
    parcels_in_order: int = 1
    promised_ship_at: float | None = None  # when the customer was told it ships (epoch s)

    def __post_init__(self) -> None:
        # A store's rows bring every text anew, and the line's cache holds up to 100,000
        # orders: these texts repeat from order to order, so each is kept once.
        share = object.__setattr__
        share(self, "channel", sys.intern(self.channel))
        share(self, "carrier", sys.intern(self.carrier))
        share(self, "service", sys.intern(self.service))
        share(self, "route", sys.intern(self.route))
        share(self, "postcode", sys.intern(self.postcode))


class OrderStore(Protocol):
    """Answers "which order is this parcel code"; raises OrderStoreError when unreachable."""

    async def lookup(self, code: str) -> Order | None: ...

    async def released(self, limit: int) -> list[Order]:
        """The most recently created released orders, to sort from while the store is down."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Upserted:
    """What an import did to the order book: parcels (order, code) added and updated."""

    added: int
    updated: int


class OrderBook(Protocol):
    """The write side of an order store, for imports and a person at the box (not the line).

    One :class:`Order` is one parcel of an order (its ``code``); an order of several parcels
    is several with the same ``order_id``. Upserting a code that exists replaces its row."""

    async def upsert(self, orders: Sequence[Order]) -> Upserted: ...

    async def find(self, code_or_order_id: str) -> list[Order]:
        """The parcels of the order with this id, or the one parcel with this code."""
        ...

    async def counts(self) -> dict[str, int]:
        """Parcels in the book by status, and ``orders``: distinct order ids."""
        ...

    async def channels(self) -> dict[str, int]:
        """Orders in the book by sales channel."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class OrderChanges(Protocol):
    """A store that tells of its changes (PostgreSQL's LISTEN/NOTIFY): every order changed
    from now on, and after a reconnect the ones changed while it was away."""

    def changes(self) -> AsyncIterator[Order]: ...


class OrderCache:
    """Recently seen orders, so the line keeps sorting them while the store is down."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._orders: OrderedDict[str, Order] = OrderedDict()

    def get(self, code: str) -> Order | None:
        order = self._orders.get(code)
        if order is not None:
            self._orders.move_to_end(code)
        return order

    def put(self, order: Order) -> None:
        if self._size == 0:
            return
        self._orders[order.code] = order
        self._orders.move_to_end(order.code)
        while len(self._orders) > self._size:
            self._orders.popitem(last=False)
