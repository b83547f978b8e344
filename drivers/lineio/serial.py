"""The line's I/O board on a serial port, spoken to in the protocol of docs/serial-protocol.md.

One task owns the port: it opens it (through the ``open_transport`` seam of
:mod:`drivers.lineio.port`: by default pyserial-asyncio-fast, exclusively), says HELLO,
keeps heartbeats and resends going, and on any loss (unplugged adapter, silent board,
resends exhausted) closes it and opens it again with backoff and jitter, for as long as the
driver lives. The reliable delivery itself (sequence numbers, ACK/NAK, go-back-N, resync)
is the sans-I/O :class:`~drivers.lineio.link.LinkSession`; what a resync means for the
held diverts is decided in :mod:`drivers.lineio.resync` and carried out, with the
command-to-wire conversion, in :mod:`drivers.lineio.serial_board`; this module only moves
their bytes and keeps the link state.

Encoder updates travel in order with the events (:mod:`drivers.lineio.serial_events`):
:meth:`SerialLineIO.encoder` never runs ahead of the events the controller has taken, so
after a reconnect the belt position does not jump past parcels whose buffered photo-eye
edges are still on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from controller.clock import Clock
from controller.config import SerialLinkConfig
from controller.errors import DriverTimeout, DriverUnavailable, LinkDown
from controller.lineio import (
    BinEntry,
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    LineEvent,
    LinkState,
    PhotoEyeEdge,
)
from drivers.backoff import Backoff
from drivers.lineio import wire
from drivers.lineio.held import HeldDiverts
from drivers.lineio.link import LinkSession
from drivers.lineio.port import OpenTransport, PortProtocol, open_serial_port
from drivers.lineio.replies import PendingReplies
from drivers.lineio.serial_board import DEVICE, BoardResync, divert_message
from drivers.lineio.serial_events import BoardEvents
from drivers.lineio.serial_stats import SerialStats

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 1.0
SILENT_HEARTBEATS = 3  # board heartbeats missed before the link counts as lost
ACK_DELAY_S = 0.002  # well inside the board's ACK timeout (docs/serial-protocol.md, §4)


class SerialLineIO:
    """:class:`~controller.lineio.LineIO` over the I/O board's serial link."""

    def __init__(self, config: SerialLinkConfig, *, clock: Clock,
                 diverters: Sequence[str] | None = None, session: int | None = None,
                 backoff: Backoff | None = None,
                 open_transport: OpenTransport | None = None) -> None:
        self.config = config
        self.clock = clock
        self.stats = SerialStats()
        self._diverters = None if diverters is None else frozenset(diverters)
        self._session = LinkSession(
            "controller", session=session if session is not None else random.getrandbits(32),
            ack_timeout_s=config.ack_timeout_ms / 1000, max_resends=config.max_resends)
        # Jitter drawn from the session id: a controller's reconnects are reproducible.
        self._backoff = backoff or Backoff(0.05, config.reconnect_max_s,
                                           rng=random.Random(self._session.session))
        self._open: OpenTransport = open_transport or functools.partial(open_serial_port, config)
        self._protocol: PortProtocol | None = None  # the open port's, to tell stale losses
        self._state = LinkState.CONNECTING
        self._transport: asyncio.Transport | None = None
        self._closed = asyncio.Event()
        self._synced = asyncio.Event()
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self._events = BoardEvents()
        self._replies: PendingReplies[wire.DivertAnswer] = PendingReplies(
            config.reply_timeout_ms / 1000)
        # Accepted diverts not yet due: what the board should hold, to restore after a resync.
        self._scheduled = HeldDiverts()
        self._resync = BoardResync(port=config.port, stats=self.stats, events=self._events,
                                   held=self._scheduled, replies=self._replies,
                                   send=self._send)
        self._last_rx = 0.0
        self._sleeping_until = 0.0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> SerialLineIO:
        self._task = asyncio.create_task(self._run(), name="lineio[serial]")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: no more heartbeats, so the board falls back to its fail-safe."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop_port()
        self._replies.close()
        self._replies.fail_all(lambda: LinkDown(DEVICE, "driver closed"))

    async def wait_up(self, within_s: float) -> None:
        """Wait until the board has answered HELLO."""
        try:
            async with asyncio.timeout(within_s):
                await self._up.wait()
        except TimeoutError:
            why = f" ({self.stats.last_error})" if self.stats.last_error else ""
            raise DriverTimeout(DEVICE, f"no answer from {self.config.port} within "
                                        f"{within_s:g} s{why}") from None

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def link_stats(self) -> Any:
        """The link layer's counters (frames, resends, NAKs, duplicates)."""
        return self._session.stats

    # --- LineIO ----------------------------------------------------------------------------

    def encoder(self) -> int:
        return self._events.encoder()

    def events(self) -> AsyncIterator[LineEvent]:
        return self._events.events()

    async def divert(self, command: DivertCommand) -> DivertReply:
        if self._diverters is not None and command.diverter_id not in self._diverters:
            raise LinkDown(DEVICE, f"diverter {command.diverter_id} is not on this board")
        if self._state is not LinkState.UP:
            raise LinkDown(DEVICE, f"link {self._state}")
        if self._events.tracking_lost:
            # Its fire_enc may count from before the board's count began again.
            raise LinkDown(DEVICE, "tracking lost: the controller has not yet given up the "
                                   "parcels placed by the old count")
        future = self._replies.expect(command.command_id)
        self.stats.commands += 1
        self._send(divert_message(command))
        try:
            answer = await future
        except TimeoutError:
            # The board may hold it: take it back, in order behind the divert itself.
            self.stats.timeouts += 1
            await self.cancel(command.command_id)
            raise DriverTimeout(DEVICE, f"no answer to divert {command.command_id} within "
                                        f"{self.config.reply_timeout_ms:g} ms") from None
        finally:
            self._replies.forget(command.command_id)
        self.stats.answers += 1
        if answer.accepted:
            self._scheduled.hold(command)
        return DivertReply(command.command_id, answer.accepted, answer.reason.text)

    async def cancel(self, command_id: int) -> None:
        """Take back a scheduled divert (delivered reliably, in order)."""
        self.stats.cancels += 1
        self._scheduled.drop(command_id)
        self._send(wire.Cancel(command_id))

    async def set_mode(self, mode: wire.Mode) -> None:
        self._send(wire.SetMode(mode))

    # --- the port --------------------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while True:
            self._closed.clear()
            protocol = self._protocol = PortProtocol(self._data, self._lost_port)
            try:
                transport = await self._open(protocol)
            except DriverUnavailable as exc:
                self._went_down(str(exc))
                log.error("serial %s: %s", self.config.port, exc)  # noqa: TRY400 (no trace)
                return
            except (OSError, ValueError) as exc:
                self.stats.open_failures += 1
                self._went_down(f"cannot open {self.config.port}: {exc}")
                await self.clock.sleep(self._backoff.next_delay())
                continue
            self._transport = transport
            self.stats.opens += 1
            if not first:
                self.stats.reconnects += 1
            first = False
            reason = await self._serve()
            self._drop_port()
            self._went_down(reason)
            await self.clock.sleep(self._backoff.next_delay())

    async def _serve(self) -> str:
        """Keep the open port alive; return why it was given up."""
        self._synced.clear()
        self._last_rx = self.clock.now()
        self._write(self._session.connect(self.clock.now()))
        heartbeat_s = self.config.heartbeat_ms / 1000
        silent_s = max(SILENT_HEARTBEATS * heartbeat_s, 0.3)
        next_heartbeat = self.clock.now()
        sync_by = self.clock.now() + SYNC_TIMEOUT_S
        while not self._closed.is_set():
            now = self.clock.now()
            if self._session.failed:
                return f"link failed: {self._session.failed}"
            if not self._synced.is_set() and now > sync_by:
                return f"no HELLO answer from {self.config.port}"
            if self._synced.is_set() and now - self._last_rx > silent_s:
                return f"board silent for {now - self._last_rx:.2f} s"
            if now >= next_heartbeat:
                self._send(wire.Heartbeat(round(now * 1000) & 0xFFFFFFFF, wire.Mode.RUN,
                                          self._session.gave_up))
                next_heartbeat = now + heartbeat_s
            self._write(self._session.poll(now))
            self._forget_fired(self._events.received)
            # Waking at least once per ACK timeout means a message sent meanwhile (its resend
            # due an ACK timeout after it) never needs to wake this task itself.
            deadline = min(next_heartbeat, self._last_rx + silent_s,
                           now + self.config.ack_timeout_ms / 1000)
            link_deadline = self._session.next_deadline()
            if link_deadline is not None:
                deadline = min(deadline, link_deadline)
            self._wake.clear()
            self._sleeping_until = deadline
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - self.clock.now())):
                    await self._wake.wait()
        return "port closed"

    def _went_down(self, reason: str) -> None:
        self._up.clear()
        self.stats.last_error = reason
        if self._state is not LinkState.DOWN:
            log.warning("serial %s: link down: %s (reconnecting)", self.config.port, reason)
            self._events.event(DeviceFault(DEVICE, f"link down: {reason}"))
        self._state = LinkState.DOWN
        self._replies.fail_all(lambda: LinkDown(DEVICE, f"link down: {reason}"))

    def _drop_port(self) -> None:
        self._protocol = None
        if self._transport is not None:
            transport, self._transport = self._transport, None
            with contextlib.suppress(Exception):
                transport.abort()

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _write_ack(self) -> None:
        self._write(self._session.take_ack())

    def _owe_ack(self) -> None:
        """Send the owed ACK within ACK_DELAY_S, unless a frame written meanwhile carries it.

        Every frame carries the acknowledgement, so a divert sent soon after the answers
        acknowledges them; otherwise one Ack frame covers a burst of them.
        """
        if self._ack_timer is None or self._ack_timer.when() < self.clock.now():
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_DELAY_S, self._write_ack)

    def _send(self, message: wire.Message) -> None:
        # No wake-up needed: the port's task wakes at least once per ACK timeout anyway.
        self._write(self._session.send(message, self.clock.now()))

    def _lost_port(self, protocol: PortProtocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # the loss of a port already given up
        self._transport = None
        self.stats.last_error = str(exc) if exc else "port closed"
        self._closed.set()
        self._wake.set()

    def _data(self, data: bytes) -> None:
        now = self.clock.now()
        received = self._session.receive(data, now, defer_ack=True)
        self.stats.bad_frames += len(received.errors)
        if received.messages:
            self._last_rx = now
        for message in received.messages:
            self._dispatch(message)
        self._write(received.out)  # NAKs and resends; the ACK waits a little
        if self._session.ack_owed:
            self._owe_ack()
        if self._session.failed:
            self._wake.set()

    def _dispatch(self, message: wire.Message) -> None:
        match message:  # the most frequent first
            case wire.Encoder(enc=enc):
                if self._synced.is_set():  # until then it may be a restarted board's new count
                    self._events.enc(enc)
            case wire.DivertAnswer(command_id=command_id):
                self._replies.answer(command_id, message)
            case wire.EyeEdge(eye=eye, blocked=blocked, enc=enc):
                self._events.event(PhotoEyeEdge(eye, blocked, enc))
            case wire.BinEntered(bin_id=bin_id, enc=enc):
                self._events.event(BinEntry(bin_id, enc))
            case wire.BinLevelChanged(bin_id=bin_id, full=full):
                self._events.event(BinLevel(bin_id, full))
            case wire.Fired():
                self.stats.fired += 1
            case wire.Fault(device=device, text=text):
                self._events.event(DeviceFault(device, text))
            case wire.Heartbeat(mode=mode):
                if mode is wire.Mode.SAFE and self._synced.is_set():
                    # The board gave up on us (fail-safe): say HELLO again to resume.
                    self.stats.board_failsafes += 1
                    self._synced.clear()
                    self._write(self._session.connect(self.clock.now()))
            case wire.HelloReply(boot_id=boot_id, enc=enc, scheduled=scheduled):
                self._resync.synced_with(boot_id, enc, scheduled)
                self._went_up(scheduled)

    def forget_scheduled(self) -> None:
        """Send none of the diverts accepted so far again: their counts mean nothing now."""
        self._scheduled.clear()

    def _forget_fired(self, enc: int) -> None:
        """Forget the diverts due by ``enc``: the board has carried them out (or never will)."""
        self._scheduled.forget_due(enc)

    def _went_up(self, scheduled: int) -> None:
        """The board answered HELLO and the resync is under way: the link is up."""
        self._synced.set()
        self._wake.set()
        self._backoff.reset()
        if self._state is not LinkState.UP:
            if self._state is LinkState.DOWN:
                log.warning("serial %s: link up again (board holds %d scheduled diverts)",
                            self.config.port, scheduled)
            self._state = LinkState.UP
        self._up.set()
