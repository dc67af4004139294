"""The recompute's column-at-a-time rows equal the per-snapshot path's, text for text.

Three days of real BTC/USD hours split into minutes, with jumps, out-of-bounds spreads and
depths planted, and a first day without the history `rv_1d` needs (missing): every DQC outcome
and routing decision occurs, for spot and fut and every mode.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from s2feature.compute.batch import WindowColumns, compute_columns, materialise
from s2feature.config.bundle import ConfigBundle
from s2feature.data.importers import load_klines
from s2feature.data.synth import derive_finer_bars, derive_ticks
from s2feature.domain import BarArrays, SeriesId
from s2feature.dqc.verdict import routing
from s2feature.errors import S2FeatureError
from s2feature.jobs.recompute_rows import signal_rows
from s2feature.store.base import SignalRow
from s2feature.store.snapshot_rows import prepare_snapshot

BTC = Path(__file__).resolve().parents[2] / "datasets" / "Coinbase_BTCUSD_1h_2017-2018.csv"
WINDOWS = ("1m", "5m", "1h")


def _base(market: str) -> BarArrays:
    hourly = load_klines(BTC, "1h")
    minute = derive_finer_bars(hourly.slice(5_000, 5_072), 60_000, seed=3)
    bars = derive_ticks(minute, seed=4, market=market)  # type: ignore[arg-type]
    jump_count = bars.jump_count.copy()
    jump_count[2_000::97] = 2
    best_ask = bars.best_ask.copy()
    best_ask[2_500::89] *= 1.2  # a 2,000 bps spread: out of bounds
    depth = bars.depth_top1_usdt.copy()
    depth[3_000::83] = 5e9  # above depth_top1_usdt_max
    return dataclasses.replace(
        bars, jump_count=jump_count, best_ask=best_ask, depth_top1_usdt=depth
    )


def _reference(
    columns: list[WindowColumns], series: SeriesId, bundle: ConfigBundle
) -> list[SignalRow]:
    mode = bundle.mode
    return [
        prepare_snapshot(s, "recompute", 1_234)
        for s in materialise(columns, series, bundle)
        if routing(s, mode.realtime, mode.persist_all)[0]
    ]


@pytest.mark.parametrize("market", ["spot", "fut"])
@pytest.mark.parametrize(
    "mode",
    [
        {"realtime": True, "persist_all": False},
        {"realtime": True, "persist_all": True},
        {"realtime": False, "persist_all": False},
        {"realtime": False, "persist_all": True},
    ],
)
def test_rows_equal_the_per_snapshot_path(market: str, mode: dict[str, bool]) -> None:
    bundle = ConfigBundle(rev="rows-test").with_overrides(mode=mode)
    series = SeriesId("bench", market, "BTCUSDT")  # type: ignore[arg-type]
    columns = compute_columns(_base(market), series, WINDOWS, bundle)
    expected = _reference(columns, series, bundle)
    assert signal_rows(columns, series, bundle, "recompute", 1_234) == expected
    verdicts = [json.loads(row.json_text)["dqc"] for row in expected]
    if mode["realtime"]:
        assert any(v["pass"] for v in verdicts)
    assert any(v["jump"] for v in verdicts)
    assert any("bounds:spread_bps" in v["reasons"] for v in verdicts)
    assert any("bounds:depth_top1_usdt" in v["reasons"] for v in verdicts)
    assert any(v["missing"] for v in verdicts) == mode["persist_all"]


def test_other_feature_selections_and_bounds() -> None:
    bundle = ConfigBundle(rev="rows-test").with_overrides(
        features={"enabled": ["atr_14", "rv_1d", "depth_top1_usdt"], "required": ["rv_1d"]},
        bounds={"depth_top1_usdt_max": 3e6},
    )
    series = SeriesId("bench", "spot", "BTCUSDT")
    columns = compute_columns(_base("spot"), series, WINDOWS, bundle)
    expected = _reference(columns, series, bundle)
    assert signal_rows(columns, series, bundle, "recompute", 1_234) == expected
    assert len({json.dumps(json.loads(r.json_text)["features"]) for r in expected[:1]}) == 1


def test_an_infinite_value_fails_as_in_the_per_snapshot_path() -> None:
    bundle = ConfigBundle(rev="rows-test")
    series = SeriesId("bench", "spot", "BTCUSDT")
    columns = compute_columns(_base("spot"), series, WINDOWS, bundle)
    col = columns[0]
    atr = col.values["atr_14"].copy()
    atr[-1] = np.inf
    broken = [WindowColumns(col.window, col.wbars, col.inputs_until, {**col.values, "atr_14": atr})]
    with pytest.raises(S2FeatureError) as reference:
        _reference(broken, series, bundle)
    with pytest.raises(S2FeatureError) as ours:
        signal_rows(broken, series, bundle, "recompute", 1_234)
    assert str(ours.value) == str(reference.value)


def test_texts_with_percent_signs_commas_and_quotes() -> None:
    """The documents are filled into a %-format template: text that holds `%`, `,` or `"` (a
    label, a rev, a symbol) comes out as the per-snapshot path writes it."""
    bundle = ConfigBundle(rev='rows%s,"rev"')
    series = SeriesId("be%nch", "spot", "BTC%dUSDT")
    columns = compute_columns(_base("spot"), series, WINDOWS, bundle)
    col = columns[0]
    labels = np.array(
        [None, 'a,b"c%s', "100%"] * (len(col.wbars.close_time) // 3 + 1), dtype=object
    )[: len(col.wbars.close_time)]
    odd = WindowColumns(
        col.window, col.wbars, col.inputs_until, {**col.values, "regime_label": labels}
    )
    expected = _reference([odd, *columns[1:]], series, bundle)
    assert signal_rows([odd, *columns[1:]], series, bundle, "recompute", 1_234) == expected
    texts = {json.loads(row.json_text)["features"]["regime_label"] for row in expected}
    assert {'a,b"c%s', "100%"} <= texts
