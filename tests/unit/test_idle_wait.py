"""The idle read's block time: one read covers every stream on a standalone server; a cluster
instance with several streams blocks on one of them only briefly. And how many entries per
stream a round of a standalone server's streams reads."""

from __future__ import annotations

import pytest

from s2feature.service.reads import (
    CLUSTER_IDLE_BLOCK_MS,
    ROUND_MAX_ENTRIES,
    idle_block_ms,
    round_count,
)


@pytest.mark.parametrize(
    ("block_ms", "n_streams", "cluster", "expected"),
    [
        (200, 3, False, 200),  # standalone: one XREADGROUP over all streams
        (200, 1, True, 200),  # one stream: nothing else can be waiting
        (200, 3, True, CLUSTER_IDLE_BLOCK_MS),
        (5, 3, True, 5),  # never longer than configured
    ],
)
def test_idle_block(block_ms: int, n_streams: int, cluster: bool, expected: int) -> None:
    assert idle_block_ms(block_ms, n_streams, cluster) == expected


@pytest.mark.parametrize(
    ("batch_size", "n_streams", "expected"),
    [
        (200, 3, 200),  # a few streams: the batch size
        (200, 20, 200),  # 4,000 entries: still the batch size
        (200, 100, 40),  # a round of 100 streams reads at most ROUND_MAX_ENTRIES
        (200, 1_000, 10),  # never under 10 per stream
        (5, 100, 5),  # never more than the batch size
    ],
)
def test_round_count(batch_size: int, n_streams: int, expected: int) -> None:
    assert round_count(batch_size, n_streams) == expected
    assert ROUND_MAX_ENTRIES == 4_000
