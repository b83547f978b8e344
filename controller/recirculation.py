"""A loop sorter's recirculation: parcels not diverted come round for another chance.

On a line whose ``end_of_line.role`` is ``recirculate`` (a cross-belt or tilt-tray loop, or
a pusher belt whose end feeds back to the induction) a parcel that reaches the end-of-line
photo-eye undiverted is not finished there: its tracking window is carried round the loop
(``loop_length_mm`` upstream) and it is expected back at PE-IN. When PE-IN is blocked within
``decision.assign_tolerance_mm`` (at least :data:`RETURN_TOLERANCE_MM`) of where a returning
parcel's leading edge is due, it is that parcel, not a new one: it keeps its parcel id and
its one journal record, its lap count goes up, and its reads and decision start afresh (a
code read on this lap that is not the one read on an earlier lap makes it a MULTI_READ:
which parcel came round is uncertain, :mod:`controller.reading`), so

* a NO_READ is scanned again (a label hidden or a camera stalled on the lap before),
* a LATE decision gets a second deadline,
* a DEST_FULL with no bin (its bins, alternates and overflow all full) tries again, as an
  operator may have emptied one meanwhile,
* a NOT_READY parcel is sorted once the line is ready,
* NO_ORDER and ORDER_HELD go round too: an order imported late, or released from its hold,
  is found on the next lap (sites recirculate held orders a bounded number of times, then
  send them to the exception chute);
* a TOO_CLOSE pair goes round too; on a pusher loop the pair keeps its slots, so it goes
  round until the cap and leaves by the exit gate (a push at one would still move both);
* a DIVERT_FAULT (fired, yet it came round) gets another push on the next lap.

A MULTI_READ is final: two valid codes on one parcel read the same way on every lap, so it
goes at once to the exception bin when the line has one (disposition MULTI_READ); without
one it goes round like the rest.

A parcel gets ``max_laps`` passes, lap 1 the first. On its last lap, an outcome that would
send it round again sends it instead to ``end_of_line.exception_bin`` with the disposition
``RECIRC_LIMIT`` (its reason names the last lap's outcome); where the line has no exception
bin, or that bin is full, or the push comes too late, it leaves by the exit gate at the end
of line, RECIRC_LIMIT as well. Each parcel still ends with exactly one final record, which
carries its lap count (``FinalRecord.laps``).

A returning parcel that does not block PE-IN where it is due (lifted off on the way round)
is LOST once its trailing edge is past PE-IN by the tolerance.
"""

from __future__ import annotations

import logging

from controller.codes import ParcelReads
from controller.config import LineConfig
from controller.disposition import END_OF_LINE, Disposition
from controller.parcel import Belt, ParcelState
from controller.routing import Route

log = logging.getLogger(__name__)

RETURN_TOLERANCE_MM = 15.0  # the least tolerance on where a returning parcel meets PE-IN
END_REACH_MM = 20.0  # as confirming's: a parcel turned or pushed aside a little at the end

GOES_ROUND = frozenset({
    Disposition.NO_READ, Disposition.LATE, Disposition.DEST_FULL, Disposition.NOT_READY,
    Disposition.NO_ORDER, Disposition.ORDER_HELD, Disposition.TOO_CLOSE,
    Disposition.DIVERT_FAULT, Disposition.MULTI_READ})
"""Outcomes of a lap after which a parcel that is not in a bin goes round again."""


