"""S2 feature generator: point-in-time correct market features."""

__version__ = "0.1.0"
