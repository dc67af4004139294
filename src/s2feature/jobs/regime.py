"""The daily regime job (SPEC §10): the official market regime, written to Redis.

At a run time `at` the job reads the reference symbol's (`regime.reference_symbol`) base bars
closing by `at` from the lake and evaluates the volatility family's batch function at `at` and at
the 720 hourly boundaries of the 30 days before it. That is the `rv_1d` series of the past 30 days
and, at `at`, the same `rv_pctile_30d` and `regime_label` a snapshot at `at` carries: one
definition of the percentile, one of the label, no copy to drift apart.

Not enough history is decided by that same definition: when `rv_1d(at)` is null (fewer than
`coverage_min` of the day's returns) or the percentile is null (fewer than `coverage_min` of the
720 hourly `rv_1d` samples are non-null), nothing is written. With the defaults that needs about
28 days of contiguous base bars before `at`, and never less than 90% of the last day.

The state is written by one Lua script on the one key, so `rev` increases by one with each write
whoever writes (concurrent instances included) and the key lives in one Redis Cluster slot. The
script also refuses a state older than the stored one (`ts` below the stored `ts`): a run for a
past time (`s2-feature regime --at ...`) reports its values but never moves the key back in time.

`due` tells a scheduler whether the daily run (00:05 UTC) is owed; the schedule, its lock and the
catch-up at start belong to the scheduler.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import redis

from s2feature.compute.family import FamilyContext
from s2feature.compute.volatility import PCTILE_SAMPLES, PCTILE_SPAN_MS, volatility_family_batch
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import DAY_MS, HOUR_MS
from s2feature.jobs.schedule import Due, RetryLater
from s2feature.lake.parquet import BarLake
from s2feature.streams.client import AnyRedis

__all__ = [
    "EXPIRY_GRACE_MS",
    "JOB_NAME",
    "REGIME_KEY",
    "RUN_OFFSET_MS",
    "RegimeJob",
    "RegimeResult",
    "RegimeStateError",
    "compute_regime",
    "due",
    "next_due_ms",
    "previous_due_ms",
    "read_regime_state",
    "run_regime",
]

log = logging.getLogger("s2feature.jobs.regime")

REGIME_KEY: Final = "prod:regime:market:state"
JOB_NAME: Final = "regime"  # its name in the scheduler and in its run lock
RUN_OFFSET_MS: Final = 5 * 60_000
"""The daily run is due at 00:05 UTC: five minutes for the day's last bars to reach the lake."""
EXPIRY_GRACE_MS: Final = HOUR_MS
"""`expiry_ts` is the next due run plus this: time for a late or caught-up run to replace the
state before readers must treat it as stale."""

# Bars read before `at`: the oldest of the 720 hourly samples looks back one day, and its first
# return needs the bar before; two base bars more cover any rounding of `at`.
_HISTORY_MS: Final = PCTILE_SPAN_MS + DAY_MS

Status = Literal["computed", "written", "insufficient_history", "stale"]

# KEYS[1] the state key. ARGV[1] the JSON up to the rev value, ARGV[2] the JSON after it, ARGV[3]
# the new state's ts. Returns {1, rev} when written, {0, stored rev, stored ts} when the stored
# state is newer. The JSON is built by the caller and only the rev is spliced in: Lua's cjson
# would re-encode the floats with 14 significant digits.
_WRITE_SCRIPT: Final = """
local old = redis.call('GET', KEYS[1])
local rev = 0
if old then
  local ok, state = pcall(cjson.decode, old)
  if not ok or type(state) ~= 'table' or type(state.rev) ~= 'number' then
    return redis.error_reply('S2REGIME the stored value of ' .. KEYS[1] .. ' is not a regime state')
  end
  if type(state.ts) == 'number' and state.ts > tonumber(ARGV[3]) then
    return {0, state.rev, state.ts}
  end
  rev = state.rev
end
rev = rev + 1
redis.call('SET', KEYS[1], ARGV[1] .. string.format('%d', rev) .. ARGV[2])
return {1, rev}
"""


class RegimeStateError(RuntimeError):
    """The key holds something that is not a regime state; nothing was written over it."""


