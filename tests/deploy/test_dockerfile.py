"""The Dockerfile, checked statically (building it needs the network): multi-stage, the locked
dependencies without the dev group, a non-root user that is the chart's, paths on the chart's
writable volume, and only settings the service reads."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python

from s2feature.service.settings import EnvSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CHART_VALUES = helm_python.Chart.load(ROOT / "deploy" / "helm" / "s2-feature").values


def instructions(name: str) -> list[str]:
    text = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]


def test_multi_stage_with_the_locked_dependencies() -> None:
    assert len(instructions("FROM")) >= 2
    syncs = [run for run in instructions("RUN") if "uv sync" in run]
    assert syncs
    assert all("--frozen" in run and "--no-dev" in run for run in syncs)
    assert any("COPY --from=build" in line for line in DOCKERFILE.splitlines())


def test_runs_as_the_chart_non_root_user() -> None:
    [user] = instructions("USER")
    uid, _, gid = user.partition(":")
    assert int(uid) != 0
    assert int(uid) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == CHART_VALUES["podSecurityContext"]["runAsGroup"]


def test_the_image_settings_are_read_by_the_service_and_match_the_chart() -> None:
    env = dict(re.findall(r"(S2_[A-Z0-9_]+)=(\S+)", " ".join(instructions("ENV"))))
    read = {f"S2_{name.upper()}" for name in EnvSettings.model_fields}
    assert set(env) <= read
    settings = CHART_VALUES["settings"]
    for name, value in env.items():
        assert str(settings[name.removeprefix("S2_").lower()]) == value, name
    assert instructions("EXPOSE") == [str(settings["api_port"])]


def test_the_chart_image_is_this_image() -> None:
    # `docker build -t s2-feature:<appVersion> .` (the Dockerfile's header) is what the chart runs
    assert f"-t {CHART_VALUES['image']['repository']}:" in DOCKERFILE
    assert instructions("ENTRYPOINT") == ['["s2-feature"]']
