"""Where a parcel goes: its read verdict, its order and the sort plan make a routing decision.

Sans-I/O: no asyncio, no clock, no devices. The coordinator looks the order up and hands
in which bins are full; :class:`Router` answers with a :class:`Route`, which the divert
stage carries out (or not, if it comes too late).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Set
from dataclasses import dataclass

from controller.codes import ReadVerdict
from controller.disposition import END_OF_LINE, Disposition
from controller.orders import Order, OrderStatus
from controller.sortplan import SortPlan, Target


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


CONSOLIDATING_ORDERS = 10_000  # multi-parcel orders whose bin is remembered, newest kept


class Router:
    """The sort plan applied to one parcel: held orders, full bins, spreading, consolidation,
    overflow, no rule.

    It remembers the bin each multi-parcel order's parcels went to, so the rest follow
    (:attr:`SortPlanConfig.consolidate`), and where each destination's spreading is.
    """

    def __init__(self, plan: SortPlan) -> None:
        self.plan = plan
        self._order_bins: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._turn: dict[str, int] = {}

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
                  no_order_reason: str = "", length_mm: float | None = None) -> Route:
        """The route of a parcel whose one code was read, given its order (None: not found).

        A parcel goes to one of its destination's own bins not in ``full`` (spread over
        them), else to the first alternate or the overflow not full; a parcel of an order
        whose earlier parcels went to a bin still allowed and not full goes there too. Held
        and cancelled orders go only to a bin a rule names for their status, else to the end
        of the line. ``length_mm``, measured at the induction, gives the parcel's size class.
        """
        if order is None:
            return _to_end(Disposition.NO_ORDER, no_order_reason or "no order for this code")
        target = self.plan.target(order, length_mm)
        rule = target.rule
        consolidated = self._consolidated(order, target, full)
        chosen = consolidated or self._choose(target, full)
        if chosen is not None:
            self._remember(order, chosen)
        with_order = f"; with the rest of order {order.order_id}" if consolidated else ""
        if order.status is not OrderStatus.RELEASED:
            held = f"order {order.order_id} {order.status}"
            if chosen is None:
                return _to_end(Disposition.ORDER_HELD,
                               held + (f": rule {rule}: every bin full" if rule else ""))
            return Route(Disposition.ORDER_HELD, chosen, f"{held}: rule {rule}{with_order}")
        if chosen is None:
            return _to_end(Disposition.DEST_FULL, f"rule {rule}: every bin full "
                                                  f"({', '.join(target.ranked) or 'none'})")
        planned = f"rule {rule}" if rule else "no rule matched: overflow"
        if chosen in target.own:
            return Route(Disposition.SORTED, chosen, planned + with_order)
        return Route(Disposition.DEST_FULL, chosen,
                     f"{planned}: {', '.join(target.own)} full, sent to {chosen}{with_order}")

    def _choose(self, target: Target, full: Set[str]) -> str | None:
        own = [b for b in target.own if b not in full]
        if own and not target.fill_first and len(target.own) > 1:
            turn = self._turn.get(target.destination, 0)
            self._turn[target.destination] = turn + 1
            return own[turn % len(own)]
        if own:
            return own[0]
        return next((b for b in target.fallback if b not in full), None)

    def _consolidated(self, order: Order, target: Target, full: Set[str]) -> str | None:
        """The bin this order's earlier parcels went to, if it may take this one too."""
        if not self.plan.config.consolidate or order.parcels_in_order < 2:
            return None
        remembered = self._order_bins.get(order.order_id)
        if remembered is None:
            return None
        bin_id = remembered[0]
        return bin_id if bin_id in target.ranked and bin_id not in full else None

    def _remember(self, order: Order, bin_id: str) -> None:
        if not self.plan.config.consolidate or order.parcels_in_order < 2:
            return
        _, routed = self._order_bins.pop(order.order_id, ("", 0))
        if routed + 1 < order.parcels_in_order:
            self._order_bins[order.order_id] = (bin_id, routed + 1)
            while len(self._order_bins) > CONSOLIDATING_ORDERS:
                self._order_bins.popitem(last=False)
