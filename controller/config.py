"""The line config: one TOML file describing belt, sensors, cameras, diverters, bins and plan.

Positions are millimetres of belt travel downstream of the line origin; the induction
photo-eye (PE-IN) is normally at 0. A bad file is refused with a :class:`ConfigError` that
names each offending field and why.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.errors import ConfigError

PositiveFloat = Annotated[float, Field(gt=0)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]


class _Strict(BaseModel):
    # allow_inf_nan: a NaN fails no bound (every comparison with it is false), then every
    # decision that uses it
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LineInfo(_Strict):
    name: Identifier = "line1"


class BeltConfig(_Strict):
    speed_mm_s: PositiveFloat = Field(description="nominal (and maximum) belt speed")
    encoder_counts_per_mm: PositiveFloat = 1.0
    width_mm: PositiveFloat = 600.0


class InductionConfig(_Strict):
    photo_eye_mm: float = 0.0


class CameraConfig(_Strict):
    id: Identifier
    position_mm: float = Field(description="centre of the camera's view along the belt")
    fov_mm: PositiveFloat = Field(description="length of belt the frame spans, along the belt")
    resolution: tuple[Annotated[int, Field(ge=64, le=8192)], Annotated[int, Field(ge=64, le=8192)]]
    fps: Annotated[float, Field(gt=0, le=200)] = 30.0
    decoder: str = "located-zxing"
    source: str = Field(default="emulator", description="emulator, or an OpenCV source")
    latency_ms: Annotated[float, Field(ge=0, le=2000)] = Field(
        default=0.0, description="capture to hand-over, for sources whose frames carry no "
                                 "encoder count: a frame is stamped this much before it arrived")

    @property
    def mm_per_px(self) -> float:
        return self.fov_mm / self.resolution[0]

    @property
    def view_start_mm(self) -> float:
        return self.position_mm - self.fov_mm / 2

    @property
    def view_end_mm(self) -> float:
        return self.position_mm + self.fov_mm / 2


class DiverterConfig(_Strict):
    id: Identifier
    position_mm: float
    bin: Identifier
    actuation_ms: Annotated[float, Field(ge=0, le=5000)] = 100.0
    pulse_ms: Annotated[float, Field(gt=0, le=5000)] = 150.0
    window_mm: PositiveFloat = Field(
        default=160.0, description="a parcel is pushed if its centre is this close to the arm"
    )
    link: Literal["serial", "mqtt"] | None = Field(
        default=None, description="the link its commands go over (default: line_io.diverters)")


class BinConfig(_Strict):
    id: Identifier
    capacity: Annotated[int, Field(ge=1)] = 200
    drop_ms: Annotated[float, Field(ge=0)] = Field(
        default=300.0, description="usual time from the push to the bin's photo-eye")
    confirm_timeout_ms: PositiveFloat = 1500.0

    @model_validator(mode="after")
    def _drop_within_timeout(self) -> BinConfig:
        if self.drop_ms >= self.confirm_timeout_ms:
            raise ValueError("drop_ms must be shorter than confirm_timeout_ms")
        return self


class EndOfLineConfig(_Strict):
    position_mm: float
    role: Literal["reject"] = "reject"


class OrderStoreConfig(_Strict):
    backend: Literal["sqlite"] = "sqlite"
    path: str = "var/orders.sqlite"
    timeout_ms: PositiveFloat = 200.0
    cache_size: Annotated[int, Field(ge=0)] = 100_000


class JournalConfig(_Strict):
    path: str = "var/journal.sqlite"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class LabelType(_Strict):
    """A kind of label whose code the line knows: a carrier's shipment label, a licence plate.

    When a parcel carries valid codes of several types, the lowest ``priority`` wins; two
    different codes of the winning priority are a MULTI_READ. A type that does not ``sort``
    is recognised (so it cannot be mistaken for a conflict) but never routed on.
    """

    name: Identifier
    pattern: str
    check_digit: Literal["none", "gs1-mod10"] = "none"
    symbologies: list[str] = Field(default_factory=list, description="empty: any")
    priority: int = 1
    sorts: bool = True

    @model_validator(mode="after")
    def _pattern_compiles(self) -> LabelType:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern is not a regular expression: {exc}") from None
        return self


SHIPMENT_LABEL = LabelType(name="shipment", pattern=r"^[0-9]{12}$", check_digit="gs1-mod10")


class ArchiveConfig(_Strict):
    """Where the frames of NO_READ and MULTI_READ parcels are kept for keying by hand."""

    path: str | None = Field(default=None, description="none: no archive")
    max_parcels: Annotated[int, Field(ge=1)] = 1000
    max_mb: PositiveFloat = Field(default=500.0, description="MiB")
    frames_per_parcel: Annotated[int, Field(ge=1, le=20)] = 3


class DecisionConfig(_Strict):
    label_types: list[LabelType] = Field(default_factory=lambda: [SHIPMENT_LABEL], min_length=1)
    min_agreeing_reads: Annotated[int, Field(ge=1, le=10)] = 2
    margin_mm: Annotated[float, Field(ge=0)] = 50.0
    assign_tolerance_mm: Annotated[float, Field(ge=0)] = 15.0
    frame_wait_ms: PositiveFloat = Field(
        default=5000.0,
        description="how long a parcel's reads wait for a lagging camera after the read zone")


RuleField = Literal["carrier", "service", "route", "channel", "postcode_prefix", "status"]
ORDER_STATUSES = ("released", "held", "cancelled")


class SortRule(_Strict):
    """Orders matching every ``when`` field go to ``bins`` (primary first).

    Held and cancelled orders match only rules that name their ``status``.
    """

    name: str
    when: dict[RuleField, str] = Field(default_factory=dict)
    bins: list[Identifier] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_status(self) -> SortRule:
        status = self.when.get("status")
        if status is not None and status.casefold() not in ORDER_STATUSES:
            raise ValueError(f"status must be one of {', '.join(ORDER_STATUSES)}")
        return self


class SortPlanConfig(_Strict):
    rules: list[SortRule] = Field(default_factory=list)
    overflow: Identifier | None = None


class SerialLinkConfig(_Strict):
    """The line's I/O board on a serial port (docs/serial-protocol.md)."""

    port: str = Field(description="device path, e.g. /dev/serial/by-id/usb-... or /dev/ttyUSB0")
    baudrate: Annotated[int, Field(ge=1200)] = 115200
    heartbeat_ms: Annotated[float, Field(ge=10, le=1000)] = 100.0
    ack_timeout_ms: Annotated[float, Field(ge=1, le=2000)] = 40.0
    max_resends: Annotated[int, Field(ge=1, le=100)] = 8
    reply_timeout_ms: Annotated[float, Field(ge=1, le=5000)] = 150.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class MqttLinkConfig(_Strict):
    """Diverter nodes (and optionally the sensors) behind an MQTT broker."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password")
    client_id: str | None = Field(default=None, description="default: parcel-sorter-<line>")
    topic_prefix: str = Field(default="sorter", pattern=r"^[A-Za-z0-9_/-]{1,64}$")
    qos: Literal[0, 1] = 1
    keepalive_s: Annotated[int, Field(ge=1, le=600)] = 10
    heartbeat_ms: Annotated[float, Field(ge=10, le=1000)] = 100.0
    reply_timeout_ms: Annotated[float, Field(ge=1, le=5000)] = 150.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class LineIOConfig(_Strict):
    """Which links reach the line's sensors and diverters. Absent: no real I/O (``sim`` only)."""

    sensors: Literal["serial", "mqtt"] = Field(
        default="serial", description="the link carrying photo-eyes, encoder and bin sensors")
    diverters: Literal["serial", "mqtt"] = Field(
        default="serial", description="the default link of diverter commands")
    serial: SerialLinkConfig | None = None
    mqtt: MqttLinkConfig | None = None

    @model_validator(mode="after")
    def _links_configured(self) -> LineIOConfig:
        for role, link in (("sensors", self.sensors), ("diverters", self.diverters)):
            if getattr(self, link) is None:
                raise ValueError(f"{role} = {link!r} but there is no [line_io.{link}] section")
        return self


