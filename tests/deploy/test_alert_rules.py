"""The alert rules (`deploy/prometheus/s2-alerts.yaml`): valid for Prometheus, each alert
unit-tested with `promtool test rules`, built on exported metric names only, and pointing at a
runbook section that exists."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.runbook import runbook_anchors
from tests.support.metric_names import SCRAPE_SERIES, exported_metric_names, promql_metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "s2-alerts.yaml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yaml"))
REQUIRED_ALERTS = {
    "S2ServiceDown",
    "S2StreamLagHigh",
    "S2DqcFailRateHigh",
    "S2DeadLettersGrowing",
    "S2NoEmitsWhileInputFlows",
    "S2ConfigDegraded",
    "S2RecomputeTaskFailed",
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_promtool_accepts_the_rules(promtool: Path) -> None:
    done = run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_passes_its_promtool_unit_tests(promtool: Path) -> None:
    assert RULE_TESTS
    done = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_expectation_fails_promtool(promtool: Path, tmp_path: Path) -> None:
    # The unit tests can fail: the same test with one expected label changed does.
    original = RULE_TESTS[0]
    broken = tmp_path / original.name
    text = original.read_text().replace("symbol: BTCUSDT", "symbol: ETHUSDT", 1)
    assert text != original.read_text()
    broken.write_text(text.replace("../s2-alerts.yaml", str(RULES)))
    assert run(promtool, "test", "rules", str(broken)).returncode != 0


def test_the_required_alerts_exist_and_each_has_a_firing_unit_test() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= REQUIRED_ALERTS
    fired: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert names <= fired, f"alerts never shown firing: {sorted(names - fired)}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_names_an_existing_runbook_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    path, _, anchor = url.partition("#")
    assert path == "docs/runbook.md"
    assert anchor in runbook_anchors(), f"{rule['alert']}: no heading for #{anchor}"
    assert rule["annotations"]["summary"]
    assert rule["labels"]["severity"] in {"warning", "critical"}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_uses_only_exported_metric_names(rule: dict[str, Any]) -> None:
    used = promql_metric_names(rule["expr"])
    assert used
    assert used <= exported_metric_names() | SCRAPE_SERIES, used - exported_metric_names()
