"""The emulated belt's travel under stops and speed changes, and its inverse."""

from __future__ import annotations

import pytest

from controller.clock import VirtualClock, run_virtual
from sim_hardware.line import Belt
from sim_hardware.scenario import ScenarioSpec


def test_travel_and_time_at_follow_the_speed_profile() -> None:
    async def main(clock: VirtualClock) -> None:
        belt = Belt(clock, 1000.0, 2.0, [(2.0, 0.0), (3.0, 500.0)])
        assert belt.travel(1.0) == 1000.0
        assert belt.travel(2.5) == 2000.0  # stopped
        assert belt.travel(5.0) == 2000.0 + 2 * 500.0
        assert belt.time_at(1500.0) == 1.5
        assert belt.time_at(2000.0) == 2.0  # the first moment it got there
        assert belt.time_at(2250.0) == 3.5
        await clock.sleep(2.2)
        assert belt.speed == 0.0
        assert belt.encoder() == 4000
        await clock.sleep(1.0)
        assert belt.speed == 500.0

    run_virtual(main)


def test_a_belt_left_stopped_is_refused() -> None:
    with pytest.raises(ValueError, match="must be moving after the last change"):
        ScenarioSpec(speed_changes=[(1.0, 500.0), (5.0, 0.0)])
