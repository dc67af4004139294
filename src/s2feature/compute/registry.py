"""Every feature family the engine computes. Adding a family here gives it the generic tests."""

from __future__ import annotations

from s2feature.compute.atr import ATR_FAMILY
from s2feature.compute.book import BOOK_FAMILY
from s2feature.compute.correlation import CORRELATION_FAMILY
from s2feature.compute.engine_state import BASE_SCOPE, WBARS
from s2feature.compute.family import FeatureFamily
from s2feature.compute.volatility import VOLATILITY_FAMILY
from s2feature.domain import FEATURES

FAMILIES: tuple[FeatureFamily, ...] = (
    ATR_FAMILY,
    VOLATILITY_FAMILY,
    BOOK_FAMILY,
    CORRELATION_FAMILY,
)

_names = [family.name for family in FAMILIES]
if len(set(_names)) != len(_names) or {BASE_SCOPE, WBARS} & set(_names):
    raise RuntimeError(f"family names must be unique and not {BASE_SCOPE!r}/{WBARS!r}: {_names}")

_covered = [name for family in FAMILIES for name in family.features]
if sorted(_covered) != sorted(FEATURES):  # a feature listed twice or never computed
    raise RuntimeError(f"registry covers {sorted(_covered)}, SPEC lists {sorted(FEATURES)}")
