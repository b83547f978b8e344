"""Hot zones: a sort plan whose busiest destinations sit on the bins nearest the scanner.

Sans-I/O. From a line config and the day's order book (one :class:`Order` per parcel) it
counts the released parcels each destination would take under the plan's own first-match
rules, ranks the bins by belt travel from the end of the read zone to their diverter, and
hands bins out busiest first, nearest first.

* **Pinned** (kept as they are, their bins never handed out): destinations of rules that
  name a ``size_class`` (orders carry no size, so their volume cannot be counted), of rules
  that name a ``status`` (hold bins), and the overflow bin. Orders such a rule would take
  only by size are counted to the next rule that takes them without it.
* **Bins per destination**: largest remainder on the volume, at least one each. With
  ``empties_per_shift`` a destination gets no more bins than it fills: a bin takes
  ``capacity * empties_per_shift`` parcels a shift (the smallest capacity of the bins
  handed out, to err towards more bins); bins nobody needs become spares.
* **Fewer bins than destinations**: the busiest get a bin each and the least busy share the
  farthest one (said in :attr:`HotZones.notes`), rather than refusing the whole plan.
* **Alternates**: the ``spare`` farthest bins (and any left over) are every counted
  destination's alternates; with none, a full destination goes to the overflow.
* A rule with legacy ``bins`` becomes a destination of its own, named from the rule.
* Every bin a diverter serves that is not pinned is handed out, named by the old plan or
  not; destinations no rule names are left out.
* Mean travel (per destination and volume-weighted for the whole book) is where parcels go
  while nothing is full: spread evenly over a destination's bins, or its first with
  ``fill_first`` (a legacy rule's first bin).

Rules keep their order and their ``when``: only where they send changes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from controller.config import (
    Destination,
    LineConfig,
    SortPlanConfig,
    SortRule,
    parse_config,
)
from controller.errors import SorterError
from controller.orders import Order, OrderStatus
from controller.sortplan import SortPlan, Target, rule_matches

OVERFLOW = "overflow"


class HotZoneError(SorterError):
    """No plan can be made: no bin is left to hand out."""


@dataclass(frozen=True, slots=True)
class ZoneRow:
    """One destination of the new plan: its volume and where it now sits."""

    destination: str
    parcels: int
    share: float  # of the released parcels counted
    bins: tuple[str, ...]
    mean_travel_mm: float  # from the end of the read zone, over its own bins
    pinned: bool


@dataclass(frozen=True, slots=True)
class HotZones:
    """The new plan (valid against the line), its table, and the volume-weighted travel."""

    plan: SortPlanConfig
    rows: list[ZoneRow]
    parcels: int  # released parcels counted
    not_released: int  # parcels of held, cancelled, ... orders: not counted
    old_mean_travel_mm: float | None  # None: no parcel counted
    new_mean_travel_mm: float | None
    spares: tuple[str, ...]
    notes: list[str]


def travel_mm(config: LineConfig, bin_id: str) -> float:
    """Belt travel from the end of the read zone to the bin's diverter."""
    return config.diverter_for_bin(bin_id).position_mm - config.read_zone_end_mm


