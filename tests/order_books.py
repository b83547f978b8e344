"""What the order store tests share: an order of one parcel, and a PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.orders import Order, OrderStatus
from sim_hardware.postgres import Postgres, unavailable_reason


def one_parcel_order(code: str, status: OrderStatus = OrderStatus.RELEASED,
                     created: float = 0.0, order_id: str | None = None,
                     promised: float | None = None) -> Order:
    return Order(order_id=order_id or f"O-{code}", code=code, channel="web", status=status,
                 carrier="DHL", service="std", route="R1", postcode="10115", created_at=created,
                 promised_ship_at=promised)


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    """A PostgreSQL server of the module's own on loopback; skips where none can run."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL server can run here: {reason}")
    pytest.importorskip("asyncpg", reason="the postgresql backend needs asyncpg")
    with Postgres() as pg:
        yield pg
