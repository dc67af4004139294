"""The idle read's block time: one read covers every stream on a standalone server; a cluster
instance with several streams blocks on one of them only briefly."""

from __future__ import annotations

import pytest

from s2feature.service.reads import CLUSTER_IDLE_BLOCK_MS, idle_block_ms


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
