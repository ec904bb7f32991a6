"""The v1 network table is a copy of the x402 SDK's: it must stay equal to the pinned SDK's own."""

import pytest

from watcher.errors import EventError
from watcher.events.networks import V1_NAMES, Networks


def test_v1_table_equals_the_sdk_table():
    from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

    assert V1_NAMES == dict(V1_NETWORK_CHAIN_IDS)


def test_resolve_v1_name_and_caip2_to_the_same_chain():
    nets = Networks()
    assert nets.resolve("base") == ("eip155:8453", 8453)
    assert nets.resolve("eip155:8453") == ("eip155:8453", 8453)


@pytest.mark.parametrize("network", ["solana", "eip155:999999", "eip155:x"])
def test_unknown_networks_are_refused(network):
    with pytest.raises(EventError) as err:
        Networks().resolve(network)
    assert err.value.reason == "unknown_network"
