"""The metric names the service exports, and the metric names a PromQL expression uses.

`exported_metric_names` is the one source the dashboard and alert tests compare against: the
names agreed for `/metrics` (docs/observability.md), each as the sample names Prometheus
stores (a histogram is `_bucket`, `_sum` and `_count`). `scraped_metric_names` gives the same
from a live exposition, for the test that scrapes a running instance.
"""

from __future__ import annotations

import re
from typing import Final, Literal

MetricType = Literal["counter", "gauge", "histogram"]

AGREED: Final[dict[str, MetricType]] = {
    "s2_build_info": "gauge",
    "s2_compute_latency_seconds": "histogram",
    "s2_end_to_end_latency_seconds": "histogram",
    "s2_stream_lag_seconds": "gauge",
    "s2_stream_pending_entries": "gauge",
    "s2_stream_backlog_entries": "gauge",
    "s2_entries_read_total": "counter",
    "s2_entries_acked_total": "counter",
    "s2_snapshots_total": "counter",
    "s2_emits_total": "counter",
    "s2_dqc_failures_total": "counter",
    "s2_dead_letters_total": "counter",
    "s2_retries_total": "counter",
    "s2_dependency_failing": "gauge",
    "s2_store_write_seconds": "histogram",
    "s2_checkpoint_seconds": "histogram",
    "s2_checkpoint_bytes": "gauge",
    "s2_config_info": "gauge",
    "s2_config_applied_timestamp_seconds": "gauge",
    "s2_config_degraded": "gauge",
    "s2_config_rejected_total": "counter",
    "s2_lease_owned": "gauge",
    "s2_health_status": "gauge",
    "s2_recompute_signals_total": "counter",
    "s2_recompute_tasks": "gauge",
    "s2_recompute_task_failures_total": "counter",
}
# Series Prometheus itself adds to every scrape target.
SCRAPE_SERIES: Final = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def sample_names(name: str, kind: MetricType) -> set[str]:
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def exported_metric_names() -> set[str]:
    """The sample names the service exports (by the agreed list)."""
    names: set[str] = set()
    for name, kind in AGREED.items():
        names |= sample_names(name, kind)
    return names


def scraped_metric_names(exposition: str) -> set[str]:
    """The sample names of a Prometheus text exposition (`GET /metrics`), including those of
    metrics declared (`# TYPE`) but without any sample yet (a labelled counter never
    incremented)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind in ("counter", "gauge", "histogram"):
                names |= sample_names(name, kind)  # type: ignore[arg-type]
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


_KEYWORDS: Final = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}")  # label matchers
_RANGES = re.compile(r"\[[^\]]*\]")  # range and subquery selectors
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{?\w+\}?")  # Grafana variables ($symbol, $__rate_interval)
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords,
    label names (inside braces or grouping clauses), durations or Grafana variables."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("{}", text)
    text = _RANGES.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
