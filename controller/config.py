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
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from controller.config_base import Identifier, PositiveFloat, Strict
from controller.config_checks import line_problems
from controller.config_io import DiagnosticsConfig as DiagnosticsConfig  # noqa: PLC0414
from controller.config_io import LineIOConfig as LineIOConfig  # noqa: PLC0414 - re-exported
from controller.config_io import MetricsConfig as MetricsConfig  # noqa: PLC0414 - re-exported
from controller.config_io import MqttBrokerConfig as MqttBrokerConfig  # noqa: PLC0414
from controller.config_io import MqttLinkConfig as MqttLinkConfig  # noqa: PLC0414 - re-exported
from controller.config_io import MqttTlsConfig as MqttTlsConfig  # noqa: PLC0414
from controller.config_io import (
    SerialLinkConfig as SerialLinkConfig,  # noqa: PLC0414 - re-exported
)
from controller.config_line_end import EndOfLineConfig as EndOfLineConfig  # noqa: PLC0414
from controller.config_plan import ORDER_STATUSES as ORDER_STATUSES  # noqa: PLC0414
from controller.config_plan import Destination as Destination  # noqa: PLC0414 - re-exported
from controller.config_plan import RuleField as RuleField  # noqa: PLC0414 - re-exported
from controller.config_plan import SizeClass as SizeClass  # noqa: PLC0414 - re-exported
from controller.config_plan import SortPlanConfig as SortPlanConfig  # noqa: PLC0414
from controller.config_plan import SortRule as SortRule  # noqa: PLC0414 - re-exported
from controller.errors import ConfigError

B = TypeVar("B", bound=MqttBrokerConfig)


class LineInfo(Strict):
    name: Identifier = "line1"


class BeltConfig(Strict):
    speed_mm_s: PositiveFloat = Field(description="nominal (and maximum) belt speed")
    encoder_counts_per_mm: PositiveFloat = 1.0
    width_mm: PositiveFloat = 600.0


class InductionConfig(Strict):
    photo_eye_mm: float = 0.0
    min_gap_mm: Annotated[float, Field(ge=0)] = Field(default=0.0, description=(
        "the least gap (trailing edge to the next leading edge) at which a diverter pushes "
        "one parcel and not its neighbour; both parcels of a pair closer than this are not "
        "diverted (TOO_CLOSE). 0: not checked"))
    min_pitch_mm: Annotated[float, Field(ge=0)] = Field(default=0.0, description=(
        "the same for the pitch (leading edge to the next leading edge). 0: not checked"))


class CameraConfig(Strict):
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
    credentials_file: str | None = Field(
        default=None, description="mjpeg+http(s) sources: a file holding user:password")
    credentials_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="mjpeg+http(s) sources: an environment variable holding user:password")
    ca_file: str | None = Field(
        default=None, description="mjpeg+https sources: the CA (or the camera's own "
                                  "certificate) to verify it by; default: the system's CAs")
    tls_verify: bool = Field(default=True, description="mjpeg+https sources: verify the "
                                                       "camera's certificate and name")

    @field_validator("source")
    @classmethod
    def _no_secret_in_source(cls, source: str) -> str:
        _, sep, rest = source.strip().partition("://")
        if sep and "@" in rest.partition("/")[0]:
            raise ValueError("a camera URL must not hold a user or password (the config is "
                             "no place for secrets): put user:password in the file "
                             "credentials_file names, or the variable credentials_env names")
        return source

    @model_validator(mode="after")
    def _login_and_tls_fit_the_source(self) -> CameraConfig:
        source = self.source.strip()
        mjpeg = source.startswith(("mjpeg+http://", "mjpeg+https://"))
        if self.credentials_file is not None and self.credentials_env is not None:
            raise ValueError("give credentials_file or credentials_env, not both")
        for name in ("credentials_file", "credentials_env", "ca_file"):
            if getattr(self, name) is not None and not mjpeg:
                raise ValueError(f"{name} is only used by mjpeg+http:// and mjpeg+https:// "
                                 "sources")
        if self.ca_file is not None and not source.startswith("mjpeg+https://"):
            raise ValueError("ca_file needs an mjpeg+https:// source")
        return self

    @property
    def mm_per_px(self) -> float:
        return self.fov_mm / self.resolution[0]

    @property
    def view_start_mm(self) -> float:
        return self.position_mm - self.fov_mm / 2

    @property
    def view_end_mm(self) -> float:
        return self.position_mm + self.fov_mm / 2


class DiverterConfig(Strict):
    id: Identifier
    position_mm: float
    bin: Identifier
    actuation_ms: Annotated[float, Field(ge=0, le=5000)] = 100.0
    pulse_ms: Annotated[float, Field(gt=0, le=5000)] = 150.0
    window_mm: PositiveFloat = Field(
        default=160.0, description=(
            "the span the arm pushes: a parcel is pushed if its centre is within half of it of "
            "the arm's centre when it fires; the controller does not fire when a neighbour's "
            "is that close, give or take two encoder counts (TOO_CLOSE)")
    )
    link: Literal["serial", "mqtt"] | None = Field(
        default=None, description="the link its commands go over (default: line_io.diverters)")


class BinConfig(Strict):
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


