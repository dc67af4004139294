"""Label values stay bounded: a reason's counts do not make new label values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from s2feature.observability.metrics import Metrics, reason_code


def test_counts_in_a_reason_are_not_label_values() -> None:
    assert reason_code("jump:3_flagged_events") == "jump:n_flagged_events"
    assert reason_code("bounds:spread_bps") == "bounds:spread_bps"
    assert reason_code("unreadable:missing_field:mid") == "unreadable:missing_field:mid"


def test_dqc_reasons_of_different_counts_share_one_series() -> None:
    registry = CollectorRegistry()
    series = Metrics("0.0.0", registry).series("BTCUSDT", ("1m",))
    for reason in ("jump:3_flagged_events", "jump:7_flagged_events", "jump:3_flagged_events"):
        series.dqc_failed(reason)
    series.dead_lettered("jump:12_flagged_events")
    samples = {
        (s.name, s.labels.get("reason")): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name in ("s2_dqc_failures_total", "s2_dead_letters_total")
    }
    assert samples == {
        ("s2_dqc_failures_total", "jump:n_flagged_events"): 3,
        ("s2_dead_letters_total", "jump:n_flagged_events"): 1,
    }
