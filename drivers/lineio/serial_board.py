"""The I/O board above the serial link: commands as wire messages, and the resync after HELLO.

:func:`divert_message` turns the controller's divert into the board's. :class:`BoardResync`
carries out what each HelloReply means (decided by :func:`drivers.lineio.resync.plan_resync`):
a restarted board fails the awaited answers and tells the controller, a count that began
again voids every position, and the board gets the still-due diverts it dropped again. The
port, the link session and the link state stay in :mod:`drivers.lineio.serial`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.errors import LinkDown
from controller.lineio import DivertCommand
from drivers.lineio import wire
from drivers.lineio.held import HeldDiverts
from drivers.lineio.replies import PendingReplies
from drivers.lineio.resync import Resync, plan_resync
from drivers.lineio.serial_events import BoardEvents
from drivers.lineio.serial_stats import SerialStats

__all__ = ["DEVICE", "BoardResync", "divert_message"]

log = logging.getLogger("drivers.lineio.serial")  # the driver's logger, as before the split

DEVICE = "io-board"


def divert_message(command: DivertCommand) -> wire.Divert:
    return wire.Divert(command.command_id, command.parcel_id, command.diverter_id,
                       command.fire_enc, round(command.pulse_ms))


class BoardResync:
    """What the board's HelloReplies mean for the held diverts, the answers awaited and the
    event stream; it remembers the board's boot id across reconnects."""

    def __init__(self, *, port: str, stats: SerialStats, events: BoardEvents,
                 held: HeldDiverts, replies: PendingReplies[wire.DivertAnswer],
                 send: Callable[[wire.Message], None]) -> None:
        self.port = port
        self.stats = stats
        self.events = events
        self.held = held
        self.replies = replies
        self.send = send
        self.boot_id: int | None = None

    def synced_with(self, boot_id: int, enc: int, scheduled: int) -> None:
        """The board answered HELLO (``scheduled``: how many diverts it still holds)."""
        plan = plan_resync(self.held, known_boot=self.boot_id, boot_id=boot_id, enc=enc,
                           last_enc=self.events.received, scheduled=scheduled, device=DEVICE)
        if plan.restarted:
            self._board_restarted(plan, enc)
        if self.boot_id is None:
            self.events.received = self.events.delivered = enc
        self.boot_id = boot_id
        # The board keeps a held command as it is (same command id) and refuses one it can
        # no longer carry out in time; nothing else changes for the controller.
        self.stats.restored += len(plan.resend)
        for command in plan.resend:
            self.send(divert_message(command))

    def _board_restarted(self, plan: Resync, enc: int) -> None:
        """The board came back with a new boot id: what it held and had not sent is gone,
        and so is what its old boot never acknowledged (the diverts awaiting an answer)."""
        self.stats.board_restarts += 1
        self.replies.fail_all(lambda: LinkDown(DEVICE, "the board restarted"))
        if not plan.count_began_again:
            log.warning("serial %s: the board restarted; its encoder count carried on",
                        self.port)
        else:
            log.error("serial %s: the board restarted and its encoder count began again "
                      "(%d after %d): the parcels on the belt are given up", self.port,
                      enc, self.events.received)
        if plan.event is not None:
            self.events.event(plan.event)  # a TrackingLost one is counted until taken
        if plan.count_began_again:
            self.events.enc(enc)  # taken after the events of the old count, and the loss of it