class LineConfig(_Strict):
    """A whole sorting line."""

    line: LineInfo = LineInfo()
    belt: BeltConfig
    induction: InductionConfig = InductionConfig()
    cameras: list[CameraConfig] = Field(min_length=1)
    diverters: list[DiverterConfig] = Field(min_length=1)
    bins: list[BinConfig] = Field(min_length=1)
    end_of_line: EndOfLineConfig
    order_store: OrderStoreConfig = OrderStoreConfig()
    journal: JournalConfig = JournalConfig()
    decision: DecisionConfig = DecisionConfig()
    archive: ArchiveConfig = ArchiveConfig()
    sort_plan: SortPlanConfig
    line_io: LineIOConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LineConfig:
        problems: list[str] = []
        for kind, items in (("cameras", self.cameras), ("diverters", self.diverters),
                            ("bins", self.bins)):
            ids = [item.id for item in items]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                problems.append(f"{kind}: duplicate id {', '.join(dupes)}")
        bin_ids = {b.id for b in self.bins}
        served = [d.bin for d in self.diverters]
        problems += [f"diverters: {d.id} serves unknown bin {d.bin!r}"
                     for d in self.diverters if d.bin not in bin_ids]
        problems += [f"bins: {b} is served by more than one diverter"
                     for b in sorted({b for b in served if served.count(b) > 1})]
        for rule in self.sort_plan.rules:
            problems += [f"sort_plan.rules: rule {rule.name!r} names unknown bin {b!r}"
                         for b in rule.bins if b not in served]
        if self.sort_plan.overflow is not None and self.sort_plan.overflow not in served:
            problems.append(f"sort_plan.overflow: unknown bin {self.sort_plan.overflow!r}")
        pe = self.induction.photo_eye_mm
        last_view = max(c.view_end_mm for c in self.cameras)
        problems += [f"cameras: {c.id} sees belt upstream of the induction photo-eye"
                     for c in self.cameras if c.view_start_mm < pe]
        problems += [f"diverters: {d.id} at {d.position_mm} mm is not downstream of the cameras"
                     f" (read zone ends at {last_view} mm)"
                     for d in self.diverters if d.position_mm <= last_view]
        problems += [f"end_of_line: position must be downstream of diverter {d.id}"
                     for d in self.diverters if d.position_mm >= self.end_of_line.position_mm]
        if self.line_io is not None:
            problems += [f"diverters: {d.id} is on link {d.link!r} but there is no "
                         f"[line_io.{d.link}] section"
                         for d in self.diverters
                         if d.link is not None and getattr(self.line_io, d.link) is None]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def diverter_link(self, diverter: DiverterConfig) -> Literal["serial", "mqtt"]:
        """The link a diverter's commands go over."""
        if diverter.link is not None:
            return diverter.link
        return self.line_io.diverters if self.line_io is not None else "serial"

    @property
    def read_zone_end_mm(self) -> float:
        return max(c.view_end_mm for c in self.cameras)

    def diverter_for_bin(self, bin_id: str) -> DiverterConfig:
        return next(d for d in self.diverters if d.bin == bin_id)

    def bin(self, bin_id: str) -> BinConfig:
        return next(b for b in self.bins if b.id == bin_id)


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _reason(err: Any) -> str:
    """Pydantic's message, but naming a NaN or an infinity as what it is."""
    if err["type"] != "finite_number":
        return str(err["msg"])
    try:
        value = float(err["input"])
    except (TypeError, ValueError):
        return str(err["msg"])
    return "NaN is not a number" if math.isnan(value) else f"{value} is not a finite number"


def parse_config(data: dict[str, Any], source: str = "<config>") -> LineConfig:
    """Validate a config mapping; raise ConfigError naming every bad field."""
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [(_field_path(err["loc"]), _reason(err)) for err in exc.errors()]
        raise ConfigError(source, problems) from None


def load_config(path: str | Path) -> LineConfig:
    """Read and validate a line config TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [("(file)", "no such file")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [("(syntax)", str(exc))]) from None
    config = parse_config(data, str(path))
    base = path.parent
    archive = config.archive.path
    line_io = config.line_io
    if line_io is not None and line_io.mqtt is not None and line_io.mqtt.password_file:
        line_io = line_io.model_copy(update={"mqtt": line_io.mqtt.model_copy(update={
            "password_file": str(_resolve(base, line_io.mqtt.password_file))})})
    return config.model_copy(update={
        "line_io": line_io,
        "order_store": config.order_store.model_copy(
            update={"path": str(_resolve(base, config.order_store.path))}),
        "journal": config.journal.model_copy(
            update={"path": str(_resolve(base, config.journal.path))}),
        "archive": config.archive.model_copy(
            update={"path": str(_resolve(base, archive)) if archive else None}),
    })


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() or value == ":memory:" else (base / p)
