"""The virtual clock jumps to the next deadline, holds still for threads, and is repeatable."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from controller.clock import RealClock, VirtualClock, run_real, run_virtual

pytestmark = pytest.mark.wallclock


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


def test_offload_cost_delivers_at_its_virtual_deadline_and_lets_others_run() -> None:
    async def main(clock: VirtualClock) -> tuple[float, int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await clock.sleep(0.010)
                ticks += 1

        task = asyncio.create_task(ticker())
        start = clock.now()
        # Real work of 0.2 s modelled as 0.035 s: others run meanwhile, up to the deadline.
        await clock.offload(None, time.sleep, 0.2, cost=0.035)
        done_at = clock.now() - start
        ticks_then = ticks
        # A job quicker than its cost still ends at its deadline.
        start = clock.now()
        await clock.offload(None, time.sleep, 0.0, cost=0.5)
        task.cancel()
        return done_at, ticks_then, clock.now() - start

    done_at, ticks, second = run_virtual(main)
    assert done_at == pytest.approx(0.035)
    assert ticks == 3
    assert second == pytest.approx(0.5)


def test_virtual_time_never_passes_a_running_job() -> None:
    async def main(clock: VirtualClock) -> list[str]:
        order: list[str] = []

        async def timer() -> None:
            await clock.sleep(0.05)
            order.append(f"timer at {clock.now():.2f}")

        async def job() -> None:
            await clock.offload(None, time.sleep, 0.3, cost=0.02)
            order.append(f"job at {clock.now():.2f}")

        await asyncio.gather(timer(), job())
        return order

    assert run_virtual(main) == ["job at 0.02", "timer at 0.05"]


def test_thread_results_come_back_in_deadline_then_submission_order() -> None:
    """The job submitted first finishes last in real time; its result still comes first
    (at equal deadlines), and an earlier deadline comes before both, whatever the load."""
    async def main(clock: VirtualClock) -> list[tuple[str, float]]:
        back: list[tuple[str, float]] = []
        second_done = threading.Event()

        def first() -> str:
            second_done.wait(5.0)
            return "first"

        def second() -> str:
            second_done.set()
            return "second"

        async def job(fn: Callable[[], str], cost: float) -> None:
            back.append((await clock.offload(pool, fn, cost=cost), clock.now()))

        with ThreadPoolExecutor(3) as pool:
            await asyncio.gather(job(first, 0.02), job(second, 0.02),
                                 job(lambda: "early", 0.01))
        return back

    assert run_virtual(main) == [("early", 0.01), ("first", 0.02), ("second", 0.02)]
