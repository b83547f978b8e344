"""The diverts a link's far end has accepted and not yet carried out, as the driver keeps them.

A board or node that drops its schedule (fail-safe, restart) gets the still-due ones again;
one is forgotten once the encoder passes its ``fire_enc`` (carried out, or never will be), or
when it is cancelled.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from controller.lineio import DivertCommand


class HeldDiverts:
    """Accepted diverts by command id, with a heap by ``fire_enc`` to forget the due ones.

    A divert dropped by id leaves its heap entry behind; an entry whose command is gone (or
    was held again with another count) is skipped when it comes up.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, DivertCommand] = {}
        self._due: list[tuple[int, int]] = []  # (fire_enc, command_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[DivertCommand]:
        return iter(list(self._by_id.values()))

    def hold(self, command: DivertCommand) -> None:
        self._by_id[command.command_id] = command
        heapq.heappush(self._due, (command.fire_enc, command.command_id))

    def drop(self, command_id: int) -> None:
        self._by_id.pop(command_id, None)

    def clear(self) -> None:
        self._by_id.clear()
        self._due.clear()

    def next_due(self) -> int | None:
        """The lowest ``fire_enc`` still in the heap (perhaps of a dropped divert)."""
        return self._due[0][0] if self._due else None

    def forget_due(self, enc: int) -> list[int]:
        """Forget the diverts due by ``enc``; return their command ids."""
        forgotten: list[int] = []
        due = self._due
        while due and due[0][0] <= enc:
            self._forget(*heapq.heappop(due), forgotten)
        return forgotten

    def keep_earliest_due(self, limit: int) -> list[int]:
        """Without an encoder count to tell which are due, bound the heap: forget the
        diverts due first beyond ``limit`` entries; return their command ids."""
        forgotten: list[int] = []
        while len(self._due) > limit:
            self._forget(*heapq.heappop(self._due), forgotten)
        return forgotten

    def _forget(self, fire_enc: int, command_id: int, into: list[int]) -> None:
        command = self._by_id.get(command_id)
        if command is not None and command.fire_enc == fire_enc:  # not a stale heap entry
            del self._by_id[command_id]
            into.append(command_id)
