"""The bearer token of the `/features/*` routes (`S2_API_TOKEN`).

No `Authorization` header (or another scheme): 401 with `WWW-Authenticate: Bearer`; a wrong
token: 403. Tokens are compared in constant time and never logged. With no token configured the
routes answer 503: they are closed, not open, until one is set.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from s2feature.api.errors import ApiError

_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <S2_API_TOKEN>` on every /features/* route",
)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="s2feature"'}

TokenCheck = Callable[..., Coroutine[Any, Any, None]]


def bearer_token_check(token: str | None) -> TokenCheck:
    """A dependency that lets a request through only with `token` (see the module contract)."""
    expected = None if not token else token.encode()

    async def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        if expected is None:
            raise ApiError.one(503, None, "the recompute API is disabled: S2_API_TOKEN is not set")
        if credentials is None:
            raise ApiError.one(
                401, "Authorization", "a bearer token is required", headers=CHALLENGE
            )
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise ApiError.one(403, "Authorization", "the bearer token is not valid")

    return check
