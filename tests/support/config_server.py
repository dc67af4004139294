"""A real config service for tests: `GET /active` on loopback, served by a thread.

Tests change what it serves (a bundle, an HTTP error, a body that is not JSON, a hang) and stop
and restart it on the same port. It sends an `ETag` (a hash of the body) and answers a matching
`If-None-Match` with 304, as a config service would.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

Mode = Literal["bundle", "status", "raw", "hang"]


@dataclass(frozen=True)
class SeenRequest:
    path: str
    if_none_match: str | None
    authorization: str | None
    answered: int  # the status code sent (0: none, the request was held)


class ConfigServer:
    """Serves `bundle` (a dict) at `/active`; `break_with_*` and `serve` change what it does."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._mode: Mode = "bundle"
        self._bundle = bundle
        self._status = 200
        self._raw = b""
        self._release = threading.Event()  # ends held ("hang") requests
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.requests: list[SeenRequest] = []
        self.on_request: Callable[[], None] | None = None  # runs before each answer

    # -- lifecycle

    def start(self) -> Self:
        """Start (or restart on the same port)."""
        server = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler_class())
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._release.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="config-server"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; held requests are dropped without an answer."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- what it serves

    def serve(self, bundle: dict[str, Any]) -> None:
        with self._lock:
            self._mode, self._bundle = "bundle", bundle

    def break_with_status(self, status: int) -> None:
        with self._lock:
            self._mode, self._status = "status", status

    def break_with_body(self, raw: bytes) -> None:
        """Serve `raw` as a 200 body (not JSON, or JSON that is not a valid bundle)."""
        with self._lock:
            self._mode, self._raw = "raw", raw

    def hang(self) -> None:
        """Hold every request without an answer (until `stop` drops them)."""
        with self._lock:
            self._mode = "hang"

    def etag_of(self, bundle: dict[str, Any]) -> str:
        return _etag(_encode(bundle))

    def answered(self, status: int) -> int:
        with self._lock:
            return sum(1 for seen in self.requests if seen.answered == status)

    # -- the handler

    def _answer(self) -> tuple[int, bytes | None]:
        """(status, body) for the current mode; (0, None): hold the request."""
        with self._lock:
            mode, bundle, status, raw = self._mode, self._bundle, self._status, self._raw
        if mode == "bundle":
            return 200, _encode(bundle)
        if mode == "status":
            return status, b'{"error": "broken on purpose"}'
        if mode == "raw":
            return 200, raw
        return 0, None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if owner.on_request is not None:
                    owner.on_request()
                status, body = owner._answer() if self.path == "/active" else (404, b"{}")
                if body is None:
                    owner._record(self, 0)
                    owner._release.wait(30)  # dropped without an answer
                    return
                etag = _etag(body)
                if status == 200 and self.headers.get("If-None-Match") == etag:
                    status, body = 304, b""
                owner._record(self, status)
                self.send_response(status)
                if status in (200, 304):
                    self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.requests.append(
                SeenRequest(
                    path=handler.path,
                    if_none_match=handler.headers.get("If-None-Match"),
                    authorization=handler.headers.get("Authorization"),
                    answered=status,
                )
            )


def _encode(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, sort_keys=True).encode()


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
