"""Errors of the chain bridge (all under watcher.errors.SpendwatchError).

    SpendwatchError
     └── ChainError           the chain bridge
          ├── NodeError       the EVM node failed, refused a call, or is on the wrong chain
          │    └── RangeRefusedError   eth_getLogs over several blocks refused as too large
          └── PublishError    Kafka did not acknowledge a record
"""

from __future__ import annotations

from watcher.errors import SpendwatchError


class ChainError(SpendwatchError):
    """Root of the chain bridge's errors."""


class NodeError(ChainError):
    """An RPC call failed or timed out, or the node answered something unusable."""


class RangeRefusedError(NodeError):
    """The node refused eth_getLogs over a range of blocks as too large ("query returned more than 10000
    results", "block range too large", ...): the same blocks can be read in smaller ranges."""

    def __init__(self, message: str, *, first: int, last: int) -> None:
        self.first, self.last = first, last
        super().__init__(message)

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1


class PublishError(ChainError):
    """A record was not acknowledged by Kafka."""
