"""The snapshot-level data-quality verdict (SPEC §6): missing, jump and bounds.

Pure: it looks at feature values and the w-bar's jump count and returns a `Dqc` with
machine-readable reasons (`missing:<feature>`, `jump:<n>_flagged_events`, `bounds:<feature>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import FUT_ONLY_FEATURES, Dqc, FeatureValue, Market, Snapshot


def required_features(bundle: ConfigBundle, market: Market) -> tuple[str, ...]:
    """The bundle's required features that apply to a market (funding is fut-only)."""
    required = bundle.features.required
    if market == "spot":
        return tuple(name for name in required if name not in FUT_ONLY_FEATURES)
    return required


# The live service made the snapshot without the FX w-bar closing at its t0 (it came later than
# `S2_FX_MAX_WAIT_MS`): rho_* are null where a recompute has them. Informational: the verdict is
# unchanged, and a recompute rewrites such a snapshot even without `force`.
FX_LATE: Final = "fx_late"

# Most snapshots pass: they share this verdict (a frozen value) instead of building their own.
_PASSED: Final = Dqc()


def assess(
    features: Mapping[str, FeatureValue],
    jump_count: int,
    required: tuple[str, ...],
    bundle: ConfigBundle,
) -> Dqc:
    null_required = [name for name in required if features.get(name) is None]
    bounds_reasons = _bounds(features, bundle)
    if not null_required and jump_count <= 0 and not bounds_reasons:
        return _PASSED
    return _failed(null_required, jump_count, bounds_reasons)


def _failed(null_required: list[str], jump_count: int, bounds_reasons: list[str]) -> Dqc:
    reasons = [f"missing:{name}" for name in null_required]
    missing = bool(null_required)
    jump = jump_count > 0
    if jump:
        reasons.append(f"jump:{jump_count}_flagged_events")
    reasons.extend(bounds_reasons)
    notes = []
    if missing:
        notes.append(f"{len(null_required)} required feature(s) null")
    if jump:
        notes.append(f"bar holds {jump_count} jump-flagged event(s)")
    if bounds_reasons:
        notes.append("out of physical bounds")
    return Dqc(
        missing=missing,
        jump=jump,
        bounds=bool(bounds_reasons),
        reasons=tuple(reasons),
        note="; ".join(notes),
    )


def _bounds(features: Mapping[str, FeatureValue], bundle: ConfigBundle) -> list[str]:
    out = []
    spread = features.get("spread_bps")
    if isinstance(spread, float) and (spread < 0.0 or spread > bundle.bounds.spread_bps_max):
        out.append("bounds:spread_bps")
    depth = features.get("depth_top1_usdt")
    if isinstance(depth, float) and depth > bundle.bounds.depth_top1_usdt_max:
        out.append("bounds:depth_top1_usdt")
    return out


def routing(snapshot: Snapshot, realtime: bool, persist_all: bool) -> tuple[bool, bool]:
    """(store, emit) for a snapshot, per SPEC §6 and §8.

    Passing snapshots are stored and emitted in realtime mode. Jump and bounds failures are stored
    (for analysis) but not emitted; missing ones are stored only with `persist_all`.
    """
    dqc = snapshot.dqc
    emit = dqc.passed and realtime
    store = persist_all or emit or (not dqc.missing and (dqc.jump or dqc.bounds))
    return store, emit
