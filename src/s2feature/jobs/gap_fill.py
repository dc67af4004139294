"""The hourly gap fill: a recompute of the last `S2_RECOMPUTE_LOOKBACK` of the owned symbols with
`force = false`, so snapshots the live service missed (an outage, a store that refused a batch)
are filled in, and nothing already stored is written again.

Registered in the scheduler with `once=False`: each symbol is locked on its own
(`feat:lock:recompute:<symbol>:<hour>`), because instances own different symbols; the instance
holding a symbol's stream lease (whose lake has its latest bars) is the one that tries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from s2feature.jobs.recompute import RecomputeRequest
from s2feature.jobs.schedule import Due, RetryLater
from s2feature.jobs.tasks import RegistryNotReadyError, ScopeConflictError, TaskRegistry
from s2feature.lake.parquet import BarLake

__all__ = ["JOB_NAME", "GapFill", "gap_fill_request"]

log = logging.getLogger(__name__)

JOB_NAME = "recompute"


def gap_fill_request(
    due_ms: int, lookback_ms: int, symbols: Sequence[str], windows: Sequence[str], lake: BarLake
) -> RecomputeRequest | None:
    """The recompute of the t0s in `[due - lookback, due - 1]` for those of `symbols` whose lake
    has bars in that range; None when there is nothing to do.

    The range ends at the earliest last bar of those symbols' lakes: the live service appends
    its bars to the lake a few seconds after it writes their snapshots, and a w-bar the lake
    holds only in part must not be recomputed from that part.
    """
    from_ts, to_ts = due_ms - lookback_ms, due_ms - 1
    ends: dict[str, int] = {}
    for symbol in symbols:
        last = lake.last_close_time(symbol)
        if last is not None and last >= from_ts:
            ends[symbol] = last
    if not ends:
        return None
    to_ts = min(to_ts, *ends.values())
    if to_ts <= from_ts:
        return None
    return RecomputeRequest(tuple(ends), tuple(windows), from_ts, to_ts, force=False)


class GapFill:
    """The scheduled job: claims each owned symbol for this due time and submits one recompute
    task (origin `schedule`) for the claimed ones."""

    def __init__(
        self,
        tasks: TaskRegistry,
        owned: Callable[[], Sequence[str]],
        lake: BarLake,
        windows: Sequence[str],
        lookback_ms: int,
    ) -> None:
        self._tasks = tasks
        self._owned = owned
        self._lake = lake
        self._windows = tuple(windows)
        self._lookback_ms = lookback_ms

    def __call__(self, due: Due) -> None:
        if not self._tasks.ready:
            raise RetryLater("the recompute tasks are not ready yet")
        claimed = [symbol for symbol in self._owned() if due.claim(symbol)]
        request = gap_fill_request(due.at_ms, self._lookback_ms, claimed, self._windows, self._lake)
        if request is None:
            log.info(
                "gap fill: nothing to recompute (symbols claimed: %s)",
                claimed,
                extra={"event": "gap_fill_empty", "symbols": claimed},
            )
            return
        try:
            view = self._tasks.submit(request, origin="schedule")
        except RegistryNotReadyError as exc:
            raise RetryLater(str(exc)) from exc
        except ScopeConflictError as exc:
            # A task over the same range runs already; the next hour's fill covers this one's.
            log.info(
                "gap fill skipped: %s",
                exc,
                extra={"event": "gap_fill_skipped", "task_id": exc.task_id},
            )
            return
        log.info(
            "gap fill: task %s for %s",
            view.task_id,
            list(request.symbols),
            extra={"event": "gap_fill", "task_id": view.task_id, "symbols": list(request.symbols)},
        )
