"""Two links joined into one LineIO: events from both, diverts by diverter, and an encoder
that never runs ahead of the events the controller has not taken yet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import TracebackType

import pytest

from controller.errors import LinkDown
from controller.lineio import (
    DivertCommand,
    DivertReply,
    LineEvent,
    LinkState,
    PhotoEyeEdge,
    TrackingLost,
)
from drivers.lineio import LineLinks

pytestmark = pytest.mark.wallclock


class FakeLink:
    def __init__(self) -> None:
        self.state = LinkState.UP
        self.enc = 0
        self.queue: asyncio.Queue[LineEvent] = asyncio.Queue()
        self.sent: list[DivertCommand] = []
        self.forgotten = 0

    def encoder(self) -> int:
        return self.enc

    async def events(self) -> AsyncIterator[LineEvent]:
        while True:
            yield await self.queue.get()

    async def divert(self, command: DivertCommand) -> DivertReply:
        self.sent.append(command)
        return DivertReply(command.command_id, True)

    async def wait_up(self, within_s: float) -> None:
        return None

    def forget_scheduled(self) -> None:
        self.forgotten += 1

    async def __aenter__(self) -> FakeLink:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


def test_joined_links_route_diverts_and_hold_the_encoder_behind_pending_events() -> None:
    async def main() -> None:
        board, nodes = FakeLink(), FakeLink()
        links = LineLinks({"serial": board, "mqtt": nodes}, "serial",
                          {"D1": "serial", "D2": "mqtt"})
        async with links:
            board.enc = 100
            board.queue.put_nowait(PhotoEyeEdge("induct", True, 100))
            await asyncio.sleep(0)  # the pump takes it
            await asyncio.sleep(0)
            board.enc = 900  # the belt moved on; the edge is not taken by the controller yet
            assert links.encoder() == 0
            events = links.events()
            assert await anext(events) == PhotoEyeEdge("induct", True, 100)
            assert links.encoder() == 900
            nodes.queue.put_nowait(PhotoEyeEdge("end", True, 950))
            assert await anext(events) == PhotoEyeEdge("end", True, 950)
            await links.divert(DivertCommand(1, 1, "D1", 5000, 100.0))
            await links.divert(DivertCommand(2, 2, "D2", 6000, 100.0))
            assert [c.command_id for c in board.sent] == [1]
            assert [c.command_id for c in nodes.sent] == [2]
            with pytest.raises(LinkDown):
                await links.divert(DivertCommand(3, 3, "D9", 7000, 100.0))
            await events.aclose()

    asyncio.run(main())


def test_joined_links_divert_nothing_until_a_tracking_loss_is_taken() -> None:
    async def main() -> None:
        board, nodes = FakeLink(), FakeLink()
        links = LineLinks({"serial": board, "mqtt": nodes}, "serial",
                          {"D1": "serial", "D2": "mqtt"})
        async with links:
            board.queue.put_nowait(TrackingLost("io-board", "its count began again"))
            await asyncio.sleep(0)  # the pump takes it
            await asyncio.sleep(0)
            # The nodes' diverts too: their fire_enc counts in the board's count.
            for diverter in ("D1", "D2"):
                with pytest.raises(LinkDown, match="tracking lost"):
                    await links.divert(DivertCommand(1, 1, diverter, 5000, 100.0))
            assert (board.forgotten, nodes.forgotten) == (1, 1)  # none restored later
            events = links.events()
            assert isinstance(await anext(events), TrackingLost)
            await links.divert(DivertCommand(2, 2, "D2", 6000, 100.0))
            assert [c.command_id for c in nodes.sent] == [2]
            assert board.sent == []
            await events.aclose()

    asyncio.run(main())


class BrokenLink(FakeLink):
    """A link whose events fail after the first one, as a driver with a bug would."""

    async def events(self) -> AsyncIterator[LineEvent]:
        yield await self.queue.get()
        raise RuntimeError("decoder bug")


def test_a_link_whose_events_fail_is_reported_and_the_others_keep_running(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        board, nodes = FakeLink(), BrokenLink()
        links = LineLinks({"serial": board, "mqtt": nodes}, "serial",
                          {"D1": "serial", "D2": "mqtt"})
        async with links:
            events = links.events()
            nodes.queue.put_nowait(PhotoEyeEdge("end", True, 10))
            assert await anext(events) == PhotoEyeEdge("end", True, 10)
            await asyncio.sleep(0)  # the nodes' pump takes its next event: the failure
            await asyncio.sleep(0)
            assert links.states() == {"serial": LinkState.UP,
                                      "mqtt": "failed: RuntimeError('decoder bug')"}
            board.queue.put_nowait(PhotoEyeEdge("induct", True, 20))
            assert await anext(events) == PhotoEyeEdge("induct", True, 20)
            await links.divert(DivertCommand(1, 1, "D1", 5000, 100.0))
            assert [c.command_id for c in board.sent] == [1]
            await events.aclose()

    with caplog.at_level(logging.ERROR, logger="drivers.lineio"):
        asyncio.run(main())
    failures = [r for r in caplog.records if "mqtt" in r.getMessage()]
    assert len(failures) == 1  # logged once, with the traceback
    assert failures[0].exc_info is not None
    assert "decoder bug" in caplog.text
