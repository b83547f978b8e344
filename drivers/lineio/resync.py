"""What a board's HelloReply means for the diverts it should hold (docs/serial-protocol.md, §5).

Sans-I/O: :func:`plan_resync` decides, the serial driver carries the decision out (fails the
awaited answers, tells the controller, sends diverts again).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.lineio import DeviceFault, DivertCommand, LineEvent, TrackingLost
from drivers.lineio.held import HeldDiverts


@dataclass(frozen=True, slots=True)
class Resync:
    """The outcome of one resync with the board."""

    restarted: bool
    """A new boot id after a known one: whatever the old boot held or had not sent is gone."""
    count_began_again: bool
    """The restarted board's count is below the last one heard: every position is void."""
    resend: tuple[DivertCommand, ...]
    """The accepted, still-due diverts to send again, with their command ids."""
    event: LineEvent | None = None
    """What the controller is told of a restart: a DeviceFault, or TrackingLost."""


def plan_resync(held: HeldDiverts, *, known_boot: int | None, boot_id: int, enc: int,
                last_enc: int, scheduled: int, device: str = "io-board") -> Resync:
    """Decide what to send again after a HelloReply, updating ``held`` to match.

    A board that kept its schedule (``scheduled`` covers what we hold) needs nothing; one
    that dropped it (fail-safe, restart) gets the still-due diverts again: it keeps a
    command id it already holds as it is and refuses one it can no longer carry out. A board
    whose count began again gets none of them: their ``fire_enc`` counts from before.
    """
    restarted = known_boot is not None and boot_id != known_boot
    if restarted and enc < last_enc:
        held.clear()
        return Resync(True, True, (), TrackingLost(
            device, f"the board restarted and its encoder count began again ({enc} after "
                    f"{last_enc})"))
    held.forget_due(enc)
    resend = () if len(held) <= scheduled else tuple(held)
    if not restarted:
        return Resync(False, False, resend)
    return Resync(True, False, resend, DeviceFault(
        device, "the board restarted: its events while down are lost, still-due diverts are "
                "sent again"))
