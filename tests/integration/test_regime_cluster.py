"""The regime state written through a Redis Cluster client: one key, one slot, one atomic
script, so `rev` keeps increasing by one whichever node owns the slot."""

from __future__ import annotations

import json
from pathlib import Path

from s2feature.jobs.regime import REGIME_KEY, run_regime
from tests.support.redis_cluster import RedisClusterHarness
from tests.support.regime_lake import HOURLY, calm_tail_lake


def test_rev_increases_through_the_cluster_client(
    tmp_path: Path, redis_cluster: RedisClusterHarness
) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", 59)
    client = redis_cluster.client()
    try:
        assert run_regime(at, HOURLY, lake, client).rev == 1
        assert run_regime(at, HOURLY, lake, client).rev == 2
        stored = json.loads(client.get(REGIME_KEY))
    finally:
        client.close()
    assert (stored["rev"], stored["regime"], stored["ts"]) == (2, "FROZEN", at)