@dataclass(frozen=True)
class RegimeResult:
    """One run: what was computed as of `ts` and what happened to the key.

    `status`: `written` (the state is in Redis under `rev`), `insufficient_history` (nothing
    written, `reason` says what is missing) or `stale` (computed, but the key holds a newer
    state, `rev` is that state's); `computed` from `compute_regime`, which writes nothing.
    """

    status: Status
    ts: int
    reference_symbol: str
    config_rev: str
    rv_1d: float | None
    pctile: float | None
    regime: str | None
    samples: int  # non-null hourly rv_1d samples of the 30 days the percentile ranks against
    expiry_ts: int
    rev: int | None = None
    reason: str | None = None

    @property
    def written(self) -> bool:
        return self.status == "written"

    def state(self, rev: int) -> dict[str, Any]:
        """The document stored at `REGIME_KEY` (SPEC §7)."""
        return {
            "regime": self.regime,
            "rev": rev,
            "ts": self.ts,
            "expiry_ts": self.expiry_ts,
            "rv_1d": self.rv_1d,
            "pctile": self.pctile,
            "reference_symbol": self.reference_symbol,
            "config_rev": self.config_rev,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            **self.state(self.rev or 0),
            "rev": self.rev,
            "samples": self.samples,
            "reason": self.reason,
        }


def previous_due_ms(now_ms: int) -> int:
    """The latest daily due time (00:05 UTC) at or before `now_ms`."""
    return (now_ms - RUN_OFFSET_MS) // DAY_MS * DAY_MS + RUN_OFFSET_MS


def next_due_ms(after_ms: int) -> int:
    """The earliest daily due time (00:05 UTC) strictly after `after_ms`."""
    return previous_due_ms(after_ms) + DAY_MS


def due(now_ms: int, last_run_ms: int | None) -> bool:
    """Whether the daily run is owed at `now_ms`, given the time of the last run (None: never).

    True once per day from 00:05 UTC, and at start when the last run predates the latest 00:05
    (a run missed while the service was down is caught up once). A scheduler passes the later of
    the stored state's `ts` (`read_regime_state`) and its own last attempt, so a run that wrote
    nothing (not enough history) is not retried on every tick.
    """
    return last_run_ms is None or last_run_ms < previous_due_ms(now_ms)


def read_regime_state(client: AnyRedis) -> dict[str, Any] | None:
    """The stored state, None when there is none; RegimeStateError when it is not one."""
    raw = client.get(REGIME_KEY)
    if raw is None:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("rev"), int):
        raise RegimeStateError(f"the stored value of {REGIME_KEY} is not a regime state")
    return state


