"""A fleet of `spendwatch run` processes in one consumer group, and what they leave on the broker.

A `Run` is one deployment (its own group, decisions, breaker, checkpoint and output topics) over shared
input topics, so a single process and N replicas can read exactly the same records and be compared:

    per-agent window totals   from the newest checkpoints (what the next owner would restore)
    decision ids              every record of the run's decisions topic (repeats allowed)
    breaker states            the newest change per agent on the run's breaker topic
    webhooks                  what the loopback recorder received (idempotency key -> bodies)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tests.breaker.conftest import SECRET  # the loopback recorder verifies signatures with it
from tests.topics import read_topic
from watcher.breaker.outbox import ChangeRecord, decode_record
from watcher.config import load_settings
from watcher.events.addresses import key_address
from watcher.pipeline.shard import Shard
from watcher.sources import kafka as kafka_io
from watcher.sources.checkpoints import CheckpointStore
from watcher.sources.kafka import committed_input_offsets



# Deterministic rules only, over windows that no bucket leaves during a test (events are minutes old,
# the 1h window has 10-minute buckets, the 24h one 3-hour buckets): decisions then depend on the order
# of records within a partition only, not on batch boundaries or wall time. Anomaly models are off
# (their scores are not claimed batch-independent); the escalation timeout is far beyond the test.
POLICY = """
version = "scale-1"
[defaults]
per_payment_max_usdc = 0.205
warn_cooldown_seconds = 600
[defaults.caps]
per_minute_usdc = 0
per_hour_usdc = 12
per_day_usdc = 40
[defaults.escalation]
payment_above_usdc = 0.19
timeout_seconds = 36000
[defaults.anomaly]
enabled = false
fleet = false
[defaults.findings]
failed_verifications = 3
failed_verifications_window_seconds = 60
"""


def input_topics(unique: str) -> dict[str, str]:
    return {"payments_topic": f"pay-{unique}", "chain_topic": f"chain-{unique}"}


@dataclass
class Run:
    """One deployment: `replicas` processes sharing a group over the shared input topics."""

    bootstrap: str
    unique: str          # of the input topics
    name: str            # of this run's group and output topics
    partitions: int
    tmp: Path
    webhook_url: str
    checkpoint_s: float = 0.5
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"{self.unique}-{self.name}"

    def kafka(self) -> dict:
        t = self.tag
        return {"bootstrap": self.bootstrap, "group": f"g-{t}", "partitions": self.partitions,
                **input_topics(self.unique), "dead_letter_topic": f"dlq-{t}", "checkpoint_topic": f"ckpt-{t}",
                "findings_topic": f"find-{t}", "decisions_topic": f"dec-{t}", "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 300, "poll_timeout_ms": 100, "max_batch": 400}

    @property
    def breaker_topic(self) -> str:
        return f"brk-{self.tag}"

    def settings(self):
        return load_settings(None, kafka=self.kafka())

    def write_config(self) -> Path:
        policy = self.tmp / f"policy-{self.name}.toml"
        policy.write_text(POLICY)
        k = self.kafka()
        lines = ["[kafka]"] + [f"{key} = {_toml(v)}" for key, v in k.items()]
        lines += ["[checkpoint]", f"interval_seconds = {self.checkpoint_s}",
                  "[detect]", f"policy_file = {_toml(str(policy))}",
                  "[breaker]", f"topic = {_toml(self.breaker_topic)}",
                  "[webhook]", f"url = {_toml(self.webhook_url)}", f"secrets = [{_toml(SECRET)}]",
                  "retry_initial_seconds = 0.05", "retry_max_seconds = 0.5",
                  "[admin]", "enabled = false", "[metrics]", "enabled = false",
                  "[statements]", "enabled = false"]
        path = self.tmp / f"spendwatch-{self.name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def log_path(self, i: int) -> Path:
        return self.tmp / f"{self.name}-replica{i}.log"

    def start(self, i: int) -> subprocess.Popen:
        cfg = self.tmp / f"spendwatch-{self.name}.toml"
        if not cfg.exists():
            self.write_config()
        log = open(self.log_path(i), "ab")
        p = subprocess.Popen([sys.executable, "-m", "watcher", "--log-level", "INFO", "run", "--config", str(cfg)],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every live replica; each must exit 0 (checkpoint, commit, flush)."""
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        bad = []
        for p in live:
            try:
                rc = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = "timeout"
            if rc != 0:
                bad.append((self.procs.index(p), rc))
        if bad:
            raise AssertionError(f"replicas exited badly {bad}:\n" + self.logs()[-4000:])

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(self.log_path(i).read_text() for i in range(len(self.procs))
                         if self.log_path(i).exists())

    # -- what the run left on the broker ---------------------------------------------------------
    async def committed(self) -> int:
        return await committed_input_offsets(self.settings().kafka)

    async def checkpoints(self) -> dict:
        """Newest checkpoint per partition: {p: (manifest, decoded snapshot)}."""
        s = self.settings()
        producer = kafka_io.producer(s.kafka)
        await producer.start()
        try:
            store = CheckpointStore(producer, self.bootstrap, s.kafka.checkpoint_topic, s.kafka.group)
            restored = await store.read_latest(set(range(self.partitions)))
        finally:
            await producer.stop()
        return {p: (r.manifest, msgspec.msgpack.decode(r.blob)) for p, r in restored.items()}

    async def totals(self, window: int = -1) -> tuple[dict[str, tuple[int, int]], int]:
        """Per-agent (sum, count) of a window from the newest checkpoints, and the input offsets covered."""
        s = self.settings()
        got: dict[str, tuple[int, int]] = {}
        covered = 0
        for manifest, snap in (await self.checkpoints()).values():
            covered += sum(manifest.offsets.values())
            shard = Shard.restore(snap["shard"], s.shard_config())
            sums, counts = shard.agents.totals()
            for i, key in enumerate(shard.agents.keys):
                got[key_address(key)] = (int(sums[i, window]), int(counts[i, window]))
        return got, covered

    async def decisions(self) -> list[dict]:
        return [msgspec.json.decode(v) for v in await read_topic(self.bootstrap, self.settings().kafka.decisions_topic)]

    async def changes(self) -> list[ChangeRecord]:
        out = []
        for v in await read_topic(self.bootstrap, self.breaker_topic):
            r = decode_record(v)
            if isinstance(r, ChangeRecord):
                out.append(r)
        return out

    async def breaker_states(self) -> dict[str, tuple[str, int]]:
        """agent -> (state, trips) of its newest change (highest seq of its partition)."""
        latest: dict[str, ChangeRecord] = {}
        for c in await self.changes():
            cur = latest.get(c.agent)
            if cur is None or c.seq >= cur.seq:
                latest[c.agent] = c
        return {a: (c.state, c.breaker.trips) for a, c in latest.items()}


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'




def hooks_by_key(recorder) -> dict[str, set[bytes]]:
    """Idempotency key -> the distinct bodies received with it (a repeat must carry the same body)."""
    out: dict[str, set[bytes]] = defaultdict(set)
    for h in recorder.at("/hook"):
        out[h.key].add(h.body)
    return out
