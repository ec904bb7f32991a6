"""Bounded memory of what has been seen: two generations rotated on event time.

A key is remembered for at least `horizon_ms` and at most twice that (it sits in the current generation,
then in the previous one). `max_entries` caps the current generation; reaching it rotates early, which
shortens the memory and is counted in `forced_rotations` (raise dedupe.max_entries if it grows).
"""

from __future__ import annotations

import logging
from typing import Generic, Iterator, TypeVar

V = TypeVar("V")
log = logging.getLogger(__name__)


class Generations(Generic[V]):
    """A dict that forgets entries untouched for more than one or two horizons."""

    __slots__ = ("horizon_ms", "max_entries", "current", "previous", "rotated_at_ms", "forced_rotations")

    def __init__(self, horizon_ms: int, max_entries: int) -> None:
        self.horizon_ms = horizon_ms
        self.max_entries = max_entries
        self.current: dict[str, V] = {}
        self.previous: dict[str, V] = {}
        self.rotated_at_ms: int | None = None
        self.forced_rotations = 0

    def tick(self, now_ms: int) -> None:
        if self.rotated_at_ms is None:
            self.rotated_at_ms = now_ms
        elif now_ms - self.rotated_at_ms >= self.horizon_ms:
            self._rotate(now_ms)

    def _rotate(self, now_ms: int) -> None:
        self.previous = self.current
        self.current = {}
        self.rotated_at_ms = now_ms

    def get(self, key: str) -> V | None:
        """Look up, and keep alive (an entry found in the old generation moves to the current one)."""
        v = self.current.get(key)
        if v is None:
            v = self.previous.pop(key, None)
            if v is not None:
                self.put(key, v)
        return v

    def __contains__(self, key: str) -> bool:
        return key in self.current or key in self.previous

    def put(self, key: str, value: V) -> None:
        if len(self.current) >= self.max_entries and key not in self.current:
            self.forced_rotations += 1
            log.warning("dedupe/join memory reached dedupe.max_entries=%d and rotated early (%d times): it "
                        "now remembers less than dedupe.horizon_seconds; raise dedupe.max_entries",
                        self.max_entries, self.forced_rotations)
            self._rotate(self.rotated_at_ms or 0)
        self.current[key] = value

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def values(self) -> Iterator[V]:
        yield from self.previous.values()
        yield from self.current.values()

    def snapshot(self) -> dict:
        return {"current": self.current, "previous": self.previous, "rotated_at_ms": self.rotated_at_ms,
                "forced": self.forced_rotations}

    def restore(self, snap: dict, convert=lambda v: v) -> None:
        self.current = {k: convert(v) for k, v in snap["current"].items()}
        self.previous = {k: convert(v) for k, v in snap["previous"].items()}
        self.rotated_at_ms, self.forced_rotations = snap["rotated_at_ms"], snap["forced"]


class Seen:
    """Dedupe memory: has this record (by its dedupe key) been processed already?"""

    __slots__ = ("gens",)

    def __init__(self, horizon_ms: int, max_entries: int) -> None:
        self.gens: Generations[int] = Generations(horizon_ms, max_entries)

    def first_time(self, key: str, now_ms: int) -> bool:
        """True and remember the key if it is new; False for a repeat."""
        g = self.gens
        if key in g.current or key in g.previous:
            return False
        g.put(key, 1)
        return True

    def tick(self, now_ms: int) -> None:
        self.gens.tick(now_ms)

    def __len__(self) -> int:
        return len(self.gens)

    def snapshot(self) -> dict:
        return self.gens.snapshot()

    def restore(self, snap: dict) -> None:
        self.gens.restore(snap)
