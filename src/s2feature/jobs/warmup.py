"""How much history before `from_ts` a recompute must read (`s2feature.compute.history`, shared
with the service's warm-up from the lake)."""

from s2feature.compute.history import ATR_TOLERANCE, atr_warmup_wbars, warmup_ms, warmup_start

__all__ = ["ATR_TOLERANCE", "atr_warmup_wbars", "warmup_ms", "warmup_start"]
