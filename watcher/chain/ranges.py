"""How many blocks one eth_getLogs call asks for while catching up: a pure, adaptive size.

Providers refuse ranges they find too large (too many blocks, or too many results in a busy stretch of
the chain). The size starts at `backfill_block_range`; a refused range halves it (down to 1 block: a
refused single block is a real error), and after `grow_after` ranges in a row read at the current size it
doubles again, up to the configured maximum. A doubled size that is refused at once makes the next attempt
to grow wait twice as long, so a provider with a fixed limit costs a refused call now and then, not every
few calls.

    sizer = RangeSizer(2000)
    sizer.size                 # 2000
    sizer.refused(2000)        # True: now 1000
    sizer.read(1000)           # a range of 1000 blocks was read; True when the size grew
"""

from __future__ import annotations

GROW_AFTER = 8            # ranges read in a row at one size before it doubles
MAX_GROW_AFTER = 1024     # the longest wait between attempts to grow


class RangeSizer:
    def __init__(self, maximum: int, *, grow_after: int = GROW_AFTER) -> None:
        if maximum < 1 or grow_after < 1:
            raise ValueError("maximum and grow_after must be >= 1")
        self.maximum = maximum
        self.size = maximum
        self._base = self._grow_after = grow_after
        self._streak = 0
        self._probing = False     # the size was just doubled and no range of that size was read yet

    def refused(self, blocks: int) -> bool:
        """The node refused a range of `blocks` blocks as too large. Shrinks the size and returns True, or
        returns False for a single block (nothing smaller to try)."""
        if blocks <= 1:
            return False
        if self._probing:
            self._grow_after = min(self._grow_after * 2, MAX_GROW_AFTER)
            self._probing = False
        self.size = max(1, min(self.size, blocks) // 2)
        self._streak = 0
        return True

    def read(self, blocks: int) -> bool:
        """A range of `blocks` blocks was read. Returns True when the size grew."""
        if blocks < self.size:           # the end of the backfill: says nothing about the size
            return False
        if self._probing:
            self._probing = False
            self._grow_after = self._base
        if self.size >= self.maximum:
            return False
        self._streak += 1
        if self._streak < self._grow_after:
            return False
        self.size = min(self.maximum, self.size * 2)
        self._streak = 0
        self._probing = True
        return True
