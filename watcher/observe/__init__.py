"""Observability: the metrics stage and /metrics server, the top-N agent series, daily statements.

The metric families themselves live in `watcher.metrics`. Exports are lazy (watcher.metrics imports the
helpers of this package, and the stage and server import watcher.metrics).
"""

__all__ = ["MetricsService", "MetricsStage", "serve_metrics", "StatementStage", "StatementSettings"]


def __getattr__(name: str):
    if name in ("MetricsService", "serve_metrics"):
        from watcher.observe import server
        return getattr(server, name)
    if name == "MetricsStage":
        from watcher.observe.stage import MetricsStage
        return MetricsStage
    if name in ("StatementStage", "StatementSettings"):
        from watcher.observe import statements
        return getattr(statements, name)
    raise AttributeError(name)
