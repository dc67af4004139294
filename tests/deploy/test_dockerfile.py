"""The Dockerfile, checked statically (building it needs the network): multi-stage, the locked
dependencies without the dev group, a non-root user that is the chart's, paths on the chart's
writable volume, and only settings the service reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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


def build_stage() -> list[str]:
    """The build stage's instructions (continuation lines joined), between the first two FROMs."""
    lines = DOCKERFILE.replace("\\\n", " ").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return [line for line in lines[starts[0] + 1 : starts[1]] if line and not line.startswith("#")]


def test_the_build_context_holds_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :]  # everything excluded, then re-included by name
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in build_stage():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, _ = line.split()[1:]
            assert set(sources) <= included, line


def test_the_build_steps_install_the_service_without_the_dev_tools(tmp_path: Path) -> None:
    """The build stage's COPY and `uv sync` steps replayed outside a container (no Docker daemon
    on the development machine): they install a working `s2-feature` and no dev package."""
    uv = subprocess.run(
        [str(ROOT / "scripts" / "ensure-uv.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    workdir = tmp_path / "app"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    for line in build_stage():
        op, _, rest = line.partition(" ")
        if op == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
        elif op == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                target = workdir / source
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / source, target)
        elif op == "RUN" and rest.startswith("uv sync"):
            done = subprocess.run(
                [uv, *rest.split()[1:]],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
    venv = workdir / ".venv"
    done = subprocess.run(
        [str(venv / "bin" / "s2-feature"), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout
    installed = {p.name.lower() for p in (venv / "lib").glob("python3*/site-packages/*")}
    assert not {name for name in installed if name.startswith(("pytest", "helm_python", "mypy"))}
    # not an editable install: the package itself is in site-packages
    assert "s2feature" in installed
