"""Brokers spendwatch can start by itself (the embedded default)."""

from watcher.broker.tansu import TansuBroker, free_port, tansu_binary

__all__ = ["TansuBroker", "free_port", "tansu_binary"]
