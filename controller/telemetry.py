"""Observation points of the pipeline: durations the stages report as they happen.

Counters the controller already keeps (dispositions, frames, bins, states) are read when
they are wanted; only distributions need a hook at the moment they are measured. The face
(:mod:`controller.app.metrics`) implements :class:`Telemetry` with Prometheus histograms;
without it the stages report to :data:`NO_TELEMETRY`, which drops everything.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_TELEMETRY", "NoTelemetry", "Telemetry"]


class Telemetry(Protocol):
    """Durations in seconds. Called on the event loop, except ``observe_journal_write``,
    which the journal's writer thread calls: an implementation must be thread-safe."""

    def observe_decision(self, seconds: float) -> None:
        """A parcel's verdict settled to its route decided (divert answered, or none)."""

    def observe_divert(self, seconds: float) -> None:
        """A divert command sent to its answer (accepted or refused); one never answered is
        not a round trip (it is counted in ``SorterStats.unanswered_diverts``)."""

    def observe_journal_write(self, seconds: float) -> None:
        """One committed journal write, on the writer thread (the storage's real time)."""


class NoTelemetry:
    """Drops every observation."""

    def observe_decision(self, seconds: float) -> None:
        pass

    def observe_divert(self, seconds: float) -> None:
        pass

    def observe_journal_write(self, seconds: float) -> None:
        pass


NO_TELEMETRY: Telemetry = NoTelemetry()
