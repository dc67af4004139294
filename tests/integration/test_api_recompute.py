"""`/features/recompute` over a real uvicorn server on loopback: auth, validation, 202, 409,
404, progress and the rate limit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from limits import RateLimitItemPerSecond

from s2feature.api import ApiServer, create_app
from s2feature.domain import DAY_MS
from s2feature.jobs.tasks import TaskRegistry
from s2feature.service.status import ConfigStatus, LoopStatus, Published
from tests.support.recompute_runner import SIGNALS_PER_BATCH, SteppedRunner
from tests.support.redis_servers import wait_for

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KNOWN = {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
JAN5 = int(datetime(2025, 1, 5, tzinfo=UTC).timestamp() * 1000)


@dataclass
class Served:
    http: httpx.Client
    runner: SteppedRunner


def serve(token: str | None, runner: SteppedRunner, rate: int = 1000) -> ApiServer:
    app = create_app(
        Published(LoopStatus()),
        Published(ConfigStatus()),
        api_token=token,
        tasks=TaskRegistry(runner),
        known_symbols=lambda: set(KNOWN),
        recompute_rate=RateLimitItemPerSecond(rate),
    )
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    return server


@pytest.fixture
def served() -> Iterator[Served]:
    runner = SteppedRunner()
    server = serve(TOKEN, runner)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            yield Served(http, runner)
    finally:
        server.stop()


def body(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "symbols": ["BTCUSDT"],
        "windows": ["1m", "1h"],
        "from_ts": JAN5,
        "to_ts": JAN5 + 2 * DAY_MS - 1,  # inclusive: two whole UTC days
        "force": False,
    }
    return base | changes


def test_without_a_token_401_with_a_challenge_wrong_token_403(served: Served) -> None:
    missing = served.http.post("/features/recompute", json=body())
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["errors"][0]["field"] == "Authorization"
    wrong = served.http.get("/features/recompute/x", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert TOKEN not in wrong.text
    assert served.http.get("/health/live").status_code == 200  # probes stay open


def test_no_token_configured_closes_the_routes_with_503() -> None:
    server = serve(None, SteppedRunner())
    try:
        answer = httpx.post(f"{server.url}/features/recompute", json=body(), headers=AUTH)
        assert answer.status_code == 503
        assert "S2_API_TOKEN" in answer.json()["errors"][0]["message"]
    finally:
        server.stop()


def test_accepted_202_with_location_then_progress_to_done(served: Served) -> None:
    answer = served.http.post("/features/recompute", json=body(), headers=AUTH)
    assert answer.status_code == 202
    accepted = answer.json()
    task_id = accepted["task_id"]
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert task_id == f"recomp-{today}-0001"
    assert accepted == {"accepted": True, "task_id": task_id, "estimated_batches": 2}
    assert answer.headers["Location"] == f"/features/recompute/{task_id}"

    def status() -> dict[str, object]:
        reply = served.http.get(answer.headers["Location"], headers=AUTH)
        assert reply.status_code == 200
        result: dict[str, object] = reply.json()
        return result

    wait_for(lambda: status()["state"] == "running", timeout_s=10.0, what="running")
    served.runner.release(1)
    wait_for(lambda: status()["batches_done"] == 1, timeout_s=10.0, what="one batch")
    halfway = status()
    assert (halfway["batches_total"], halfway["signals_written"]) == (2, SIGNALS_PER_BATCH)
    served.runner.release(1)
    wait_for(lambda: status()["state"] == "done", timeout_s=10.0, what="done")
    done = status()
    assert (done["batches_done"], done["signals_written"], done["errors"]) == (
        2,
        2 * SIGNALS_PER_BATCH,
        [],
    )


def test_overlapping_scope_409_names_the_task(served: Served) -> None:
    first = served.http.post("/features/recompute", json=body(), headers=AUTH).json()["task_id"]
    later = body(symbols=["ETHUSDT", "BTCUSDT"], from_ts=JAN5 + DAY_MS, to_ts=JAN5 + 3 * DAY_MS)
    refused = served.http.post("/features/recompute", json=later, headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["task_id"] == first
    assert first in refused.json()["errors"][0]["message"]
    other = body(symbols=["SOLUSDT"])
    assert served.http.post("/features/recompute", json=other, headers=AUTH).status_code == 202


def test_unknown_task_404(served: Served) -> None:
    answer = served.http.get("/features/recompute/recomp-20250105-0042", headers=AUTH)
    assert answer.status_code == 404
    assert answer.json()["errors"][0]["field"] == "task_id"


def test_every_bad_field_is_named_at_once(served: Served) -> None:
    bad = body(
        symbols=["BTCUSDT", "btc", "DOGEUSDT"],
        windows=["2m"],
        from_ts=JAN5 + DAY_MS,
        to_ts=JAN5,
        extra=1,
    )
    answer = served.http.post("/features/recompute", json=bad, headers=AUTH)
    assert answer.status_code == 422
    fields = sorted(e["field"] for e in answer.json()["errors"])
    assert fields == ["extra", "symbols[1]", "symbols[2]", "to_ts", "windows[0]"]
    messages = " ".join(e["message"] for e in answer.json()["errors"])
    assert "DOGEUSDT" in messages


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"symbols": [], "windows": []}, ["symbols", "windows"]),
        ({"to_ts": JAN5 + 91 * DAY_MS}, ["to_ts"]),
        ({"from_ts": "2025-01-05", "force": 1}, ["force", "from_ts"]),
    ],
)
def test_422_cases(served: Served, changes: dict[str, object], fields: list[str]) -> None:
    answer = served.http.post("/features/recompute", json=body(**changes), headers=AUTH)
    assert answer.status_code == 422
    assert sorted(e["field"] for e in answer.json()["errors"]) == fields


def test_a_body_that_is_not_json_is_400(served: Served) -> None:
    answer = served.http.post("/features/recompute", content=b"{symbols:", headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == "body"


def test_more_than_5_posts_per_second_get_429_with_retry_after() -> None:
    server = serve(TOKEN, SteppedRunner(), rate=5)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0, headers=AUTH) as http:
            # Bad bodies: each is counted, none queues a task. The first five in any second pass
            # to validation (422); a bounded count of posts, not a timer, ends the test.
            codes = []
            for _ in range(200):
                codes.append(http.post("/features/recompute", json={}))
                if codes[-1].status_code == 429:
                    break
    finally:
        server.stop()
    assert [r.status_code for r in codes[:5]] == [422] * 5
    assert codes[-1].status_code == 429, "200 posts in a row were never limited"
    assert int(codes[-1].headers["Retry-After"]) >= 1
    assert codes[-1].json()["errors"][0]["message"].startswith("more than 5 requests")
