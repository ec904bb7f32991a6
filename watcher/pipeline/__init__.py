"""The pure core: dedupe, settle/transfer join, rolling windows. No I/O."""

from watcher.pipeline.dedupe import Generations, Seen
from watcher.pipeline.join import Delta, Join, Payment
from watcher.pipeline.shard import Outcome, Shard, ShardConfig, agent_key, category_key
from watcher.pipeline.windows import DEFAULT_WINDOWS, Windows, WindowSpec

__all__ = ["DEFAULT_WINDOWS", "Delta", "Generations", "Join", "Outcome", "Payment", "Seen", "Shard",
           "ShardConfig", "Windows", "WindowSpec", "agent_key", "category_key"]
