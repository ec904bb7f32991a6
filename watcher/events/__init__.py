"""Typed events at the edge: wire records, validation, and the internal Observation."""

from watcher.events.decode import REASONS, Decoder, parse_amount
from watcher.events.observation import Kind, Observation
from watcher.events.wire import (ChainProgress, ChainTransfer, SettleRecord, VerifyRecord, chain_progress_id,
                                 chain_transfer_id, decode_wire, encode_wire)

__all__ = ["REASONS", "ChainProgress", "ChainTransfer", "Decoder", "Kind", "Observation", "SettleRecord",
           "VerifyRecord", "chain_progress_id", "chain_transfer_id", "decode_wire", "encode_wire", "parse_amount"]
