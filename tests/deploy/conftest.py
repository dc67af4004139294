"""Fixtures of the deployment kit's tests: the `promtool` binary, fetched the way
`scripts/ensure-redis.sh` installs redis-server (a missing tool fails the test, never skips it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Path of a `promtool` (scripts/ensure-promtool.sh extracts Debian's when there is none)."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "ensure-promtool.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"no promtool: {done.stderr.strip()}", pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1])
    return path if path.is_absolute() else ROOT / path
