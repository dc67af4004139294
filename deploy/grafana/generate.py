"""Writes the Grafana dashboard "S2 Overview" (s2-overview.json next to this file).

The JSON is committed; `python deploy/grafana/generate.py` rewrites it, and a test fails when the
committed file differs from what this script gives. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("s2-overview.json")
SYM = 'symbol=~"$symbol"'
RI = "$__rate_interval"

# (row title, [(panel title, unit, description, [(legend, PromQL)])])
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]]]]]] = [
    (
        "SLIs",
        [
            (
                "Compute latency p50 / p95",
                "s",
                "Finalising entry read to snapshot computed (SLO p95 <= 1 ms).",
                [
                    (
                        f"p{q}",
                        f"histogram_quantile(0.{q}, sum by (le) "
                        f"(rate(s2_compute_latency_seconds_bucket[{RI}])))",
                    )
                    for q in ("50", "95")
                ],
            ),
            (
                "End-to-end latency p95",
                "s",
                "Event read to emit done (SLO p95 <= 10 ms).",
                [
                    (
                        "p95",
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(s2_end_to_end_latency_seconds_bucket[{RI}])))",
                    )
                ],
            ),
            (
                "DQC fail ratio",
                "percentunit",
                "DQC failures (one per reason) over snapshots computed.",
                [
                    (
                        "fail ratio",
                        f"sum(rate(s2_dqc_failures_total[{RI}])) / "
                        f"sum(rate(s2_snapshots_total{{{SYM}}}[{RI}]))",
                    )
                ],
            ),
            (
                "Health status",
                "none",
                "0 OK, 1 DEGRADED, 2 DOWN, per instance.",
                [("{{instance}}", "max by (instance) (s2_health_status)")],
            ),
        ],
    ),
    (
        "Streams",
        [
            (
                "Lag",
                "s",
                "Now minus the event time of the last applied event, per stream (owner only).",
                [
                    (
                        "{{symbol}}",
                        f"max by (symbol) (s2_stream_lag_seconds{{{SYM}}} "
                        f"and on (instance, symbol) (s2_lease_owned{{{SYM}}} == 1))",
                    )
                ],
            ),
            (
                "Throughput: entries read / acked",
                "ops",
                "Entries per second, per stream.",
                [
                    (
                        "read {{symbol}}",
                        f"sum by (symbol) (rate(s2_entries_read_total{{{SYM}}}[{RI}]))",
                    ),
                    (
                        "acked {{symbol}}",
                        f"sum by (symbol) (rate(s2_entries_acked_total{{{SYM}}}[{RI}]))",
                    ),
                ],
            ),
            (
                "Backlog / pending",
                "short",
                "Entries not yet read by the group plus pending; delivered and not acked.",
                [
                    (
                        "backlog {{symbol}}",
                        f"max by (symbol) (s2_stream_backlog_entries{{{SYM}}})",
                    ),
                    (
                        "pending {{symbol}}",
                        f"max by (symbol) (s2_stream_pending_entries{{{SYM}}})",
                    ),
                ],
            ),
            (
                "Lease owner",
                "none",
                "1 where this instance holds the stream's lease.",
                [("{{instance}} {{symbol}}", f"s2_lease_owned{{{SYM}}} == 1")],
            ),
        ],
    ),
    (
        "Snapshots and DQC",
        [
            (
                "Snapshots vs emits",
                "ops",
                "Snapshots computed and emitted per second, per stream and window.",
                [
                    (
                        "computed {{symbol}} {{window}}",
                        f"sum by (symbol, window) (rate(s2_snapshots_total{{{SYM}}}[{RI}]))",
                    ),
                    (
                        "emitted {{symbol}} {{window}}",
                        f"sum by (symbol, window) (rate(s2_emits_total{{{SYM}}}[{RI}]))",
                    ),
                ],
            ),
            (
                "DQC failures by reason",
                "ops",
                "Snapshots failing DQC per second, one count per reason.",
                [("{{reason}}", f"sum by (reason) (rate(s2_dqc_failures_total[{RI}]))")],
            ),
            (
                "Dead letters by reason",
                "short",
                "Entries dead-lettered (feat:dlq:<symbol>) over the range.",
                [
                    (
                        "{{reason}}",
                        "sum by (reason) (increase(s2_dead_letters_total[$__range]))",
                    )
                ],
            ),
            (
                "Retries and failing dependencies",
                "ops",
                "Retried operations per second; 1 while a dependency is in backoff.",
                [
                    (
                        "retries {{dependency}}",
                        f"sum by (dependency) (rate(s2_retries_total[{RI}]))",
                    ),
                    ("failing {{dependency}}", "max by (dependency) (s2_dependency_failing)"),
                ],
            ),
        ],
    ),
    (
        "Store and checkpoints",
        [
            (
                "Store write p95",
                "s",
                "Store write latency per batch.",
                [
                    (
                        "p95",
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(s2_store_write_seconds_bucket[{RI}])))",
                    )
                ],
            ),
            (
                "Checkpoint duration p95 and size",
                "s",
                "Checkpoint duration; the size of the last checkpoint is in bytes.",
                [
                    (
                        "p95",
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(s2_checkpoint_seconds_bucket[{RI}])))",
                    ),
                    ("bytes {{symbol}}", f"max by (symbol) (s2_checkpoint_bytes{{{SYM}}})"),
                ],
            ),
        ],
    ),
    (
        "Config and recompute",
        [
            (
                "Config rev",
                "none",
                "The active bundle's rev and source per instance.",
                [
                    (
                        "{{instance}} {{rev}} ({{source}})",
                        "max by (instance, rev, source) (s2_config_info)",
                    )
                ],
            ),
            (
                "Config age and staleness",
                "s",
                "Seconds since the active bundle was applied; degraded = cache or stale.",
                [
                    (
                        "age {{instance}}",
                        "time() - max by (instance) (s2_config_applied_timestamp_seconds)",
                    ),
                    ("degraded {{instance}}", "max by (instance) (s2_config_degraded)"),
                    (
                        "rejected {{instance}}",
                        "sum by (instance) (increase(s2_config_rejected_total[$__range]))",
                    ),
                ],
            ),
            (
                "Recompute tasks",
                "short",
                "Tasks by state; signals written per second; failures over the range.",
                [
                    ("{{state}}", "sum by (state) (s2_recompute_tasks)"),
                    ("signals/s", f"sum(rate(s2_recompute_signals_total[{RI}]))"),
                    (
                        "failed",
                        "sum(increase(s2_recompute_task_failures_total[$__range]))",
                    ),
                ],
            ),
            (
                "Build",
                "none",
                "Version per instance.",
                [("{{instance}} {{version}}", "max by (instance, version) (s2_build_info)")],
            ),
        ],
    ),
]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel(
    panel_id: int,
    title: str,
    unit: str,
    description: str,
    queries: list[tuple[str, str]],
    x: int,
    y: int,
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 6, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (legend, expr) in enumerate(queries)
        ],
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y = next_id + 1, y + 1
        for i, (title, unit, description, queries) in enumerate(row_panels):
            panels.append(
                panel(next_id, title, unit, description, queries, 6 * (i % 4), y + 8 * (i // 4))
            )
            next_id += 1
        y += 8 * ((len(row_panels) + 3) // 4)
    return {
        "uid": "s2-overview",
        "title": "S2 Overview",
        "description": "S2 feature service: SLIs, streams, DQC, store, config and recompute.",
        "tags": ["s2", "features"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "symbol",
                    "type": "query",
                    "label": "Symbol",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(s2_stream_lag_seconds, symbol)",
                        "refId": "symbol",
                    },
                    "definition": "label_values(s2_stream_lag_seconds, symbol)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
