"""Order stores the controller can ask, picked by ``order_store.backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.config import OrderStoreConfig
from controller.errors import DriverUnavailable
from controller.orders import OrderStore

if TYPE_CHECKING:
    from controller.clock import Clock


def open_order_store(config: OrderStoreConfig, clock: Clock | None = None, *,
                     create: bool = True) -> OrderStore:
    """The store the config names; SQLite's lookups run on ``clock`` (the running loop's if
    None); PostgreSQL's are network I/O on the loop itself, on real time.

    ``create=False`` (``run``): a database that does not exist is an error, never made empty.
    """
    if config.backend == "sqlite":
        from drivers.orders.sqlite import SqliteOrderStore

        return SqliteOrderStore(config.path, timeout_s=config.timeout_ms / 1000, clock=clock,
                                create=create, poll_s=config.poll_ms / 1000)
    if config.backend == "postgresql":
        try:
            from drivers.orders.postgres import PostgresOrderStore
        except ImportError as exc:
            raise DriverUnavailable("order_store", f"backend 'postgresql' needs asyncpg "
                                                   f"(pip install asyncpg): {exc}") from None
        return PostgresOrderStore(config, create=create)
    raise DriverUnavailable("order_store", f"unknown backend {config.backend!r}")
