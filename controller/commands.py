"""The command desk: a technician's request bytes in, the reply object out (sans-MQTT).

Each verb of docs/diagnostics-protocol.md ("Commands") has a request model; a request that is
too big, not a JSON object, names an unknown verb or field, or has a bad value is answered
with an error and nothing is carried out. A request that reaches its verb is carried out (or
refused by the line's state) and written to the journal's audit trail. :meth:`CommandDesk.handle`
never raises, whatever the bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from controller.clock import Clock
from controller.config import SortPlanConfig, load_config
from controller.errors import ConfigError, DriverError
from controller.journal import MAX_PARCEL_ID, AuditRecord
from controller.lineio import DivertReply
from controller.message_log import LoggedMessage
from controller.operating import LineState, ModeRefused, NoSuchDevice

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
MAX_TEXT = 64


class CommandRefused(ValueError):
    """A request that reached its verb, which could not carry it out; the message says why."""


def _short(value: str | int) -> str | int:
    if len(str(value)) > MAX_TEXT:
        raise ValueError(f"at most {MAX_TEXT} characters")
    return value


Transaction = Annotated[StrictStr | StrictInt, AfterValidator(_short)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT)]


class Request(BaseModel):
    """What every request may carry: a transaction to pair the reply, and who sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction: Transaction | None = None
    by: Annotated[StrictStr, Field(max_length=MAX_TEXT)] | None = None


class PauseRequest(Request):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None


class MaintenanceRequest(Request):
    on: StrictBool


class TestFireRequest(Request):
    __test__ = False  # not a pytest class

    diverter: Name
    pulse_ms: Annotated[float, Field(gt=0, le=5000, allow_inf_nan=False, strict=True)] | None \
        = None


class BinEmptiedRequest(Request):
    bin: Name


class TraceRequest(Request):
    parcel: Annotated[StrictInt, Field(ge=1, le=MAX_PARCEL_ID)] | None = None
    code: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TraceRequest:
        if (self.parcel is None) == (self.code is None):
            raise ValueError("give either parcel or code")
        return self


REQUESTS: dict[str, type[Request]] = {
    "pause": PauseRequest, "resume": Request, "maintenance": MaintenanceRequest,
    "test-fire": TestFireRequest, "bin-emptied": BinEmptiedRequest, "reload-plan": Request,
    "trace": TraceRequest, "rebirth": Request,
}
VERBS = tuple(REQUESTS)


class AuditJournal(Protocol):
    async def audit(self, record: AuditRecord) -> None: ...

    async def find_parcel(self, parcel_id: int | None = None,
                          code: str | None = None) -> dict[str, Any] | None: ...


class ParcelMessages(Protocol):
    def for_parcel(self, parcel_id: int) -> list[LoggedMessage]: ...


class CommandedLine(Protocol):
    """What the desk needs of the Sorter."""

    @property
    def journal(self) -> AuditJournal: ...

    @property
    def messages(self) -> ParcelMessages: ...

    def pause(self, reason: str | None = None) -> LineState: ...

    def resume(self) -> LineState: ...

    def set_maintenance(self, on: bool) -> LineState: ...

    async def test_fire(self, diverter_id: str, pulse_ms: float | None = None) -> DivertReply: ...

    def bin_emptied(self, bin_id: str) -> int: ...

    def replace_plan(self, plan: SortPlanConfig) -> int: ...


@dataclass
class DeskStats:
    """Requests carried out, refused at their verb (both audited), and malformed (not)."""

    accepted: int = 0
    refused: int = 0
    malformed: int = 0
    audit_errors: int = 0


def iso_utc(moment: datetime) -> str:
    """``2026-12-02T04:05:06.789Z``: the wall-clock form of every time the controller shows."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WallClock:
    """Clock times as wall-clock times, by the offset between the two when it was made.

    One offset for all: the times it shows keep their order and spacing (a virtual clock's
    too), and the same clock time always shows the same.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock_at, self._wall_at = clock.now(), datetime.now(UTC)

    def __call__(self, at: float) -> str:
        return iso_utc(self._wall_at + timedelta(seconds=at - self._clock_at))


class Malformed(ValueError):
    """A request that never reached its verb."""


Handler = Callable[[Any], Awaitable[dict[str, object]]]


