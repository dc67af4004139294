"""A per-instance request rate limit for one route, by the `limits` library.

The moving window is exact: at most N requests in any one-second span, where a fixed or
sliding-counter window lets bursts across a boundary through. The storage is in memory, so the
limit holds per process (one API server per instance). A refused request gets 429 with
`Retry-After`, the whole seconds until the window frees a slot (at least 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from s2feature.api.errors import ApiError

RECOMPUTE_RATE = RateLimitItemPerSecond(5)
"""The default limit of `POST /features/recompute`: 5 requests per second per instance."""

RateCheck = Callable[[], Coroutine[Any, Any, None]]


def rate_limit_check(item: RateLimitItem, key: str) -> RateCheck:
    """A dependency that counts each request under `key` and refuses beyond `item`.

    The storage is made on the first request: it starts a short-lived expiry thread, which
    building the app must not do.
    """
    limiters: list[MovingWindowRateLimiter] = []

    async def check() -> None:
        # Runs on the event loop, without awaiting in between: no two requests race here.
        if not limiters:
            limiters.append(MovingWindowRateLimiter(MemoryStorage()))
        limiter = limiters[0]
        if limiter.hit(item, key):
            return
        reset_at = limiter.get_window_stats(item, key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise ApiError.one(
            429,
            None,
            f"more than {item.amount} requests per {item.get_expiry()} s; retry later",
            headers={"Retry-After": str(retry_after)},
        )

    return check
