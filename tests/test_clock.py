"""The virtual clock jumps to the next deadline, holds still for threads, and is repeatable."""

from __future__ import annotations

import asyncio
import time

from controller.clock import RealClock, VirtualClock, run_real, run_virtual


def test_virtual_time_jumps_without_real_waiting() -> None:
    async def main(clock: VirtualClock) -> tuple[float, float]:
        start = time.perf_counter()
        await clock.sleep(3600)
        return clock.now(), time.perf_counter() - start

    virtual, real = run_virtual(main)
    assert virtual == 3600
    assert real < 1.0


def test_concurrent_sleepers_wake_in_deadline_order() -> None:
    async def main(clock: VirtualClock) -> list[tuple[str, float]]:
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep_until(seconds)
            woke.append((name, clock.now()))

        await asyncio.gather(sleeper("c", 3.0), sleeper("a", 1.0), sleeper("b", 2.0))
        return woke

    assert run_virtual(main) == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_offloaded_work_holds_virtual_time_still() -> None:
    async def main(clock: VirtualClock) -> tuple[float, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await clock.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        await clock.sleep(0.0105)
        before = clock.now()
        await clock.offload(None, time.sleep, 0.2)  # real work, no virtual time
        after = clock.now()
        task.cancel()
        return after - before, ticks

    elapsed, ticks = run_virtual(main)
    assert elapsed == 0
    assert ticks == 10


def test_asyncio_timeout_runs_on_virtual_time() -> None:
    async def main(clock: VirtualClock) -> float:
        try:
            async with asyncio.timeout(5):
                await clock.sleep(60)
        except TimeoutError:
            return clock.now()
        return -1.0

    assert run_virtual(main) == 5.0


def test_real_clock_really_sleeps() -> None:
    async def main(clock: RealClock) -> float:
        start = clock.now()
        await clock.sleep(0.05)
        return clock.now() - start

    assert run_real(main) >= 0.045
