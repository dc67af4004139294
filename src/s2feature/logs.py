"""Logs as JSON lines on stderr: one object per record, every field encoded (a quote or a newline
in a message stays inside its string).

Code logs through the standard `logging` module, with the record's context as `extra` fields:

    log.info("config applied", extra={"event": "config_applied", "old_rev": a, "new_rev": b})

gives `{"ts": "...Z", "level": "info", "logger": "s2feature.config", "msg": "config applied",
"event": "config_applied", "old_rev": "...", "new_rev": "..."}`. Records of other libraries
(uvicorn, redis) go through the same formatter.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog


def _rename_event_to_msg(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # structlog keeps the message under "event"; the project's `event` is a field of its own
    # (compute_ok, config_applied, ...), which ExtraAdder put under "_event".
    event_dict["msg"] = event_dict.pop("event", "")
    if "_event" in event_dict:
        event_dict["event"] = event_dict.pop("_event")
    return event_dict


class _ExtraEvent(logging.Filter):
    """Move an `extra={"event": ...}` field aside before structlog reads the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        value = record.__dict__.pop("event", None)
        if value is not None:
            record._event = value
        return True


def json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _rename_event_to_msg,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
    )


def configure_json_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every record of the process, at `level` and above, to `stream` (stderr) as JSON."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(_ExtraEvent())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