def _sample_boundaries(at_ms: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The 720 hourly boundaries `b = h * 1h - 1` in `(at - 30d, at]` the percentile ranks."""
    last_hour = (at_ms + 1) // HOUR_MS
    hours = np.arange(last_hour - PCTILE_SAMPLES + 1, last_hour + 1, dtype=np.int64)
    return hours * HOUR_MS - 1


def _value(x: Any) -> float | None:
    value = float(x)
    return None if math.isnan(value) else value


def compute_regime(at_ms: int, bundle: ConfigBundle, lake: BarLake) -> RegimeResult:
    """The regime as of `at_ms` from the lake, not written (`status` is `computed` when the
    values are complete, `insufficient_history` otherwise). Reads no bar closing after `at_ms`."""
    symbol = bundle.regime.reference_symbol
    base_ms = bundle.base_ms
    bars = lake.read(
        symbol, from_open_time=max(0, at_ms - _HISTORY_MS - 2 * base_ms), to_close_time=at_ms
    )
    boundaries = _sample_boundaries(at_ms)
    t0s = np.unique(np.r_[boundaries, at_ms])  # sorted; `at` last (it is the latest)
    ctx = FamilyContext(bundle, base_ms, base_ms)
    values = volatility_family_batch(bars, t0s, ctx)
    samples = int(np.count_nonzero(~np.isnan(values["rv_1d"][np.isin(t0s, boundaries)])))
    rv_1d, pctile = _value(values["rv_1d"][-1]), _value(values["rv_pctile_30d"][-1])
    label = values["regime_label"][-1]
    reason = None
    if not len(bars):
        reason = f"no bars of {symbol} in the lake closing by {at_ms}"
    elif rv_1d is None:
        reason = (
            f"rv_1d of {symbol} at {at_ms} is null: fewer than {bundle.windows.coverage_min:.0%} "
            f"of the day's base-bar returns are in the lake"
        )
    elif pctile is None or label is None:
        reason = (
            f"{samples} of the {PCTILE_SAMPLES} hourly rv_1d samples of {symbol} in the 30 days "
            f"before {at_ms} are non-null; the percentile needs {bundle.windows.coverage_min:.0%}"
        )
    return RegimeResult(
        status="computed" if reason is None else "insufficient_history",
        ts=at_ms,
        reference_symbol=symbol,
        config_rev=bundle.rev,
        rv_1d=rv_1d,
        pctile=pctile,
        regime=None if label is None else str(label),
        samples=samples,
        expiry_ts=next_due_ms(at_ms) + EXPIRY_GRACE_MS,
        reason=reason,
    )


def _write(client: AnyRedis, result: RegimeResult) -> RegimeResult:
    marker = -1  # the rev placeholder: split the JSON around it, Lua puts the new rev there
    head, tail = json.dumps(result.state(marker), allow_nan=False).split(f'"rev": {marker}', 1)
    try:
        # EVALSHA (SCRIPT LOAD once per server), the commands the service's ACL user already has.
        script = client.register_script(_WRITE_SCRIPT)
        reply = script(keys=[REGIME_KEY], args=[head + '"rev": ', tail, str(result.ts)])
    except redis.ResponseError as exc:
        if "S2REGIME" in str(exc):
            raise RegimeStateError(str(exc).split("S2REGIME ", 1)[-1]) from None
        raise
    written, rev = int(reply[0]), int(reply[1])
    if written:
        return dataclasses.replace(result, status="written", rev=rev)
    stored_ts = int(reply[2])
    return dataclasses.replace(
        result,
        status="stale",
        rev=rev,
        reason=f"{REGIME_KEY} holds a newer state (ts {stored_ts}, rev {rev}); not written",
    )


def run_regime(
    at_ms: int, bundle: ConfigBundle, lake: BarLake, redis_client: AnyRedis
) -> RegimeResult:
    """Compute the regime as of `at_ms` and write it to `REGIME_KEY` (see the module doc).

    Not enough history: nothing is written, a warning is logged, and the result says why. Redis
    errors propagate (nothing is half-written: the script is atomic).
    """
    computed = compute_regime(at_ms, bundle, lake)
    if computed.status == "insufficient_history":
        log.warning(
            "regime not written: %s",
            computed.reason,
            extra={"event": "regime_skip", "reference_symbol": computed.reference_symbol},
        )
        return computed
    result = _write(redis_client, computed)
    log.info(
        "regime %s: %s (pctile %s, rev %s)",
        result.status,
        result.regime,
        result.pctile,
        result.rev,
        extra={
            "event": "regime_ok" if result.written else "regime_stale",
            "regime": result.regime,
            "rev": result.rev,
            "ts": result.ts,
            "reference_symbol": result.reference_symbol,
        },
    )
    return result


class RegimeJob:
    """The daily run in `s2-feature run`: registered in the scheduler (`jobs.schedule`) as
    `Every(DAY_MS, 5 * MINUTE_MS)` with its lock, so it runs once per day across instances and
    a run missed while the service was down is caught up once at start. The state is computed as
    of the due time, not the time the run happens to start: a caught-up run gives the value the
    on-time run would have given."""

    def __init__(
        self, bundle: Callable[[], ConfigBundle | None], lake: BarLake, client: AnyRedis
    ) -> None:
        self._bundle = bundle
        self._lake = lake
        self._client = client

    def __call__(self, due: Due) -> None:
        bundle = self._bundle()
        if bundle is None:
            raise RetryLater("no approved config bundle yet")
        try:
            stored = read_regime_state(self._client)
        except redis.RedisError as exc:
            raise RetryLater(f"redis: {exc}") from exc
        if stored is not None and int(stored.get("ts", 0)) >= due.at_ms:
            log.info(
                "regime for %s written already (rev %s)",
                due.at_ms,
                stored["rev"],
                extra={"event": "regime_current", "rev": stored["rev"], "ts": stored.get("ts")},
            )
            return
        try:
            run_regime(due.at_ms, bundle, self._lake, self._client)
        except redis.RedisError as exc:
            raise RetryLater(f"redis: {exc}") from exc
