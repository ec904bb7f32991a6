"""The dead-letter topic: every record that cannot be used, with why and where it came from.

Value (JSON): {"reason", "detail", "topic", "partition", "offset", "key_b64", "raw_b64", "deadLetteredAt",
"rawSize", "headers", "keySize", "headersSize"}. The same reason, topic, partition and offset also travel as
Kafka headers, so tools can filter without parsing. The key, raw bytes and the source record's Kafka headers
(`headers`: [name, base64 value or null] pairs, in order) are kept whole, so a fixed record can be re-published
as it was (`spendwatch deadletters --redrive`); except that a record over MAX_RAW_BYTES, a key over
MAX_KEY_BYTES, or headers over MAX_HEADER_BYTES (names and values summed) keep only their first bytes (whole
headers, in order, while they fit), with `rawSize`, `keySize` or `headersSize` their whole size: whole, the
dead letter would pass Kafka's default 1 MB message limit, be refused, and stop the daemon at the same offset
after every restart. The whole record stays at its source offset. Dead letters written before headers were
kept have no `headers` (None): they still decode.

The summary and re-drive selection of `spendwatch deadletters` are here too, as plain functions.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

import msgspec


MAX_RAW_BYTES = 700_000     # base64 makes it 933 KB: below the broker's default message limit with the rest
MAX_KEY_BYTES = 4_096
MAX_HEADER_BYTES = 16_384   # names and values summed; base64 makes the values at most 22 KB


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
    headers: list[tuple[str, str | None]] | None = None   # the source record's headers; None: not recorded
    keySize: int | None = None       # the key's whole size when key_b64 holds only its first MAX_KEY_BYTES
    headersSize: int | None = None   # the headers' whole size when `headers` holds only those that fit

    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    def key(self) -> bytes | None:
        return base64.b64decode(self.key_b64) if self.key_b64 is not None else None

    def source_headers(self) -> list[tuple[str, bytes | None]]:
        return [(n, base64.b64decode(v) if v is not None else None) for n, v in self.headers or ()]

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def cut(self) -> list[str]:
        """What of the source record this dead letter does not hold whole (empty when it holds all)."""
        out = [f"{what} ({kept} of {size} bytes kept)" for what, kept, size in (
            ("record", MAX_RAW_BYTES, self.rawSize), ("key", MAX_KEY_BYTES, self.keySize)) if size is not None]
        if self.headersSize is not None:   # rare: only then are the kept headers measured
            kept = sum(len(n.encode()) + len(v or b"") for n, v in self.source_headers())
            out.append(f"headers ({kept} of {self.headersSize} bytes kept)")
        return out


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(DeadLetter)


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The source record's key as a dead letter carries it (inside, and as its Kafka key): cut to size."""
    return key[:MAX_KEY_BYTES] if key is not None else None


def _b64(b: bytes | None) -> str | None:
    return base64.b64encode(b).decode() if b is not None else None


def _kept_headers(headers: Sequence[tuple[str, bytes | None]]) -> tuple[list[tuple[str, str | None]], int | None]:
    """The headers that fit MAX_HEADER_BYTES (whole, in order, up to the first that does not) and, when some
    do not, the whole headers' size."""
    kept: list[tuple[str, str | None]] = []
    used = total = 0
    full = False
    for name, value in headers:
        size = len(name.encode()) + len(value or b"")
        total += size
        full = full or used + size > MAX_HEADER_BYTES
        if not full:
            kept.append((name, _b64(value)))
            used += size
    return kept, (total if full else None)


def make_dead_letter(reason: str, detail: str, topic: str, partition: int, offset: int, key: bytes | None,
                     raw: bytes | None, headers: Sequence[tuple[str, bytes | None]] = ()) -> DeadLetter:
    raw = raw or b""
    cut = len(raw) > MAX_RAW_BYTES
    detail = detail[:500] + (f"; only the first {MAX_RAW_BYTES} of {len(raw)} bytes are kept here (the whole "
                             f"record is at {topic}[{partition}]@{offset})" if cut else "")
    kept, headers_size = _kept_headers(headers)
    return DeadLetter(reason, detail, topic, partition, offset, _b64(dead_letter_key(key)),
                      base64.b64encode(raw[:MAX_RAW_BYTES]).decode(),
                      datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), len(raw) if cut else None,
                      kept, len(key) if key is not None and len(key) > MAX_KEY_BYTES else None, headers_size)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dec.decode(raw)


def dead_letter_value(dl: DeadLetter) -> bytes:
    return _enc.encode(dl)


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    return [("reason", dl.reason.encode()), ("source-topic", dl.topic.encode()),
            ("source-partition", str(dl.partition).encode()), ("source-offset", str(dl.offset).encode())]


# -- reading the topic back (spendwatch deadletters) -------------------------------------------------------

def _when(dl: DeadLetter) -> datetime:
    try:
        return datetime.fromisoformat(dl.deadLetteredAt)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def in_order(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """Oldest first (then by source position): the order of --list and of a re-drive."""
    return sorted(letters, key=_order)


def _order(d: DeadLetter):
    return _when(d), d.topic, d.partition, d.offset


def summarize(letters: Sequence[DeadLetter], unreadable: int = 0) -> dict:
    """Counts by reason and by source topic (most first), the oldest and newest, how many are cut."""
    return {"total": len(letters), "unreadable": unreadable,
            "byReason": dict(Counter(d.reason for d in letters).most_common()),
            "bySourceTopic": dict(Counter(d.topic for d in letters).most_common()),
            "oldest": min(letters, key=_order).deadLetteredAt if letters else None,
            "newest": max(letters, key=_order).deadLetteredAt if letters else None,
            "cut": sum(1 for d in letters if d.cut())}


def list_line(dl: DeadLetter) -> str:
    """One line: when, reason, source topic[partition]@offset, detail."""
    return f"{dl.deadLetteredAt}  {dl.reason}  {dl.where}  {' '.join(dl.detail.split())}"


@dataclass
class RedrivePlan:
    """Which dead letters to re-publish: each source record once, and none that is not whole."""
    send: list[DeadLetter] = field(default_factory=list)
    cut: list[DeadLetter] = field(default_factory=list)
    repeats: int = 0    # further dead letters of a source record already in `send` or `cut`


def plan_redrive(letters: Iterable[DeadLetter]) -> RedrivePlan:
    plan, seen = RedrivePlan(), set()
    for dl in in_order(letters):
        if (dl.topic, dl.partition, dl.offset) in seen:
            plan.repeats += 1
            continue
        seen.add((dl.topic, dl.partition, dl.offset))
        (plan.cut if dl.cut() else plan.send).append(dl)
    return plan
