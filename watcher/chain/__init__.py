"""The chain bridge: USDC Transfer + EIP-3009 AuthorizationUsed logs from an EVM node to Kafka x402.chain.

    config.py      ChainSettings (the [chain] table); the registry file is read by watcher.registry
    abi.py         event topics; node JSON -> Log / Header
    logs.py        pure join of logs into Transfers (attribution to the authorizer), -> ChainTransfer
    reorg.py       pure ChainTracker: pending -> confirmed after N blocks, reverted on reorg
    checkpoint.py  the durable position (atomic JSON file)
    ranges.py      pure RangeSizer: blocks per eth_getLogs, halved when the node refuses a range
    node.py        web3.py 8 AsyncWeb3 over WebSocket (subscriptions) or HTTP (polling)
    publisher.py   Kafka producer (acks=all), key = payer wallet
    metrics.py     ChainMetrics (head, lag, records, reorgs, errors) and their /metrics server
    bridge.py      ChainBridge: the async shell that ties them together
    cli.py         `spendwatch chain`
    bench.py       run_chain_bench(quick)
    devnet.py, testtoken.py, solc.py   anvil, the test USDC and the offline compiler (tests, bench)
"""

from watcher.lazy import lazy_names

# imported on first use, so `spendwatch --help` does not pay for web3 and aiokafka
_WHERE = {"ChainBridge": "bridge", "ChainSettings": "config", "load_settings": "config", "ChainError": "errors",
          "NodeError": "errors", "RangeRefusedError": "errors", "PublishError": "errors",
          "KafkaPublisher": "publisher", "ChainMetrics": "metrics"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)
