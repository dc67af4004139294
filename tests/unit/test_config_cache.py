"""The on-disk cache of the last good bundle: round trip, atomic replacement, corrupt files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from s2feature.config.bundle import ConfigBundle
from s2feature.config_source.cache import BundleCache, CachedBundle, CacheError

BUNDLE = ConfigBundle().with_overrides(
    rev="r7", windows={"atr_period": 30}, mode={"realtime": False}
)


def test_written_cache_reads_back_equal(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "nested" / "dir" / "config-cache.json")
    written = CachedBundle(BUNDLE, fetched_at=1_700_000_000.25, source="http://cfg:8500/active")
    cache.write(written)
    assert cache.read() == written
    assert BundleCache(cache.path).read() == written  # a new reader (a restart) too


def test_no_cache_file_is_none_not_an_error(tmp_path: Path) -> None:
    assert BundleCache(tmp_path / "absent.json").read() is None


def test_a_rewrite_replaces_the_whole_document_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "config-cache.json")
    cache.write(CachedBundle(BUNDLE, 1.0, "a"))
    newer = CachedBundle(BUNDLE.with_overrides(rev="r8"), 2.0, "b")
    cache.write(newer)
    assert cache.read() == newer
    assert [p.name for p in tmp_path.iterdir()] == ["config-cache.json"]


def test_a_failed_write_keeps_the_previous_cache_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "config-cache.json"
    target.mkdir()  # os.replace cannot put a file over a directory
    cache = BundleCache(target)
    with pytest.raises(CacheError, match="cannot write config cache"):
        cache.write(CachedBundle(BUNDLE, 1.0, "a"))
    assert [p.name for p in tmp_path.iterdir()] == ["config-cache.json"]
    assert target.is_dir()


def test_an_unwritable_directory_is_a_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot write config cache"):
        BundleCache(blocker / "config-cache.json").write(CachedBundle(BUNDLE, 1.0, "a"))


def _valid_document() -> dict[str, object]:
    return {
        "format": 1,
        "fetched_at": 5.0,
        "source": "s",
        "bundle": BUNDLE.model_dump(mode="json"),
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "Expecting value"),
        (b'{"format": 1, "fetched_at": 1', "Expecting"),
        (b"\xff\xfe", "unreadable"),
        (b"[]", "not a JSON object"),
        (json.dumps({**_valid_document(), "format": 2}).encode(), "format 2, expected 1"),
        (json.dumps({**_valid_document(), "fetched_at": "soon"}).encode(), "is not a time"),
        (json.dumps({**_valid_document(), "source": 3}).encode(), "is not a string"),
        (
            json.dumps({k: v for k, v in _valid_document().items() if k != "bundle"}).encode(),
            "'bundle'",
        ),
        (
            json.dumps({**_valid_document(), "bundle": {"liq_threshold_usdt": -1}}).encode(),
            "invalid config bundle in the cache: liq_threshold_usdt",
        ),
    ],
    ids=[
        "empty",
        "truncated",
        "not-utf8",
        "not-object",
        "other-format",
        "bad-time",
        "bad-source",
        "no-bundle",
        "invalid-bundle",
    ],
)
def test_a_corrupt_cache_is_a_cache_error_naming_the_file(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "config-cache.json"
    path.write_bytes(content)
    with pytest.raises(CacheError, match=reason) as caught:
        BundleCache(path).read()
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_reader_never_sees_a_torn_cache_while_it_is_rewritten(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "config-cache.json")
    # A large bundle makes a torn (partly written) file likely if writes were not atomic.
    versions = [
        CachedBundle(BUNDLE.with_overrides(rev="a" * 50_000), 1.0, "a"),
        CachedBundle(BUNDLE.with_overrides(rev="b" * 50_000), 2.0, "b"),
    ]
    cache.write(versions[0])
    seen: list[CachedBundle | None] = []
    errors: list[CacheError] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            try:
                seen.append(BundleCache(cache.path).read())
            except CacheError as exc:
                errors.append(exc)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for i in range(100):
            cache.write(versions[i % 2])
    finally:
        done.set()
        reader.join(30)
    assert errors == []
    assert seen
    assert all(value in versions for value in seen)
