"""Recompute tasks in a child process: `ProcessRecomputeRunner` (the parent side, a task
registry `Runner`) and `main` (the child, `python -m s2feature.jobs.task_process`).

Why a process: the job is CPU-bound Python. On a thread of the service it shares the interpreter
lock with the consumer loop, and the loop's latency grows several times while a task runs
(`benches/live_under_recompute.py`, docs/jobs.md "Performance"); in a process of its own it only
shares the CPUs and the store. The child also lowers its CPU priority (`os.nice(10)`), so that
on a busy machine the scheduler prefers the consumer loop.

The protocol, one JSON document per line:
- stdin: the task's spec (request, task id, resume point, the bundle active when the task
  started, the live series, the lake directory, the store settings with their credentials: never
  on the command line, which other users of the machine can read), then nothing; stdin is kept
  open, and its end (the parent died) stops the child between batches like SIGTERM does;
- stdout: `{"progress": {...}}` after every batch, then one last line, `{"result": {...}}` or
  `{"error": {"kind": ..., "message": ...}}`;
- stderr: the child's logs, JSON lines, which the parent writes to its own stderr.

The parent keeps the task records (the registry saves them from the progress it is given); the
child writes only what `run_recompute` writes: signals and the task's FEATURE_RECOMPUTE event.

Stop: the parent sends SIGTERM, the child's handler sets its stop event and `run_recompute`
returns before its next batch; a child that has not exited `stop_timeout_s` later is killed
(its last finished batch is stored, so the task resumes from there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Final

from s2feature.config.bundle import ConfigBundle, parse_bundle
from s2feature.domain import SeriesId
from s2feature.jobs.recompute import (
    Progress,
    RecomputeError,
    RecomputeRequest,
    Resume,
    ResumeRefusedError,
    plan,
    run_recompute,
)
from s2feature.jobs.task_runner import wait_for_bundle
from s2feature.lake.parquet import BarLake
from s2feature.logs import configure_json_logging
from s2feature.redact import redact_urls
from s2feature.store.base import StoreError
from s2feature.store.factory import StoreSettings, open_store

__all__ = [
    "CHILD_NICE",
    "ProcessRecomputeRunner",
    "RecomputeProcessError",
    "child_environment",
    "main",
]

log = logging.getLogger(__name__)

CHILD_NICE: Final = 10  # added to the child's nice value: the consumer loop comes first
_STDERR_TAIL: Final = 20  # lines of the child's stderr kept for the error of a child that died
_POLL_S: Final = 0.1


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the parent's without the service's settings (`S2_*`: the API
    token, the store's and Redis's URLs and passwords) and the OTLP exporter's headers (which
    may carry a token). The child takes everything it needs from its spec on stdin, so a
    secret reaches it only where it is used, and nothing it runs (a library reading the
    environment, a crash report) sees the others."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith("S2_")
        and not (name.startswith("OTEL_EXPORTER_OTLP") and name.endswith("HEADERS"))
    }


class RecomputeProcessError(Exception):
    """The recompute child failed without a result of its own (it died, or sent nonsense), or
    with an error of a kind the parent does not rebuild; the message says how."""


# ---------------------------------------------------------------------------- the spec


def task_spec(
    request: RecomputeRequest,
    task_id: str,
    resume: Resume,
    bundle: ConfigBundle,
    series: Mapping[str, SeriesId],
    lake_dir: Path,
    store: StoreSettings,
    log_level: str,
) -> dict[str, Any]:
    """The JSON document the child reads on stdin."""
    return {
        "request": dataclasses.asdict(request),
        "task_id": task_id,
        "resume": dataclasses.asdict(resume),
        "bundle": bundle.model_dump(mode="json"),
        "series": {s: [v.venue, v.market, v.symbol] for s, v in series.items()},
        "lake_dir": str(lake_dir),
        "store": {**dataclasses.asdict(store), "sqlite_path": str(store.sqlite_path)},
        "log_level": log_level,
    }


@dataclasses.dataclass(frozen=True)
class _Task:
    request: RecomputeRequest
    task_id: str
    resume: Resume
    bundle: ConfigBundle
    series: dict[str, SeriesId]
    lake_dir: Path
    store: StoreSettings
    log_level: str


def _task_of_spec(spec: Mapping[str, Any]) -> _Task:
    req = spec["request"]
    request = RecomputeRequest(
        tuple(req["symbols"]), tuple(req["windows"]), req["from_ts"], req["to_ts"], req["force"]
    )
    series = {s: SeriesId.parse(":".join(parts)) for s, parts in spec["series"].items()}
    store = StoreSettings(**{**spec["store"], "sqlite_path": Path(spec["store"]["sqlite_path"])})
    return _Task(
        request,
        str(spec["task_id"]),
        Resume(**spec["resume"]),
        parse_bundle(spec["bundle"], origin="recompute task"),
        series,
        Path(spec["lake_dir"]),
        store,
        str(spec.get("log_level", "INFO")),
    )


# ---------------------------------------------------------------------------- the parent


class ProcessRecomputeRunner:
    """Runs each recompute task in a child process (`python -m s2feature.jobs.task_process`),
    under the bundle active at the task's start (`bundle`: None while no bundle is approved; the
    task waits for one, in the parent). `series` gives the venue and market of the live series;
    `store` is the store the child opens for its writes (the service's)."""

    def __init__(
        self,
        store: StoreSettings,
        lake_dir: Path,
        bundle: Callable[[], ConfigBundle | None],
        series: Mapping[str, SeriesId],
        *,
        log_level: str = "INFO",
        stop_timeout_s: float = 8.0,
        bundle_poll_s: float = 1.0,
        python: str = sys.executable,
        stderr: IO[str] | None = None,
    ) -> None:
        self._store = store
        self._lake_dir = Path(lake_dir)
        self._bundle = bundle
        self._series = dict(series)
        self._log_level = log_level
        self._stop_timeout_s = stop_timeout_s
        self._bundle_poll_s = bundle_poll_s
        self._python = python
        self._stderr = stderr
        self._lock = threading.Lock()
        self._pids: set[int] = set()

    @property
    def child_pids(self) -> frozenset[int]:
        """The pids of the children running now (for tests and diagnostics)."""
        with self._lock:
            return frozenset(self._pids)

    def __call__(
        self,
        request: RecomputeRequest,
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        bundle = wait_for_bundle(self._bundle, stop, self._bundle_poll_s)
        if bundle is None:  # stopped first
            return resume.signals_written
        spec = task_spec(
            request,
            task_id,
            resume,
            bundle,
            self._series,
            self._lake_dir,
            self._store,
            self._log_level,
        )
        # A session of its own: a Ctrl-C at a terminal reaches the service, which stops the
        # child itself, between batches.
        child = subprocess.Popen(
            [self._python, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=child_environment(os.environ),
        )
        with self._lock:
            self._pids.add(child.pid)
        try:
            return self._follow(child, spec, task_id, progress, stop, resume)
        finally:
            with self._lock:
                self._pids.discard(child.pid)

    def _follow(
        self,
        child: subprocess.Popen[str],
        spec: dict[str, Any],
        task_id: str,
        progress: Callable[[Progress], None],
        stop: threading.Event,
        resume: Resume,
    ) -> int:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        forward = threading.Thread(
            target=self._forward_stderr,
            args=(child.stderr, tail),
            name=f"recompute-stderr-{child.pid}",
            daemon=True,
        )
        forward.start()
        killed = threading.Event()
        watch = threading.Thread(
            target=self._stop_when_asked,
            args=(child, stop, killed),
            name=f"recompute-stop-{child.pid}",
            daemon=True,
        )
        watch.start()
        last: Progress | None = None
        outcome: dict[str, Any] | None = None
        try:
            with contextlib.suppress(BrokenPipeError):
                child.stdin.write(json.dumps(spec) + "\n")
                child.stdin.flush()
            for line in child.stdout:
                message = _decode(line)
                if message is None:
                    tail.append(f"stdout: {line.rstrip()}")
                elif "progress" in message:
                    last = Progress(**message["progress"])
                    progress(last)
                elif "result" in message or "error" in message:
                    outcome = message
        finally:
            with contextlib.suppress(OSError):
                child.stdin.close()
            code = child.wait()
            watch.join()
            forward.join(timeout=5.0)
            for stream in (child.stdout, child.stderr):
                with contextlib.suppress(OSError):
                    stream.close()
        if outcome is not None and "result" in outcome:
            return int(outcome["result"]["signals_written"])
        if outcome is not None:
            raise _rebuilt(outcome["error"])
        done = last.signals_written if last is not None else resume.signals_written
        if killed.is_set():
            # Asked to stop and did not within the timeout: its finished batches are stored,
            # and the registry leaves the task to be resumed from the last one.
            log.warning(
                "recompute task %s: its process did not stop in %.0f s and was killed",
                task_id,
                self._stop_timeout_s,
                extra={"event": "recompute_stop_timeout", "task_id": task_id},
            )
            return done
        raise RecomputeProcessError(
            f"the recompute process (pid {child.pid}) {_how_it_ended(code)} without a result"
            + (f"; its last output: {redact_urls(' | '.join(tail))}" if tail else "")
        )

    def _stop_when_asked(
        self, child: subprocess.Popen[str], stop: threading.Event, killed: threading.Event
    ) -> None:
        while child.poll() is None:
            if not stop.wait(_POLL_S):
                continue
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                killed.set()
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                child.wait()
            return

    def _forward_stderr(self, stream: IO[str], tail: deque[str]) -> None:
        out = self._stderr or sys.stderr
        for line in stream:
            tail.append(line.rstrip())
            with contextlib.suppress(ValueError, OSError):
                out.write(line)
                out.flush()


def _decode(line: str) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {name}"
    return f"exited with code {code}"


def _rebuilt(error: Mapping[str, Any]) -> Exception:
    """The child's error as the exception the registry tells apart (a refused resume ends the
    task `interrupted`; a store error is the store's)."""
    # The task's errors are shown by the API and stored: no URL credentials in them.
    kind, message = str(error.get("kind")), redact_urls(str(error.get("message")))
    if kind == "resume_refused":
        return ResumeRefusedError(message)
    if kind == "recompute":
        return RecomputeError(message)
    if kind == "store":
        return StoreError(message)
    return RecomputeProcessError(f"{error.get('type', 'Error')}: {message}")


# ---------------------------------------------------------------------------- the child


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, ResumeRefusedError):
        return "resume_refused"
    if isinstance(exc, RecomputeError):
        return "recompute"
    if isinstance(exc, StoreError):
        return "store"
    return "other"


def _stop_at_end_of(stream: IO[str], stop: threading.Event) -> None:
    """Set `stop` when `stream` ends: the parent closed it, or died."""
    for _ in stream:
        pass
    stop.set()


def run_child(stdin: IO[str], stdout: IO[str]) -> int:
    """The child: read the spec, run the task, report; the exit code (0 also after a failure
    that was reported: the report is the outcome)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    line = stdin.readline()
    try:
        task = _task_of_spec(json.loads(line))
    except Exception as exc:
        _send(stdout, {"error": {"kind": "other", "type": type(exc).__name__, "message": str(exc)}})
        return 0
    configure_json_logging(task.log_level)
    threading.Thread(target=_stop_at_end_of, args=(stdin, stop), daemon=True).start()
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    try:
        lake = BarLake(task.lake_dir, auto_compact_parts=None)
        planned = plan(task.request, lake, task.bundle, task.series)
        store = open_store(task.store)
        try:
            result = run_recompute(
                planned,
                store,
                lake,
                task.bundle,
                task.task_id,
                lambda p: _send(stdout, {"progress": dataclasses.asdict(p)}),
                stop,
                resume=task.resume,
            )
        finally:
            store.close()
    except Exception as exc:
        log.exception(
            "recompute task %s failed in its process",
            task.task_id,
            extra={"event": "recompute_process_failed", "task_id": task.task_id},
        )
        error = {"kind": _error_kind(exc), "type": type(exc).__name__, "message": str(exc)}
        _send(stdout, {"error": error})
        return 0
    _send(
        stdout,
        {
            "result": {
                "signals_written": result.signals_written,
                "batches_done": result.batches_done,
                "interrupted": result.interrupted,
            }
        },
    )
    return 0


def main() -> None:
    # The protocol keeps file descriptor 1 for itself; anything else that writes to stdout (a
    # library's print, a C extension) goes to stderr, with the logs.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    with protocol:
        code = run_child(sys.stdin, protocol)
    sys.exit(code)


if __name__ == "__main__":
    main()
