"""The project's exception tree.

::

    SorterError
     ├── ConfigError              bad line config, with the field path
     ├── DriverError(device, …)   a device or link failed
     │    ├── DriverUnavailable   unknown backend, library or program missing: fix the install
     │    ├── LinkDown            the link is down or the device refused: retry later
     │    └── DriverTimeout       no answer in time; also a TimeoutError
     ├── ProtocolError            a malformed frame or message from outside
     │    ├── FrameError          damaged in transit (COBS, length, CRC)
     │    ├── MessageError        arrived intact, but not a valid message
     │    └── ImageError          a camera's image that does not decode to pixels
     ├── OrderStoreError          the order store failed or is unreachable
     ├── JournalError             the durable journal cannot be written or opened
     └── ArchiveError             the no-read archive cannot do what was asked
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
    """The backend named in config is unknown, or a library or program it needs is missing.

    Retrying does not help: the install or the config must change.
    """


class LinkDown(DriverError):
    """The link to the device is down (or the device cannot take this request now).

    Transient: the link reconnects by itself, so the same request may succeed later.
    """


class DriverTimeout(DriverError, TimeoutError):
    """A device did not answer in time."""


class ProtocolError(SorterError):
    """Bytes or a message from outside did not parse."""


class FrameError(ProtocolError):
    """The frame was damaged in transit: COBS, length or CRC is wrong."""


class MessageError(ProtocolError):
    """The frame arrived intact (CRC good) but its content is not a valid message."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message)


class ImageError(ProtocolError):
    """A camera's image (a JPEG part of a stream) does not decode to pixels."""


class OrderStoreError(SorterError):
    """The order store failed or could not be reached."""


class JournalError(SorterError):
    """The journal cannot be opened or written: outcomes can no longer be made durable."""


class ArchiveError(SorterError):
    """The archive cannot do what was asked (no such archive, unknown parcel ids)."""
