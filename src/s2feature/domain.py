"""Domain values shared by every layer: windows, series, market events, bars and snapshots.

Everything here is a frozen value. Timestamps are integer milliseconds since the Unix epoch, UTC.
A *bar* is used at two levels: base bars (the 1-minute or 1-hour klines carried by input events,
with the tick values as of their close) and w-bars (bars of a feature window aggregated from base
bars). Both are `Bar` values, so feature code does not care which level it is fed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

WINDOWS: Final[tuple[str, ...]] = ("1m", "5m", "1h", "4h", "1d")
INTERVAL_MS: Final[Mapping[str, int]] = {
    "1m": 60_000,
    "5m": 300_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
MARKETS: Final[tuple[str, ...]] = ("fut", "spot")
DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000

FEATURES: Final[tuple[str, ...]] = (
    "atr_14",
    "atr_14_pct",
    "rv_4h",
    "rv_1d",
    "rv_30d",
    "rv_pctile_30d",
    "spread_bps",
    "depth_top1_usdt",
    "liq_score",
    "rho_usdttwd_14",
    "rho_fx_btc_roll_z",
    "funding_next",
    "funding_next_abs",
    "micro_imbalance_top1",
    "regime_label",
)
FUT_ONLY_FEATURES: Final[frozenset[str]] = frozenset({"funding_next", "funding_next_abs"})

Market = Literal["fut", "spot"]
FeatureValue = float | str | None


def window_index(window: str) -> int:
    """Position of a window in `1m,5m,1h,4h,1d`: the `k` of output entry IDs `<t0>-<k>`."""
    return WINDOWS.index(window)


def interval_ms(name: str) -> int:
    """Length of a window or base interval name, with a clear error for unknown names."""
    try:
        return INTERVAL_MS[name]
    except KeyError:
        known = ", ".join(WINDOWS)
        raise ValueError(f"unknown interval {name!r}; expected one of {known}") from None


@dataclass(frozen=True, slots=True)
class SeriesId:
    """One input series: a symbol on one venue and market (one stream)."""

    venue: str
    market: Market
    symbol: str

    @property
    def stream_key(self) -> str:
        return f"mkt:events:{self.venue}:{self.market}:{self.symbol}"

    @classmethod
    def parse(cls, text: str) -> SeriesId:
        """Parse `venue:market:symbol` (the `S2_SYMBOLS` item format)."""
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"expected venue:market:symbol, got {text!r}")
        venue, market, symbol = parts
        if market not in MARKETS:
            raise ValueError(f"market must be fut or spot, got {market!r} in {text!r}")
        return cls(venue, market, symbol)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Kline:
    open: float
    high: float
    low: float
    close: float
    volume: float
    open_time: int
    close_time: int


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """A decoded, well-typed input event (SPEC §3). Optional fields are None when absent."""

    ts: int
    source: str
    symbol: str
    mid: float
    best_bid: float
    best_ask: float
    depth_top1_usdt: float
    kline: Kline
    funding_next: float | None = None
    best_bid_qty: float | None = None
    best_ask_qty: float | None = None
    depth_bid_usdt: float | None = None
    depth_ask_usdt: float | None = None


# Bars and snapshots are values: nothing changes one after it is built. They are not declared
# frozen because a frozen dataclass sets each field through `object.__setattr__`: building a Bar
# took 2.4 µs instead of 0.6 µs, and the service builds one or two per base bar and window.
@dataclass(slots=True)
class Bar:
    """A final bar with the tick values as of its close.

    `close_time` is the nominal, inclusive close (`open_time + interval - 1`), also for a w-bar
    finalised with missing base bars. Tick fields are None when the input never carried them.
    `depth_split` says whether depth came from split bid/ask depth. `jump_count` counts the events
    the jump check flagged inside the bar; `n_base` how many base bars it was built from.
    """

    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    mid: float | None = None
    best_bid: float | None = None
    best_ask: float | None = None
    depth_top1_usdt: float | None = None
    depth_split: bool = False
    funding_next: float | None = None
    bid_qty: float | None = None
    ask_qty: float | None = None
    jump_count: int = 0
    n_base: int = 1


BAR_FLOAT_FIELDS: Final[tuple[str, ...]] = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "mid",
    "best_bid",
    "best_ask",
    "depth_top1_usdt",
    "funding_next",
    "bid_qty",
    "ask_qty",
)
BAR_INT_FIELDS: Final[tuple[str, ...]] = ("open_time", "close_time", "jump_count", "n_base")


@dataclass(frozen=True)
class BarArrays:
    """Columnar bars for the batch path: float columns with NaN for absent tick values."""

    open_time: npt.NDArray[np.int64]
    close_time: npt.NDArray[np.int64]
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]
    mid: npt.NDArray[np.float64]
    best_bid: npt.NDArray[np.float64]
    best_ask: npt.NDArray[np.float64]
    depth_top1_usdt: npt.NDArray[np.float64]
    depth_split: npt.NDArray[np.bool_]
    funding_next: npt.NDArray[np.float64]
    bid_qty: npt.NDArray[np.float64]
    ask_qty: npt.NDArray[np.float64]
    jump_count: npt.NDArray[np.int64]
    n_base: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.close_time)

    @classmethod
    def from_bars(cls, bars: list[Bar] | tuple[Bar, ...]) -> BarArrays:
        def floats(name: str) -> npt.NDArray[np.float64]:
            values = [getattr(b, name) for b in bars]
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        def ints(name: str) -> npt.NDArray[np.int64]:
            return np.array([getattr(b, name) for b in bars], dtype=np.int64)

        columns: dict[str, Any] = {name: floats(name) for name in BAR_FLOAT_FIELDS}
        columns.update({name: ints(name) for name in BAR_INT_FIELDS})
        columns["depth_split"] = np.array([b.depth_split for b in bars], dtype=np.bool_)
        return cls(**columns)

    @classmethod
    def from_klines(
        cls,
        open_time: npt.NDArray[np.int64],
        interval: int,
        ohlcv: tuple[npt.NDArray[np.float64], ...],
    ) -> BarArrays:
        """Bars that carry only a kline: `mid` is the close, every other tick field absent."""
        o, h, lo, c, v = ohlcv
        n = len(open_time)

        def absent() -> npt.NDArray[np.float64]:
            return np.full(n, np.nan)

        return cls(
            open_time=open_time.astype(np.int64),
            close_time=(open_time + interval - 1).astype(np.int64),
            open=np.array(o, dtype=np.float64),
            high=np.array(h, dtype=np.float64),
            low=np.array(lo, dtype=np.float64),
            close=np.array(c, dtype=np.float64),
            volume=np.array(v, dtype=np.float64),
            mid=np.array(c, dtype=np.float64),
            best_bid=absent(),
            best_ask=absent(),
            depth_top1_usdt=absent(),
            depth_split=np.zeros(n, dtype=np.bool_),
            funding_next=absent(),
            bid_qty=absent(),
            ask_qty=absent(),
            jump_count=np.zeros(n, dtype=np.int64),
            n_base=np.ones(n, dtype=np.int64),
        )

    def to_bars(self) -> list[Bar]:
        def opt(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        out = []
        for i in range(len(self)):
            kwargs: dict[str, Any] = {n: int(getattr(self, n)[i]) for n in BAR_INT_FIELDS}
            for n in BAR_FLOAT_FIELDS:
                value = float(getattr(self, n)[i])
                kwargs[n] = value if n in ("open", "high", "low", "close", "volume") else opt(value)
            kwargs["depth_split"] = bool(self.depth_split[i])
            out.append(Bar(**kwargs))
        return out

    def slice(self, start: int, stop: int) -> BarArrays:
        return BarArrays(**{k: v[start:stop] for k, v in self.__dict__.items()})


@dataclass(frozen=True, slots=True)
class Dqc:
    """Data-quality verdict of one snapshot (SPEC §6). `passed` is serialised as `pass`."""

    missing: bool = False
    jump: bool = False
    bounds: bool = False
    reasons: tuple[str, ...] = ()
    note: str = ""

    @property
    def passed(self) -> bool:
        return not (self.missing or self.jump or self.bounds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.passed,
            "missing": self.missing,
            "jump": self.jump,
            "bounds": self.bounds,
            "note": self.note,
            "reasons": list(self.reasons),
        }


@dataclass(slots=True)  # a value, not frozen: see Bar
class Snapshot:
    """One feature snapshot for `(symbol, window, t0)` (SPEC §4), before it is output."""

    series: SeriesId
    window: str
    t0: int
    features: Mapping[str, FeatureValue]
    dqc: Dqc
    config_rev: str
    bar_coverage: float
    inputs_until: int
    calc: Mapping[str, str] = field(default_factory=dict)

    @property
    def signal_id(self) -> str:
        return f"{self.series.symbol}:{self.window}:{self.t0}"

    def to_payload(self, mode: str, computed_at: int) -> dict[str, Any]:
        """The stored document and emitted event content (SPEC §4)."""
        return {
            "signal_id": self.signal_id,
            "t0": self.t0,
            "symbol": self.series.symbol,
            "venue": self.series.venue,
            "market": self.series.market,
            "window": self.window,
            "features": dict(self.features),
            "meta": {
                "calc": dict(self.calc),
                "bar_coverage": self.bar_coverage,
                "inputs_until": self.inputs_until,
            },
            "config_rev": self.config_rev,
            "dqc": self.dqc.to_dict(),
            "source": "s2",
            "mode": mode,
            "computed_at": computed_at,
        }
