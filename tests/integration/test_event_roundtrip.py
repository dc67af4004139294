"""S1 events derived from bars, through the ingest layer, give back exactly those bars."""

from __future__ import annotations

from dataclasses import replace

import pytest

from s2feature.config.bundle import ConfigBundle
from s2feature.data.synth import derive_ticks, events_from_bars
from s2feature.domain import SeriesId
from s2feature.ingest.stream import StreamIngestor
from tests.support.market_gen import SeriesSpec, make_series

SERIES = SeriesId("binance", "fut", "BTCUSDT")


@pytest.mark.parametrize("encoding", ["flat", "json"])
@pytest.mark.parametrize("depth_split", [False, True], ids=["sum", "split"])
def test_events_assemble_back_into_the_bars_they_came_from(
    encoding: str, depth_split: bool
) -> None:
    bars = make_series(SeriesSpec(seed=2, n=400, base_ms=60_000, gap_prob=0.05, max_gap=3))
    bars = derive_ticks(bars, seed=3, market="fut", depth_split=depth_split)
    entries = events_from_bars(bars, SERIES, events_per_bar=4, seed=4, encoding=encoding)  # type: ignore[arg-type]
    ingestor = StreamIngestor(SERIES, ConfigBundle())
    assembled = []
    for fields in entries:
        outcome = ingestor.on_entry(fields)
        assert outcome.rejected is None
        assembled.extend(outcome.bars)
    expected = bars.to_bars()[:-1]  # the last bar stays open: nothing after it finalises it
    assert len(assembled) == len(expected)
    for got, want in zip(assembled, expected, strict=True):
        # jump counts come from the live check, not from the generated bars
        assert replace(got, jump_count=0) == replace(want, jump_count=0)
