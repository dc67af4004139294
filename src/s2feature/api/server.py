"""uvicorn in a named non-daemon thread beside the consumer loop.

The consumer loop keeps the main thread and with it the signals: this server never installs
signal handlers (`capture_signals` is a no-op here, whatever thread runs it), and it logs through
the standard `logging` tree (`log_config=None`), so the process's log format applies to it.

The listening socket is bound in `start()`, in the caller's thread, so a port already in use is
an `ApiServerError` raised there (one line, fit for the CLI), and port 0 binds a free port whose
number `port` then gives.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class ApiServerError(RuntimeError):
    """The API server could not start (address in use, bad host, startup failure)."""


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that reports the end of its startup and leaves the signals alone."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = threading.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The process's signals belong to the consumer loop in the main thread.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_done.set()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ApiServerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Rebinding right after a restart must not wait for TIME_WAIT; on Linux this does not
        # let two servers listen on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ApiServerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.setblocking(False)
    return sock


class ApiServer:
    """Serves `app` on `host:port` from a thread named `api` until `stop()`.

    `start()` returns once the server accepts connections; `stop()` asks it to finish (open
    requests complete, within `graceful_s`) and joins the thread. One instance serves once;
    build another to serve again.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        access_log: bool = False,
        startup_timeout_s: float = 30.0,
        graceful_s: int = 5,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=graceful_s,
        )
        self._server = _ThreadServer(self._config)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); only after `start()`."""
        if self._port is None:
            raise ApiServerError("the API server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. `http://127.0.0.1:8080`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind, start the thread and return once the server accepts connections.

        Raises `ApiServerError` when the address cannot be bound or the app fails to start.
        """
        if self._thread is not None:
            raise ApiServerError("the API server was already started")
        sock = _bind(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="api", daemon=False)
        self._thread.start()
        if not self._server.startup_done.wait(self._startup_timeout_s):
            # A hung app startup cannot be interrupted: ask it to exit, wait no longer.
            self._server.should_exit = True
            raise ApiServerError(f"the API server did not start in {self._startup_timeout_s} s")
        if not self._server.started:
            self._thread.join()
            sock.close()
            raise ApiServerError(f"the API server failed to start on {self.url}: {self._why()}")
        log.info("api listening on %s", self.url, extra={"event": "api_listening", "url": self.url})

    def _why(self) -> str:
        if self._failure is None or isinstance(self._failure, SystemExit):
            # uvicorn logged the app's startup error and exited its loop
            return "the app's startup failed (its error is logged)"
        return f"{type(self._failure).__name__}: {self._failure}"

    def _run(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except BaseException as e:  # SystemExit on a failed lifespan startup included
            self._failure = e
        finally:
            self._server.startup_done.set()

    def stop(self) -> None:
        """Ask the server to finish and join its thread; a no-op when it is not running."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join()

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()
