"""Orders as the controller needs them, and the store it asks (owned here, built by a backend)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class OrderStatus(StrEnum):
    RELEASED = "released"
    HELD = "held"
    CANCELLED = "cancelled"


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


class OrderStore(Protocol):
    """Answers "which order is this parcel code"; raises OrderStoreError when unreachable."""

    async def lookup(self, code: str) -> Order | None: ...

    async def released(self, limit: int) -> list[Order]:
        """The most recently created released orders, to sort from while the store is down."""
        ...

    async def close(self) -> None: ...


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
