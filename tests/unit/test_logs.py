"""Log lines are JSON objects: every field encoded, whatever the message holds."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from s2feature.logs import configure_json_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    configure_json_logging("INFO", out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_quotes_newlines_and_fields_stay_inside_one_json_object(stream: io.StringIO) -> None:
    log = logging.getLogger("s2feature.test")
    log.info(
        'a "quoted" word\nand a second line %d',
        7,
        extra={"event": "config_applied", "old_rev": 'r"1', "changed": ["windows.atr_period"]},
    )
    (line,) = lines(stream)
    assert line["msg"] == 'a "quoted" word\nand a second line 7'
    assert line["event"] == "config_applied"
    assert line["old_rev"] == 'r"1'
    assert line["changed"] == ["windows.atr_period"]
    assert (line["level"], line["logger"]) == ("info", "s2feature.test")
    assert str(line["ts"]).endswith("Z")


def test_level_filter_and_tracebacks(stream: io.StringIO) -> None:
    log = logging.getLogger("s2feature.test")
    log.debug("not shown at INFO")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("uvicorn.error").warning("from another library")
    first, second = lines(stream)
    assert first["msg"] == "failed"
    assert "RuntimeError: boom" in str(first["exception"])
    assert (second["logger"], second["level"]) == ("uvicorn.error", "warning")


def test_url_credentials_never_reach_a_line(stream: io.StringIO) -> None:
    log = logging.getLogger("s2feature.test")
    log.warning(
        "ConnectionError: http://s2:pw-123@127.0.0.1:8529/_api and redis://:pw-456@h:6379/0",
        extra={"event": "retry", "error": "https://user:pw-789@example.invalid/x"},
    )
    (line,) = lines(stream)
    text = json.dumps(line)
    assert "pw-123" not in text
    assert "pw-456" not in text
    assert "pw-789" not in text
    assert "http://<credentials>@127.0.0.1:8529/_api" in str(line["msg"])
    assert line["error"] == "https://<credentials>@example.invalid/x"


def test_text_without_credentials_is_kept() -> None:
    from s2feature.redact import redact_urls

    text = "mail ops@example.invalid about http://127.0.0.1:8080/health"
    assert redact_urls(text) == text
