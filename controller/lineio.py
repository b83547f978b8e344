"""What the controller needs from the line's I/O side: sensor events in, divert commands out.

The in-process emulator, the serial I/O board and the MQTT diverter nodes all implement
:class:`LineIO`. Encoder counts are the board's; positions derive from them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

INDUCTION_EYE = "induct"
END_EYE = "end"


@dataclass(frozen=True, slots=True)
class PhotoEyeEdge:
    """A photo-eye changed state; ``enc`` is the encoder count latched at the edge."""

    eye: str
    blocked: bool
    enc: int


@dataclass(frozen=True, slots=True)
class BinEntry:
    """A bin's photo-eye saw a parcel fall in."""

    bin_id: str
    enc: int


@dataclass(frozen=True, slots=True)
class BinLevel:
    """A bin's full sensor changed: full, or emptied by an operator."""

    bin_id: str
    full: bool


@dataclass(frozen=True, slots=True)
class DeviceFault:
    device: str
    message: str


@dataclass(frozen=True, slots=True)
class TrackingLost:
    """The belt positions of the parcels on it can no longer be trusted.

    Sent when the line's encoder count began again (an I/O board restarted and its counter
    with it): every parcel tracked so far must be given up, and nothing fired for it.
    """

    device: str
    message: str


LineEvent = PhotoEyeEdge | BinEntry | BinLevel | DeviceFault | TrackingLost


@dataclass(frozen=True, slots=True)
class DivertCommand:
    """Fire ``diverter_id`` for ``pulse_ms`` when the encoder reaches ``fire_enc``."""

    command_id: int
    parcel_id: int
    diverter_id: str
    fire_enc: int
    pulse_ms: float


@dataclass(frozen=True, slots=True)
class DivertReply:
    command_id: int
    accepted: bool
    reason: Literal["", "late", "busy", "unknown_diverter", "fault"] = ""


class LinkState(StrEnum):
    """A link to line devices, as diagnostics show it."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"  # lost; reconnecting with backoff


class LineIO(Protocol):
    """The line's sensors and diverters as one link."""

    def encoder(self) -> int:
        """The latest encoder count known."""
        ...

    def events(self) -> AsyncIterator[LineEvent]: ...

    async def divert(self, command: DivertCommand) -> DivertReply: ...
