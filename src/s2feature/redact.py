"""Credentials out of text bound for logs and error messages.

A driver's error message may quote the URL it could not reach, credentials included
(`http://user:password@host/...`). `redact_urls` replaces the userinfo of every URL in a text;
the log formatter applies it to every line as a last line of defence, and the store boundary to
its error messages (which `/health` shows too).
"""

from __future__ import annotations

import re
from typing import Final

_USERINFO: Final = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@]+@")
REDACTED: Final = "<credentials>@"


def redact_urls(text: str) -> str:
    """`text` with the `user:password@` of every URL in it replaced by `<credentials>@`."""
    if "://" not in text or "@" not in text:
        return text  # the common case, without a regex
    return _USERINFO.sub(lambda m: m.group("scheme") + REDACTED, text)
