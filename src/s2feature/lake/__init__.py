"""The Parquet base-bar lake: what live appends and recompute reads share (SPEC §10)."""

from s2feature.lake.parquet import LAKE_SCHEMA, BarLake, utc_date_of

__all__ = ["LAKE_SCHEMA", "BarLake", "utc_date_of"]
