"""The service's lake appends, off the loop thread.

A checkpoint first appends the stream's committed base bars to the lake: a parquet part written
to a temporary file, fsynced, renamed, and its directory fsynced, and now and then a compaction of
the day's partition. That is milliseconds to tens of milliseconds of disk waits (more when the
disk is busy), and a hundred symbols checkpoint twenty times a second: on the loop thread it
delayed every other stream's entries behind it. `LakeWriter` runs the appends on one thread of
its own, in the order they were asked for, while the loop goes on; the loop writes the
checkpoint and acks once the part is durable (`SeriesWorker.flush`), so the crash-safety order
is unchanged: lake part, then checkpoint, then ack.

The parquet writer, the compression and the fsyncs run without the GIL, so the loop thread
computes while the disk works.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from s2feature.domain import Bar
from s2feature.lake.parquet import BarLake


class LakeWriter:
    """Appends bars to `lake`, on a thread of its own (`background`) or at once (tests and
    one-off tools: the future returned is already done)."""

    def __init__(self, lake: BarLake, background: bool = True) -> None:
        self.lake = lake
        # One thread: a symbol's parts are appended in the order they were asked for (the part
        # numbers follow it), and appends never compete with each other for the disk.
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer")
            if background
            else None
        )

    def append(self, symbol: str, bars: Sequence[Bar]) -> Future[None]:
        """Start appending `bars`; the future is done once they are durable in the lake (or
        holds the error that stopped them)."""
        if self._executor is not None:
            return self._executor.submit(self.lake.append, symbol, list(bars))
        done: Future[None] = Future()
        try:
            self.lake.append(symbol, bars)
        except Exception as exc:  # handed over to whoever reads the future
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def close(self) -> None:
        """Wait for the appends asked for, then stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
