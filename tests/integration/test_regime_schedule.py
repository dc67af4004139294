"""The daily regime run as `s2-feature run` schedules it: due at 00:05 UTC, computed as of the due
time, once across instances (the scheduler's run lock), caught up once at start, and never
written twice for the same day (a restart, or a state the CLI wrote already)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from s2feature.domain import DAY_MS
from s2feature.jobs.regime import JOB_NAME, REGIME_KEY, RegimeJob
from s2feature.jobs.schedule import MINUTE_MS, Every, RedisRunLock, Scheduler
from s2feature.lake.parquet import BarLake
from tests.support.redis_servers import RedisServer
from tests.support.regime_lake import DAYS, HOURLY, START, calm_tail_lake

pytestmark = pytest.mark.redis
DUE = START + DAYS * DAY_MS + 5 * MINUTE_MS  # the first 00:05 UTC after the lake's last bar
NOW_S = (DUE + 10 * MINUTE_MS) / 1000  # the instances start ten minutes after it


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as c:
        yield c


def instance(client: redis.Redis, lake: BarLake, owner: str) -> Scheduler:
    scheduler = Scheduler(RedisRunLock(client, owner=owner), clock=lambda: NOW_S)
    scheduler.register(
        JOB_NAME, Every(DAY_MS, 5 * MINUTE_MS), RegimeJob(lambda: HOURLY, lake, client)
    )
    return scheduler


def test_two_instances_write_the_day_once_and_a_restart_does_not_write_it_again(
    tmp_path: Path, client: redis.Redis
) -> None:
    lake, _ = calm_tail_lake(tmp_path / "lake", 59)
    for owner in ("a", "b"):
        instance(client, lake, owner).run_pending()  # the start's catch-up of the missed run
    state = json.loads(client.get(REGIME_KEY))
    assert (state["rev"], state["ts"], state["regime"]) == (1, DUE, "FROZEN")
    assert client.get("feat:lock:regime:20240201T0005Z").startswith(b"a:")  # owner:pid:token

    instance(client, lake, "a").run_pending()  # a restart the same day: the lock is taken
    client.delete("feat:lock:regime:20240201T0005Z")
    instance(client, lake, "c").run_pending()  # the lock expired: the state is current already
    assert json.loads(client.get(REGIME_KEY))["rev"] == 1


def test_without_an_approved_bundle_the_run_waits(tmp_path: Path, client: redis.Redis) -> None:
    lake, _ = calm_tail_lake(tmp_path / "lake", 59)
    scheduler = Scheduler(RedisRunLock(client, owner="a"), clock=lambda: NOW_S)
    scheduler.register(
        JOB_NAME, Every(DAY_MS, 5 * MINUTE_MS), RegimeJob(lambda: None, lake, client)
    )
    scheduler.run_pending()
    assert client.get(REGIME_KEY) is None
