"""Where a parcel goes: its read verdict, its order and the sort plan make a routing decision.

Sans-I/O: no asyncio, no clock, no devices. The coordinator looks the order up and hands
in which bins are full; :class:`Router` answers with a :class:`Route`, which the divert
stage carries out (or not, if it comes too late).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from controller.codes import ReadVerdict
from controller.disposition import END_OF_LINE, Disposition
from controller.orders import Order, OrderStatus
from controller.sortplan import SortPlan


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision: the disposition the parcel ends with if all goes to plan."""

    disposition: Disposition
    bin: str  # a bin id, or END_OF_LINE: nothing is fired for it
    reason: str

    @property
    def diverts(self) -> bool:
        return self.bin != END_OF_LINE


def _to_end(disposition: Disposition, reason: str) -> Route:
    return Route(disposition, END_OF_LINE, reason)


class Router:
    """The sort plan applied to one parcel: held orders, full bins, overflow, no rule."""

    def __init__(self, plan: SortPlan) -> None:
        self.plan = plan

    @staticmethod
    def for_reads(verdict: ReadVerdict, *, why: str = "",
                  codes: Iterable[str] = ()) -> Route | None:
        """The route a read verdict alone decides; None when one code was read (ask its order).

        ``why`` is the reads' own account of a NO_READ or MULTI_READ, ``codes`` all the codes
        read (named in a MULTI_READ's reason when ``why`` is empty).
        """
        if verdict is ReadVerdict.NO_READ:
            return _to_end(Disposition.NO_READ, why or "no acceptable code read")
        if verdict is ReadVerdict.MULTI_READ:
            return _to_end(Disposition.MULTI_READ,
                           why or f"different codes: {', '.join(sorted(codes))}")
        if verdict is ReadVerdict.PENDING:
            raise ValueError("a pending read verdict routes nowhere yet")
        return None

    def for_order(self, order: Order | None, full: Set[str], *,
                  no_order_reason: str = "") -> Route:
        """The route of a parcel whose one code was read, given its order (None: not found).

        The plan's bins for the order are tried in rank (primary, alternates, overflow);
        the first not in ``full`` is chosen. Held and cancelled orders go only to a bin a
        rule names for their status, else to the end of the line.
        """
        if order is None:
            return _to_end(Disposition.NO_ORDER, no_order_reason or "no order for this code")
        rule, ranked = self.plan.destinations(order)
        chosen = next((b for b in ranked if b not in full), None)
        if order.status is not OrderStatus.RELEASED:
            held = f"order {order.order_id} {order.status}"
            if chosen is None:
                return _to_end(Disposition.ORDER_HELD,
                               held + (f": rule {rule}: every bin full" if rule else ""))
            return Route(Disposition.ORDER_HELD, chosen, f"{held}: rule {rule}")
        if chosen is None:
            return _to_end(Disposition.DEST_FULL,
                           f"rule {rule}: every bin full ({', '.join(ranked) or 'none'})")
        primary = ranked[0]
        planned = f"rule {rule}" if rule else "no rule matched: overflow"
        if chosen == primary:
            return Route(Disposition.SORTED, chosen, planned)
        return Route(Disposition.DEST_FULL, chosen,
                     f"{planned}: {primary} full, sent to {chosen}")
