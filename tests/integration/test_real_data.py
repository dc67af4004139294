"""The real Coinbase BTC/USD hourly file through both paths, and ATR against TA-Lib on it.

Real: OHLCV (and mid = close). Derived with a fixed seed: book and funding fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import talib

from s2feature.compute.atr import atr_batch
from s2feature.compute.bars import aggregate_wbars
from s2feature.compute.batch import compute_batch
from s2feature.compute.engine import run_online
from s2feature.config.bundle import ConfigBundle
from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_ticks
from s2feature.domain import INTERVAL_MS, SeriesId
from tests.property.test_engine import assert_same_snapshots

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
BTC = DATASETS / "Coinbase_BTCUSD_1h_2017-2018.csv"
EURUSD = DATASETS / "FOREX_EURUSD_1H_ASK.csv"
BUNDLE = ConfigBundle(base_interval="1h")


@pytest.fixture(scope="module")
def btc_fut() -> object:
    return derive_ticks(load_klines(BTC, "1h"), seed=11, market="fut")


@pytest.mark.slow
def test_whole_btc_file_online_equals_batch_on_every_feature_of_every_window(
    btc_fut: object,
) -> None:
    bars = btc_fut
    fx = load_klines(EURUSD, "1h")
    series = SeriesId("coinbase", "fut", "BTCUSD")
    windows = ("1h", "4h", "1d")
    batch = compute_batch(bars, series, windows, BUNDLE, fx)  # type: ignore[arg-type]
    online = run_online(bars.to_bars(), series, windows, BUNDLE, fx)  # type: ignore[attr-defined]
    assert len(batch) > 13_000
    assert_same_snapshots(online, batch)
    # Every feature is exercised with real values somewhere in the run (none stuck at null).
    for name in batch[-1].features:
        assert any(s.features[name] is not None for s in batch), name


@pytest.mark.parametrize("window", ["1h", "4h", "1d"])
def test_atr_matches_talib_on_real_btc_bars(window: str) -> None:
    bars = load_klines(BTC, "1h")
    wbars, _ = aggregate_wbars(bars, INTERVAL_MS[window])
    ours = atr_batch(wbars.high, wbars.low, wbars.close, 14)
    ref = talib.ATR(wbars.high, wbars.low, wbars.close, timeperiod=14)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    assert np.isnan(ours[:14]).all()
    assert not np.isnan(ours[14])
    np.testing.assert_allclose(ours[14:], ref[14:], rtol=1e-9, atol=0)
