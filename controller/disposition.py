"""The final outcome every inducted parcel ends with, exactly once."""

from __future__ import annotations

from enum import StrEnum


class Disposition(StrEnum):
    """Final disposition codes; each is counted."""

    SORTED = "SORTED"  # reached its primary bin, confirmed by the bin's photo-eye
    NO_READ = "NO_READ"  # no acceptable code read
    MULTI_READ = "MULTI_READ"  # two or more different acceptable codes
    NO_ORDER = "NO_ORDER"  # code read, no order found for it
    ORDER_HELD = "ORDER_HELD"  # order cancelled, on hold, or not released
    DEST_FULL = "DEST_FULL"  # primary bin full: sent to an alternate, the overflow, or the end
    LATE = "LATE"  # decision missed its deadline: not fired, went to the end of line
    DIVERT_FAULT = "DIVERT_FAULT"  # fired but not confirmed in the bin
    LOST = "LOST"  # tracking lost: never confirmed anywhere
    MISSORT = "MISSORT"  # landed somewhere it was not sent
    NOT_READY = "NOT_READY"  # inducted before the line was ready: not read, rode to the end
    TOO_CLOSE = "TOO_CLOSE"  # inducted closer to a neighbour than a diverter can push apart
    RECIRC_LIMIT = "RECIRC_LIMIT"  # a loop's parcel not diverted in max_laps laps

    @property
    def is_sorted(self) -> bool:
        return self in (Disposition.SORTED, Disposition.DEST_FULL)


END_OF_LINE = "END"
"""Destination name of the end of the line (reject), where every undiverted parcel goes."""
