"""The scenario's parcels as the emulated line reaches them, in induction order.

The line's parts read the stream each at its own pace, through a :class:`Reader` each: the
induction, every camera, the end of line. Built from a list, the window keeps every parcel
(a test bench that holds the truth reads ``line.parcels`` as that list). Built from an
iterator, it takes each parcel from it when a reader first reaches it and lets it go once
every reader has passed it, so a shift of any length holds only the parcels near the belt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from sim_hardware.scenario import SimParcel


class Reader:
    """One part's place in the stream: the index of the next parcel it has yet to pass."""

    __slots__ = ("_window", "index")

    def __init__(self, window: ParcelWindow) -> None:
        self._window = window
        self.index = 0

    def advance(self) -> None:
        self.index += 1
        self._window._let_go()

    def __bool__(self) -> bool:
        """Whether there is a parcel left for this reader."""
        return self.index < len(self._window)

    def current(self) -> SimParcel:
        return self._window[self.index]


class ParcelWindow:
    """``count`` parcels in induction order; from an iterator, only those some reader needs."""

    def __init__(self, parcels: Iterable[SimParcel], count: int | None = None) -> None:
        self._kept: list[SimParcel] | None = None
        self._source: Iterator[SimParcel] = iter(())
        if isinstance(parcels, list):
            self._kept, count = parcels, len(parcels)
        elif count is None:
            raise ValueError("a window over an iterator needs its count")
        else:
            self._source = iter(parcels)
        self._count = count
        self._items: deque[SimParcel] = deque()
        self._base = 0  # the stream index of _items[0]
        self._readers: list[Reader] = []
        self.reached = 0  # parcels at an index below this have been reached by a reader
        self.on_reach: Callable[[SimParcel], None] | None = None  # each parcel, when reached
        self.most_held = 0  # the most parcels held at once (what a long shift's memory is)

    def __len__(self) -> int:
        return self._count

    @property
    def kept(self) -> list[SimParcel] | None:
        """The whole stream, when the window was built from a list; None when it lets go."""
        return self._kept

    @property
    def keeps_all(self) -> bool:
        return self._kept is not None

    def __getitem__(self, index: int) -> SimParcel:
        if self._kept is not None and index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"parcel index {index} outside the stream of {self._count}")
        if index < self._base:
            raise IndexError(f"parcel index {index} was let go: every reader had passed it")
        while index >= self.reached:
            parcel = self._reach()
            if self._kept is None:
                self._items.append(parcel)
        if self._kept is not None:
            return self._kept[index]
        self.most_held = max(self.most_held, len(self._items))
        return self._items[index - self._base]

    def _reach(self) -> SimParcel:
        if self._kept is not None:
            parcel = self._kept[self.reached]
        elif (taken := next(self._source, None)) is not None:
            parcel = taken
        else:
            raise IndexError(f"the stream ended before its {self._count} parcels")
        if self.on_reach is not None:
            self.on_reach(parcel)
        self.reached += 1
        return parcel

    def __iter__(self) -> Iterator[SimParcel]:
        return (self[i] for i in range(self._count))

    def reader(self) -> Reader:
        """A new reader at the start of the stream: make every one before any advances."""
        if self._base:
            raise RuntimeError("a reader made after parcels were let go would miss them")
        reader = Reader(self)
        self._readers.append(reader)
        return reader

    def rest(self, reader: Reader) -> Iterator[SimParcel]:
        """The parcels from ``reader`` on, to the end of the stream, none of them kept."""
        for index in range(reader.index, self.reached):
            yield self[index]
        while self.reached < self._count:
            yield self._reach()

    def _let_go(self) -> None:
        if self._kept is not None:
            return
        lowest = min(r.index for r in self._readers)
        while self._base < lowest and self._items:
            self._items.popleft()
            self._base += 1
