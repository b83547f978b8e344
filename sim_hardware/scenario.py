"""Scenarios are data: a seeded parcel stream with a mix of cases and optional faults.

A scenario file is TOML with ``spec = 1``; a test bench can keep its own in its repo.
:func:`generate` turns a scenario and a line config into parcels and the order book that
goes with them, each parcel carrying the truth about itself.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import LineConfig, SortRule
from controller.errors import ConfigError
from controller.orders import Order, OrderStatus
from sim_hardware.labels import LabelSpec, label_size_mm, label_symbology
from sim_hardware.render import PlacedLabel
from sim_hardware.scenario_truth import CLOSE_GAP_MM as CLOSE_GAP_MM  # noqa: PLC0414
from sim_hardware.scenario_truth import SPACING_MARGIN_MM as SPACING_MARGIN_MM  # noqa: PLC0414
from sim_hardware.scenario_truth import class_boundaries, size_class, stall_read
from sim_hardware.scenario_truth import expected_bins as expected_bins  # noqa: PLC0414
from sim_hardware.scenario_truth import expected_place as expected_place  # noqa: PLC0414


class Case(StrEnum):
    """What a parcel is, as the test bench designed it."""

    NOMINAL = "nominal"
    NO_LABEL = "no_label"
    DAMAGED_LABEL = "damaged_label"
    TWO_LABELS = "two_labels"
    UNKNOWN_ORDER = "unknown_order"
    HELD_ORDER = "held_order"
    CANCELLED_ORDER = "cancelled_order"
    CAMERA_STALL = "camera_stall"
    JAMMED_DIVERTER = "jammed_diverter"  # its diverter's arm jams: it rides on to the end
    STRAY_PUSH = "stray_push"  # a faulty pusher upstream shoves it into the wrong bin
    PICKED_OFF = "picked_off"  # someone lifts it off the belt after the read zone
    LICENCE_PLATE = "licence_plate"  # a warehouse licence-plate label beside the shipment one
    TOO_CLOSE = "too_close"  # inducted right behind the parcel before: neither is diverted
    HIDDEN_LABEL = "hidden_label"  # its label is hidden (a flap over it) on its first pass


EXPECTED_DISPOSITION = {
    Case.NOMINAL: "SORTED",
    Case.NO_LABEL: "NO_READ",
    Case.DAMAGED_LABEL: "NO_READ",
    Case.TWO_LABELS: "MULTI_READ",
    Case.UNKNOWN_ORDER: "NO_ORDER",
    Case.HELD_ORDER: "ORDER_HELD",
    Case.CANCELLED_ORDER: "ORDER_HELD",
    Case.CAMERA_STALL: "LATE",  # when it stalls every camera that could read it (stall_read)
    Case.JAMMED_DIVERTER: "DIVERT_FAULT",
    Case.STRAY_PUSH: "MISSORT",
    Case.PICKED_OFF: "LOST",
    Case.LICENCE_PLATE: "SORTED",
    Case.TOO_CLOSE: "TOO_CLOSE",
    Case.HIDDEN_LABEL: "NO_READ",  # on a loop it is read on its second lap
}
ROUTED_CASES = frozenset({Case.NOMINAL, Case.CAMERA_STALL, Case.JAMMED_DIVERTER,
                          Case.STRAY_PUSH, Case.PICKED_OFF, Case.LICENCE_PLATE, Case.TOO_CLOSE})
"""Cases whose order is released and routed by the plan; the rest belong at the end."""

Range = tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]


class ScenarioSpec(BaseModel):
    """A seeded parcel stream (version 1 of the scenario format)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: Literal[1] = 1
    seed: int = 1
    parcels: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    mix: dict[Case, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {Case.NOMINAL: 1.0})
    length_mm: Range = (250.0, 600.0)
    width_mm: Range = (180.0, 380.0)
    gap_mm: Range = (250.0, 600.0)
    qr_share: Annotated[float, Field(ge=0, le=1)] = 0.3
    scuffed_share: Annotated[float, Field(ge=0, le=1)] = 0.05
    bin_empty_after_s: Annotated[float, Field(gt=0)] | None = 20.0
    camera_stall_s: Annotated[float, Field(ge=0)] = 4.5
    drop_time_s: Annotated[float, Field(ge=0)] = 0.3
    hot_bins: Annotated[float, Field(ge=0)] = 0.0
    """Skew of destinations towards the first rules (0 = even)."""
    multi_parcel_share: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Share of orders shipped as two or three parcels (each parcel has its own code)."""
    speed_changes: list[tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]] = \
        Field(default_factory=list)
    """``(seconds after the start, belt speed mm/s)``: stops (0), slowdowns, restarts."""

    camera_outages: list[tuple[str, Annotated[float, Field(ge=0)],
                               Annotated[float, Field(ge=0)]]] = Field(default_factory=list)
    """``(camera id, from s, to s)``: the camera delivers nothing and its link is down."""
    stall_cameras: list[str] | None = None
    """The cameras a CAMERA_STALL parcel stalls (None: all); the others read it in time."""
    order_book: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    """The order book holds at least this many orders: the parcels' and, to fill it up,
    released orders of earlier days that no parcel of the shift carries (a site's book does
    not grow with the length of a shift)."""

    @model_validator(mode="after")
    def _belt_ends_moving(self) -> ScenarioSpec:
        if self.speed_changes and sorted(self.speed_changes)[-1][1] == 0:
            raise ValueError("speed_changes: the belt must be moving after the last change")
        return self


DEMO_MIX: dict[Case, float] = {
    Case.NOMINAL: 0.90, Case.NO_LABEL: 0.015, Case.DAMAGED_LABEL: 0.015,
    Case.TWO_LABELS: 0.015, Case.UNKNOWN_ORDER: 0.02, Case.HELD_ORDER: 0.015,
    Case.CANCELLED_ORDER: 0.01, Case.CAMERA_STALL: 0.01,
}


def load_scenario(path: str | Path) -> ScenarioSpec:
    path = Path(path)
    try:
        return ScenarioSpec.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), [("(file)", str(exc))], "scenario") from None
    except ValidationError as exc:
        raise ConfigError(str(path), [(".".join(map(str, e["loc"])) or "(top level)", e["msg"])
                                      for e in exc.errors()], "scenario") from None


@dataclass(slots=True)
class SimParcel:
    """One parcel of the stream with the truth about it; ``actual`` is filled in by the line.

    A long shift holds one per parcel: slots, and its event notes only once it has one.
    """

    sim_id: int
    case: Case
    length_mm: float
    width_mm: float
    y_mm: float
    shade: int
    gap_before_mm: float
    labels: tuple[PlacedLabel, ...]
    code: str | None
    order: Order | None
    expected_disposition: str
    expected_bins: list[str]
    places: int = 1  # the first ``places`` expected bins are its place; the rest when full
    offset_mm: float = 0.0  # belt travel at which the leading edge is at line position 0
    induct_enc: int | None = None
    stray_diverter: str | None = None
    plan_bins: list[str] = field(default_factory=list)  # where its order's plan lets it go
    plan_places: int = 1
    laps: int = 1  # on a loop: the pass it is on, then the one it ended on
    actual: str | None = None
    _events: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def events(self) -> list[str]:
        """What happened to it on the line that the controller does not see, as notes."""
        if self._events is None:
            self._events = []
        return self._events

    @property
    def expected_bin(self) -> str:
        return self.expected_bins[0] if self.expected_bins else "END"


CARRIERS = ("DHL", "UPS", "DPD", "GLS", "PostNL")
SERVICES = ("standard", "express")
CHANNELS = ("webshop", "store", "marketplace")


SIZE_MARGIN_MM = 20.0


def make_code(serial: int, prefix: str = "00") -> str:
    body = f"{prefix}{serial:09d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


class ParcelGenerator:
    """The scenario's parcels in turn, from its seed.

    Without ``sized_labels`` the labels are not measured (the dearest part of a parcel), so
    they sit anywhere on the face and a camera stall's truth is not worked out: the same
    random draws are made, so the parcels' orders and codes are the same, for a pass over
    the stream that wants only those (:func:`sim_hardware.parcel_stream.order_book`).
    """

    def __init__(self, spec: ScenarioSpec, line: LineConfig, *, sized_labels: bool = True) -> None:
        self.spec = spec
        self.line = line
        self.sized_labels = sized_labels
        self.rng = random.Random(spec.seed)
        self.serial = self.rng.randrange(10_000, 900_000_000)

    def next_code(self) -> str:
        self.serial += self.rng.randrange(1, 50)
        return make_code(self.serial)

    def order_for(self, code: str, status: OrderStatus, n: int,
                  length_mm: float | None = None) -> Order:
        # Orders are drawn for the routing rules (those that do not name a status) that take
        # a parcel of this size.
        size = size_class(self.line, length_mm)
        rules = [r for r in self.line.sort_plan.rules if "status" not in r.when
                 and r.when.get("size_class", size) == size]
        rule: SortRule | None = None
        if rules and self.rng.random() < 0.95:
            weights = [1.0 / (i + 1) ** self.spec.hot_bins for i in range(len(rules))]
            rule = self.rng.choices(rules, weights)[0]
        attrs = {
            "carrier": self.rng.choice(CARRIERS), "service": self.rng.choice(SERVICES),
            "route": f"R{self.rng.randrange(1, 40):02d}", "channel": self.rng.choice(CHANNELS),
            "postcode": f"{self.rng.randrange(1000, 99999):05d}",
        }
        if rule is not None:
            for key, value in rule.when.items():
                bound = key == "postcode_from" or (key == "postcode_to"
                                                   and "postcode_from" not in rule.when)
                if key == "postcode_prefix" or bound:
                    attrs["postcode"] = value + attrs["postcode"][len(value):]
                elif key not in ("size_class", "postcode_to"):
                    attrs[key] = value
        return Order(order_id=f"SO-{n:07d}", code=code, status=status,
                     created_at=-self.rng.uniform(600, 6 * 3600), channel=attrs["channel"],
                     carrier=attrs["carrier"], service=attrs["service"], route=attrs["route"],
                     postcode=attrs["postcode"])

    def label(self, code: str, length: float, width: float, *, qr: bool,
              damage: str) -> PlacedLabel:
        spec = LabelSpec(code=code, qr_text=code if qr else None, damage=damage,
                         seed=self.rng.randrange(1 << 30),
                         symbology=label_symbology(self.line, code))
        angle = self.rng.uniform(0, 360)
        label_w, label_h = label_size_mm(spec) if self.sized_labels else (0.0, 0.0)
        reach = (label_w ** 2 + label_h ** 2) ** 0.5 / 2
        du = max(0.0, length / 2 - reach)
        dv = max(0.0, width / 2 - reach)
        return PlacedLabel(spec, self.rng.uniform(-du, du), self.rng.uniform(-dv, dv), angle)

    def _plan_truth(self, parcel: SimParcel, expected: list[str], places: int) -> None:
        """Where the plan lets its order go, and a stall's truth: sorted where a camera the
        stall does not hit reads it in time."""
        if parcel.order is not None:
            parcel.plan_bins, parcel.plan_places = expected_place(self.line, parcel.order,
                                                                  parcel.length_mm)
        if parcel.case is Case.CAMERA_STALL and self.sized_labels and stall_read(
                self.line, self.spec.stall_cameras, parcel.labels):
            parcel.expected_bins, parcel.places = expected, places
            parcel.expected_disposition = "SORTED" if expected else "DEST_FULL"

    def parcel(self, sim_id: int) -> SimParcel:
        s, rng = self.spec, self.rng
        case = rng.choices(list(s.mix), list(s.mix.values()))[0]
        length = rng.uniform(*s.length_mm)
        for _ in range(20):  # not where the controller's measure could put it in another class
            if all(abs(length - b) > SIZE_MARGIN_MM for b in class_boundaries(self.line)):
                break
            length = rng.uniform(*s.length_mm)
        width = rng.uniform(*s.width_mm)
        half_view = min(self.line.belt.width_mm,
                        *(c.resolution[1] * c.mm_per_px for c in self.line.cameras)) / 2
        y_room = max(0.0, half_view - width / 2 - 5)
        y = rng.uniform(-y_room, y_room)
        gap = rng.uniform(*s.gap_mm)
        if case is Case.TOO_CLOSE:
            gap = rng.uniform(CLOSE_GAP_MM, max(CLOSE_GAP_MM, 0.7 * self.line.induction.min_gap_mm))
        code = self.next_code()
        qr = rng.random() < s.qr_share
        damage = "scuffed" if rng.random() < s.scuffed_share else "none"
        labels: tuple[PlacedLabel, ...] = ()
        order: Order | None = None
        status = {Case.HELD_ORDER: OrderStatus.HELD,
                  Case.CANCELLED_ORDER: OrderStatus.CANCELLED}.get(case, OrderStatus.RELEASED)
        if case is not Case.UNKNOWN_ORDER:
            order = self.order_for(code, status, sim_id, length)
        if case is Case.NO_LABEL:
            pass  # its label fell off: the order exists, nothing on the box says which
        elif case is Case.DAMAGED_LABEL:
            labels = (self.label(code, length, width, qr=qr, damage="destroyed"),)
        elif case in (Case.TWO_LABELS, Case.LICENCE_PLATE):
            # Two labels on one box: both halves of the top face, both readable.
            length = max(length, 2 * 140.0)
            other = self.next_code() if case is Case.TWO_LABELS \
                else f"LP{rng.randrange(10**8):08d}"
            first = self.label(code, length / 2, width, qr=False, damage="none")
            second = self.label(other, length / 2, width, qr=False, damage="none")
            labels = (PlacedLabel(first.spec, first.u_mm + length / 4, first.v_mm, first.angle_deg),
                      PlacedLabel(second.spec, second.u_mm - length / 4, second.v_mm,
                                  second.angle_deg))
        else:
            labels = (self.label(code, length, width, qr=qr, damage=damage),)
        if case is Case.CAMERA_STALL:
            # Isolated: the parcel before has left every view when the stall starts.
            gap = max(gap, max(c.fov_mm for c in self.line.cameras) + 300.0)
        expected, places = expected_place(self.line, order, length) if order and case in \
            ROUTED_CASES | {Case.HELD_ORDER, Case.CANCELLED_ORDER} else ([], 1)
        # A parcel inducted too close is sorted like any other where the line's gap allows
        # it: the stream says which pairs it does not (scenario_truth.too_close).
        disposition = "SORTED" if case is Case.TOO_CLOSE else EXPECTED_DISPOSITION[case]
        if case in (Case.NOMINAL, Case.TOO_CLOSE) and not expected:
            disposition = "DEST_FULL"
        parcel = SimParcel(sim_id, case, length, width, y, rng.randrange(125, 185), gap, labels,
                           None if case is Case.NO_LABEL else code, order, disposition,
                           expected if case in (Case.NOMINAL, Case.TOO_CLOSE, Case.JAMMED_DIVERTER,
                                                Case.HELD_ORDER, Case.CANCELLED_ORDER,
                                                Case.LICENCE_PLATE) else [], places=places)
        if case is Case.STRAY_PUSH:
            # The faulty pusher is the one just upstream of where the parcel should go; with
            # none upstream, the parcel is one the line sends to the end (no order) instead.
            line_order = sorted(self.line.diverters, key=lambda d: d.position_mm)
            target = next((i for i, d in enumerate(line_order) if expected
                           and d.bin == expected[0]), 0)
            if target == 0:
                parcel.order = None
            parcel.stray_diverter = line_order[max(0, target - 1)].id
            parcel.expected_bins = []
        self._plan_truth(parcel, expected, places)
        return parcel


def generate(spec: ScenarioSpec, line: LineConfig) -> tuple[list[SimParcel], list[Order]]:
    """The parcel stream and the order book (unknown-order parcels have no order in it).

    All of it at once, for a test bench that holds the truth: :mod:`sim_hardware.parcel_stream`
    yields the same parcels one at a time, for a shift too long to hold.
    """
    from sim_hardware.parcel_stream import earlier_orders, stream

    parcels = list(stream(spec, line))
    orders = [p.order for p in parcels if p.order is not None]
    return parcels, orders + list(earlier_orders(spec, line, spec.order_book - len(orders)))
