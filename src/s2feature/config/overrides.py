"""Deployment overrides of bundle fields (`S2_DQC_*`, `S2_REGIME_*`), merged over every bundle.

Precedence: environment over bundle. A value set in a pod's environment is an operator's
decision for that deployment (a jump threshold loosened during a known venue incident, a
different regime reference in a staging cluster); a hot-reloaded bundle must not undo it
silently. The overridden bundle is labelled: its `rev` becomes `<bundle rev>+env.<digest>`, the
digest naming the override values, so a snapshot computed under overridden thresholds never
passes for one computed under the bundle alone, and two deployments with different overrides
never share a rev.

Pure: no I/O. The section names are the bundle's (`dqc`, `regime`); the field names are the
fields of `DqcSettings` and `RegimeSettings`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from s2feature.config.bundle import ConfigBundle, DqcSettings, RegimeSettings

# bundle section -> its model: the sections that take environment overrides
_STRICT: Final = ConfigDict(allow_inf_nan=False)  # as the bundle: no NaN or infinite threshold
OVERRIDABLE: Final[dict[str, type[BaseModel]]] = {"dqc": DqcSettings, "regime": RegimeSettings}


class OverrideError(ValueError):
    """An override value its bundle field refuses; `field` is the dotted bundle path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class BundleOverrides:
    """Values that replace bundle fields: (section, field, value) triples, sorted.

    Build it with `of`, which checks each value against its field's type and bounds; checks that
    span fields (`regime.frozen_below` < `regime.extreme_above`) can only be made on a whole
    bundle, so `apply` makes them.
    """

    items: tuple[tuple[str, str, Any], ...] = ()

    @classmethod
    def of(cls, values: dict[str, dict[str, Any]]) -> BundleOverrides:
        """Overrides from `{section: {field: value}}`; None values are left out (unset)."""
        items: list[tuple[str, str, Any]] = []
        for section, fields in values.items():
            model = OVERRIDABLE.get(section)
            if model is None:
                raise OverrideError(section, f"not overridable; only {sorted(OVERRIDABLE)}")
            for name, value in fields.items():
                if value is None:
                    continue
                info = model.model_fields.get(name)
                if info is None:
                    raise OverrideError(f"{section}.{name}", "no such bundle field")
                try:
                    # the field's type with its bounds (ge, le, gt...), as the bundle checks it
                    field_type: Any = (
                        Annotated[(info.annotation, *info.metadata)]
                        if info.metadata
                        else info.annotation
                    )
                    checked = TypeAdapter(field_type, config=_STRICT).validate_python(value)
                except ValidationError as exc:
                    message = "; ".join(err["msg"] for err in exc.errors())
                    raise OverrideError(f"{section}.{name}", message) from None
                items.append((section, name, checked))
        return cls(tuple(sorted(items)))

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def digest(self) -> str:
        """8 hex digits naming the override values (the same values give the same digest)."""
        text = json.dumps([list(item) for item in self.items], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def apply(self, bundle: ConfigBundle) -> ConfigBundle:
        """`bundle` with the overridden fields replaced and its rev labelled; the bundle itself
        when there is nothing to override. `BundleError` when the result does not validate."""
        if not self.items:
            return bundle
        sections: dict[str, dict[str, Any]] = {}
        for section, name, value in self.items:
            sections.setdefault(section, {})[name] = value
        return bundle.with_overrides(rev=f"{bundle.rev}+env.{self.digest}", **sections)
