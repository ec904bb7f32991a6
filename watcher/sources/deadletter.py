"""The dead-letter topic: every record that cannot be used, with why and where it came from.

Value (JSON): {"reason", "detail", "topic", "partition", "offset", "key_b64", "raw_b64", "deadLetteredAt"}.
The same reason, topic, partition and offset also travel as headers, so tools can filter without parsing.
The raw bytes are kept whole (base64), so nothing is lost and a fixed record can be re-published.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import msgspec


class DeadLetter(msgspec.Struct, frozen=True):
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key_b64: str | None
    raw_b64: str
    deadLetteredAt: str

    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(DeadLetter)


def make_dead_letter(reason: str, detail: str, topic: str, partition: int, offset: int, key: bytes | None,
                     raw: bytes | None) -> DeadLetter:
    return DeadLetter(reason, detail[:500], topic, partition, offset,
                      base64.b64encode(key).decode() if key is not None else None,
                      base64.b64encode(raw or b"").decode(),
                      datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dec.decode(raw)


def dead_letter_value(dl: DeadLetter) -> bytes:
    return _enc.encode(dl)


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    return [("reason", dl.reason.encode()), ("source-topic", dl.topic.encode()),
            ("source-partition", str(dl.partition).encode()), ("source-offset", str(dl.offset).encode())]
