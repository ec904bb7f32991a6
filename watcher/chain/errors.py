"""Errors of the chain bridge (all under watcher.errors.SpendwatchError).

    SpendwatchError
     └── ChainError           the chain bridge
          ├── NodeError       the EVM node failed, refused a call, or is on the wrong chain
          └── PublishError    Kafka did not acknowledge a record
"""

from __future__ import annotations

from watcher.errors import SpendwatchError


class ChainError(SpendwatchError):
    """Root of the chain bridge's errors."""


class NodeError(ChainError):
    """An RPC call failed or timed out, or the node answered something unusable."""


class PublishError(ChainError):
    """A record was not acknowledged by Kafka."""
