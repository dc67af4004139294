"""The store contract: the `Store` protocol, its errors, document checks and key helpers.

Exception tree (driver errors are translated into these at each backend's boundary, with the
driver error kept as `__cause__`):

    StoreError                fatal: bad document, permission, schema, closed store
    └── StoreUnavailable      retryable: connection refused/reset, timeout, 503, locked/busy

Both backends run every batch through `prepare_signals` / `prepare_events` before writing, so a
document the store cannot hold exactly (NaN, infinities, a missing key field, a reserved field) is
rejected the same way everywhere, and before anything of its batch is written. A signal may also
be handed over as the `SignalRow` that `prepare_signal` made of it: the service prepares each
payload once and emits the same JSON text it stores.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from s2feature import strict_json
from s2feature.domain import WINDOWS
from s2feature.errors import S2FeatureError

SIGNALS: Final = "signals"
STRATEGY_EVENTS: Final = "strategy_events"
RECOMPUTE_TASKS: Final = "recompute_tasks"
EVENT_KINDS: Final[tuple[str, ...]] = ("FEATURE_DQC_FAIL", "FEATURE_RECOMPUTE")

# ArangoDB document keys: at most 254 bytes of these characters. Keys are checked on every
# backend so that a document SQLite accepts is one ArangoDB accepts too.
KEY_MAX_BYTES: Final = 254
_KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-:.@()+,=;$!*'%]+")
_KEY_DISALLOWED: Final = re.compile(r"[^A-Za-z0-9_\-:.@()+,=;$!*'%]")
_HASH_SEPARATOR: Final = "@"
_HASH_HEX_DIGITS: Final = 16

# Fields that ArangoDB owns: a payload carrying them could not be returned exactly as stored.
RESERVED_FIELDS: Final[frozenset[str]] = frozenset({"_key", "_id", "_rev", "_from", "_to"})


class StoreError(S2FeatureError):
    """A store operation failed and retrying will not help (bad document, permission, schema)."""


class StoreUnavailable(StoreError):  # noqa: N818 - the name is part of the project's contract
    """The backend cannot be reached right now (connection, timeout, 503, locked); retry later."""


@runtime_checkable
class TaskStore(Protocol):
    """Persistence of recompute tasks and their progress (`s2feature.jobs.tasks`), so that a
    restarted service resumes its tasks and still answers for finished ones.

    A task document holds at least `task_id` (a valid key), `owner` (the consumer that runs it)
    and `state`; it comes back exactly as stored.
    """

    def insert_task(self, doc: Mapping[str, Any]) -> bool:
        """Store a new task; False (nothing written) when its `task_id` is already taken, which
        makes task ids unique across restarts and across instances sharing the store."""

    def save_task(self, doc: Mapping[str, Any]) -> None:
        """Replace-or-insert a task document keyed by `task_id`."""

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The stored task, or None."""

    def query_tasks(
        self,
        owner: str | None = None,
        states: Sequence[str] | None = None,
        id_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks, optionally of one owner, in some states, with ids starting with `id_prefix`;
        ordered by `task_id`."""

    def delete_tasks(self, finished_before: int, states: Sequence[str]) -> int:
        """Delete the tasks in `states` whose `finished_at` (epoch ms) is before
        `finished_before`; a task without `finished_at` is kept. Returns how many went."""


@runtime_checkable
class Store(TaskStore, Protocol):
    """Persistence of signal snapshots and strategy events (SPEC §7), and of recompute tasks.

    Writes are upserts by a deterministic key, so replaying a batch changes nothing. Documents
    come back exactly as they were stored, without backend fields.
    """

    name: str

    def upsert_signals(self, docs: Sequence[SignalDoc]) -> None:
        """Replace-or-insert snapshot payloads keyed by `signal_id`, as one batch. A payload may
        come as the `SignalRow` that `prepare_signal` made of it."""

    def upsert_strategy_events(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Replace-or-insert strategy events keyed by `event_id`, as one batch."""

    def write_batch(
        self, signals: Sequence[SignalDoc], events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Upsert what one service batch produced: its signals and its strategy events. Both
        are checked before anything is written; a backend with transactions writes them in one
        (SQLite), the others signals first."""

    def get_signal(self, signal_id: str) -> dict[str, Any] | None:
        """The stored payload of one signal, or None."""

    def query_signals(
        self,
        symbol: str,
        window: str | None = None,
        from_t0: int | None = None,
        to_t0: int | None = None,
    ) -> list[dict[str, Any]]:
        """Signals of a symbol with `from_t0 <= t0 <= to_t0`, ordered by (t0, window index)."""

    def strategy_events(
        self, kind: str | None = None, symbol: str | None = None
    ) -> list[dict[str, Any]]:
        """Strategy events, optionally filtered, ordered by (ts, event_id)."""

    def count_signals(self) -> int:
        """Number of stored signals."""

    def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailable when it cannot be reached."""

    def close(self) -> None:
        """Release connections; later calls raise StoreError. Closing twice is harmless."""


# --------------------------------------------------------------------------- keys


def is_valid_key(key: str) -> bool:
    """Whether `key` is usable as a document key on every backend (ArangoDB `_key` rules)."""
    # The pattern admits ASCII only, so a matching key has as many bytes as characters.
    return len(key) <= KEY_MAX_BYTES and _KEY_PATTERN.fullmatch(key) is not None


def sanitize_key(text: str, prefix: str = "") -> str:
    """A valid key for `prefix + text`: unchanged when already valid, else cleaned and hashed.

    Disallowed characters become `_`; whenever anything was replaced or cut to fit the length
    limit, `@` and 16 hex digits of the SHA-256 of the original text are appended, so different
    inputs keep different keys and the same input always gives the same key.
    """
    candidate = prefix + text
    if is_valid_key(candidate):
        return candidate
    digest = hashlib.sha256(candidate.encode("utf-8")).hexdigest()[:_HASH_HEX_DIGITS]
    suffix = _HASH_SEPARATOR + digest
    cleaned = _KEY_DISALLOWED.sub("_", candidate)  # all kept characters are ASCII: 1 byte each
    return cleaned[: KEY_MAX_BYTES - len(suffix)] + suffix


def dqc_fail_event_id(signal_id_or_entry: str) -> str:
    """Deterministic `event_id` of the FEATURE_DQC_FAIL event of a signal or input entry.

    Pass the `signal_id` of a failing snapshot, or `<stream key>/<entry id>` of a dropped event.
    """
    return sanitize_key(signal_id_or_entry, prefix="dqc_fail:")


def recompute_event_id(task_id: str) -> str:
    """Deterministic `event_id` of the FEATURE_RECOMPUTE event of a recompute task."""
    return sanitize_key(task_id, prefix="recompute:")


# --------------------------------------------------------------------------- documents


class SignalRow(NamedTuple):
    """A checked signal document: its indexed columns and its JSON text, which is what every
    backend stores (the document is that text decoded)."""

    signal_id: str
    symbol: str
    window: str
    t0: int
    json_text: str


# A snapshot payload, or the row `prepare_signal` made of it.
SignalDoc = Mapping[str, Any] | SignalRow


class EventRow(NamedTuple):
    """A checked strategy event with its indexed columns and its JSON text."""

    event_id: str
    kind: str
    symbol: str | None
    ts: int
    doc: Mapping[str, Any]
    json_text: str


def encode_json(doc: Mapping[str, Any], what: str) -> str:
    """Compact JSON of a document; StoreError naming `what` and the path of a bad value."""
    try:
        return strict_json.encode(doc).decode()
    except (ValueError, TypeError) as e:
        path = _find_unstorable(doc, "")
        where = f" at {path}" if path else ""
        raise StoreError(f"{what}: value not storable as JSON{where} ({e})") from e


def _find_unstorable(value: Any, path: str) -> str | None:
    """Path of the first non-finite float, non-JSON value or non-JSON key inside `value`."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "."
    if value is None or isinstance(value, str | int | bool):
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int | float) or isinstance(key, bool):
                return f"{path}.{key!r}"
            found = _find_unstorable(item, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unstorable(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return path or "."


def _require_int(doc: Mapping[str, Any], field: str, what: str) -> int:
    value = doc.get(field)
    # bool is an int subclass, but True is no timestamp
    if not isinstance(value, int) or isinstance(value, bool):
        raise StoreError(f"{what}: field {field!r} must be an integer, got {value!r}")
    return value


def _require_str(doc: Mapping[str, Any], field: str, what: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise StoreError(f"{what}: field {field!r} must be a non-empty string, got {value!r}")
    return value


def _check_reserved(doc: Mapping[str, Any], what: str) -> None:
    if RESERVED_FIELDS.isdisjoint(doc):  # the usual case, without building a set
        return
    reserved = sorted(RESERVED_FIELDS.intersection(doc))
    raise StoreError(f"{what}: reserved field(s) {', '.join(reserved)} not allowed")


def prepare_signal(doc: Mapping[str, Any]) -> SignalRow:
    """Check one snapshot payload (SPEC §4) and encode it; StoreError naming the signal."""
    what = f"signal {doc.get('signal_id')!r}"
    signal_id = _require_str(doc, "signal_id", what)
    if not is_valid_key(signal_id):
        raise StoreError(f"{what}: not a valid document key")
    symbol = _require_str(doc, "symbol", what)
    window = _require_str(doc, "window", what)
    if window not in WINDOWS:
        raise StoreError(f"{what}: window must be one of {', '.join(WINDOWS)}, got {window!r}")
    t0 = _require_int(doc, "t0", what)
    if signal_id != f"{symbol}:{window}:{t0}":
        raise StoreError(f"{what}: signal_id must be '<symbol>:<window>:<t0>'")
    _check_reserved(doc, what)
    return SignalRow(signal_id, symbol, window, t0, encode_json(doc, what))


def prepare_event(doc: Mapping[str, Any]) -> EventRow:
    """Check one strategy event and encode it; StoreError naming the event."""
    what = f"strategy event {doc.get('event_id')!r}"
    event_id = _require_str(doc, "event_id", what)
    if not is_valid_key(event_id):
        raise StoreError(f"{what}: not a valid document key (see sanitize_key)")
    kind = _require_str(doc, "kind", what)
    if kind not in EVENT_KINDS:
        raise StoreError(f"{what}: kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
    symbol = doc.get("symbol")
    if symbol is not None and not isinstance(symbol, str):
        raise StoreError(f"{what}: field 'symbol' must be a string or null, got {symbol!r}")
    ts = _require_int(doc, "ts", what)
    _check_reserved(doc, what)
    return EventRow(event_id, kind, symbol, ts, doc, encode_json(doc, what))


class TaskRow(NamedTuple):
    """A checked task document with its indexed columns and its JSON text."""

    task_id: str
    owner: str
    state: str
    doc: Mapping[str, Any]
    json_text: str


def prepare_task(doc: Mapping[str, Any]) -> TaskRow:
    """Check one task document and encode it; StoreError naming the task."""
    what = f"task {doc.get('task_id')!r}"
    task_id = _require_str(doc, "task_id", what)
    if not is_valid_key(task_id):
        raise StoreError(f"{what}: not a valid document key")
    owner = doc.get("owner")
    if not isinstance(owner, str):
        raise StoreError(f"{what}: field 'owner' must be a string, got {owner!r}")
    state = _require_str(doc, "state", what)
    _check_reserved(doc, what)
    return TaskRow(task_id, owner, state, doc, encode_json(doc, what))


def prepare_signals(docs: Sequence[SignalDoc]) -> list[SignalRow]:
    """Check a whole batch before any of it is written (rows are already checked)."""
    return [doc if isinstance(doc, SignalRow) else prepare_signal(doc) for doc in docs]


def prepare_events(docs: Sequence[Mapping[str, Any]]) -> list[EventRow]:
    """Check a whole batch before any of it is written."""
    return [prepare_event(doc) for doc in docs]
