"""`s2-feature demo` end to end: both halves succeed and say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2feature.cli import main


@pytest.mark.redis
def test_demo_runs_both_paths_and_the_stream_and_reports_agreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "online vs batch: AGREE" in out
    assert "live vs recompute: AGREE" in out
    assert "0 pending" in out
    assert "FX leg: rho_usdttwd_14 non-null in " in out  # live rho from the FX stream
    assert "; 0 fx_late" in out
    assert (tmp_path / "features.csv").stat().st_size > 1_000_000
