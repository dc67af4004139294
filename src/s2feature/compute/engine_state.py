"""The format of a `SymbolEngine`'s saved state, and the test of whether a saved entry still fits.

State format 2 (a JSON object):

    {
      "format": 2,
      "base_ms": <base interval of the engine that wrote it>,
      "seen_until": <close time of the newest base bar fed, -1 for none>,
      "config_rev": <rev of the bundle it ran under; informative only>,
      "builders": {<window>: <WBarBuilder state>},
      "families": {
        "base":     {<family name>: <entry>},
        <window>:   {<family name>: <entry>}
      }
    }

    <entry> = {"version": <family.state_version>, "params": <family.state_params(ctx)>,
               "state": <the online instance's snapshot()>}
            | {"version": ..., "params": ..., "history": true,
               "state": <a HistoryBacked family's checkpoint()>}

A compact entry (`"history": true`, written by `snapshot(compact=True)` for base-level
`HistoryBacked` families) leaves out what the base bars hold; it is restored only given those
bars' closes (`SymbolEngine.restore(state, history)`), and is stale without them or when they do
not give back what was saved.

Families are keyed by scope ("base" for base-level families, the window for w-bar families) and
name, never by position. A saved entry fits the running engine when its version and its params
equal the family's current ones (params compared after a JSON round trip). An entry that does not
fit, or is missing, leaves that family fresh and is reported as a `StateKey` for
`SymbolEngine.rebuild`; entries of families the engine does not have are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from s2feature.compute.family import FamilyContext, FeatureFamily

STATE_FORMAT = 2
BASE_SCOPE = "base"
# The pseudo family name under which a window's w-bar builder is reported stale.
WBARS = "wbars"

StateKey = tuple[str, str]  # (BASE_SCOPE or a window, family name or WBARS)


class EngineStateError(ValueError):
    """A saved engine state that is not one: wrong types, or an entry whose version and params
    fit but whose state the family cannot read."""


class BaseIntervalChangeError(ValueError):
    """A bundle with another base interval: it cannot be applied to a running engine."""


def canonical_params(family: FeatureFamily, ctx: FamilyContext) -> dict[str, Any]:
    """The family's state params as they read back from JSON (tuples become lists, etc.)."""
    params = dict(family.state_params(ctx))
    try:
        loaded: dict[str, Any] = json.loads(json.dumps(params, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"state params of family {family.name} are not JSON: {exc}") from exc
    return loaded


def entry(family: FeatureFamily, params: Mapping[str, Any], state: Any) -> dict[str, Any]:
    return {"version": family.state_version, "params": dict(params), "state": state}


def mapping_at(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """`parent[key]` when it is a JSON object, an empty one when absent; raise for anything else."""
    value = parent.get(key, {})
    if not isinstance(value, Mapping):
        raise EngineStateError(f"engine state: {where} is a {type(value).__name__}, not an object")
    return value


def saved_state_if_fits(
    saved: Any, family: FeatureFamily, params: Mapping[str, Any], where: str
) -> Any | None:
    """The saved family state when the entry's version and params are the current ones, else
    None (stale). An entry that is not an object with those three keys is garbage: raise."""
    if not isinstance(saved, Mapping) or not {"version", "params", "state"} <= saved.keys():
        raise EngineStateError(
            f"engine state: {where} is not an entry with version, params and state"
        )
    version = saved["version"]
    if isinstance(version, bool) or version != family.state_version:
        return None
    if saved["params"] != params:
        return None
    return saved["state"]
