"""Our EIP-55 checksum (a C keccak and big-int masking) against eth-utils' reference implementation."""

from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.events import addresses
from watcher.events.addresses import AddressBook, eip55


def test_the_fast_keccak_is_installed():
    assert addresses._keccak is not None, "safe-pysha3 is pinned; without it checksums cost ~50 µs each"


@settings(max_examples=500)
@given(st.binary(min_size=20, max_size=20), st.sampled_from([str.lower, str.upper, lambda s: s]))
def test_matches_eth_utils(raw, case):
    text = "0x" + case(raw.hex())
    assert eip55(text) == to_checksum_address(text)


def test_eip55_spec_vectors_and_a_wrong_checksum_is_refused():
    vectors = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
               "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb"]
    book = AddressBook()
    for v in vectors:
        assert eip55(v.lower()) == v and book.checksum(v, "x") == v
    wrong = vectors[0].replace("a", "A", 1)
    try:
        book.checksum(wrong, "payer")
    except Exception as exc:
        assert getattr(exc, "reason", None) == "bad_address"
    else:
        raise AssertionError("a wrong EIP-55 checksum was accepted")
