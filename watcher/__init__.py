"""spendwatch: watch what autonomous AI agents spend over x402 and stop runaway agents."""

__version__ = "0.1.0"
