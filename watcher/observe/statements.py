"""Daily statements: per UTC day, agent, merchant and category: count, sum, first and last transaction.

A stage (after the shard) folds each batch's counted deltas into rows keyed by (day of the payment's
first-seen time, agent, merchant, category) and publishes them to `statements.topic` (key: agent):

    {"type": "statement", "id": "2026-11-23|0xAgent|0xMerchant|data", "day": "2026-11-23",
     "agent": "0x...", "merchant": "0x...", "category": "data" | "uncategorized", "count": 12,
     "amount": "1234567" (base units, decimal string), "firstAt": "...Z", "lastAt": "...Z",
     "firstTx": "0x...", "lastTx": "0x...", "revision": 3, "final": false, "changes": 14}

Changed rows of open days are published every `publish_interval_seconds` of the wall clock (final:
false); a day is published final once `close_after_seconds` have passed after its end by the partition's
clock (`ctx.now_ms`: the wall clock, or the partition's own event time while the daemon catches up a
backlog, so a day is not closed while its last records are still to be read), and corrections that
arrive later (a reorg) are republished final with a higher revision while the day is retained
(`retain_days`). State is part of the partition checkpoint, so a restart neither loses nor doubles a row.

`changes` counts the input records folded into the row: every settle and transfer record of the row's
payments, whether or not it moved the row (reorg un-counts included). It, not `revision`, orders the rows
of one id across owners: after a handoff or crash the new owner restores revision r from an older
checkpoint and replays the input after it, while the old owner may already have published r+1 (or r+2)
of its own. Both rows are then the checkpoint plus a prefix of each input topic, so the one with more
`changes` describes more of it. The replay may interleave the two topics (settles, transfers) otherwise
than the first run did, which changes how many deltas a payment makes (a settle then a transfer of
another amount: a count and a correction; the transfer first: one count), so deltas are not counted:
records are, and their number does not depend on the interleaving. A settle that follows its payment's
transfer moves the payment (`Delta.move`) from the transfer's row (its `to`, the category it gave) to the
settle's, with the changes of the payment's records folded so far, as if the settle had come first; a row
left empty that was never published is dropped. Revision numbers of two owners say
nothing about progress, and neither do `count` or `lastAt` (an un-count lowers the count and leaves
`lastAt`). A reader (`latest`, `spendwatch statement`) keeps per id the row ranked highest by (changes,
final, revision, lastAt, count), then by its encoded bytes, so the order in which rows arrive never
matters. (Stages called without a shard, as in unit tests, count only the records that moved a row.)
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from watcher.events.observation import Kind

log = logging.getLogger("watcher.statements")
DAY_MS = 86_400_000
UNCATEGORIZED = "uncategorized"
SETTLE, VERIFY = Kind.SETTLE, Kind.VERIFY
_NEVER = 1 << 62   # a time no partition clock reaches


class StatementSettings(BaseModel):
    """`[statements]`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    topic: str = "watcher.statements"
    publish_interval_seconds: Annotated[float, Field(gt=0)] = 300.0
    close_after_seconds: Annotated[int, Field(ge=0)] = 3600
    retain_days: Annotated[int, Field(ge=1, le=31)] = 2
    max_rows: Annotated[int, Field(ge=1000)] = 2_000_000
    # how long Kafka keeps the rows (the topic's retention.ms, set when spendwatch creates it): a broker's
    # default (7 days) would delete a day's statement a week later, and `spendwatch statement` would then
    # export an empty day
    topic_retention_days: Annotated[int, Field(ge=1, le=36_500)] = 400


class Statement(msgspec.Struct, frozen=True, tag_field="type", tag="statement", rename="camel"):
    id: str
    day: str
    agent: str
    merchant: str
    category: str
    count: int
    amount: str
    first_at: str
    last_at: str
    first_tx: str | None
    last_tx: str | None
    revision: int
    final: bool
    changes: int = 0   # input records folded into the row; rows published before this field read as 0


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Statement)


def decode_statement(raw: bytes) -> Statement:
    return _dec.decode(raw)


def day_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


def iso(ms: int) -> str:
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


# a row: [count, amount, first_ms, last_ms, first_tx, last_tx, revision, changes, dirty]
COUNT, AMOUNT, FIRST, LAST, FIRST_TX, LAST_TX, REV, CHANGES, DIRTY = range(9)


