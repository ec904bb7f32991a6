"""Pure join of token logs into transfers: plain values in, plain values out.

A `Transfer(from, to, value)` log is one transfer. An EIP-3009 payment also emits
`AuthorizationUsed(authorizer, nonce)` just before its Transfer, in the same transaction; the two are
joined into one `Transfer` with the authorizer and the nonce. The facilitator that submitted the
transaction appears in neither log, so the payment is attributed to the authorizer (the agent).

Logs that are not usable are counted by reason in `JoinStats` (never silently dropped):
    other_contract, removed, not_transfer (e.g. ERC-721, 4 topics), bad_data, unwatched,
    auth_unmatched (an AuthorizationUsed without a Transfer from the authorizer after it)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from watcher.chain.abi import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, Header, Log, topic_address
from watcher.events.addresses import AddressBook
from watcher.events.wire import ChainProgress, ChainTransfer, chain_progress_id, chain_transfer_id


@dataclass(frozen=True, slots=True)
class Transfer:
    chain_id: int
    token: str            # checksum
    from_: str            # checksum
    to: str               # checksum
    value: int            # token base units
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    block_time: int | None = None   # seconds
    authorizer: str | None = None   # checksum; set for EIP-3009 payments
    nonce: str | None = None        # 0x 32 bytes; set for EIP-3009 payments

    @property
    def id(self) -> str:
        return chain_transfer_id(self.chain_id, self.tx_hash, self.log_index)

    @property
    def payer(self) -> str:
        """The agent the spend belongs to: the authorizer of an EIP-3009 payment, else the sender."""
        return self.authorizer or self.from_


class JoinStats(Counter):
    """Logs not turned into transfers, by reason."""


def join_transfers(logs: Iterable[Log], *, chain_id: int, token: str, watched: frozenset[str] | None,
                   block_times: Mapping[str, int] | None = None, book: AddressBook | None = None,
                   stats: JoinStats | None = None) -> list[Transfer]:
    """Transfers in (block, log index) order. `watched` None means every transfer of the token."""
    book = book or AddressBook()
    stats = stats if stats is not None else JoinStats()
    token_lower = token.lower()
    times = block_times or {}
    auths: dict[tuple[str, str], list[str]] = {}   # (tx hash, authorizer lower) -> nonces in log order
    out: list[Transfer] = []
    for log in sorted(logs, key=lambda x: (x.block_number, x.log_index)):
        if log.address != token_lower:
            stats["other_contract"] += 1
            continue
        if log.removed:
            stats["removed"] += 1
            continue
        topics = log.topics
        if len(topics) != 3:
            stats["not_transfer"] += 1
            continue
        if topics[0] == AUTHORIZATION_USED_TOPIC:
            auths.setdefault((log.tx_hash, topic_address(topics[1])), []).append(topics[2])
            continue
        if topics[0] != TRANSFER_TOPIC:
            stats["not_transfer"] += 1
            continue
        try:   # a uint256: 32 bytes of hex
            value = int(log.data, 16) if len(log.data) == 66 else None
        except ValueError:
            value = None
        if value is None:
            stats["bad_data"] += 1
            continue
        sender = topic_address(topics[1])
        pending = auths.get((log.tx_hash, sender))
        nonce = pending.pop(0) if pending else None
        from_ = book.checksum(sender, "from")
        if watched is not None and from_ not in watched:
            stats["unwatched"] += 1
            continue
        out.append(Transfer(chain_id, book.checksum(token_lower, "token"), from_,
                            book.checksum(topic_address(topics[2]), "to"), value, log.tx_hash,
                            log.log_index, log.block_number, log.block_hash, times.get(log.block_hash),
                            from_ if nonce is not None else None, nonce))
    stats["auth_unmatched"] += sum(len(v) for v in auths.values())
    return out


def _utc(seconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, timezone.utc) if seconds is not None else None


def to_wire(t: Transfer, status: str, confirmations: int, observed_at: datetime) -> ChainTransfer:
    return ChainTransfer(id=t.id, observedAt=observed_at, chainId=t.chain_id, token=t.token, from_=t.from_,
                         to=t.to, value=str(t.value), txHash=t.tx_hash, logIndex=t.log_index,
                         blockNumber=t.block_number, blockHash=t.block_hash, status=status,
                         blockTime=_utc(t.block_time), authorizer=t.authorizer, nonce=t.nonce,
                         confirmations=confirmations)


def progress_to_wire(chain_id: int, token: str, header: Header, read_from: Header | None,
                     observed_at: datetime, *, watches_all: bool = False) -> ChainProgress:
    """The heartbeat for a confirmed block: every watched transfer of `token` (every one: `watches_all`) from
    block `read_from` (the first the bridge read; None: unknown) up to `header` has been published."""
    return ChainProgress(id=chain_progress_id(chain_id, header.number), observedAt=observed_at, chainId=chain_id,
                         blockNumber=header.number, blockHash=header.hash, blockTime=_utc(header.timestamp),
                         token=token, readFrom=None if read_from is None else read_from.number,
                         readFromTime=None if read_from is None else _utc(read_from.timestamp),
                         watchesAll=watches_all)


def from_wire(rec: ChainTransfer) -> Transfer:
    """Back from a checkpointed record (the unconfirmed transfers survive a restart)."""
    return Transfer(rec.chainId, rec.token, rec.from_, rec.to, int(rec.value), rec.txHash, rec.logIndex,
                    rec.blockNumber, rec.blockHash,
                    int(rec.blockTime.timestamp()) if rec.blockTime else None, rec.authorizer, rec.nonce)
