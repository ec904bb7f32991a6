"""Detection: policy rules, per-agent baselines and a fleet model turn a shard's outcome into decisions.

The names below are imported on first use (PEP 562), so `spendwatch --help` does not load river and numpy.
"""

from __future__ import annotations

import importlib

_WHERE = {"Decision": "decision", "decode_decision": "decision", "encode_decision": "decision",
          "encode_decisions": "decision", "Detector": "detector", "Policy": "policy", "PolicyWatcher": "policy",
          "RateCard": "ratecard"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'watcher.detect' has no attribute {name!r}")
    return getattr(importlib.import_module(f"watcher.detect.{_WHERE[name]}"), name)
