"""`ApiError`: a refusal with an `ErrorBody`, raised by routes and dependencies alike."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from s2feature.api.recompute_schemas import ErrorBody, FieldError


class ApiError(Exception):
    """Answer `status` with `{errors: [...]}` (plus `extra` fields) and `headers`."""

    def __init__(
        self,
        status: int,
        errors: list[FieldError],
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @classmethod
    def one(
        cls, status: int, field: str | None, message: str, headers: Mapping[str, str] | None = None
    ) -> ApiError:
        """A refusal for one reason."""
        return cls(status, [FieldError(field=field, message=message)], headers=headers)


def location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field name: `("body", "symbols", 0)` -> `symbols[0]`."""
    parts = [p for p in loc if p not in ("body", "path", "query", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Answer `ApiError`s and FastAPI's own validation errors with an `ErrorBody`."""

    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = ErrorBody(errors=exc.errors).model_dump() | exc.extra
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(field=location(tuple(e["loc"])), message=str(e["msg"])) for e in exc.errors()
        ]
        return JSONResponse(ErrorBody(errors=errors).model_dump(), status_code=422)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
