"""The technicians' MQTT connection: diagnostics out, commands in (docs/diagnostics-protocol.md).

:class:`MqttDiagnostics` is the :class:`~controller.diagnostics.DiagnosticsSink` the
controller publishes through. ``publish`` only queues: a bounded queue of messages (the
oldest non-retained one dropped and counted when it is full) and the latest value of each
retained topic. One task (``diagnostics[mqtt]``) owns the connection, MQTT 5 with the Will
``status`` offline, reconnecting forever with backoff: on every connect it subscribes to
``cmd/+``, marks every retained topic to be sent again, publishes ``devices/broker`` (this
connection: up, with its drops and reconnects), calls ``on_connect`` (the Diagnostics'
rebirth), and a writer drains the queue while the connection lasts. Each
command runs in a task of its own (a few at most), so a slow one never holds publishing up;
its reply goes to ``cmd/<verb>/response`` and to an MQTT 5 Response Topic under
``<prefix>/<line>/replies/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.config import DiagnosticsConfig
from controller.diagnostics import wall_time
from drivers.backoff import Backoff
from drivers.lineio.aiomqtt_fast import NODELAY, end_misc_loop
from drivers.lineio.tasks import cancel_and_wait
from drivers.mqtt_client import login

__all__ = ["DEVICE", "DiagnosticsStats", "MqttDiagnostics"]

log = logging.getLogger(__name__)

DEVICE = "diagnostics"
CALL_TIMEOUT_S = 2.0  # CONNACK, SUBACK, a PUBACK, a clean DISCONNECT
FLUSH_S = 1.0  # at a clean close: how long the queue may take to go out
COMMANDS_IN_FLIGHT = 4
COMMAND_BACKLOG = 100  # requests received, waiting for a place; beyond, aiomqtt drops them
COMMAND_TIMEOUT_S = 30.0

OnCommand = Callable[[str, bytes], Awaitable[Mapping[str, Any]]]


@dataclass
class DiagnosticsStats:
    published: int = 0
    dropped: int = 0
    commands: int = 0
    command_errors: int = 0  # handlers that raised or timed out (answered with an error)
    ignored: int = 0  # retained (stale) requests not carried out
    connects: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class _Outgoing:
    topic: str  # full topic
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, aiomqtt.MqttError) else f"{type(exc).__name__}: {text}"


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


class MqttDiagnostics:
    """Diagnostics to, and commands from, the broker ``config`` names. An async context
    manager: connected (and reconnecting) while the block runs."""

    def __init__(self, config: DiagnosticsConfig, *, line: str, on_command: OnCommand,
                 on_connect: Callable[[], object], backoff: Backoff | None = None,
                 version: str | None = None) -> None:
        self.config = config
        self.line = line
        self.base = f"{config.topic_prefix}/{line}"
        self.replies = f"{self.base}/replies/"
        self.client_id = config.client_id or f"parcel-sorter-{line}-diag"
        self.version = version
        self.stats = DiagnosticsStats()
        self.state = "connecting"
        self._login = login(config, DEVICE)
        self._on_command = on_command
        self._on_connect = on_connect
        self._backoff = backoff or Backoff(0.1, config.reconnect_max_s)
        self._pending: deque[_Outgoing] = deque()
        self._retained: dict[str, _Outgoing] = {}
        self._unsent_retained: dict[str, None] = {}  # retained topics to send (in order)
        self._work = asyncio.Event()
        self._drained = asyncio.Event()
        self._up = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[None]] = set()
        self._command_slots = asyncio.Semaphore(COMMANDS_IN_FLIGHT)
        self._closing = False

    # --- DiagnosticsSink -------------------------------------------------------------------

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False,
                qos: int = 1) -> None:
        """Queue a message to ``<prefix>/<line>/<topic>``; never blocks."""
        self._queue(_Outgoing(f"{self.base}/{topic}", _encode(payload), qos, retain))

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    @property
    def queued(self) -> int:
        return len(self._pending) + len(self._unsent_retained)

    def _queue(self, message: _Outgoing) -> None:
        if message.retain:
            if message.topic not in self._unsent_retained \
                    and self.queued >= self.config.queue_limit and self._pending:
                self._pending.popleft()
                self.stats.dropped += 1
            self._retained[message.topic] = message
            self._unsent_retained[message.topic] = None
        else:
            if self.queued >= self.config.queue_limit:
                if not self._pending:  # every place holds a retained topic's latest value
                    self.stats.dropped += 1
                    return
                self._pending.popleft()
                self.stats.dropped += 1
            self._pending.append(message)
        self._drained.clear()
        self._work.set()

    # --- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> MqttDiagnostics:
        if self._task is not None:
            raise RuntimeError("MqttDiagnostics is already running")
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="diagnostics[mqtt]")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def wait_up(self, within_s: float) -> None:
        """Wait until connected and subscribed; TimeoutError otherwise."""
        async with asyncio.timeout(within_s):
            await self._up.wait()

    async def aclose(self) -> None:
        """Let the queue go out (briefly), publish status offline ("stopped"), disconnect."""
        if self._commands:
            await cancel_and_wait(list(self._commands), CALL_TIMEOUT_S)
        client = self._client
        if client is not None and self.state == "up":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_S):
                    await self._drained.wait()
        self._closing = True
        if client is not None and self._client is client:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(f"{self.base}/status", self._offline("stopped"), qos=1,
                                     retain=True, timeout=CALL_TIMEOUT_S)
        task, self._task = self._task, None
        if task is not None and not await cancel_and_wait([task], CALL_TIMEOUT_S + 3.0):
            log.warning("diagnostics: the connection task did not stop in time")
        self._client = None
        self._up.clear()
        self.state = "closed"

    def _offline(self, reason: str) -> bytes:
        payload: dict[str, Any] = {"state": "offline", "reason": reason, "since": wall_time(),
                                   "line": self.line}
        if self.version is not None:
            payload["version"] = self.version
        return _encode(payload)

    # --- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                reason = await self._connection()
            except (aiomqtt.MqttError, OSError) as exc:
                reason = _describe(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the connection: report, reconnect
                log.exception("diagnostics %s: unexpected error", self._login.where)
                reason = f"unexpected {_describe(exc)}"
            self._up.clear()
            if self._closing:
                return
            if self.state == "up":
                log.warning("diagnostics %s: %s; reconnecting", self._login.where, reason)
            self.state = "down"
            self.stats.last_error = reason
            await asyncio.sleep(self._backoff.next_delay())

    def _new_client(self) -> aiomqtt.Client:
        who = self._login
        return aiomqtt.Client(
            who.hostname, who.port, username=who.username, password=who.password,
            identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.config.keepalive_s, timeout=CALL_TIMEOUT_S,
            tls_context=who.tls_context, socket_options=NODELAY,
            max_queued_incoming_messages=COMMAND_BACKLOG,
            will=aiomqtt.Will(f"{self.base}/status", self._offline("connection lost"), qos=1,
                              retain=True),
            logger=log.getChild("client"))

    async def _connection(self) -> str:
        entered = False
        client = self._new_client()
        try:
            async with client:
                entered = True
                return await self._connected(client)
        except aiomqtt.MqttError as exc:
            return (f"connection lost: {_describe(exc)}" if entered
                    else f"cannot connect: {_describe(exc)}")
        finally:
            await end_misc_loop(client)

    async def _connected(self, client: aiomqtt.Client) -> str:
        await client.subscribe(f"{self.base}/cmd/+", qos=1)
        self._client = client
        self.state = "up"
        self.stats.connects += 1
        self._backoff.reset()
        self._unsent_retained = dict.fromkeys(self._retained)
        self.publish("devices/broker", {
            "id": "broker", "kind": "broker", "state": "up", "last_seen": wall_time(),
            "errors": {"dropped": self.stats.dropped,
                       "reconnects": self.stats.connects - 1}}, retain=True)
        try:
            self._on_connect()
        except Exception:  # the rebirth's bug must not stop the connection
            log.exception("diagnostics: on_connect failed")
        log.info("diagnostics on %s as %s", self._login.where, self.client_id)
        self._up.set()
        writer = asyncio.create_task(self._write(client), name="diagnostics[mqtt].writer")
        try:
            async for message in client.messages:
                await self._received(message)
                if writer.done():
                    break
        finally:
            self._client = None
            await cancel_and_wait([writer])
            if not writer.cancelled():
                writer.exception()  # retrieved: it is the reason returned below
        error = writer.exception() if not writer.cancelled() else None
        return f"connection lost: {_describe(error)}" if error else "connection ended"

    async def _write(self, client: aiomqtt.Client) -> None:
        while self._client is client and not self._closing:  # closing: "stopped" is the last
            message = self._next()
            if message is None:
                self._drained.set()
                self._work.clear()
                await self._work.wait()
                continue
            try:
                await client.publish(message.topic, message.payload, qos=message.qos,
                                     retain=message.retain, properties=message.properties,
                                     timeout=CALL_TIMEOUT_S)
            except (aiomqtt.MqttError, TimeoutError):
                self._put_back(message)
                raise
            self.stats.published += 1

    def _next(self) -> _Outgoing | None:
        if self._unsent_retained:
            topic = next(iter(self._unsent_retained))
            del self._unsent_retained[topic]
            return self._retained[topic]
        return self._pending.popleft() if self._pending else None

    def _put_back(self, message: _Outgoing) -> None:
        """A message the connection dropped: sent again after the reconnect."""
        if message.retain:
            if self._retained.get(message.topic) is message:
                self._unsent_retained[message.topic] = None
        else:
            self._pending.appendleft(message)

    # --- commands --------------------------------------------------------------------------

    async def _received(self, message: aiomqtt.Message) -> None:
        if message.retain:  # a stale request the broker kept: never carried out
            self.stats.ignored += 1
            return
        topic = message.topic.value
        verb = topic.rsplit("/", 1)[-1]
        payload = message.payload if isinstance(message.payload, bytes) \
            else str(message.payload or "").encode()
        reply_to, correlation = self._reply_topic(message.properties)
        await self._command_slots.acquire()
        task = asyncio.create_task(self._command(verb, payload, reply_to, correlation),
                                   name=f"diagnostics[mqtt].cmd[{verb[:32]}]")
        self._commands.add(task)
        task.add_done_callback(self._command_done)

    def _command_done(self, task: asyncio.Task[None]) -> None:
        self._commands.discard(task)
        self._command_slots.release()

    def _reply_topic(self, properties: Properties | None) -> tuple[str | None, bytes | None]:
        """The request's MQTT 5 Response Topic if it may be answered on, and its data."""
        topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        if not isinstance(topic, str) or not topic.startswith(self.replies) \
                or len(topic) == len(self.replies) or "+" in topic or "#" in topic:
            return None, None
        return topic, correlation if isinstance(correlation, bytes) else None

    async def _command(self, verb: str, payload: bytes, reply_to: str | None,
                       correlation: bytes | None) -> None:
        self.stats.commands += 1
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                reply: Mapping[str, Any] = await self._on_command(verb, payload)
        except TimeoutError:
            self.stats.command_errors += 1
            reply = self._failed(verb, f"no answer within {COMMAND_TIMEOUT_S:g} s")
        except Exception as exc:  # a handler's bug still gets an answer
            log.exception("diagnostics: command %r failed", verb[:64])
            self.stats.command_errors += 1
            reply = self._failed(verb, f"internal error: {_describe(exc)}")
        body = _encode(reply)
        self._queue(_Outgoing(f"{self.base}/cmd/{verb}/response", body, 1, False))
        if reply_to is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation is not None:
                properties.CorrelationData = correlation
            self._queue(_Outgoing(reply_to, body, 1, False, properties))

    @staticmethod
    def _failed(verb: str, error: str) -> dict[str, Any]:
        return {"transaction": None, "verb": verb, "status": "error", "data": None,
                "error": error}
