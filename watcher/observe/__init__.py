"""Observability: the metrics stage and /metrics server, the top-N agent series, daily statements.

The metric families themselves live in `watcher.metrics`. Exports are lazy (watcher.metrics imports the
helpers of this package, and the stage and server import watcher.metrics).
"""

from watcher.lazy import lazy_names

_WHERE = {"MetricsService": "server", "serve_metrics": "server", "MetricsStage": "stage",
          "StatementStage": "statements", "StatementSettings": "statements"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)
