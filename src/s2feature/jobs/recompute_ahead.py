"""Items of an iterator made on a thread of their own, ahead of the loop that uses them.

The recompute computes and encodes a batch's rows (numpy, Python) and writes them (SQLite, which
releases the interpreter lock while it works): with the rows of the next batch made while the
current one is written, the two overlap on two cores instead of adding up. The thread runs at
most `depth` items ahead, so memory stays bounded; an error it meets is raised in the loop, at
the item where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Generic, TypeVar

__all__ = ["made_ahead"]

T = TypeVar("T")
# How often a producer waiting for room checks whether the loop has gone.
_PUT_POLL_S: Final = 0.05


class _End:
    """The producer's last message: its iterator ended, or raised `error`."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Producer(Generic[T]):
    def __init__(self, items: Iterator[T], depth: int, name: str) -> None:
        self._items = items
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, message: T | _End) -> bool:
        """Hand a message over; False when the loop has gone meanwhile."""
        while not self._closing.is_set():
            try:
                self._queue.put(message, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the loop, which raises it
            self._put(_End(exc))
            return
        self._put(_End())

    def __iter__(self) -> Iterator[T]:
        while True:
            message = self._queue.get()
            if isinstance(message, _End):
                if message.error is not None:
                    raise message.error
                return
            yield message

    def close(self) -> None:
        """Stop making items (the one being made is finished first) and wait for the thread."""
        self._closing.set()
        self._thread.join()


@contextmanager
def made_ahead(
    items: Iterator[T], depth: int = 1, name: str = "made-ahead"
) -> Iterator[Iterator[T]]:
    """`items`, each made on a thread while the loop works on the ones before (at most `depth`
    waiting). Leaving the block, also early or by an error, stops the thread."""
    producer = _Producer(items, depth, name)
    try:
        yield iter(producer)
    finally:
        producer.close()
