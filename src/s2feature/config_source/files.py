"""A config bundle from a local JSON or YAML file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from s2feature.config.bundle import BundleError, ConfigBundle, parse_bundle


def load_bundle(path: str | Path) -> ConfigBundle:
    """Load a bundle from a JSON or YAML file (chosen by suffix; YAML also reads JSON).

    Raises `BundleError` naming the path when the file cannot be read, decoded or validated; an
    empty file is the default bundle.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot read config bundle {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"config bundle {path} is not UTF-8 text: {exc.reason}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BundleError(f"config bundle {path} is not valid JSON/YAML: {exc}") from exc
    return parse_bundle(data if data is not None else {}, origin=str(path))
