"""The project's exception tree.

::

    SorterError
     ├── ConfigError              bad line config, with the field path
     ├── DriverError(device, …)   a device or link failed
     │    ├── DriverUnavailable   unknown backend / library missing
     │    └── DriverTimeout       also a TimeoutError
     ├── ProtocolError            a malformed frame or message from outside
     └── OrderStoreError          the order store failed or is unreachable
"""

from __future__ import annotations


class SorterError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(SorterError):
    """A line config is invalid; ``problems`` lists ``(field path, reason)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]],
                 what: str = "line config") -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        super().__init__(f"invalid {what} {source}:\n{lines}")


class DriverError(SorterError):
    """A device or link failed."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"{device}: {message}")


class DriverUnavailable(DriverError):
    """The backend named in config is unknown or its library is missing."""


class DriverTimeout(DriverError, TimeoutError):
    """A device did not answer in time."""


class ProtocolError(SorterError):
    """Bytes or a message from outside did not parse."""


class OrderStoreError(SorterError):
    """The order store failed or could not be reached."""
