"""The pure parts of the chain bridge with plain values: log join, chain tracker, checkpoint, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watcher.chain.abi import (AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, Header, Log, address_topic, parse_header,
                               parse_log)
from watcher.chain.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from watcher.chain.config import load_settings, settings_from_mapping
from watcher.chain.logs import JoinStats, Transfer, join_transfers
from watcher.chain.reorg import ChainTracker, ReorgDetected
from watcher.errors import CheckpointError, ConfigError, EventError

TOKEN = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
AGENT = "0x" + "aa" * 20
AGENT_CS = "0xaAaAaAaaAaAaAaaAaAAAAAAAAaaaAaAaAaaAaaAa"
SHOP = "0x" + "bb" * 20
FAC = "0x" + "cc" * 20
NONCE = "0x" + "12" * 32


def _log(topic0, a, b, *, tx="0x" + "01" * 32, idx=0, data="0x" + "00" * 31 + "64", block=5, bh="0x" + "0b" * 32,
         address=TOKEN.lower()):
    topics = (topic0, address_topic(a), b if b.startswith("0x") and len(b) == 66 else address_topic(b))
    return Log(address, topics, data, block, bh, tx, idx)


def _join(logs, watched=frozenset({AGENT_CS}), stats=None):
    return join_transfers(logs, chain_id=8453, token=TOKEN, watched=watched, stats=stats)


def test_authorization_joins_its_transfer_and_names_the_agent():
    logs = [_log(TRANSFER_TOPIC, AGENT, SHOP, idx=8), _log(AUTHORIZATION_USED_TOPIC, AGENT, NONCE, idx=7)]
    [t] = _join(logs)
    assert (t.authorizer, t.nonce, t.value, t.log_index, t.payer) == (AGENT_CS, NONCE, 100, 8, AGENT_CS)
    assert t.id == f"8453:{'0x' + '01' * 32}:8"


def test_plain_transfer_has_no_authorizer_and_filters_apply():
    stats = JoinStats()
    logs = [_log(TRANSFER_TOPIC, AGENT, SHOP, idx=1, tx="0x" + "02" * 32),
            _log(TRANSFER_TOPIC, FAC, SHOP, idx=2, tx="0x" + "03" * 32),                   # not watched
            _log(TRANSFER_TOPIC, AGENT, SHOP, idx=3, address="0x" + "dd" * 20),            # other token
            Log(TOKEN.lower(), (TRANSFER_TOPIC, address_topic(AGENT), address_topic(SHOP), "0x" + "00" * 32),
                "0x", 5, "0x" + "0b" * 32, "0x" + "04" * 32, 4),                            # ERC-721 shape
            _log(AUTHORIZATION_USED_TOPIC, FAC, NONCE, idx=5, tx="0x" + "05" * 32)]         # no transfer
    [t] = _join(logs, stats=stats)
    assert t.authorizer is None and t.nonce is None and t.from_ == AGENT_CS
    assert stats == {"unwatched": 1, "other_contract": 1, "not_transfer": 1, "auth_unmatched": 1}
    assert len(_join(logs, watched=None)) == 2


def test_a_transfer_whose_amount_is_not_hex_is_bad_data_not_a_stopped_bridge():
    """32 bytes of data that are not hex raised ValueError out of join_transfers and stopped the bridge; data of
    another length was already counted as bad_data."""
    stats = JoinStats()
    logs = [_log(TRANSFER_TOPIC, AGENT, SHOP, idx=1, data="0x" + "zz" * 32),
            _log(TRANSFER_TOPIC, AGENT, SHOP, idx=2, data="0x" + "00" * 31),
            _log(TRANSFER_TOPIC, AGENT, SHOP, idx=3)]
    assert [t.log_index for t in _join(logs, stats=stats)] == [3]
    assert stats["bad_data"] == 2


def test_two_authorizations_in_one_transaction_pair_in_order():
    n2 = "0x" + "34" * 32
    logs = [_log(AUTHORIZATION_USED_TOPIC, AGENT, NONCE, idx=0), _log(TRANSFER_TOPIC, AGENT, SHOP, idx=1),
            _log(AUTHORIZATION_USED_TOPIC, AGENT, n2, idx=2), _log(TRANSFER_TOPIC, AGENT, FAC, idx=3)]
    assert [(t.nonce, t.log_index) for t in _join(logs)] == [(NONCE, 1), (n2, 3)]


def test_parse_log_takes_node_json():
    raw = {"address": TOKEN, "topics": [TRANSFER_TOPIC.upper().replace("0X", "0x")], "data": "0x",
           "blockNumber": "0x10", "blockHash": "0x" + "AB" * 32, "transactionHash": "0x" + "01" * 32,
           "logIndex": "0x2", "removed": False, "transactionIndex": "0x0"}
    log = parse_log(raw)
    assert (log.block_number, log.log_index, log.block_hash, log.address) == (16, 2, "0x" + "ab" * 32, TOKEN.lower())


@pytest.mark.parametrize("quantity", ["0xzz", "0x", "16", 1.5])
def test_a_malformed_quantity_is_an_event_error_naming_the_field(quantity):
    """The node (watcher.chain.node) turns an EventError into a NodeError: a reconnect, not a stopped bridge."""
    raw = {"address": TOKEN, "topics": [TRANSFER_TOPIC], "data": "0x", "blockNumber": quantity,
           "blockHash": "0x" + "ab" * 32, "transactionHash": "0x" + "01" * 32, "logIndex": "0x0"}
    with pytest.raises(EventError, match="blockNumber=.* is not a 0x quantity"):
        parse_log(raw)
    with pytest.raises(EventError, match="timestamp=.* is not a 0x quantity"):
        parse_header({"number": "0x1", "hash": "0x" + "ab" * 32, "parentHash": "0x" + "cd" * 32,
                      "timestamp": quantity})


def _h(n, fork="a"):
    return Header(n, f"0x{fork}{n:063x}", f"0x{'a' if n - 1 < 3 or fork == 'a' else fork}{n - 1:063x}", 1000 + n)


def _t(n, idx=0, fork="a"):
    return Transfer(8453, TOKEN, AGENT_CS, SHOP, 10 + n, f"0x{n:064x}", idx, n, _h(n, fork).hash)


def test_tracker_pending_then_confirmed_after_n_blocks():
    tr = ChainTracker(confirmations=2)
    assert [(e.status, e.confirmations) for e in tr.advance(_h(1), [_t(1)])] == [("pending", 0)]
    assert tr.advance(_h(2), []) == []
    out = tr.advance(_h(3), [_t(3)])
    assert [(e.transfer.block_number, e.status, e.confirmations) for e in out] == [(3, "pending", 0),
                                                                                   (1, "confirmed", 2)]
    assert tr.unconfirmed_count == 1


def test_tracker_refuses_a_block_that_does_not_extend_the_tip_and_rewinds():
    tr = ChainTracker(confirmations=3)
    for n in (1, 2, 3, 4):
        tr.advance(_h(n), [_t(n)])                      # 1 confirmed at 4
    with pytest.raises(ReorgDetected):
        tr.advance(_h(5, fork="b"), [])                  # parent is b4, not a4
    assert tr.tip == _h(4)                               # nothing changed
    out = tr.rewind(2)
    assert [(e.transfer.block_number, e.status) for e in out] == [(4, "reverted"), (3, "reverted")]
    assert tr.tip == _h(2) and tr.hash_at(3) is None
    assert [e.status for e in tr.advance(_h(3, fork="b"), [_t(3, fork="b")])] == ["pending"]


def test_tracker_zero_confirmations_and_jump():
    tr = ChainTracker(confirmations=0)
    assert [e.status for e in tr.advance(_h(1), [_t(1)])] == ["confirmed"]
    tr2 = ChainTracker(confirmations=5)
    out = tr2.jump(_h(20), [_t(7), _t(12)])
    assert [(e.status, e.confirmations) for e in out] == [("confirmed", 13), ("confirmed", 8)]
    assert tr2.tip == _h(20) and tr2.floor == 20


def test_a_jump_remembers_the_headers_it_read_so_a_later_reorg_finds_its_fork_point():
    """After a ranged read the tracker remembered only the range's last header: a reorg reaching below it
    (4 blocks, with 64 remembered) counted as deeper than the remembered blocks, and the replaced blocks
    were never read again (the replacement transfers were lost)."""
    tr = ChainTracker(confirmations=2, max_depth=64)
    tr.jump(_h(6), [])                                       # a first start at the head
    tr.jump(_h(9), [_t(7)], [_h(7), _h(9)])                  # blocks 7..9 read by range; a transfer in 7
    assert (tr.floor, tr.hash_at(6), tr.hash_at(7)) == (6, _h(6).hash, _h(7).hash)
    # the bridge's fork-point search walks down while hashes differ: 7 was replaced, 6 still matches
    assert tr.rewind(6) == [] and tr.tip == _h(6)            # the next read starts at 7 again
    tr2 = ChainTracker(confirmations=1, max_depth=4)         # and the window stays bounded
    tr2.jump(_h(30), [], [_h(n) for n in range(10, 30)])
    assert sorted(tr2.headers) == [27, 28, 29, 30]


def test_tracker_remembers_a_bounded_window():
    tr = ChainTracker(confirmations=1, max_depth=4)
    for n in range(1, 20):
        tr.advance(_h(n), [])
    assert sorted(tr.headers) == [16, 17, 18, 19]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    path = tmp_path / "sub" / "cp.json"
    assert read_checkpoint(path, chain_id=8453, token=TOKEN) is None
    cp = Checkpoint(8453, TOKEN, (_h(1), _h(2)), (Transfer(8453, TOKEN, AGENT_CS, SHOP, 5, "0x" + "01" * 32, 3, 2,
                                                           _h(2).hash, 1002, AGENT_CS, NONCE),))
    write_checkpoint(path, cp)
    assert not (tmp_path / "sub" / "cp.json.tmp").exists()
    assert read_checkpoint(path, chain_id=8453, token=TOKEN.lower()) == cp
    assert json.loads(path.read_text())["block"] == {"number": 2, "hash": _h(2).hash}
    with pytest.raises(CheckpointError, match="checkpoint_path"):
        read_checkpoint(path, chain_id=1, token=TOKEN)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="delete it"):
        read_checkpoint(path, chain_id=8453, token=TOKEN)


@pytest.mark.parametrize("damage", [
    lambda doc: doc | {"version": 2}, lambda doc: doc | {"headers": []}, lambda doc: doc | {"block": 7},
    lambda doc: "{not json"], ids=["version", "no-headers", "block-not-an-object", "not-json"])
def test_every_unusable_checkpoint_says_how_to_go_on_without_a_gap(tmp_path, damage):
    """Deleting the checkpoint alone makes the bridge start after the head (the blocks in between are never
    read): every refusal names start_block as the way to resume without a gap."""
    path = tmp_path / "cp.json"
    write_checkpoint(path, Checkpoint(8453, TOKEN, (_h(1), _h(2)), ()))
    damaged = damage(json.loads(path.read_text()))
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(CheckpointError, match="fix: .*set chain.start_block to a block at or before the last"):
        read_checkpoint(path, chain_id=8453, token=TOKEN)


def test_checkpoint_keeps_the_first_block_read_and_reads_older_ones_without_it(tmp_path):
    path = tmp_path / "cp.json"
    cp = Checkpoint(8453, TOKEN, (_h(1), _h(2)), (), read_from=2)
    write_checkpoint(path, cp)
    assert json.loads(path.read_text())["readFrom"] == 2
    assert read_checkpoint(path, chain_id=8453, token=TOKEN) == cp
    write_checkpoint(path, Checkpoint(8453, TOKEN, (_h(1), _h(2)), ()))     # as an older bridge wrote it
    assert "readFrom" not in json.loads(path.read_text())
    assert read_checkpoint(path, chain_id=8453, token=TOKEN).read_from is None
    path.write_text(path.read_text()[:-1] + ',"readFrom":"2"}')
    with pytest.raises(CheckpointError, match="malformed"):
        read_checkpoint(path, chain_id=8453, token=TOKEN)


def test_config_file_errors_name_file_key_and_fix(tmp_path, monkeypatch):
    cfg = tmp_path / "spendwatch.toml"
    cfg.write_text('[chain]\nws_url = "ws://127.0.0.1:8545"\nwatched_wallets = ["0x1234"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.file == str(cfg) and err.value.key == "chain.watched_wallets" and err.value.fix
    cfg.write_text('[chain]\nws_url = "ws://127.0.0.1:8545"\nconfirmation = 3\nwatch_all = true\n')
    with pytest.raises(ConfigError, match="unknown key.*chain.confirmation"):
        load_settings(cfg)
    reg = tmp_path / "agents.toml"
    reg.write_text(f'[[agents]]\nwallet = "{AGENT}"\nname = "bot"\n[[agents]]\nwallet = "nope"\n')
    cfg.write_text('[chain]\nhttp_url = "http://127.0.0.1:8545"\nregistry_file = "agents.toml"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.file == str(reg) and err.value.key == "agents[1].wallet"
    reg.write_text(f'[[agents]]\nwallet = "{AGENT}"\nname = "bot"\n')
    s = load_settings(cfg)
    assert s.chain_id == 8453 and s.token == TOKEN and s.required_confirmations == 10
    monkeypatch.setenv("SPENDWATCH_CHAIN__CONFIRMATIONS", "4")
    assert load_settings(cfg).required_confirmations == 4
    with pytest.raises(ConfigError, match="ws_url"):
        settings_from_mapping({"ws_url": "http://x", "watch_all": True})


def test_relative_paths_in_the_config_file_are_relative_to_it(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "agents.toml").write_text(f'[[agents]]\nwallet = "{AGENT}"\n')
    cfg = folder / "spendwatch.toml"
    cfg.write_text('[chain]\nhttp_url = "http://127.0.0.1:8545"\nregistry_file = "agents.toml"\n'
                   'checkpoint_path = "state/cp.json"\n')
    monkeypatch.chdir(tmp_path)                       # started from elsewhere: the file's paths still hold
    s = load_settings(cfg)
    assert (s.checkpoint_path, s.registry_file) == (folder / "state" / "cp.json", folder / "agents.toml")
    s = load_settings(Path("etc/spendwatch.toml"))     # a relative config path: its folder, as given
    assert (s.checkpoint_path, s.registry_file) == (Path("etc/state/cp.json"), Path("etc/agents.toml"))
    # the environment and the command line (--checkpoint) are relative to the working directory
    monkeypatch.setenv("SPENDWATCH_CHAIN__CHECKPOINT_PATH", "env/cp.json")
    assert load_settings(cfg).checkpoint_path == Path("env/cp.json")
    monkeypatch.delenv("SPENDWATCH_CHAIN__CHECKPOINT_PATH")
    assert load_settings(cfg, checkpoint_path=Path("cli/cp.json")).checkpoint_path == Path("cli/cp.json")
    # absolute in the file: as written; not in the file: the default, in the working directory
    cfg.write_text(f'[chain]\nhttp_url = "http://127.0.0.1:8545"\nwatch_all = true\n'
                   f'checkpoint_path = "{tmp_path / "abs" / "cp.json"}"\n')
    assert load_settings(cfg).checkpoint_path == tmp_path / "abs" / "cp.json"
    cfg.write_text('[chain]\nhttp_url = "http://127.0.0.1:8545"\nwatch_all = true\n')
    assert load_settings(cfg).checkpoint_path == Path(".spendwatch/chain-checkpoint.json")


@pytest.mark.parametrize("extra", [(), ("0x70997970C51812dc3A010C7d01b50e0d17dc79C8",)])
def test_environment_list_that_is_not_json_names_the_variable(monkeypatch, extra):
    monkeypatch.setenv("SPENDWATCH_CHAIN__WATCHED_WALLETS", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
    with pytest.raises(ConfigError) as err:
        load_settings(None, ws_url="ws://127.0.0.1:8545", extra_wallets=list(extra))
    assert err.value.key == "chain.watched_wallets" and "SPENDWATCH_CHAIN__WATCHED_WALLETS" in err.value.fix
