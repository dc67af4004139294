"""The config service's active bundle: `GET <base url>/active` (SPEC §9).

The body is the bundle as JSON, `rev` included. When the server sent an `ETag` with the bundle
the caller runs, the caller passes it back and the request carries `If-None-Match`; a `304 Not
Modified` then means "still the bundle you have". Every failure (an HTTP error status, a timeout,
a refused connection, a body that is not JSON or not a valid bundle) is one `ConfigFetchError`
with a one-line reason.

A base URL may carry credentials (`http://user:secret@host/`): they are sent as HTTP Basic
authentication and never appear in a reason or a log line (`display_url`).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Final

from s2feature.config.bundle import BundleError, ConfigBundle, parse_bundle

MAX_BODY_BYTES: Final = 1 << 20  # a bundle is a few kB; anything this large is not one
_CHUNK: Final = 64 << 10


class ConfigFetchError(Exception):
    """The config service gave no usable bundle; `str()` is a one-line reason, free of secrets."""


@dataclass(frozen=True)
class FetchedBundle:
    """A bundle from `/active`, with the server's `ETag` for it (None when it sent none)."""

    bundle: ConfigBundle
    etag: str | None


def display_url(url: str) -> str:
    """`url` without its userinfo (`user:password@`), for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_base_url(url: str) -> None:
    """Raise `ValueError` (without the URL's credentials) unless `url` is http(s)://host..."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"config service URL must be http(s)://host[:port][/path], got {display_url(url)!r}"
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ActiveBundleClient:
    """Fetches `<base_url>/active`; one instance per configured service, safe to reuse."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        check_base_url(base_url)
        parts = urllib.parse.urlsplit(base_url)
        if timeout_s <= 0:
            raise ValueError(f"config service timeout must be positive, got {timeout_s}")
        self._authorization: str | None = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        base = display_url(base_url).rstrip("/")
        self._active_url = f"{base}/active"
        self._timeout_s = timeout_s

    @property
    def url(self) -> str:
        """The `/active` URL as it may be logged (no credentials)."""
        return self._active_url

    def fetch(self, etag: str | None = None) -> FetchedBundle | None:
        """The active bundle, or None when `etag` was given and the server answered 304.

        The whole exchange (connect, headers, body) must finish within the timeout.
        Raises `ConfigFetchError` for anything else than a 200 with a valid bundle or a 304.
        """
        deadline = time.monotonic() + self._timeout_s
        request = urllib.request.Request(self._active_url, method="GET")
        request.add_header("Accept", "application/json")
        if etag is not None:
            request.add_header("If-None-Match", etag)
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body = self._read_body(response, deadline)
                server_etag = response.headers.get("ETag")
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response and its socket
            if exc.code == 304 and etag is not None:
                return None
            raise ConfigFetchError(
                f"GET {self._active_url}: HTTP {exc.code} {_one_line(exc.reason or '')}".rstrip()
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise ConfigFetchError(
                    f"GET {self._active_url}: no answer within {self._timeout_s:g} s"
                ) from None
            raise ConfigFetchError(
                f"GET {self._active_url}: {_one_line(str(exc.reason))}"
            ) from None
        except TimeoutError:
            raise ConfigFetchError(
                f"GET {self._active_url}: no answer within {self._timeout_s:g} s"
            ) from None
        except (http.client.HTTPException, OSError) as exc:
            reason = _one_line(str(exc)) or type(exc).__name__
            raise ConfigFetchError(f"GET {self._active_url}: {reason}") from None
        return FetchedBundle(self._parse(body), server_etag)

    def _read_body(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        # The socket timeout bounds each read, not the whole body: a server trickling bytes
        # would otherwise hold the watcher forever.
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ConfigFetchError(
                    f"GET {self._active_url}: body larger than {MAX_BODY_BYTES} bytes"
                )
            if time.monotonic() > deadline:
                raise TimeoutError
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, body: bytes) -> ConfigBundle:
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigFetchError(
                f"GET {self._active_url}: body is not UTF-8 ({exc.reason})"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigFetchError(f"GET {self._active_url}: body is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigFetchError(
                f"GET {self._active_url}: body is JSON {type(data).__name__}, not an object"
            )
        if "rev" not in data:
            # Snapshots carry the rev they were computed with: a served bundle must name one.
            raise ConfigFetchError(f"GET {self._active_url}: bundle has no rev")
        try:
            return parse_bundle(data, origin=f"from {self._active_url}")
        except BundleError as exc:
            raise ConfigFetchError(_one_line(str(exc))) from None
