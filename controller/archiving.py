"""Keeping a parcel that was not read: its best frames to the no-read archive, off the loop.

A person keys such a parcel's code from its frames later (``parcel-sorter archive``). The
writes run one at a time on a thread of their own, so a slow disk never blocks the line, and
a write that fails is counted and logged, never raised into the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from controller.archive import ArchivedParcel, NoReadArchive
from controller.clock import Clock
from controller.errors import ArchiveError
from controller.journal import FinalRecord
from controller.parcel import ParcelState, SorterStats

log = logging.getLogger(__name__)


class ArchiveKeeper:
    """Writes no-read entries to ``archive`` (nothing without one); counts failures in
    ``stats.archive_errors``."""

    def __init__(self, archive: NoReadArchive | None, clock: Clock, stats: SorterStats) -> None:
        self.archive = archive
        self._clock = clock
        self._stats = stats
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="archive")
        self._writing: set[asyncio.Task[None]] = set()

    def keep(self, parcel: ParcelState, record: FinalRecord) -> None:
        """Keep the parcel's best frames for a person to key its code; never blocks the line."""
        if self.archive is None:
            return
        entry = ArchivedParcel(
            parcel_id=record.parcel_id, disposition=record.disposition.value,
            reason=record.reason, codes=sorted(parcel.reads.codes), at=record.final_at,
            wall_time=datetime.now(UTC).isoformat(timespec="seconds"),
            frames=[frame for _, frame in parcel.frames])
        task = asyncio.create_task(self._store(self.archive, entry),
                                   name=f"archive[{record.parcel_id}]")
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _store(self, archive: NoReadArchive, entry: ArchivedParcel) -> None:
        try:
            await self._clock.offload(self._writer, archive.store, entry)
        except (OSError, ArchiveError) as exc:
            self._stats.archive_errors += 1
            log.warning("no-read archive: parcel %d not kept: %s", entry.parcel_id, exc)
        except Exception:  # a bug in the archive must not go unseen
            self._stats.archive_errors += 1
            log.exception("no-read archive: parcel %d not kept", entry.parcel_id)

    async def aclose(self) -> None:
        """Finish the writes under way, then stop the thread."""
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)
        self._writer.shutdown(wait=True)
