"""The sending half of the serial link on its own: numbering, the window, NAKs, voiding."""

from __future__ import annotations

from drivers.lineio.codec import decode_frame
from drivers.lineio.send_window import SendWindow
from drivers.lineio.sequence import LinkStats
from drivers.lineio.wire import SEQ_MAX, Cancel


def seqs(data: bytes) -> list[int]:
    return [decode_frame(frame + b"\x00").seq for frame in data.split(b"\x00") if frame]


def window(**options: int) -> SendWindow:
    settings = {"window": 4, "queue_limit": 16, "max_resends": 2, "initial_seq": 1} | options
    return SendWindow(LinkStats(), from_board=False, **settings)


def test_the_window_caps_what_is_in_flight_and_acks_open_it() -> None:
    tx = window()
    for n in range(6):
        tx.queue(Cancel(n))
    assert seqs(tx.flush(0.0, ack=0)) == [1, 2, 3, 4]
    assert not tx.can_send()
    assert tx.pending == 6
    tx.acked_through(2, now=1.0)
    assert seqs(tx.flush(1.0, ack=0)) == [5, 6]
    assert tx.first_seq == 3
    assert tx.pending == 4


def test_numbering_wraps_past_the_top_to_one() -> None:
    tx = window(initial_seq=SEQ_MAX - 1)
    for n in range(3):
        tx.queue(Cancel(n))
    assert seqs(tx.flush(0.0, ack=0)) == [SEQ_MAX - 1, SEQ_MAX, 1]


def test_over_the_queue_limit_the_oldest_queued_are_dropped() -> None:
    tx = window(window=1, queue_limit=2)
    for n in range(5):
        tx.queue(Cancel(n))
    assert tx.stats.dropped == 3
    sent = tx.flush(0.0, ack=0)
    assert decode_frame(sent).message == Cancel(3)


def test_a_nak_acks_what_came_before_it_and_a_stale_one_is_ignored() -> None:
    tx = window()
    for n in range(4):
        tx.queue(Cancel(n))
    tx.flush(0.0, ack=0)
    assert tx.naked(3, now=0.5)  # 1 and 2 arrived; 3 and 4 are to go again
    assert tx.first_seq == 3
    assert seqs(tx.resend(0.5)) == [3, 4]
    assert not tx.naked(40, now=0.6)  # outside the window
    assert tx.first_seq == 3


def test_the_resend_budget_runs_out_and_a_resync_renews_it() -> None:
    tx = window(max_resends=2)
    tx.queue(Cancel(1))
    tx.flush(0.0, ack=0)
    assert not tx.due(0.03, timeout_s=0.04)
    assert tx.due(0.04, timeout_s=0.04)
    tx.resend(0.04)
    tx.resend(0.08)
    assert tx.exhausted
    assert seqs(tx.resync(0.2)) == [1]
    assert not tx.exhausted
    assert tx.due_at(0.04) == 0.2 + 0.04


def test_voiding_forgets_everything_and_numbers_afresh() -> None:
    tx = window()
    for n in range(6):
        tx.queue(Cancel(n))
    tx.flush(0.0, ack=0)
    tx.void(next_seq=100)
    assert tx.pending == 0
    assert tx.stats.voided == 6
    assert tx.due_at(0.04) is None
    tx.queue(Cancel(9))
    assert seqs(tx.flush(1.0, ack=0)) == [100]
