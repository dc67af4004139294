"""The daily regime job (SPEC §10) on a real lake and a real Redis server.

The hand-derived lake: hourly base bars whose log returns alternate `+A`/`-A`, except the last
`LOW_RETURNS` returns, which alternate `+B`/`-B` with `B < A`. With 24 returns a day,

    rv_1d = sqrt(24 * r^2 * 365)      (every hour of the day present: n_obs == n_expected)

so an hourly sample whose day lies wholly in the calm tail is `B * sqrt(8760)`, every other one
is larger. The latest value is the calm one; the samples `<=` it are the tail's `LOW_RETURNS - 23`
boundaries (the first one whose 24 returns are all calm, and each hour after): the percentile
is `(LOW_RETURNS - 23) / 720`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from s2feature.domain import DAY_MS, HOUR_MS
from s2feature.jobs.regime import (
    EXPIRY_GRACE_MS,
    REGIME_KEY,
    RegimeStateError,
    due,
    next_due_ms,
    previous_due_ms,
    read_regime_state,
    run_regime,
)
from tests.support.redis_servers import RedisServer
from tests.support.regime_lake import (
    HOURLY,
    START,
    SYMBOL,
    B,
    alternating,
    bars_of,
    calm_tail_lake,
)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as c:
        yield c


@pytest.mark.parametrize(
    ("low_returns", "label"), [(59, "FROZEN"), (383, "NORMAL"), (23 + 700, "EXTREME")]
)
def test_hand_derived_percentile_and_label(
    tmp_path: Path, client: redis.Redis, low_returns: int, label: str
) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", low_returns)
    result = run_regime(at, HOURLY, lake, client)
    assert result.status == "written", result.reason
    assert result.samples == 720
    assert result.rv_1d == pytest.approx(B * math.sqrt(24 * 365), rel=1e-12)
    assert result.pctile == pytest.approx((low_returns - 23) / 720, abs=1e-15)
    assert result.regime == label
    stored = json.loads(client.get(REGIME_KEY))
    assert stored == {
        "regime": label,
        "rev": 1,
        "ts": at,
        "expiry_ts": next_due_ms(at) + EXPIRY_GRACE_MS,
        "rv_1d": result.rv_1d,
        "pctile": result.pctile,
        "reference_symbol": SYMBOL,
        "config_rev": "regime-test",
    }
    assert read_regime_state(client) == stored


def test_bars_after_the_run_time_change_nothing(tmp_path: Path, client: redis.Redis) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", 59)
    before = run_regime(at, HOURLY, lake, client)
    # A violent day after `at`: if any of it were read, rv_1d and the percentile would jump.
    later = bars_of(at + 1, alternating(0.5, 30))
    lake.append(SYMBOL, later)
    after = run_regime(at, HOURLY, lake, client)
    assert (after.rv_1d, after.pctile, after.regime, after.samples) == (
        before.rv_1d,
        before.pctile,
        before.regime,
        before.samples,
    )
    # ...and they are read by a run at a later time.
    moved = run_regime(later[-1].close_time, HOURLY, lake, client)
    assert moved.regime == "EXTREME"


def test_too_little_history_writes_nothing(
    tmp_path: Path, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # 27 days: the samples at bars 22..647 see a full-enough day (22 of 24 returns): 626
    # non-null hourly samples, below 90% of 720 (648).
    lake, at = calm_tail_lake(tmp_path / "lake", 59, days=27)
    result = run_regime(at, HOURLY, lake, client)
    assert result.status == "insufficient_history"
    assert result.samples == 626
    assert result.regime is None
    assert result.pctile is None
    assert "626 of the 720" in (result.reason or "")
    assert client.get(REGIME_KEY) is None
    assert any(getattr(r, "event", None) == "regime_skip" for r in caplog.records)
    # 28 days are enough: 650 samples.
    lake28, at28 = calm_tail_lake(tmp_path / "lake28", 59, days=28)
    assert run_regime(at28, HOURLY, lake28, client).written


def test_unknown_reference_symbol_writes_nothing(tmp_path: Path, client: redis.Redis) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", 59)
    other = HOURLY.with_overrides(regime={"reference_symbol": "ETHUSDT"})
    result = run_regime(at, other, lake, client)
    assert result.status == "insufficient_history"
    assert "no bars of ETHUSDT" in (result.reason or "")
    assert client.get(REGIME_KEY) is None


def test_rev_increases_with_each_write_and_never_goes_back_in_time(
    tmp_path: Path, client: redis.Redis
) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", 59)
    assert run_regime(at, HOURLY, lake, client).rev == 1
    assert run_regime(at, HOURLY, lake, client).rev == 2
    earlier = run_regime(at - HOUR_MS, HOURLY, lake, client)
    assert earlier.status == "stale"
    assert earlier.rev == 2
    stored = read_regime_state(client)
    assert stored is not None
    assert (stored["rev"], stored["ts"]) == (2, at)


def test_concurrent_writers_get_distinct_consecutive_revs(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", 59)
    revs: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        with redis_server.client() as c:
            for _ in range(5):
                rev = run_regime(at, HOURLY, lake, c).rev
                assert rev is not None
                with lock:
                    revs.append(rev)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(revs) == list(range(1, 21))


def test_a_foreign_value_is_not_overwritten(tmp_path: Path, client: redis.Redis) -> None:
    lake, at = calm_tail_lake(tmp_path / "lake", 59)
    client.set(REGIME_KEY, "not json")
    with pytest.raises(RegimeStateError):
        run_regime(at, HOURLY, lake, client)
    assert client.get(REGIME_KEY) == b"not json"


def test_due_daily_at_five_past_midnight_utc() -> None:
    day = START
    assert previous_due_ms(day + 5 * 60_000) == day + 5 * 60_000
    assert previous_due_ms(day + 5 * 60_000 - 1) == day - DAY_MS + 5 * 60_000
    assert next_due_ms(day + 5 * 60_000) == day + DAY_MS + 5 * 60_000
    assert next_due_ms(day) == day + 5 * 60_000
    assert due(day + 6 * 60_000, None)
    assert due(day + 6 * 60_000, day + 4 * 60_000)  # last run before today's 00:05
    assert not due(day + 6 * 60_000, day + 5 * 60_000)
    assert not due(day + 23 * HOUR_MS, day + 5 * 60_000)
    # A service down for three days runs once at start, then waits for the next 00:05.
    assert due(day + 3 * DAY_MS + HOUR_MS, day + 5 * 60_000)
    assert not due(day + 3 * DAY_MS + 2 * HOUR_MS, day + 3 * DAY_MS + HOUR_MS)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s2feature.cli", "regime", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_the_state_and_reports_too_little_history(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    _, at = calm_tail_lake(tmp_path / "lake", 59)
    config = tmp_path / "bundle.json"
    config.write_text(json.dumps({"rev": "cli-rev", "base_interval": "1h"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2_")}
    env |= {
        "S2_LAKE_DIR": str(tmp_path / "lake"),
        "S2_CONFIG_FILE": str(config),
        "S2_REDIS_ADDRESSES": f"{redis_server.host}:{redis_server.port}",
    }
    done = _cli(env, "--at", str(at))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert (printed["status"], printed["regime"], printed["rev"]) == ("written", "FROZEN", 1)
    with redis_server.client() as c:
        assert json.loads(c.get(REGIME_KEY))["config_rev"] == "cli-rev"
    # ISO time, one hour earlier: computed, but the stored state is newer.
    iso = "2024-01-31T22:59:59.999Z"
    assert at == 1_706_745_599_999  # 2024-01-31T23:59:59.999Z
    stale = _cli(env, "--at", iso)
    assert stale.returncode == 4, stale.stderr
    assert "newer state" in stale.stderr
    early = _cli(env, "--at", "2024-01-20")
    assert early.returncode == 3
    assert "not enough history" in early.stderr
    assert json.loads(early.stdout)["status"] == "insufficient_history"
    bad = _cli(env, "--at", "yesterday")
    assert bad.returncode == 2
    assert "yesterday" in bad.stderr
