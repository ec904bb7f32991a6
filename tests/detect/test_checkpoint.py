"""A detector restored from its snapshot decides exactly as one that never stopped."""

from watcher.detect import Detector
from watcher.detect.eval.scenarios import build_world
from watcher.detect.policy import Policy
from watcher.detect.replay import Replay
from watcher.pipeline.shard import Shard

PLAIN = (dict, list, str, int, float, bytes, bool, type(None))


def _plain(x):
    assert isinstance(x, PLAIN), type(x)
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, (str, int)), type(k)
            _plain(v)
    elif isinstance(x, list):
        for v in x:
            _plain(v)


def test_round_trip_gives_identical_later_decisions():
    world = build_world(5, n_normal=30, hours=8.0, n_each=3)
    policy = Policy.from_text(world.policy_text)
    half = len(world.records) // 2
    whole = Replay(policy)
    expected = list(whole.run(world.records))

    first = Replay(policy)
    got = list(first.run(world.records[:half]))
    snap = first.detector.snapshot()
    _plain(snap)
    shard_snap = first.shard.snapshot()
    det = Detector.restore(snap, policy)
    shard = Shard.restore(shard_snap, first.shard.config, det.categorize)
    second = Replay(policy, detector=det, shard=shard)
    got += list(second.run(world.records[half:]))
    assert len(expected) > 20
    assert [d.id for d in got] == [d.id for d in expected]
    assert got == expected


def test_fleet_quantile_follows_the_policy_on_reload_and_restore():
    """The fleet model kept the quantile it was built with: a reloaded policy's, and after a restart the
    policy's (the checkpoint's won), were silently ignored."""
    p1 = Policy.from_text("[defaults.anomaly]\nfleet_quantile = 0.995\n")
    p2 = Policy.from_text("[defaults.anomaly]\nfleet_quantile = 0.95\n")
    det = Detector(p1)
    det.set_policy(p2)
    assert det.fleet.quantile == 0.95 and det.fleet.filter.q == 0.95
    again = Detector.restore(Detector(p1).snapshot(), p2)
    assert again.fleet.quantile == 0.95 and again.fleet.filter.q == 0.95
