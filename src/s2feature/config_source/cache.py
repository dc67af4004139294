"""The last good bundle from the config service, kept on disk for a start without the service.

One JSON document: `{"format": 1, "fetched_at": <epoch s>, "source": <where it came from>,
"bundle": {...}}`. It is written atomically (a temporary file in the same directory, fsync,
`os.replace`, fsync of the directory), so a reader finds the previous document or the new one,
never a torn one, even across a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from s2feature.config.bundle import BundleError, ConfigBundle, parse_bundle

CACHE_FORMAT: Final = 1


class CacheError(Exception):
    """The cache cannot be read (corrupt, unreadable) or written; `str()` says why in one line."""


@dataclass(frozen=True)
class CachedBundle:
    bundle: ConfigBundle
    fetched_at: float  # wall-clock epoch seconds the bundle was fetched from its source
    source: str  # where it was fetched (a URL without credentials)


class BundleCache:
    """The cache file at `path` (its directory is created on the first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> CachedBundle | None:
        """The cached bundle; None when there is no cache file.

        Raises `CacheError` when the file exists but cannot be read or is not a valid cache.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise CacheError(f"config cache {self.path} is unreadable: {exc}") from None
        try:
            return _decode(text)
        except (ValueError, KeyError, TypeError) as exc:
            reason = " ".join(str(exc).split())
            raise CacheError(f"config cache {self.path} is corrupt: {reason}") from None

    def write(self, cached: CachedBundle) -> None:
        """Replace the cache with `cached` atomically; raises `CacheError` when it cannot."""
        document = {
            "format": CACHE_FORMAT,
            "fetched_at": cached.fetched_at,
            "source": cached.source,
            "bundle": cached.bundle.model_dump(mode="json"),
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
        directory = self.path.parent
        temp_name: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            with os.fdopen(fd, "wb") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, self.path)
            temp_name = None
            _fsync_directory(directory)
        except OSError as exc:
            raise CacheError(f"cannot write config cache {self.path}: {exc}") from None
        finally:
            if temp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)


def _decode(text: str) -> CachedBundle:
    document: Any = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("format") != CACHE_FORMAT:
        raise ValueError(f"format {document.get('format')!r}, expected {CACHE_FORMAT}")
    fetched_at = document["fetched_at"]
    source = document["source"]
    if not isinstance(fetched_at, int | float) or not math.isfinite(fetched_at):
        raise ValueError(f"fetched_at {fetched_at!r} is not a time")
    if not isinstance(source, str):
        raise ValueError(f"source {source!r} is not a string")
    try:
        bundle = parse_bundle(document["bundle"], origin="in the cache")
    except BundleError as exc:
        raise ValueError(str(exc)) from None
    return CachedBundle(bundle=bundle, fetched_at=float(fetched_at), source=source)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open a directory: best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
