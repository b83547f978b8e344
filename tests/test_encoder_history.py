"""The encoder count at a past moment, for frames that carry only their capture time."""

from __future__ import annotations

import pytest

from controller.encoder import EncoderHistory


def test_counts_between_samples_are_interpolated() -> None:
    history = EncoderHistory(span_s=1.0)
    with pytest.raises(LookupError):
        history.at(0.0)
    history.record(0.00, 1000)
    history.record(0.01, 1040)
    history.record(0.02, 1040)  # the belt stopped
    history.record(0.03, 1100)
    assert history.at(0.005) == 1020
    assert history.at(0.015) == 1040
    assert history.at(0.025) == 1070
    assert history.at(-1.0) == 1000  # before the history: its oldest count
    assert history.at(5.0) == 1100  # after: the latest


def test_old_samples_are_dropped_and_time_only_moves_on() -> None:
    history = EncoderHistory(span_s=0.1)
    for i in range(100):
        history.record(i * 0.01, i * 10)
    history.record(0.5, 0)  # out of order: ignored
    assert history.at(0.0) == 890  # 0.0 is long gone: the oldest kept is 0.89 s
    assert history.at(0.985) == 985
