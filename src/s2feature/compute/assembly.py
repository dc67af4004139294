"""Snapshot assembly shared by the online and the batch path: feature selection, DQC verdict,
meta. One place, so that the two paths differ only in how the feature values are computed."""

from __future__ import annotations

from collections.abc import Mapping

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import (
    FUT_ONLY_FEATURES,
    INTERVAL_MS,
    Bar,
    FeatureValue,
    SeriesId,
    Snapshot,
)
from s2feature.dqc.verdict import assess, required_features


class SnapshotAssembler:
    """Turns family values into a `Snapshot` for one series."""

    def __init__(self, series: SeriesId, bundle: ConfigBundle) -> None:
        self.series = series
        self.bundle = bundle
        enabled = bundle.features.enabled
        if series.market == "spot":
            enabled = tuple(n for n in enabled if n not in FUT_ONLY_FEATURES)
        self.enabled = enabled
        self.required = required_features(bundle, series.market)
        base_ms = self.base_ms = bundle.base_ms
        self._bases_per_window = {
            w: ms // base_ms for w, ms in INTERVAL_MS.items() if ms >= base_ms and ms % base_ms == 0
        }

    def snapshot(
        self,
        window: str,
        t0: int,
        n_base: int,
        jump_count: int,
        depth_split: bool,
        inputs_until: int,
        values: Mapping[str, FeatureValue],
    ) -> Snapshot:
        features = {name: values.get(name) for name in self.enabled}
        return Snapshot(
            series=self.series,
            window=window,
            t0=t0,
            features=features,
            dqc=assess(features, jump_count, self.required, self.bundle),
            config_rev=self.bundle.rev,
            bar_coverage=n_base / self._bases_per_window[window],
            inputs_until=inputs_until,
            calc={"depth_top1_usdt": "split" if depth_split else "sum"},
        )

    def from_bar(
        self, window: str, wbar: Bar, inputs_until: int, values: Mapping[str, FeatureValue]
    ) -> Snapshot:
        return self.snapshot(
            window,
            wbar.close_time,
            wbar.n_base,
            wbar.jump_count,
            wbar.depth_split,
            inputs_until,
            values,
        )