class Recirculation:
    """The loop's bookkeeping: parcels carried round, recognised at PE-IN, capped."""

    def __init__(self, config: LineConfig, belt: Belt) -> None:
        end = config.end_of_line
        self.enabled = end.recirculates
        self.max_laps = end.max_laps
        self.exception_bin = end.exception_bin
        self._belt = belt
        self._config = config
        self._loop_mm = end.loop_length_mm or 0.0
        self._tolerance_mm = max(config.decision.assign_tolerance_mm, RETURN_TOLERANCE_MM)

    # --- deciding ---------------------------------------------------------------------------

    def route(self, parcel: ParcelState, route: Route) -> Route:
        """The route on a loop: the same, but a last lap's undiverted one is capped."""
        if not self.enabled or route.diverts:
            return route
        if route.disposition is Disposition.MULTI_READ and self._exception_open():
            assert self.exception_bin is not None
            return Route(Disposition.MULTI_READ, self.exception_bin,
                         f"{route.reason}; to the exception bin (no lap changes it)")
        if parcel.lap < self.max_laps:
            return route  # it rides to the end and comes round again
        reason = self.capped_reason(parcel, route.disposition, route.reason)
        if self._exception_open():
            assert self.exception_bin is not None
            return Route(Disposition.RECIRC_LIMIT, self.exception_bin, reason)
        return Route(Disposition.RECIRC_LIMIT, END_OF_LINE, reason)

    @staticmethod
    def overtaken(parcel: ParcelState, lap: int) -> bool:
        """Whether a decision begun on ``lap`` came too late: the parcel went round meanwhile
        (its lap over, LATE, it is decided afresh on the next one)."""
        return parcel.returning or parcel.lap != lap

    def capped_reason(self, parcel: ParcelState, last: Disposition | None, why: str) -> str:
        outcome = f"{last.value}: {why}" if last is not None else why
        return f"{parcel.lap} of {self.max_laps} laps, the last {outcome}"

    def _exception_open(self) -> bool:
        state = self._belt.bins.get(self.exception_bin or "")
        return state is not None and state.available

    # --- the end of the line -----------------------------------------------------------------

    def at_end(self, enc: int) -> bool:
        """The end-of-line photo-eye is blocked: True if its parcel goes round again.

        False leaves it to the end of line's confirmation (a reject line, a parcel not
        tracked, or one on its last lap: that one's capped outcome is set here first).
        """
        if not self.enabled:
            return False
        parcel = self._at(self._config.end_of_line.position_mm, enc)
        if parcel is None or parcel.lost_track:
            return False
        if parcel.lap >= self.max_laps:
            self._capped_at_end(parcel)
            return False
        last = self._last_outcome(parcel)
        if parcel.route is not None and parcel.route != END_OF_LINE:
            self._belt.unbook(parcel, parcel.route)
        log.info("parcel %d: lap %d over (%s), round again", parcel.parcel_id, parcel.lap,
                 last, extra={"parcel": parcel.parcel_id})
        parcel.window.carry_round(self._loop_mm)
        parcel.returning = True
        self._belt.stats.recirculated += 1
        return True

    def _last_outcome(self, parcel: ParcelState) -> str:
        if parcel.command is not None:
            parcel.disposition = Disposition.DIVERT_FAULT
            parcel.reason = f"fired at {parcel.route} but came round the loop"
        elif parcel.route is None:
            parcel.disposition = Disposition.LATE
            parcel.reason = parcel.reason or "no decision before the end of line"
        return f"{parcel.disposition}: {parcel.reason}" if parcel.disposition else parcel.reason

    def _capped_at_end(self, parcel: ParcelState) -> None:
        """Its last lap is over and it is not in a bin: it leaves by the exit gate."""
        if parcel.command is not None:
            return  # fired in vain: the end of line's confirmation says DIVERT_FAULT
        if parcel.route is None:
            parcel.to_end(Disposition.RECIRC_LIMIT, self.capped_reason(
                parcel, Disposition.LATE, "no decision before the end of line"))
        elif parcel.disposition in GOES_ROUND:
            parcel.to_end(Disposition.RECIRC_LIMIT, self.capped_reason(
                parcel, parcel.disposition, parcel.reason))

    def _at(self, x_mm: float, enc: int) -> ParcelState | None:
        window = self._belt.tracker.at(x_mm, enc, self._tolerance_mm + END_REACH_MM)
        parcel = self._belt.parcels.get(window.parcel_id) if window else None
        if parcel is None or parcel.parcel_id in self._belt.finalising:
            return None
        return parcel

    # --- back at PE-IN ------------------------------------------------------------------------

    def returning_at(self, enc: int) -> ParcelState | None:
        """The returning parcel PE-IN's block at ``enc`` is, if it is one.

        The one whose leading edge is due at PE-IN within the tolerance; of two, the nearer.
        """
        if not self.enabled:
            return None
        pe = self._config.induction.photo_eye_mm
        due = [(abs(p.window.lead_mm(enc) - pe), p) for p in self._belt.active() if p.returning]
        near = [(off, p) for off, p in due if off <= self._tolerance_mm]
        return min(near, key=lambda item: item[0])[1] if near else None

    def inducted_again(self, parcel: ParcelState, enc: int) -> None:
        """A parcel back round the loop at PE-IN: the same parcel and record, a new lap."""
        self._belt.tracker.returned(parcel.window, enc)
        parcel.next_lap(ParcelReads(self._config.decision.min_agreeing_reads))

    def missed(self, parcel: ParcelState, enc: int) -> bool:
        """Whether a returning parcel is overdue at PE-IN: it did not come back round."""
        if not parcel.returning:
            return False
        overdue = self._config.induction.photo_eye_mm + self._tolerance_mm
        if parcel.window.trail_mm(enc) <= overdue:
            return False
        self._belt.stats.returns_missed += 1
        parcel.returning = False
        parcel.reason = (f"went round the loop after lap {parcel.lap} and did not come back "
                         "to PE-IN")
        return True
