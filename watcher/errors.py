"""The one exception tree of spendwatch.

    SpendwatchError
     ├── ConfigError          bad configuration: names the file, the key and the fix
     ├── EventError           an input record that cannot be used (carries a reason code)
     ├── BrokerError          the embedded Kafka-protocol broker could not start or stopped
     ├── CheckpointError      a state checkpoint could not be written or read back
     └── ClosedError          a resource was used after it was closed
"""

from __future__ import annotations


class SpendwatchError(Exception):
    """Root of every error spendwatch raises on purpose."""


class ConfigError(SpendwatchError):
    """Configuration that cannot be used; the message says where and how to fix it."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None) -> None:
        self.file, self.key, self.fix = file, key, fix
        parts = [message]
        if file:
            parts.append(f"file: {file}")
        if key:
            parts.append(f"key: {key}")
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("; ".join(parts))


class EventError(SpendwatchError):
    """A record that fails decoding or validation. `reason` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class BrokerError(SpendwatchError):
    """The embedded broker could not be found, started or reached."""


class CheckpointError(SpendwatchError):
    """A checkpoint could not be written, or what was read back is not usable."""


class ClosedError(SpendwatchError):
    """A resource was used after close()."""
