"""`POST /features/recompute` and `GET /features/recompute/{task_id}`.

The POST body is parsed here rather than by FastAPI so that every fault is reported at once:
schema faults (pydantic, strict types) and the checks beyond the schema (unknown symbols, range
order, span) together, and a body that is not JSON is a 400, not a 422. The requests pass the
bearer token check first, then (POST only) the rate limit: an unauthenticated caller cannot use
up the rate of the authenticated ones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from limits import RateLimitItem
from pydantic import ValidationError

from s2feature.api.auth import bearer_token_check
from s2feature.api.errors import ApiError, location
from s2feature.api.rate_limit import rate_limit_check
from s2feature.api.recompute_schemas import (
    MAX_SPAN_DAYS,
    SYMBOL_PATTERN,
    Accepted,
    ConflictBody,
    ErrorBody,
    FieldError,
    RecomputeBody,
    TaskStatus,
)
from s2feature.domain import DAY_MS
from s2feature.jobs.recompute import RecomputeRequest
from s2feature.jobs.tasks import (
    RegistryClosedError,
    ScopeConflictError,
    TaskRegistry,
    TaskView,
)
from s2feature.store.base import StoreError

log = logging.getLogger(__name__)

KnownSymbols = Callable[[], set[str]]
TASK_PATH = "/features/recompute"

_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "no bearer token",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"model": ErrorBody, "description": "the bearer token is wrong"},
    503: {
        "model": ErrorBody,
        "description": "recompute unavailable: no S2_API_TOKEN set, no runner, or stopping",
    },
}
_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": Accepted,
        "description": "queued; `Location` is the task's progress URL",
        "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
    },
    400: {"model": ErrorBody, "description": "the body is not JSON"},
    409: {"model": ConflictBody, "description": "the scope overlaps a queued or running task"},
    422: {"model": ErrorBody, "description": "each bad field of the body"},
    429: {
        "model": ErrorBody,
        "description": "more than the allowed requests per second",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "required": True}},
    },
    **_AUTH_RESPONSES,
}
_GET_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such task"},
    422: {"model": ErrorBody, "description": "the task id is not a string"},
    **_AUTH_RESPONSES,
}
_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RecomputeBody.model_json_schema()}},
    }
}


def _schema_errors(raw: object) -> tuple[RecomputeBody | None, list[FieldError]]:
    try:
        return RecomputeBody.model_validate(raw, strict=True), []
    except ValidationError as exc:
        errors = [FieldError(field=location(e["loc"]), message=e["msg"]) for e in exc.errors()]
        return None, errors


def _scope_errors(raw: object, bad: set[str], known: set[str]) -> list[FieldError]:
    """The checks beyond the schema, on the fields the schema found well formed."""
    assert isinstance(raw, dict)
    errors: list[FieldError] = []
    symbols = raw.get("symbols")
    if isinstance(symbols, list):
        for i, symbol in enumerate(symbols):
            well_formed = isinstance(symbol, str) and re.match(SYMBOL_PATTERN, symbol)
            if well_formed and symbol not in known:
                errors.append(FieldError(field=f"symbols[{i}]", message=f"unknown symbol {symbol}"))
    if not {"from_ts", "to_ts"} & bad and "from_ts" in raw and "to_ts" in raw:
        from_ts, to_ts = raw["from_ts"], raw["to_ts"]
        if from_ts >= to_ts:
            errors.append(FieldError(field="to_ts", message="to_ts must be after from_ts"))
        elif to_ts - from_ts > MAX_SPAN_DAYS * DAY_MS:
            message = f"the range spans more than {MAX_SPAN_DAYS} days"
            errors.append(FieldError(field="to_ts", message=message))
    return errors


async def _read_request(request: Request, known_symbols: KnownSymbols) -> RecomputeRequest:
    try:
        raw = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError.one(400, "body", f"the body is not JSON: {exc}") from exc
    body, errors = _schema_errors(raw)
    if isinstance(raw, dict):
        bad = {e.field.split("[")[0] for e in errors if e.field is not None}
        try:
            known = await run_in_threadpool(known_symbols)
        except Exception as exc:
            log.exception("cannot list the lake's symbols", extra={"event": "lake_symbols_error"})
            raise ApiError.one(503, None, f"cannot list the lake's symbols: {exc}") from exc
        errors += _scope_errors(raw, bad, known)
    if errors or body is None:
        raise ApiError(422, errors)
    return RecomputeRequest(
        symbols=tuple(dict.fromkeys(body.symbols)),
        windows=tuple(dict.fromkeys(body.windows)),
        from_ts=body.from_ts,
        to_ts=body.to_ts,
        force=body.force,
    )


def recompute_router(
    tasks: TaskRegistry | None,
    known_symbols: KnownSymbols,
    api_token: str | None,
    rate: RateLimitItem,
) -> APIRouter:
    """The `/features/recompute` routes over `tasks`; `tasks = None` answers 503 (not wired)."""
    router = APIRouter(tags=["recompute"], dependencies=[Depends(bearer_token_check(api_token))])
    over_rate = rate_limit_check(rate, "POST " + TASK_PATH)

    def registry() -> TaskRegistry:
        if tasks is None:
            raise ApiError.one(503, None, "recompute is not available on this instance")
        return tasks

    @router.post(
        TASK_PATH,
        status_code=202,
        response_model=None,
        responses=_POST_RESPONSES,
        openapi_extra=_BODY_SCHEMA,
        dependencies=[Depends(over_rate)],
    )
    async def post_recompute(request: Request) -> JSONResponse:
        """Queue a recompute of `symbols` x `windows` for every t0 in `[from_ts, to_ts]`."""
        scope = await _read_request(request, known_symbols)
        tasks_of_instance = registry()
        try:
            # Storing the task is I/O: off the event loop.
            view = await run_in_threadpool(tasks_of_instance.submit, scope)
        except ScopeConflictError as exc:
            body = ConflictBody(
                errors=[FieldError(field=None, message=str(exc))], task_id=exc.task_id
            )
            return JSONResponse(body.model_dump(), status_code=409)
        except RegistryClosedError as exc:
            raise ApiError.one(503, None, str(exc)) from exc
        except StoreError as exc:
            log.exception("cannot store a recompute task", extra={"event": "task_store_error"})
            raise ApiError.one(503, None, f"the task store cannot be reached: {exc}") from exc
        accepted = Accepted(
            accepted=True, task_id=view.task_id, estimated_batches=view.batches_total
        )
        return JSONResponse(
            accepted.model_dump(),
            status_code=202,
            headers={"Location": f"{TASK_PATH}/{view.task_id}"},
        )

    @router.get(TASK_PATH + "/{task_id}", responses=_GET_RESPONSES)
    async def get_recompute(task_id: str) -> TaskStatus:
        """A task's state and progress."""
        tasks_of_instance = registry()
        try:
            # A task this instance does not hold is read from the task store: off the loop.
            view: TaskView | None = await run_in_threadpool(tasks_of_instance.get, task_id)
        except RegistryClosedError as exc:
            raise ApiError.one(503, None, str(exc)) from exc
        except StoreError as exc:
            log.exception("cannot read a recompute task", extra={"event": "task_store_error"})
            raise ApiError.one(503, None, f"the task store cannot be reached: {exc}") from exc
        if view is None:
            raise ApiError.one(404, "task_id", f"no task {task_id}")
        return TaskStatus(
            task_id=view.task_id,
            state=view.state,
            batches_done=view.batches_done,
            batches_total=view.batches_total,
            signals_written=view.signals_written,
            rate_per_s=view.rate_per_s,
            eta_s=view.eta_s,
            errors=list(view.errors),
        )

    return router
