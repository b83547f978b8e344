"""Order stores the controller can ask, picked by ``order_store.backend``."""

from __future__ import annotations

from controller.config import OrderStoreConfig
from controller.errors import DriverUnavailable
from controller.orders import OrderStore


def open_order_store(config: OrderStoreConfig) -> OrderStore:
    if config.backend == "sqlite":
        from drivers.orders.sqlite import SqliteOrderStore

        return SqliteOrderStore(config.path)
    raise DriverUnavailable("order_store", f"unknown backend {config.backend!r}")
