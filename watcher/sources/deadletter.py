"""The dead-letter topic: every record that cannot be used, with why and where it came from.

Value (JSON): {"reason", "detail", "topic", "partition", "offset", "key_b64", "raw_b64", "deadLetteredAt",
"rawSize"}. The same reason, topic, partition and offset also travel as headers, so tools can filter without
parsing. The raw bytes are kept whole (base64), so a fixed record can be re-published; except that a record
over MAX_RAW_BYTES (or a key over MAX_KEY_BYTES) keeps only its first bytes, with `rawSize` its whole size:
whole, its dead letter would pass Kafka's default 1 MB message limit, be refused, and stop the daemon at
the same offset after every restart. The whole record stays at its source offset.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import msgspec


MAX_RAW_BYTES = 700_000     # base64 makes it 933 KB: below the broker's default message limit with the rest
MAX_KEY_BYTES = 4_096


class DeadLetter(msgspec.Struct, frozen=True):
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key_b64: str | None
    raw_b64: str
    deadLetteredAt: str
    rawSize: int | None = None   # the record's whole size when raw_b64 holds only its first MAX_RAW_BYTES

    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(DeadLetter)


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The source record's key as a dead letter carries it (inside, and as its Kafka key): cut to size."""
    return key[:MAX_KEY_BYTES] if key is not None else None


def make_dead_letter(reason: str, detail: str, topic: str, partition: int, offset: int, key: bytes | None,
                     raw: bytes | None) -> DeadLetter:
    raw = raw or b""
    cut = len(raw) > MAX_RAW_BYTES
    detail = detail[:500] + (f"; only the first {MAX_RAW_BYTES} of {len(raw)} bytes are kept here (the whole "
                             f"record is at {topic}[{partition}]@{offset})" if cut else "")
    return DeadLetter(reason, detail, topic, partition, offset,
                      base64.b64encode(dead_letter_key(key)).decode() if key is not None else None,
                      base64.b64encode(raw[:MAX_RAW_BYTES]).decode(),
                      datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), len(raw) if cut else None)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dec.decode(raw)


def dead_letter_value(dl: DeadLetter) -> bytes:
    return _enc.encode(dl)


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    return [("reason", dl.reason.encode()), ("source-topic", dl.topic.encode()),
            ("source-partition", str(dl.partition).encode()), ("source-offset", str(dl.offset).encode())]
