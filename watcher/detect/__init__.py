"""Detection: policy rules, per-agent baselines and a fleet model turn a shard's outcome into decisions."""

from watcher.detect.decision import Decision, decode_decision, encode_decision, encode_decisions
from watcher.detect.detector import Detector
from watcher.detect.policy import Policy, PolicyWatcher
from watcher.detect.ratecard import RateCard

__all__ = ["Decision", "Detector", "Policy", "PolicyWatcher", "RateCard", "decode_decision", "encode_decision",
           "encode_decisions"]
