"""Logs as JSON lines on stderr: one object per record, every field encoded (a quote or a newline
in a message stays inside its string).

Code logs through the standard `logging` module, with the record's context as `extra` fields:

    log.info("config applied", extra={"event": "config_applied", "old_rev": a, "new_rev": b})

gives `{"ts": "...Z", "level": "info", "logger": "s2feature.config", "msg": "config applied",
"event": "config_applied", "old_rev": "...", "new_rev": "..."}`. Records of other libraries
(uvicorn, redis) go through the same formatter, and the credentials of any URL in a line are
replaced (`redact.redact_urls`).

Levels (`S2_LOG_LEVEL`): INFO holds the lifecycle (start, config_applied, lease_taken, restored,
retry, dead_letter, stopped...): a few lines per minute whatever the input rate. DEBUG adds one
line per snapshot and step (`compute_ok`/`dqc_fail`, then `emit_ok`/`emit_skip`, logger
`s2feature.snapshots`) and one per checkpoint; they are built only when DEBUG is enabled.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from s2feature.redact import redact_urls


def _rename_event_to_msg(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # structlog keeps the message under "event"; the project's `event` is a field of its own
    # (compute_ok, config_applied, ...), which ExtraAdder put under "_event".
    event_dict["msg"] = event_dict.pop("event", "")
    if "_event" in event_dict:
        event_dict["event"] = event_dict.pop("_event")
    return event_dict


def _redact_line(_: Any, __: str, line: Any) -> str:
    # After the renderer, so `line` is the JSON text: no URL credentials in any line, whoever
    # wrote the message (a driver's error quoting the URL it could not reach, say).
    return redact_urls(str(line))


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
            _redact_line,
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
