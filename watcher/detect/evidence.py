"""The ids of the events a count rule counted, for the decision's `eventIds`.

A count rule (`failed_verifications`, `new_merchant_burst`) keeps, per agent row, a numpy ring of the times
of its last events: the row's k-th event goes to slot k % slots, and the rule counts the slots whose time
is inside its window. `IdRings` keeps the event ids beside those times, slot for slot, so that a decision
can name every event it counted:

    times  (numpy, every row)      [t5 t6 t7 t3 t4]   k-th event in slot k % 5, `ptr` = 8 events so far
    ids    (IdRings, rows that had one) [e5 e6 e7 e3 e4]

Rings are made only for rows that had such an event: a list of at most `slots` ids, as long as the highest
slot written so far (an agent that paid three first-time merchants holds three), None where an id is not
known (one written before the ids were kept, e.g. restored from an older checkpoint). The cost is per
event counted and per agent that had one, never per payment.
"""

from __future__ import annotations

from typing import Iterable

from watcher.detect.rows import renumber
from watcher.errors import CheckpointError


class IdRings:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.rows: dict[int, list[str | None]] = {}

    def put(self, row: int, seq: int, event_id: str) -> None:
        """The row's `seq`-th event (counting from 0, the same count as its time ring's pointer)."""
        ring = self.rows.get(row)
        if ring is None:
            ring = self.rows[row] = []
        slot = seq % self.slots
        if slot >= len(ring):
            ring.extend([None] * (slot + 1 - len(ring)))
        ring[slot] = event_id

    def counted(self, row: int, times: list[int], ptr: int, after_ms: int) -> list[str]:
        """The ids of the events in the row's ring whose time is later than `after_ms`, in time order (ties in
        arrival order), the newest event (`ptr - 1`, the one that crossed the threshold) last. `times` is
        the row's time ring, `ptr` its pointer after that event was written."""
        ring = self.rows.get(row)
        if ring is None or ptr <= 0:
            return []
        s, have = self.slots, len(ring)

        def id_of(q: int) -> str | None:
            return ring[q % s] if q % s < have else None

        last = ptr - 1
        earlier = sorted((times[q % s], q) for q in range(max(0, ptr - s), last) if times[q % s] > after_ms)
        out = [i for i in (id_of(q) for _, q in earlier) if i is not None]
        crossing = id_of(last)
        if crossing is not None:
            out.append(crossing)
        return out

    def clear(self, rows: Iterable[int]) -> None:
        for r in rows:
            self.rows.pop(int(r), None)

    def keep_rows(self, live) -> None:
        """Renumber to the rows `live` (ascending; see watcher/detect/rows.py), the others forgotten."""
        new = renumber(live)
        self.rows = {new[r]: ring for r, ring in self.rows.items() if r in new}

    # -- checkpoint ---------------------------------------------------------------------------
    def snapshot(self, size: int) -> list:
        """[[row, [id or None, ...]], ...] for the rows below `size` (each list as long as in memory)."""
        return [[r, list(ring)] for r, ring in self.rows.items() if r < size]

    @classmethod
    def restore(cls, slots: int, data: list | None) -> "IdRings":
        """From `snapshot`; None or [] (a checkpoint from before the ids were kept) gives empty rings."""
        self = cls(slots)
        for r, ring in data or ():
            ring = list(ring)
            if len(ring) > slots:
                raise CheckpointError(f"an event-id ring of the checkpoint has {len(ring)} slots, this version "
                                      f"keeps at most {slots}")
            self.rows[int(r)] = ring
        return self