def _destination_name(rule: SortRule, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", rule.name).strip("-")[:28] or "rule"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _pinned(rule: SortRule) -> bool:
    return "size_class" in rule.when or "status" in rule.when


def _as_destinations(plan: SortPlanConfig) -> tuple[list[SortRule], set[str]]:
    """The rules with legacy ``bins`` made destination rules, and the pinned destinations."""
    taken = set(plan.destinations)
    rules = [rule if rule.bins is None or _pinned(rule) else SortRule(
        name=rule.name, when=rule.when, destination=_destination_name(rule, taken))
        for rule in plan.rules]
    pinned = {r.destination for r in rules if _pinned(r) and r.destination is not None}
    return rules, pinned


def _seats(volumes: list[int], bins: int, caps: list[int] | None) -> list[int]:
    """Bins per destination: largest remainder, at least one each, at most its cap."""
    total = sum(volumes)
    quotas = [bins * v / total if total else bins / len(volumes) for v in volumes]
    limit = caps or [bins] * len(volumes)
    seats = [1] * len(volumes)
    while sum(seats) < bins:
        open_ = [i for i in range(len(seats)) if seats[i] < limit[i]]
        if not open_:
            break
        # the largest remainder: the quota least served by the seats it has
        best = max(open_, key=lambda i: (quotas[i] - seats[i], volumes[i], -i))
        seats[best] += 1
    return seats


def _count(rules: list[SortRule], orders: Iterable[Order],
           ) -> tuple[Counter[str], list[Order], int]:
    """Released parcels per destination (first matching rule), those parcels, the rest."""
    counts: Counter[str] = Counter()
    counted: list[Order] = []
    not_released = 0
    for order in orders:
        if order.status is not OrderStatus.RELEASED:
            not_released += 1
            continue
        rule = next((r for r in rules if rule_matches(r, order)), None)
        counts[OVERFLOW if rule is None else rule.destination or rule.name] += 1
        counted.append(order)
    return counts, counted, not_released


def _place(ranked: list[str], seats: list[int], primary: list[str],
           ) -> tuple[dict[str, list[str]], list[str]]:
    """Consecutive bins, nearest first, busiest first; past the last bin, they share it."""
    placed: dict[str, list[str]] = {}
    at = 0
    for name, n in zip(ranked, seats, strict=True):
        start = min(at, len(primary) - 1)
        placed[name] = primary[start:start + n]
        at += n
    return placed, primary[at:]


def hot_zones(config: LineConfig, orders: Iterable[Order], *, spare: int = 0,
              empties_per_shift: float | None = None) -> HotZones:
    """The hot-zone plan for this line and order book; HotZoneError if no bin is free."""
    old = config.sort_plan
    rules, pinned = _as_destinations(old)
    counts, counted, not_released = _count(rules, orders)
    assignable = list(dict.fromkeys(
        r.destination for r in rules if r.destination is not None and r.destination
        not in pinned))
    pinned_bins = {d: old.destinations[d].bins for d in sorted(pinned)}
    pinned_bins |= {r.name: r.bins for r in rules if r.bins is not None}
    held_bins = {b for bins in pinned_bins.values() for b in bins}
    held_bins |= {old.overflow} if old.overflow else set()
    free = sorted((d.bin for d in config.diverters if d.bin not in held_bins),
                  key=lambda b: (travel_mm(config, b), b))
    notes: list[str] = []
    if assignable and not free:
        raise HotZoneError("every bin is pinned (hold, size-class or overflow bins): none "
                           "is left to hand out")
    if spare < 0:
        raise HotZoneError("spare must not be negative")
    if spare > max(len(free) - len(assignable), 0):
        notes.append(f"{spare} spares asked, but {len(assignable)} destinations need "
                     f"{len(assignable)} of the {len(free)} free bins")
        spare = max(len(free) - len(assignable), 0)
    primary, spares = free[:len(free) - spare], free[len(free) - spare:]
    ranked = sorted(assignable, key=lambda d: (-counts[d], assignable.index(d)))
    seats = [1] * len(ranked)
    if len(ranked) > len(primary):
        notes.append(f"{len(ranked)} destinations for {len(primary)} bins: the least busy "
                     f"({', '.join(ranked[len(primary) - 1:])}) share {primary[-1]}")
    elif ranked:
        caps = None
        if empties_per_shift is not None:
            per_bin = min(config.bin(b).capacity for b in primary) * empties_per_shift
            caps = [max(1, math.ceil(counts[d] / per_bin)) for d in ranked]
        seats = _seats([counts[d] for d in ranked], len(primary), caps)
    placed, left = _place(ranked, seats, primary)
    if left:
        notes.append(f"no destination needs {', '.join(left)}: kept as spares")
    spares = [*left, *spares]
    destinations = {d: old.destinations[d] for d in pinned}
    destinations |= {d: Destination(bins=placed[d], alternates=spares) for d in ranked}
    plan = SortPlanConfig(rules=rules, overflow=old.overflow, destinations=destinations,
                          size_classes=old.size_classes,
                          default_size_class=old.default_size_class, consolidate=old.consolidate)
    parse_config({**config.model_dump(), "sort_plan": plan.model_dump()}, "<hot-zone plan>")
    unused = sorted(set(old.destinations) - set(destinations))
    if unused:
        notes.append(f"no rule names {', '.join(unused)}: left out of the plan")
    rows = _rows(config, plan, counts, ranked, pinned_bins)
    return HotZones(plan, rows, sum(counts.values()), not_released,
                    _weighted_travel(config, old, counted),
                    _weighted_travel(config, plan, counted), tuple(spares), notes)


def _mean_travel(config: LineConfig, bins: Iterable[str]) -> float:
    travels = [travel_mm(config, b) for b in bins]
    return sum(travels) / len(travels) if travels else math.nan


def _rows(config: LineConfig, plan: SortPlanConfig, counts: Counter[str], ranked: list[str],
          pinned: dict[str, list[str]]) -> list[ZoneRow]:
    total = sum(counts.values())

    def row(name: str, bins: list[str], is_pinned: bool) -> ZoneRow:
        return ZoneRow(name, counts[name], counts[name] / total if total else 0.0, tuple(bins),
                       _mean_travel(config, bins), is_pinned)

    rows = [row(d, plan.destinations[d].bins, False) for d in ranked]
    rows += [row(name, bins, True) for name, bins in pinned.items()]
    if plan.overflow is not None:
        rows.append(row(OVERFLOW, [plan.overflow], True))
    return rows


def _own_travel(config: LineConfig, target: Target) -> float:
    """Where a parcel goes while nothing is full: spread over its own bins, or the first."""
    own = target.own[:1] if target.fill_first else target.own
    return _mean_travel(config, own)


def _weighted_travel(config: LineConfig, plan: SortPlanConfig,
                     orders: list[Order]) -> float | None:
    sort_plan = SortPlan(plan)
    travels = [_own_travel(config, t) for o in orders if (t := sort_plan.target(o)).own]
    return sum(travels) / len(travels) if travels else None
