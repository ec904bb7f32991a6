"""Seeded scenarios and their scorer (`spendwatch eval`)."""

from watcher.detect.eval.scenarios import World, build_world
from watcher.detect.eval.score import SCENARIOS, run_eval, score

__all__ = ["SCENARIOS", "World", "build_world", "run_eval", "score"]
