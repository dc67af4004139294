"""The `/health` example in docs/service.md is a body the API could send."""

from __future__ import annotations

import re
from pathlib import Path

from s2feature.api.schemas import HealthBody

SERVICE_DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def test_the_documented_health_body_matches_the_schema() -> None:
    section = SERVICE_DOC.read_text(encoding="utf-8").split("## HTTP API and /health", 1)[1]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert example is not None
    body = HealthBody.model_validate_json(example.group(1))
    assert set(body.checks.model_dump()) == {"loop", "store", "redis", "config", "streams"}
