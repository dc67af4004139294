"""Schemathesis against the app in-process (ASGI), with and without the bearer token.

No 5xx, no response outside the OpenAPI document, no request invalid by the schema accepted.
Schema-valid bodies may still be refused (422): lake symbols, range order and span are checks
beyond JSON Schema, so the "valid data accepted" check is left out; the 422 answers are still
checked against the document. The rate limit is raised here (its 429 has a test of its own):
fuzzing sends many requests.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from limits import RateLimitItemPerSecond
from schemathesis.specs.openapi.checks import positive_data_acceptance

from s2feature.api import create_app
from s2feature.jobs.tasks import TaskRegistry
from s2feature.service.status import ConfigStatus, LoopStatus, Published
from tests.support.recompute_runner import SteppedRunner

TOKEN = "fuzz-token"
NOW = 1_800_000_000.0
# A healthy service: a 503 would be a server error to the fuzzer; the DOWN answers of /health
# have tests of their own.
HEALTHY_LOOP = LoopStatus(started=True, updated_at=NOW, batches=1)
APPROVED = ConfigStatus(rev="r1", source="url", fetched_at=NOW)

app = create_app(
    Published(HEALTHY_LOOP),
    Published(APPROVED),
    clock=lambda: NOW,
    api_token=TOKEN,
    # Never started: accepted tasks stay queued, and overlapping ones get their 409.
    tasks=TaskRegistry(SteppedRunner()),
    known_symbols=lambda: {"BTCUSDT", "ETHUSDT"},
    recompute_rate=RateLimitItemPerSecond(1_000_000),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
NOT_SCHEMA_EXPRESSIBLE = [positive_data_acceptance]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@schema.parametrize()
@FUZZ
def test_with_the_token(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=NOT_SCHEMA_EXPRESSIBLE
    )


@schema.parametrize()
@FUZZ
def test_without_the_token(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=NOT_SCHEMA_EXPRESSIBLE)
