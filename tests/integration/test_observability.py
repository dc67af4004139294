"""Metrics, per-snapshot logs and traces of a real service run (real redis-server, SQLite, lake):
what they count must be what the run did."""

from __future__ import annotations

import io
import itertools
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.logs import configure_json_logging
from s2feature.observability.metrics import Metrics
from s2feature.observability.tracing import SignalTracer, otlp_tracer_provider, tracer_provider
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")
WINDOWS = ("1m", "5m", "1h")


def env_for(server: RedisServer, tmp: Path) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": ",".join(WINDOWS),
        "S2_CONSUMER_NAME": "test-consumer",
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
    }


def load_input(client: redis.Redis, n_bars: int) -> int:
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, n_bars, 5), 5)
    checks.add_entries(client, SERIES, entries)
    return len(entries)


def run_burst(
    env: dict[str, str], metrics: Metrics | None = None, tracer: SignalTracer | None = None
) -> Service:
    settings = load_settings(env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    client = redis.Redis(host="127.0.0.1", port=int(env["S2_REDIS_ADDRESSES"].split(":")[1]))
    service = Service(
        settings,
        client,
        store,
        BarLake(Path(env["S2_LAKE_DIR"])),
        metrics=metrics,
        tracer=tracer,
    )
    service.run(idle_exit_s=0.3)
    store.close()
    return service


def snapshot_count(env: dict[str, str]) -> int:
    """Snapshots the run computed: those stored, and those failing DQC (a strategy event each,
    stored or not)."""
    with sqlite3.connect(env["S2_DB_SQLITE_PATH"]) as db:
        ids = {row[0] for row in db.execute("SELECT signal_id FROM signals")}
        for (doc,) in db.execute("SELECT doc FROM strategy_events"):
            signal_id = json.loads(doc).get("signal_id")
            if signal_id is not None:
                ids.add(signal_id)
    return len(ids)


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of the samples `name` over every label set matching `labels`."""
    found = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    configure_json_logging("DEBUG", out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def records(stream: io.StringIO, *events: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line.get("event") in events]


def test_the_metrics_count_what_a_run_did(redis_server: RedisServer, tmp_path: Path) -> None:
    env = env_for(redis_server, tmp_path)
    client = redis_server.client()
    n_entries = load_input(client, 1600)
    metrics = Metrics("test", CollectorRegistry())
    service = run_burst(env, metrics)
    registry = metrics.registry
    symbol = SERIES.symbol

    assert total(registry, "s2_entries_read_total", symbol=symbol) == n_entries
    assert total(registry, "s2_entries_acked_total", symbol=symbol) == n_entries
    emits = total(registry, "s2_emits_total", symbol=symbol)
    assert emits == service.emitted == len(checks.emitted(client, symbol)) > 0
    snapshots = total(registry, "s2_snapshots_total", symbol=symbol)
    # Each snapshot has one compute latency observation in its window.
    assert snapshots == snapshot_count(env) > emits
    assert total(registry, "s2_compute_latency_seconds_count") == snapshots
    assert total(registry, "s2_end_to_end_latency_seconds_count") == emits
    for window in WINDOWS:
        per_window = total(registry, "s2_snapshots_total", symbol=symbol, window=window)
        assert total(registry, "s2_compute_latency_seconds_count", window=window) == per_window
    # DQC failures (the first hours lack the history the 1h features need) are counted once
    # per reason: at least one each.
    assert total(registry, "s2_dqc_failures_total") >= snapshots - emits
    # Under the default realtime routing, exactly the snapshots passing DQC are emitted.
    assert total(registry, "s2_dqc_failed_snapshots_total", symbol=symbol) == snapshots - emits
    assert total(registry, "s2_store_write_seconds_count") > 0
    assert total(registry, "s2_checkpoint_seconds_count") > 0
    assert total(registry, "s2_checkpoint_bytes", symbol=symbol) > 1000
    assert total(registry, "s2_build_info", version="test") == 1


def test_each_sampled_signal_has_one_trace_of_four_steps_joined_to_its_log_lines(
    redis_server: RedisServer, tmp_path: Path, log_lines: io.StringIO
) -> None:
    env = env_for(redis_server, tmp_path)
    client = redis_server.client()
    load_input(client, 1600)
    exporter = InMemorySpanExporter()
    tracer = SignalTracer(tracer_provider(1.0, SimpleSpanProcessor(exporter)), 1.0)
    service = run_burst(env, tracer=tracer)

    spans = exporter.get_finished_spans()
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    roots = [s for s in spans if s.name == "signal"]
    assert len(roots) == len(traces) == snapshot_count(env)  # every snapshot, sampled at 1.0
    emitted_roots = 0
    for trace_spans in traces.values():
        (root,) = [s for s in trace_spans if s.name == "signal"]
        attributes = dict(root.attributes or {})
        assert attributes["s2.symbol"] == SERIES.symbol
        assert attributes["s2.window"] in WINDOWS
        assert attributes["s2.dqc"] in ("pass", "fail")
        assert {"s2.signal_id", "s2.t0", "s2.rev"} <= set(attributes)
        steps = {s.name: s for s in trace_spans if s.name != "signal"}
        expected = ["fetch", "compute"]
        if attributes["s2.stored"]:
            expected.append("persist")
        if attributes["s2.emitted"]:
            expected.append("emit")
            emitted_roots += 1
        assert sorted(steps) == sorted(expected)
        for step in steps.values():
            assert step.parent is not None
            assert root.context is not None
            assert step.parent.span_id == root.context.span_id
            assert root.start_time is not None
            assert root.end_time is not None
            assert step.start_time is not None
            assert step.end_time is not None
            assert root.start_time <= step.start_time <= step.end_time <= root.end_time
        # fetch -> compute -> persist -> emit, in that order
        order = [steps[name] for name in expected]
        for before, after in itertools.pairwise(order):
            assert before.end_time is not None
            assert after.start_time is not None
            assert before.end_time <= after.start_time
    assert emitted_roots == service.emitted

    # The per-snapshot log lines (DEBUG) carry the trace's ID.
    by_signal = {
        dict(s.attributes or {})["s2.signal_id"]: f"{s.context.trace_id:032x}"
        for s in roots
        if s.context is not None
    }
    computed = records(log_lines, "compute_ok", "dqc_fail")
    assert len(computed) == len(roots)
    for line in computed:
        assert line["trace_id"] == by_signal[line["signal_id"]]
        assert {"rev", "symbol", "window", "reasons"} <= set(line)
    emit_lines = records(log_lines, "emit_ok", "emit_skip")
    assert sum(1 for line in emit_lines if line["event"] == "emit_ok") == service.emitted
    assert all(line["event"] == "emit_skip" for line in emit_lines if line["reasons"])


def test_a_ratio_of_zero_builds_no_span(redis_server: RedisServer, tmp_path: Path) -> None:
    env = env_for(redis_server, tmp_path)
    load_input(redis_server.client(), 100)
    exporter = InMemorySpanExporter()
    tracer = SignalTracer(tracer_provider(0.0, SimpleSpanProcessor(exporter)), 0.0)
    run_burst(env, tracer=tracer)
    assert snapshot_count(env) > 0
    assert exporter.get_finished_spans() == ()


def test_sampling_keeps_about_the_ratio() -> None:
    tracer = SignalTracer(tracer_provider(0.01), 0.01)
    picked = sum(1 for _ in range(200_000) if tracer.pick() is not None)
    assert 1_400 < picked < 2_600  # 2,000 expected; this band is about 14 standard deviations


def test_snapshot_lines_are_not_written_at_info(
    redis_server: RedisServer, tmp_path: Path, log_lines: io.StringIO
) -> None:
    logging.getLogger().setLevel("INFO")
    env = env_for(redis_server, tmp_path)
    load_input(redis_server.client(), 100)
    run_burst(env)
    assert records(log_lines, "compute_ok", "dqc_fail", "emit_ok", "emit_skip") == []
    assert records(log_lines, "lease_taken", "stopped")  # the lifecycle is there


class _OtlpReceiver:
    """A collector's OTLP/HTTP trace endpoint on loopback: decodes each request's protobuf."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.paths.append(self.path)
                receiver.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_traces_are_exported_over_otlp_http(redis_server: RedisServer, tmp_path: Path) -> None:
    env = env_for(redis_server, tmp_path)
    load_input(redis_server.client(), 100)
    receiver = _OtlpReceiver()
    try:
        tracer = SignalTracer(otlp_tracer_provider(receiver.url, 1.0, "test"), 1.0)
        run_burst(env, tracer=tracer)
        tracer.shutdown()  # exports what is queued
    finally:
        receiver.close()
    assert receiver.paths
    assert set(receiver.paths) == {"/v1/traces"}
    spans = [
        span
        for request in receiver.requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    roots = [span for span in spans if span.name == "signal"]
    assert len(roots) == snapshot_count(env) > 0
    names = {span.name for span in spans}
    assert {"signal", "fetch", "compute"} <= names
    attributes = {a.key: a.value for a in roots[0].attributes}
    assert attributes["s2.symbol"].string_value == SERIES.symbol
    assert attributes["s2.window"].string_value in WINDOWS
    resource = receiver.requests[0].resource_spans[0].resource
    service_names = [a.value.string_value for a in resource.attributes if a.key == "service.name"]
    assert service_names == ["s2feature"]