class OrderStoreConfig(Strict):
    """Where the line's orders are: an SQLite file beside it (``path``), or a PostgreSQL
    database several lines share (``dsn``, e.g. ``postgresql://sorter@db.local:5432/orders``,
    its password in ``password_file``, never in the config)."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: str = "var/orders.sqlite"
    dsn: str | None = None
    password_file: str | None = None
    timeout_ms: PositiveFloat = 200.0
    cache_size: Annotated[int, Field(ge=0)] = 100_000
    poll_ms: PositiveFloat = Field(default=1000.0, description=(
        "sqlite: how often the line's cache reads the book's change log"))

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> OrderStoreConfig:
        if self.backend == "postgresql" and not self.dsn:
            raise ValueError("backend = 'postgresql' needs a dsn")
        if self.dsn is not None and not self.dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"dsn must be a postgresql:// URL, not {self.dsn!r}")
        if self.dsn is not None and urlsplit(self.dsn).password is not None:
            raise ValueError("dsn must not hold a password: use password_file")
        return self


class JournalConfig(Strict):
    path: str = "var/journal.sqlite"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class LabelType(Strict):
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


class ArchiveConfig(Strict):
    """Where the frames of NO_READ and MULTI_READ parcels are kept for keying by hand."""

    path: str | None = Field(default=None, description="none: no archive")
    max_parcels: Annotated[int, Field(ge=1)] = 1000
    max_mb: PositiveFloat = Field(default=500.0, description="MiB")
    frames_per_parcel: Annotated[int, Field(ge=1, le=20)] = 3


class DecisionConfig(Strict):
    label_types: list[LabelType] = Field(default_factory=lambda: [SHIPMENT_LABEL], min_length=1)
    min_agreeing_reads: Annotated[int, Field(ge=1, le=10)] = 2
    margin_mm: Annotated[float, Field(ge=0)] = 50.0
    assign_tolerance_mm: Annotated[float, Field(ge=0)] = 15.0
    frame_wait_ms: PositiveFloat = Field(
        default=5000.0,
        description="how long a parcel's reads wait for a lagging camera after the read zone")


class LineConfig(Strict):
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
    metrics: MetricsConfig = MetricsConfig()
    diagnostics: DiagnosticsConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LineConfig:
        problems = line_problems(self)
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

    @property
    def symbologies(self) -> tuple[str, ...]:
        """What the decoders look for: every symbology the label types name, in order.

        Empty when a label type names none (it takes any): then every one a decoder reads.
        """
        types = self.decision.label_types
        if any(not t.symbologies for t in types):
            return ()
        return tuple(dict.fromkeys(s.strip().lower() for t in types for s in t.symbologies))

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
    inline = data.get("sort_plan")
    if isinstance(inline, dict) and isinstance(plan_file := inline.get("file"), str):
        if len(inline) > 1:
            raise ConfigError(str(path), [("sort_plan", "a plan read from a file has nothing "
                                           "else here: " + ", ".join(sorted(inline)))])
        data = {**data, "sort_plan": {**read_plan_file(_resolve(path.parent, plan_file)),
                                      "file": plan_file}}
    config = parse_config(data, str(path))
    base = path.parent
    archive = config.archive.path
    line_io = config.line_io
    if line_io is not None and line_io.mqtt is not None:
        line_io = line_io.model_copy(update={"mqtt": _broker_paths(base, line_io.mqtt)})
    diagnostics = (_broker_paths(base, config.diagnostics) if config.diagnostics is not None
                   else None)
    cameras = [c.model_copy(update={
        "credentials_file": str(_resolve(base, c.credentials_file)) if c.credentials_file
        else None,
        "ca_file": str(_resolve(base, c.ca_file)) if c.ca_file else None})
        for c in config.cameras]
    return config.model_copy(update={
        "line_io": line_io,
        "diagnostics": diagnostics,
        "cameras": cameras,
        "order_store": config.order_store.model_copy(update={
            "path": str(_resolve(base, config.order_store.path)),
            "password_file": str(_resolve(base, config.order_store.password_file))
            if config.order_store.password_file else None}),
        "journal": config.journal.model_copy(
            update={"path": str(_resolve(base, config.journal.path))}),
        "archive": config.archive.model_copy(
            update={"path": str(_resolve(base, archive)) if archive else None}),
    })


def read_plan_file(path: Path) -> dict[str, Any]:
    """A plan file's table: its ``[sort_plan]`` if it has one, else its top level."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [("(file)", "no such plan file")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [("(syntax)", str(exc))]) from None
    plan = data.get("sort_plan", data)
    if not isinstance(plan, dict) or "file" in plan:
        raise ConfigError(str(path), [("sort_plan", "a plan file holds a plan, not a file")])
    return plan


def _broker_paths(base: Path, broker: B) -> B:
    """A broker section with its password and TLS files resolved beside the config."""
    update: dict[str, Any] = {}
    if broker.password_file:
        update["password_file"] = str(_resolve(base, broker.password_file))
    if broker.tls is not None:
        update["tls"] = broker.tls.model_copy(update={
            name: str(_resolve(base, value)) for name in ("ca_file", "certfile", "keyfile")
            if (value := getattr(broker.tls, name)) is not None})
    return broker.model_copy(update=update) if update else broker


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() or value == ":memory:" else (base / p)
