"""Traces of signals: one trace per sampled `signal_id`, spans fetch -> compute -> persist -> emit.

The service works in batches, so a signal's steps are not separate calls that could each open a
span: the loop stamps the batch's steps with `time.perf_counter()` as it goes (a few stamps per
batch, one pair per base bar), and once the batch's emits are confirmed, `SignalTracer.record`
builds the spans of its sampled signals with those times as explicit start and end times.

Sampling is decided before anything is built. The provider samples with
`ParentBased(TraceIdRatioBased(ratio))`; `SignalTracer.pick` draws the signal's trace ID and
applies the same ratio test to it (the lower 64 bits against the sampler's bound), and only a
sampled signal is ever handed to the SDK, with that ID preset in the provider's ID generator, so
the SDK's sampler agrees. An unsampled signal costs one random draw and one comparison.

No Redis command is instrumented: a span per command would cost more than the work it measures.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import set_span_in_context
from opentelemetry.util.types import AttributeValue

TRACER_NAME = "s2feature"


class PresetTraceIds(RandomIdGenerator):
    """Random IDs, except a root span's trace ID when one was preset (by the thread that then
    starts the root span)."""

    def __init__(self) -> None:
        self._preset = threading.local()

    def preset(self, trace_id: int) -> None:
        self._preset.trace_id = trace_id

    def generate_trace_id(self) -> int:
        trace_id: int | None = getattr(self._preset, "trace_id", None)
        if trace_id is None:
            return super().generate_trace_id()
        self._preset.trace_id = None
        return trace_id


def tracer_provider(
    ratio: float, processor: SpanProcessor | None = None, version: str = ""
) -> TracerProvider:
    """A provider sampling `ratio` of the root spans (`ParentBased(TraceIdRatioBased)`), with
    the ID generator `SignalTracer` needs; spans go to `processor`."""
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(ratio)),
        id_generator=PresetTraceIds(),
        resource=Resource.create({"service.name": "s2feature", "service.version": version}),
    )
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


def otlp_tracer_provider(endpoint: str, ratio: float, version: str = "") -> TracerProvider:
    """A provider exporting over OTLP/HTTP (protobuf) to `endpoint` (the collector's base URL,
    as in `OTEL_EXPORTER_OTLP_ENDPOINT`; spans go to `<endpoint>/v1/traces`), in batches from a
    bounded queue that drops rather than blocks when the collector is slow."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    return tracer_provider(ratio, BatchSpanProcessor(exporter), version)


@dataclass(frozen=True)
class TracedSignal:
    """A sampled signal and the times of its own step (its base bar's `on_base_bar` call)."""

    trace_id: int
    signal_id: str
    symbol: str
    window: str
    t0: int
    rev: str
    dqc: str  # "pass" or "fail"
    reasons: tuple[str, ...]
    compute: tuple[float, float]  # perf_counter seconds
    stored: bool
    emitted: bool


@dataclass(frozen=True)
class BatchTimes:
    """The batch's steps, as `perf_counter` seconds (None: the step did not happen)."""

    fetch: tuple[float, float]
    persist: tuple[float, float] | None
    emit: tuple[float, float] | None


class SignalTracer:
    """Builds the traces of sampled signals on `provider` (made by `tracer_provider`)."""

    def __init__(self, provider: TracerProvider, ratio: float) -> None:
        ids = provider.id_generator
        if not isinstance(ids, PresetTraceIds):
            raise TypeError("the provider must be made by tracer_provider (preset trace IDs)")
        self.provider = provider
        self._ids = ids
        self._tracer = provider.get_tracer(TRACER_NAME)
        sampler = TraceIdRatioBased(ratio)
        self._bound = sampler.bound
        self._limit = sampler.TRACE_ID_LIMIT
        self._getrandbits = random.getrandbits
        # perf_counter seconds -> epoch nanoseconds (the span times)
        self._offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)

    def pick(self) -> int | None:
        """A trace ID for a new signal when it is sampled, else None."""
        trace_id = self._getrandbits(128)
        if trace_id & self._limit < self._bound and trace_id:
            return trace_id
        return None

    def _ns(self, perf_s: float) -> int:
        return int(perf_s * 1e9) + self._offset_ns

    def record(self, signals: Sequence[TracedSignal], times: BatchTimes) -> None:
        """The spans of `signals`, all of one batch whose steps took `times`."""
        tracer, ns = self._tracer, self._ns
        for signal in signals:
            steps: list[tuple[str, tuple[float, float]]] = [
                ("fetch", times.fetch),
                ("compute", signal.compute),
            ]
            if signal.stored and times.persist is not None:
                steps.append(("persist", times.persist))
            if signal.emitted and times.emit is not None:
                steps.append(("emit", times.emit))
            attributes: dict[str, AttributeValue] = {
                "s2.signal_id": signal.signal_id,
                "s2.symbol": signal.symbol,
                "s2.window": signal.window,
                "s2.t0": signal.t0,
                "s2.rev": signal.rev,
                "s2.dqc": signal.dqc,
                "s2.dqc_reasons": list(signal.reasons),
                "s2.stored": signal.stored,
                "s2.emitted": signal.emitted,
            }
            self._ids.preset(signal.trace_id)
            root = tracer.start_span(
                "signal", context=Context(), attributes=attributes, start_time=ns(times.fetch[0])
            )
            parent = set_span_in_context(root)
            for name, (start, end) in steps:
                span = tracer.start_span(name, context=parent, start_time=ns(start))
                span.end(end_time=ns(end))
            root.end(end_time=ns(max(end for _, (_, end) in steps)))

    def shutdown(self) -> None:
        """Export what is queued and stop the provider."""
        self.provider.shutdown()
