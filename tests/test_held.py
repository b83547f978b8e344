"""The accepted diverts a driver keeps to send again: forgotten when due, dropped, bounded."""

from __future__ import annotations

from controller.lineio import DivertCommand
from drivers.lineio.held import HeldDiverts


def _divert(command_id: int, fire_enc: int, diverter: str = "D1") -> DivertCommand:
    return DivertCommand(command_id, command_id, diverter, fire_enc, 80.0)


def test_due_diverts_are_forgotten_and_dropped_ones_never_come_back() -> None:
    held = HeldDiverts()
    for command_id, fire_enc in ((1, 300), (2, 100), (3, 200), (4, 400)):
        held.hold(_divert(command_id, fire_enc))
    held.drop(3)
    assert held.next_due() == 100
    assert held.forget_due(250) == [2]  # 3 was dropped: its heap entry is skipped
    assert [c.command_id for c in held] == [1, 4]
    assert held.forget_due(250) == []
    assert len(held) == 2


def test_held_again_with_another_count_is_forgotten_at_the_new_one() -> None:
    held = HeldDiverts()
    held.hold(_divert(7, 100))
    held.hold(_divert(7, 500))
    assert held.forget_due(200) == []
    assert [c.fire_enc for c in held] == [500]
    assert held.forget_due(500) == [7]


def test_without_a_count_the_heap_is_bounded_by_forgetting_the_earliest_due() -> None:
    held = HeldDiverts()
    for command_id in range(10):
        held.hold(_divert(command_id, 1000 - command_id))
    assert sorted(held.keep_earliest_due(3)) == [3, 4, 5, 6, 7, 8, 9]
    assert sorted(c.command_id for c in held) == [0, 1, 2]
    held.clear()
    assert len(held) == 0
    assert held.next_due() is None
