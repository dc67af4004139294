"""The project's exception tree.

    S2FeatureError                 root: anything the project raises on purpose
    ├── ConfigurationError         a bad setting, argument, config bundle or input file: the CLI
    │                              prints one line naming it and exits 2
    ├── StoreError                 (store/base.py) the store refused an operation
    │   └── StoreUnavailable       the store cannot be reached now: retried with backoff
    └── LeaseLost                  (streams/lease.py) this consumer no longer owns a stream

Anything else that escapes is a bug or an environment failure: the CLI prints its traceback and
exits 1. `ConfigurationError` also derives from `ValueError`, so callers that validate input with
`except ValueError` keep working.
"""

from __future__ import annotations


class S2FeatureError(Exception):
    """Root of the errors the project raises on purpose."""


class ConfigurationError(S2FeatureError, ValueError):
    """A setting, argument, bundle or input file that cannot be used; the message names it."""
