"""The bridge's durable position: a small JSON file, replaced atomically (tmp + fsync + rename).

    {"version": 1, "chainId": 8453, "token": "0x...",
     "block": {"number": 123, "hash": "0x..."},                   last fully processed block
     "headers": [{"number", "hash", "parentHash", "timestamp"}],   recent blocks, to find a reorg's
                                                                   common ancestor after a restart
     "unconfirmed": [<chain.transfer record>, ...],                published pending, not yet confirmed
     "readFrom": 120}                                              the first block this bridge read (absent:
                                                                   unknown, from an older bridge)

"Fully processed" means every transfer of every block up to `block` was published (and acknowledged by
Kafka) in its current status. After a restart the bridge resumes at block + 1; the unconfirmed transfers
are confirmed or reverted as if it had never stopped. Blocks below `readFrom` were never read (a first start
without start_block begins after the head): the bridge never sends a chain.progress record for them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from watcher.chain.abi import Header
from watcher.chain.logs import Transfer, from_wire, to_wire
from watcher.errors import CheckpointError
from watcher.events.wire import ChainTransfer

VERSION = 1
# how to go on from a checkpoint that cannot be used (deleting it alone starts after the head: a gap)
REPAIR_FIX = ("fix: restore it from a backup, or delete it and set chain.start_block to a block at or before the "
              "last one processed (overlap is harmless: record ids are stable); deleted without start_block, the "
              "bridge starts after the head and never reads the blocks in between")
_transfer_decoder = msgspec.json.Decoder(ChainTransfer)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_id: int
    token: str
    headers: tuple[Header, ...]        # ascending; the last is the processed tip
    unconfirmed: tuple[Transfer, ...]
    read_from: int | None = None       # the first block read; None: unknown (an older checkpoint)

    @property
    def tip(self) -> Header:
        return self.headers[-1]


def write_checkpoint(path: Path, cp: Checkpoint) -> None:
    if not cp.headers:
        raise CheckpointError("a checkpoint needs at least the tip header")
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    doc = {
        "version": VERSION, "chainId": cp.chain_id, "token": cp.token,
        "block": {"number": cp.tip.number, "hash": cp.tip.hash},
        "headers": [{"number": h.number, "hash": h.hash, "parentHash": h.parent_hash, "timestamp": h.timestamp}
                    for h in cp.headers],
        "unconfirmed": [json.loads(msgspec.json.encode(to_wire(t, "pending", 0, now))) for t in cp.unconfirmed],
    }
    if cp.read_from is not None:
        doc["readFrom"] = cp.read_from
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write chain checkpoint {path}: {exc}; fix: make "
                              "chain.checkpoint_path's folder writable") from exc


def read_checkpoint(path: Path, *, chain_id: int, token: str) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none. A checkpoint of another chain or token, or an
    unreadable one, is an error (never silently ignored: that would re-read or skip history)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"chain checkpoint {path} is unreadable ({exc}); {REPAIR_FIX}") from exc
    try:
        if doc["version"] != VERSION:
            raise CheckpointError(f"chain checkpoint {path} has version {doc['version']}, expected {VERSION} (written "
                                  f"by another release?); {REPAIR_FIX}")
        if doc["chainId"] != chain_id or doc["token"].lower() != token.lower():
            raise CheckpointError(
                f"chain checkpoint {path} is for chain {doc['chainId']} token {doc['token']}, but the config "
                f"says chain {chain_id} token {token}; fix: set chain.checkpoint_path to a file of its own")
        headers = tuple(sorted((Header(int(h["number"]), h["hash"], h["parentHash"], int(h["timestamp"]))
                                for h in doc["headers"]), key=lambda h: h.number))
        if not headers or headers[-1].number != doc["block"]["number"] or headers[-1].hash != doc["block"]["hash"]:
            raise CheckpointError(f"chain checkpoint {path}: block does not match its last header; {REPAIR_FIX}")
        unconfirmed = tuple(from_wire(_transfer_decoder.decode(json.dumps(r))) for r in doc["unconfirmed"])
        read_from = doc.get("readFrom")
        if read_from is not None and (type(read_from) is not int or read_from < 0):
            raise ValueError(f"readFrom {read_from!r} is not a block number")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
        raise CheckpointError(f"chain checkpoint {path} is malformed ({exc!r}); {REPAIR_FIX}") from exc
    return Checkpoint(chain_id, doc["token"], headers, unconfirmed, read_from)