class CommandDesk:
    """Carries out technicians' commands on a line and answers each with one reply object."""

    def __init__(self, sorter: CommandedLine, *, config_path: Path | None, clock: Clock,
                 rebirth: Callable[[], int] | None = None) -> None:
        self._sorter = sorter
        self._config_path = config_path
        self._clock = clock
        self._rebirth = rebirth
        self._wall = WallClock(clock)
        self.stats = DeskStats()
        self._handlers: dict[str, Handler] = {
            "pause": self._pause, "resume": self._resume, "maintenance": self._maintenance,
            "test-fire": self._test_fire, "bin-emptied": self._bin_emptied,
            "reload-plan": self._reload_plan, "trace": self._trace, "rebirth": self._rebirth_now,
        }

    async def handle(self, verb: str, payload: bytes | bytearray) -> dict[str, object]:
        """The reply to one request: ``transaction``, ``verb``, ``status``, ``data``, ``error``."""
        transaction: str | int | None = None
        try:
            obj = _parse(payload)
            transaction = _transaction_of(obj)
            request = _request(verb, obj)
        except Malformed as exc:
            self.stats.malformed += 1
            return _reply(transaction, verb, error=str(exc))
        except Exception as exc:  # not bytes, or a bug in reading it: still just an error
            self.stats.malformed += 1
            return _reply(transaction, str(verb), error=f"request not readable: "
                                                        f"{type(exc).__name__}")
        try:
            data = await self._handlers[verb](request)
        except (ModeRefused, NoSuchDevice, CommandRefused, DriverError) as exc:
            self.stats.refused += 1
            reply = _reply(transaction, verb, error=str(exc))
        except ConfigError as exc:
            self.stats.refused += 1
            problems = "; ".join(f"{path}: {why}" for path, why in exc.problems)
            reply = _reply(transaction, verb, error=f"plan refused: {problems}")
        except Exception as exc:  # a bug: answered and logged, never the caller's crash
            log.exception("command %s failed", verb)
            self.stats.refused += 1
            reply = _reply(transaction, verb, error=f"failed: {type(exc).__name__}: {exc}")
        else:
            self.stats.accepted += 1
            reply = _reply(transaction, verb, data=data)
        await self._audit(verb, request, reply)
        return reply

    async def _audit(self, verb: str, request: Request, reply: dict[str, object]) -> None:
        ok = reply["status"] == "ok"
        record = AuditRecord(
            at=self._clock.now(), wall=iso_utc(datetime.now(UTC)), who=request.by or "unknown",
            verb=verb, args=request.model_dump(exclude={"by"}), status=str(reply["status"]),
            result=reply["data"] if ok else reply["error"])
        try:
            await self._sorter.journal.audit(record)
        except Exception as exc:  # JournalError, or a journal already closed
            self.stats.audit_errors += 1
            log.warning("command %s not audited: %s", verb, exc)

    # --- the verbs -------------------------------------------------------------------------

    async def _pause(self, request: PauseRequest) -> dict[str, object]:
        return {"state": self._sorter.pause(request.reason).value}

    async def _resume(self, request: Request) -> dict[str, object]:
        return {"state": self._sorter.resume().value}

    async def _maintenance(self, request: MaintenanceRequest) -> dict[str, object]:
        return {"state": self._sorter.set_maintenance(request.on).value}

    async def _test_fire(self, request: TestFireRequest) -> dict[str, object]:
        reply = await self._sorter.test_fire(request.diverter, request.pulse_ms)
        data: dict[str, object] = {"diverter": request.diverter, "accepted": reply.accepted}
        if not reply.accepted:
            data["reason"] = reply.reason
        return data

    async def _bin_emptied(self, request: BinEmptiedRequest) -> dict[str, object]:
        return {"bin": request.bin, "was": self._sorter.bin_emptied(request.bin)}

    async def _reload_plan(self, request: Request) -> dict[str, object]:
        if self._config_path is None:
            raise CommandRefused("no config file to reload the plan from (the line was not "
                                 "started from one)")
        plan = load_config(self._config_path).sort_plan
        return {"rules": self._sorter.replace_plan(plan)}

    async def _trace(self, request: TraceRequest) -> dict[str, object]:
        record = await self._sorter.journal.find_parcel(request.parcel, request.code)
        if record is None:
            raise CommandRefused(f"no parcel {request.parcel} in the journal"
                                 if request.parcel is not None
                                 else f"no parcel with code {request.code!r} in the journal")
        return trace_data(record, self._sorter.messages.for_parcel(int(record["parcel_id"])),
                          self._wall)

    async def _rebirth_now(self, request: Request) -> dict[str, object]:
        if self._rebirth is None:
            raise CommandRefused("rebirth needs the diagnostics connection, and there is none")
        return {"republished": self._rebirth()}


def trace_data(record: Mapping[str, Any], messages: list[LoggedMessage],
               wall: Callable[[float], str]) -> dict[str, object]:
    """A parcel's journal record and its line I/O messages, as ``trace`` answers them."""
    def when(at: object) -> str | None:
        return wall(float(at)) if isinstance(at, int | float) else None

    return {
        "parcel": record["parcel_id"], "code": record["code"], "order": record["order_id"],
        "disposition": record["disposition"], "bin": record["bin"], "reason": record["reason"],
        "inducted_at": when(record["inducted_at"]), "final_at": when(record["final_at"]),
        "messages": [_message(m, wall) for m in messages],
    }


def _message(message: LoggedMessage, wall: Callable[[float], str]) -> dict[str, object]:
    shown: dict[str, object] = {"at": wall(message.at),
                                "direction": message.direction, "link": message.link,
                                "kind": message.kind, "detail": dict(message.detail)}
    if message.latency_s is not None:
        shown["latency_ms"] = round(message.latency_s * 1000, 3)
    return shown


def _reply(transaction: str | int | None, verb: str, *, data: dict[str, object] | None = None,
           error: str | None = None) -> dict[str, object]:
    return {"transaction": transaction, "verb": verb, "status": "ok" if error is None else "error",
            "data": data if error is None else None, "error": error}


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(payload: bytes | bytearray) -> dict[str, Any]:
    if len(payload) > MAX_REQUEST_BYTES:
        raise Malformed(f"request too big: {len(payload)} bytes (at most {MAX_REQUEST_BYTES})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(f"request is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant) if text.strip() else None
    except (ValueError, RecursionError) as exc:
        raise Malformed(f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        what = _JSON_TYPES.get(type(obj), "nothing") if text.strip() else "nothing"
        raise Malformed(f"request must be a JSON object, not {what}")
    return obj


def _transaction_of(obj: Mapping[str, Any]) -> str | int | None:
    """The request's transaction if it is a valid one, even when the rest is not."""
    value = obj.get("transaction")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value if len(str(value)) <= MAX_TEXT else None


def _request(verb: str, obj: dict[str, Any]) -> Request:
    model = REQUESTS.get(verb)
    if model is None:
        raise Malformed(f"unknown verb {verb!r} (known: {', '.join(VERBS)})")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise Malformed("; ".join(_problem(err) for err in exc.errors())) from None


def _problem(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "request"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"
