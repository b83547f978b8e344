"""Line I/O drivers, chosen by the line config's ``[line_io]``.

=================  ===========================================================================
``serial``         the I/O board on a serial port (:mod:`drivers.lineio.serial`), protocol in
                   docs/serial-protocol.md: photo-eyes, encoder, bins and its diverters
``mqtt``           networked nodes behind an MQTT broker (:mod:`drivers.lineio.mqtt`):
                   diverter nodes, and the sensors if ``line_io.sensors = "mqtt"``
=================  ===========================================================================

A line may use both: sensors on the board and some diverters on the network. The links are
then joined into one :class:`~controller.lineio.LineIO` that takes events from every link
and sends each divert over the link its diverter is on. Drivers are imported only when a
config names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from controller.errors import DriverUnavailable, LinkDown
from controller.lineio import DivertCommand, DivertReply, LineEvent, LinkState, TrackingLost

if TYPE_CHECKING:
    from controller.clock import Clock
    from controller.config import LineConfig

__all__ = ["LineLink", "LineLinks", "open_line_io"]

log = logging.getLogger(__name__)


class LineLink(Protocol):
    """A line I/O driver with a lifetime and a state."""

    @property
    def state(self) -> LinkState: ...

    def encoder(self) -> int: ...

    def events(self) -> AsyncIterator[LineEvent]: ...

    async def divert(self, command: DivertCommand) -> DivertReply: ...

    async def wait_up(self, within_s: float) -> None: ...

    def forget_scheduled(self) -> None:
        """Send none of the diverts accepted so far again (the line's count began again)."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...


class LineLinks:
    """The line's links as one LineIO: sensors from one, each diverter on its own."""

    def __init__(self, links: Mapping[str, LineLink], sensors: str,
                 diverters: Mapping[str, str]) -> None:
        self.links = dict(links)
        self._sensors = self.links[sensors]
        self._diverters = {d: self.links[name] for d, name in diverters.items()}
        self._stack = contextlib.AsyncExitStack()
        # Each event with the sensors' encoder count when it was taken from its link.
        self._merged: asyncio.Queue[tuple[LineEvent, int]] = asyncio.Queue()
        self._enc_delivered = 0
        self._pumps: list[asyncio.Task[None]] = []
        self._failed: dict[str, str] = {}  # link name -> why its events pump died
        self._tracking_lost = 0  # TrackingLost events merged, not yet taken

    async def __aenter__(self) -> LineLinks:
        for link in self.links.values():
            await self._stack.enter_async_context(link)
        if len(self.links) > 1:
            self._pumps = [asyncio.create_task(self._pump(name, link),
                                               name=f"lineio[{name}].events")
                           for name, link in self.links.items()]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._stack.aclose()

    async def _pump(self, name: str, link: LineLink) -> None:
        """Merge one link's events; if they fail, say so and leave the other links running."""
        try:
            async for event in link.events():
                if isinstance(event, TrackingLost):
                    self._tracking_lost += 1
                    for other in self.links.values():  # their fire_enc count from before too
                        other.forget_scheduled()
                self._merged.put_nowait((event, self._sensors.encoder()))
        except Exception as exc:
            self._failed[name] = f"failed: {exc!r}"
            log.exception("line I/O link %s: its events failed; the other links keep running",
                          name)
        else:
            self._failed[name] = "failed: its events ended"
            log.error("line I/O link %s: its events ended; the other links keep running", name)

    def states(self) -> dict[str, str]:
        """Each link's state, or why its events stopped coming."""
        return {name: self._failed.get(name) or link.state for name, link in self.links.items()}

    async def wait_up(self, within_s: float) -> None:
        async with asyncio.TaskGroup() as tg:
            for link in self.links.values():
                tg.create_task(link.wait_up(within_s))

    def encoder(self) -> int:
        """The sensors' count, never ahead of events the controller has not taken yet."""
        if self._pumps and not self._merged.empty():
            return self._enc_delivered
        return self._sensors.encoder()

    async def events(self) -> AsyncIterator[LineEvent]:
        if not self._pumps:
            async for event in self._sensors.events():
                yield event
            return
        while True:
            event, self._enc_delivered = await self._merged.get()
            if isinstance(event, TrackingLost):
                self._tracking_lost -= 1
            yield event

    async def divert(self, command: DivertCommand) -> DivertReply:
        link = self._diverters.get(command.diverter_id)
        if link is None:
            raise LinkDown(command.diverter_id, "no link serves this diverter")
        if self._tracking_lost:
            # As each link does: its fire_enc may count from before the count began again.
            raise LinkDown(command.diverter_id, "tracking lost: the controller has "
                                    "not yet given up the parcels placed by the old count")
        return await link.divert(command)


def open_line_io(config: LineConfig, clock: Clock) -> LineLinks:
    """The links a line config names, not yet connected (enter the result to connect)."""
    line_io = config.line_io
    if line_io is None:
        raise DriverUnavailable("line_io", "the config names no line I/O ([line_io] section)")
    routes = {d.id: config.diverter_link(d) for d in config.diverters}
    used = {line_io.sensors, *routes.values()}
    links: dict[str, LineLink] = {}
    if "serial" in used:
        assert line_io.serial is not None
        from drivers.lineio.serial import SerialLineIO

        links["serial"] = SerialLineIO(
            line_io.serial, clock=clock,
            diverters=[d for d, link in routes.items() if link == "serial"])
    if "mqtt" in used:
        assert line_io.mqtt is not None
        try:
            from drivers.lineio.mqtt import MqttLineIO
        except ImportError as exc:
            raise DriverUnavailable("mqtt", f"aiomqtt is not installed: {exc}") from exc
        board = links.get("serial")
        links["mqtt"] = MqttLineIO(
            line_io.mqtt, line=config.line.name, clock=clock,
            diverters=[d for d, link in routes.items() if link == "mqtt"],
            sensors=line_io.sensors == "mqtt",
            encoder=board.encoder if board is not None and line_io.sensors == "serial"
            else None)
    return LineLinks(links, line_io.sensors, routes)