class _Partition:
    def __init__(self) -> None:
        self.rows: dict[tuple[int, str, str, str], list] = {}
        self.closed: set[int] = set()
        self.next_close_ms = 0   # no open day with rows closes before this (partition time); 0: not known yet
        self.last_publish_ms = 0
        self.dropped = 0


class StatementStage:
    def __init__(self, settings: StatementSettings = StatementSettings(), metrics=None) -> None:
        self.s = settings
        self.metrics = metrics
        self.parts: dict[int, _Partition] = {}

    # -- Stage protocol --------------------------------------------------------------------------------
    def on_batch(self, ctx) -> None:
        st = self.parts.get(ctx.partition)
        if st is None:
            st = self.parts[ctx.partition] = _Partition()
        out, obs = ctx.outcome, ctx.observations
        join = getattr(ctx.shard, "join", None)
        left: dict = {}   # payment key of a payment moved in this batch -> (input index, old row)
        if out.deltas:
            self._fold(st, out.deltas, obs, ctx.now_ms)
            moves = getattr(out, "moves", ())
            if moves:
                left = self._move(st, [out.deltas[j] for j in moves], [out.stream_positions[j] for j in moves],
                                  obs, ctx.now_ms, join)
        if join is not None and len(obs) > len(out.stream_positions):
            self._count_quiet(st, obs, out.stream_positions, join, left)
        for _, key in left.values():
            row = st.rows.get(key)
            if row is not None and row[REV] == 0 and row[COUNT] == row[AMOUNT] == 0 and row[CHANGES] <= 0:
                del st.rows[key]   # the payment moved out of a row no one has seen
            elif row is not None and row[CHANGES] < 0:
                row[CHANGES] = 0   # a row restored from a v1 checkpoint counted its changes from then
        self._publish(st, ctx)

    def snapshot(self, partition: int) -> object:
        st = self.parts.get(partition)
        if st is None:
            return None
        return {"v": 2, "rows": [list(k) + v for k, v in st.rows.items()], "closed": sorted(st.closed),
                "last_publish_ms": st.last_publish_ms, "dropped": st.dropped}

    def restore(self, partition: int, data: object | None) -> None:
        st = self.parts[partition] = _Partition()
        if not data:
            return
        for r in data["rows"]:
            row = list(r[4:])
            if len(row) == DIRTY:   # a v1 checkpoint, before `changes`: count from here
                row.insert(CHANGES, 0)
            st.rows[(r[0], r[1], r[2], r[3])] = row
        st.closed = set(data["closed"])
        st.last_publish_ms = data["last_publish_ms"]
        st.dropped = data["dropped"]

    def drop(self, partition: int) -> None:
        self.parts.pop(partition, None)

    # -- the pure part ---------------------------------------------------------------------------------
    def _fold(self, st: _Partition, deltas, observations, now_ms: int) -> None:
        by_id = {o.event_id: o for o in observations}
        oldest = now_ms // DAY_MS - self.s.retain_days
        for d in deltas:
            if d.move is not None:
                continue   # _move
            o = by_id.get(d.event_id)
            merchant = o.merchant if o is not None else "unknown"
            key = (d.ts_ms // DAY_MS, d.agent, merchant, d.category or UNCATEGORIZED)
            # one change per record that moved the row (each delta has one); _count_quiet adds the rest
            self._add(st, key, d.ts_ms, d.count, d.amount, 1, o.tx if o is not None else None, oldest)

    def _add(self, st: _Partition, key: tuple, ts_ms: int, count: int, amount: int, changes: int, tx: str | None,
             oldest: int) -> None:
        row = st.rows.get(key)
        if row is None:
            day = key[0]
            if day < oldest or len(st.rows) >= self.s.max_rows:
                st.dropped += 1
                log.warning("statement row dropped (day %s %s): %s", day_text(day),
                            "past retention" if day < oldest else "max_rows reached", key)
                return
            row = st.rows[key] = [0, 0, ts_ms, ts_ms, None, None, 0, 0, True]
            if day not in st.closed:
                st.next_close_ms = min(st.next_close_ms, self._close_ms(day))
        row[COUNT] += count
        row[CHANGES] += changes
        row[AMOUNT] += amount
        if count > 0:   # a payment counted: it may be the day's first or last transaction
            if row[FIRST_TX] is None or ts_ms < row[FIRST]:
                row[FIRST], row[FIRST_TX] = ts_ms, tx
            if row[LAST_TX] is None or ts_ms >= row[LAST]:
                row[LAST], row[LAST_TX] = ts_ms, tx
        row[DIRTY] = True

    def _move(self, st: _Partition, moving, positions: list[int], observations, now_ms: int, join) -> dict:
        """Each settle that followed its payment's transfer: the payment leaves the transfer's row (with the
        changes of its records so far) for the settle's, which also gets the settle's change. Returns, per
        moved payment (its key in `join`, or (tx, agent) without a join), the settle's input index and the
        row it left (for `_count_quiet`)."""
        oldest = now_ms // DAY_MS - self.s.retain_days
        left = {}
        for d, pos in zip(moving, positions):
            mv, day = d.move, d.ts_ms // DAY_MS
            tx = observations[pos].tx
            old = (day, d.agent, mv.merchant, mv.category or UNCATEGORIZED)
            new = (day, d.agent, d.merchant, d.category or UNCATEGORIZED)
            row = st.rows.get(old)
            if old == new:
                if row is not None:   # None: the payment's delta was dropped (retention, max_rows)
                    row[CHANGES] += 1
                    row[DIRTY] = True
                continue
            if row is not None:
                row[COUNT] -= mv.count
                row[AMOUNT] -= mv.amount
                row[CHANGES] -= mv.records
                row[DIRTY] = True
            self._add(st, new, d.ts_ms, mv.count, mv.amount, mv.records + 1, tx, oldest)
            if tx is not None:
                left[(tx, d.agent) if join is None else join.payment_key(tx, d.agent)] = (pos, old)
        return left

    @staticmethod
    def _count_quiet(st: _Partition, observations, moved_or_signal: list[int], join, left: dict) -> None:
        """One change per settle or transfer record of a row's payment that did not move the row (a transfer
        confirming what was settled, a redelivery); the join's memory, after the batch, says which payment
        (`Join.payment_key`: a second payer of a transaction has its own) and so which row, except for a
        record before its payment's settle moved it in this batch (`left`: payment key -> (the settle's input
        index, the row it left)), which was in the row left. Read-only on the join."""
        rows, payments, key_of = st.rows, join.payments, join.payment_key
        in_cur, in_prev = payments.current.get, payments.previous.get
        for i in set(range(len(observations))).difference(moved_or_signal):
            o = observations[i]
            tx, kind = o.tx, o.kind
            if tx is None or kind == VERIFY or (kind == SETTLE and o.status != "settled"):
                continue
            key = key_of(tx, o.agent)
            p = in_cur(key) or in_prev(key)
            if p is None:   # a 0-value transfer of no payment, or a payment already forgotten
                continue
            moved = left.get(key) if left else None
            if moved is not None and i < moved[0]:
                row = rows.get(moved[1])
            else:
                row = rows.get((p.ts_ms // DAY_MS, p.agent, o.merchant, p.category or UNCATEGORIZED))
            if row is not None:   # None: the payment's delta was dropped (retention, max_rows)
                row[CHANGES] += 1

    def _close_ms(self, day: int) -> int:
        return (day + 1) * DAY_MS + self.s.close_after_seconds * 1000

    def _due_days(self, st: _Partition, now: int) -> set[int]:
        """Open days with rows whose close `now` reached. The rows are read only once `now` reaches the
        earliest close (`st.next_close_ms`, kept here and by `_add`): a backlog runs the stage every few
        seconds of its event time, and most runs close nothing."""
        if now < st.next_close_ms:
            return set()
        due, next_close = set(), _NEVER
        for day in {k[0] for k in st.rows}.difference(st.closed):
            at = self._close_ms(day)
            if now >= at:
                due.add(day)
            elif at < next_close:
                next_close = at
        st.next_close_ms = next_close
        return due

    def _publish(self, st: _Partition, ctx) -> None:
        now = ctx.now_ms
        due_days = self._due_days(st, now)
        periodic = ctx.wall_ms - st.last_publish_ms >= self.s.publish_interval_seconds * 1000
        if not due_days and not periodic:
            return
        if periodic:
            st.last_publish_ms = ctx.wall_ms
        out = 0
        for key, row in st.rows.items():
            day = key[0]
            final = day in st.closed or day in due_days
            if row[DIRTY] or day in due_days:
                row[REV] += 1
                row[DIRTY] = False
                ctx.publish.append((self.s.topic, key[1].encode(), _enc.encode(self._record(key, row, final))))
                out += 1
        st.closed |= due_days
        oldest = now // DAY_MS - self.s.retain_days
        if st.closed and min(st.closed) < oldest:   # a closed day past retention: read the rows to forget it
            for key in [k for k in st.rows if k[0] < oldest and k[0] in st.closed]:
                del st.rows[key]
            st.closed = {d for d in st.closed if d >= oldest}
        if out and self.metrics is not None:
            self.metrics.statements.inc(out)

    @staticmethod
    def _record(key, row, final: bool) -> Statement:
        day, agent, merchant, category = key
        return Statement(id=f"{day_text(day)}|{agent}|{merchant}|{category}", day=day_text(day), agent=agent,
                         merchant=merchant, category=category, count=row[COUNT], amount=str(row[AMOUNT]),
                         first_at=iso(row[FIRST]), last_at=iso(row[LAST]), first_tx=row[FIRST_TX],
                         last_tx=row[LAST_TX], revision=row[REV], final=final, changes=row[CHANGES])


# -- reading them back -----------------------------------------------------------------------------------
def rank(s: Statement) -> tuple:
    """How far along a row of its id is; the reader keeps the highest (see the module docstring).

    One owner publishes rows of an id in increasing rank. Of two owners' rows, more `changes` is more of
    the same input; equal `changes` is the same content (final beats provisional, then the revision).
    `lastAt` and `count` only separate rows that replay could not make equal, and the encoded bytes make
    the order total, so the choice never depends on the order of arrival.
    """
    return (s.changes, s.final, s.revision, s.last_at, s.count, _enc.encode(s))


def latest(records) -> dict[str, Statement]:
    """The highest-ranked row per statement id, whatever the order of `records`."""
    best: dict[str, tuple[tuple, Statement]] = {}
    for s in records:
        r = rank(s)
        cur = best.get(s.id)
        if cur is None or r > cur[0]:
            best[s.id] = (r, s)
    return {k: s for k, (_, s) in best.items()}


async def read_statements(bootstrap: str, topic: str, day: str, *, timeout_s: float = 30.0) -> list[Statement]:
    """Every statement row of `day` (YYYY-MM-DD) in `topic`, the highest-ranked row of each id (most
    `changes`, then final, then revision: see `rank`), sorted."""
    from watcher.sources.kafka import read_whole

    records = await read_whole(bootstrap, topic, timeout_s=timeout_s, client_id="spendwatch-statement",
                               otherwise="nothing was exported")
    rows: list[Statement] = []
    for m in records:
        try:
            s = decode_statement(m.value)
        except msgspec.DecodeError:
            log.warning("skipping a malformed record at %s[%d]@%d", m.topic, m.partition, m.offset)
            continue
        if s.day == day:
            rows.append(s)
    return sorted(latest(rows).values(), key=lambda s: (s.agent, s.merchant, s.category))


async def ensure_statement_topic(kafka, settings: StatementSettings) -> None:
    """Create `settings.topic` (as many partitions as the inputs, kept `topic_retention_days`) if it is missing
    and creation is on. An existing topic keeps its own retention."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id=f"{kafka.client_id}-admin")
    await admin.start()
    try:
        if settings.topic not in set(await admin.list_topics()) and kafka.create_topics:
            retention = {"retention.ms": str(settings.topic_retention_days * DAY_MS)}
            try:
                await admin.create_topics([NewTopic(settings.topic, kafka.partitions, kafka.replication_factor,
                                                    topic_configs=retention)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def statement_topic_service(settings: StatementSettings):
    """A daemon service factory that makes sure the statements topic exists before consuming starts."""
    import contextlib

    @contextlib.asynccontextmanager
    async def service(daemon):
        await ensure_statement_topic(daemon.k, settings)
        yield None

    return service
