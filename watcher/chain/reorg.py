"""Pure tracker of the canonical chain tip, confirmations and reorgs. No I/O.

The shell feeds it blocks in order (`advance`), each with the transfers of that block. The tracker
remembers the last `max_depth` headers (number -> hash, parent hash) and the transfers not yet
confirmed. It answers with `Emission`s: what to publish.

    advance(header, transfers)  header.parent_hash must equal the tip's hash (else `ReorgDetected`):
                                transfers -> `pending` (or `confirmed` at once when confirmations == 0);
                                transfers whose block is now `confirmations` deep -> `confirmed`
    rewind(number)              the blocks above `number` were dropped: their unconfirmed transfers
                                -> `reverted`; the tip becomes `number`
    jump(header, transfers)     after a ranged backfill of blocks already `confirmations` deep: the
                                transfers -> `confirmed` directly, and `header` becomes the tip

A transfer's confirmations are `tip.number - block_number` (blocks on top of it). Reorgs deeper than
`confirmations` cannot be undone by the tracker (confirmed transfers are forgotten); `rewind` reports
how deep it went so the shell can log a deep reorg.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from watcher.chain.abi import Header
from watcher.chain.logs import Transfer


class ReorgDetected(Exception):
    """`advance` got a block that does not extend the tip. The shell walks back and rewinds."""

    def __init__(self, header: Header, tip: Header) -> None:
        self.header, self.tip = header, tip
        super().__init__(f"block {header.number} {header.hash[:12]} has parent {header.parent_hash[:12]}, "
                         f"tip is {tip.number} {tip.hash[:12]}")


@dataclass(frozen=True, slots=True)
class Emission:
    transfer: Transfer
    status: str          # pending | confirmed | reverted
    confirmations: int


class ChainTracker:
    def __init__(self, confirmations: int, max_depth: int = 64) -> None:
        if confirmations < 0 or max_depth < 1:
            raise ValueError("confirmations >= 0 and max_depth >= 1")
        self.confirmations = confirmations
        self.max_depth = max(max_depth, confirmations + 1)
        self.headers: dict[int, Header] = {}
        self.unconfirmed: dict[int, list[Transfer]] = {}
        self.tip: Header | None = None

    # -- queries -------------------------------------------------------------------------------
    def hash_at(self, number: int) -> str | None:
        h = self.headers.get(number)
        return h.hash if h is not None else None

    @property
    def floor(self) -> int | None:
        """The oldest remembered block number."""
        return min(self.headers) if self.headers else None

    @property
    def unconfirmed_count(self) -> int:
        return sum(len(v) for v in self.unconfirmed.values())

    # -- transitions ---------------------------------------------------------------------------
    def advance(self, header: Header, transfers: Iterable[Transfer]) -> list[Emission]:
        tip = self.tip
        if tip is not None and (header.number != tip.number + 1 or header.parent_hash != tip.hash):
            raise ReorgDetected(header, tip)
        self.headers[header.number] = header
        self.tip = header
        out: list[Emission] = []
        batch = list(transfers)
        for t in batch:
            if t.block_hash != header.hash:
                raise ValueError(f"transfer {t.id} is in block {t.block_hash}, not {header.hash}")
        if self.confirmations == 0:
            out.extend(Emission(t, "confirmed", 0) for t in batch)
        else:
            if batch:
                self.unconfirmed[header.number] = batch
            out.extend(Emission(t, "pending", 0) for t in batch)
        out.extend(self._confirm())
        self._prune()
        return out

    def jump(self, header: Header, transfers: Iterable[Transfer], known: Iterable[Header] = ()) -> list[Emission]:
        """Transfers of blocks up to `header` read by range, all already final; `header` is the new tip.
        `known`: other headers of the range (the blocks with transfers), remembered with the earlier ones: a
        later reorg that reaches below `header` finds its fork point among them and is read again, instead
        of counting as deeper than the remembered blocks (which left its replaced transfers unread)."""
        if self.tip is not None and header.number < self.tip.number:
            raise ValueError(f"jump backwards from {self.tip.number} to {header.number}")
        out = [Emission(t, "confirmed", max(header.number - t.block_number, self.confirmations))
               for t in transfers]
        out.extend(self._confirm(at=header.number))
        for h in known:
            if h.number < header.number:
                self.headers[h.number] = h
        self.headers[header.number] = header
        self.tip = header
        self._prune()
        return out

    def rewind(self, number: int) -> list[Emission]:
        """Drop every block above `number`; their unconfirmed transfers are reverted."""
        out: list[Emission] = []
        for n in sorted(self.unconfirmed, reverse=True):
            if n > number:
                tip_n = self.tip.number if self.tip else n
                out.extend(Emission(t, "reverted", tip_n - n) for t in reversed(self.unconfirmed.pop(n)))
        for n in [n for n in self.headers if n > number]:
            del self.headers[n]
        self.tip = self.headers.get(number)
        return out

    def _confirm(self, at: int | None = None) -> list[Emission]:
        tip_n = at if at is not None else (self.tip.number if self.tip else 0)
        out: list[Emission] = []
        for n in sorted(self.unconfirmed):
            if tip_n - n < self.confirmations:
                break
            out.extend(Emission(t, "confirmed", tip_n - n) for t in self.unconfirmed.pop(n))
        return out

    def _prune(self) -> None:
        if self.tip is None:
            return
        low = self.tip.number - self.max_depth
        for n in [n for n in self.headers if n <= low]:
            del self.headers[n]

    # -- persistence ---------------------------------------------------------------------------
    def restore(self, headers: Iterable[Header], unconfirmed: Iterable[Transfer]) -> None:
        """State from a checkpoint: recent headers (the highest is the tip) and unconfirmed transfers."""
        self.headers = {h.number: h for h in headers}
        self.tip = self.headers[max(self.headers)] if self.headers else None
        self.unconfirmed = {}
        for t in unconfirmed:
            self.unconfirmed.setdefault(t.block_number, []).append(t)
        for v in self.unconfirmed.values():
            v.sort(key=lambda t: t.log_index)
