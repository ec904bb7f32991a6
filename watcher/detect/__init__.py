"""Detection: policy rules, per-agent baselines and a fleet model turn a shard's outcome into decisions.

The names below are imported on first use (PEP 562), so `spendwatch --help` does not load river and numpy.
"""

from __future__ import annotations

from watcher.lazy import lazy_names

_WHERE = {"Decision": "decision", "decode_decision": "decision", "encode_decision": "decision",
          "encode_decisions": "decision", "Detector": "detector", "Policy": "policy", "PolicyWatcher": "policy",
          "RateCard": "ratecard"}

__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)
