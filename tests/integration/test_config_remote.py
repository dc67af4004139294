"""`GET /active` against a real HTTP config service on loopback: bundle, ETag/304, every failure."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from s2feature.config_source.remote import (
    ActiveBundleClient,
    ConfigFetchError,
    display_url,
)
from tests.support.config_server import ConfigServer

R1: dict[str, Any] = {"rev": "r1", "liq_threshold_usdt": 2e6, "windows": {"atr_period": 21}}


@pytest.fixture
def server() -> Iterator[ConfigServer]:
    with ConfigServer(R1) as running:
        yield running


def test_fetch_returns_the_served_bundle_and_its_etag(server: ConfigServer) -> None:
    fetched = ActiveBundleClient(server.url, timeout_s=5).fetch()
    assert fetched is not None
    assert (fetched.bundle.rev, fetched.bundle.liq_threshold_usdt) == ("r1", 2e6)
    assert fetched.bundle.windows.atr_period == 21
    assert fetched.etag == server.etag_of(R1)
    assert server.requests[-1].path == "/active"
    assert server.requests[-1].if_none_match is None


def test_a_trailing_slash_or_a_path_in_the_base_url_is_kept(server: ConfigServer) -> None:
    assert ActiveBundleClient(server.url + "/", timeout_s=5).url == f"{server.url}/active"
    client = ActiveBundleClient(server.url + "/s10/", timeout_s=5)
    assert client.url == f"{server.url}/s10/active"
    with pytest.raises(ConfigFetchError, match="HTTP 404"):
        client.fetch()


def test_matching_etag_is_sent_and_304_means_unchanged(server: ConfigServer) -> None:
    client = ActiveBundleClient(server.url, timeout_s=5)
    first = client.fetch()
    assert first is not None
    assert client.fetch(first.etag) is None
    assert server.requests[-1].if_none_match == first.etag
    assert server.answered(304) == 1
    # A changed bundle has another ETag: the same If-None-Match now gets the new bundle.
    server.serve({**R1, "rev": "r2"})
    changed = client.fetch(first.etag)
    assert changed is not None
    assert changed.bundle.rev == "r2"
    assert changed.etag != first.etag


def test_a_304_without_an_etag_sent_is_an_error(server: ConfigServer) -> None:
    server.break_with_status(304)
    with pytest.raises(ConfigFetchError, match="HTTP 304"):
        ActiveBundleClient(server.url, timeout_s=5).fetch()


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (("status", 500), r"HTTP 500"),
        (("status", 503), r"HTTP 503"),
        (("raw", b"{not json"), r"body is not JSON"),
        (("raw", b"\xff\xfe"), r"body is not UTF-8"),
        (("raw", b"[1, 2]"), r"body is JSON list, not an object"),
        (("raw", json.dumps({"liq_threshold_usdt": 1.0}).encode()), r"bundle has no rev"),
        (
            ("raw", json.dumps({"rev": "bad", "liq_threshold_usdt": -1}).encode()),
            r"invalid config bundle from http://127\.0\.0\.1:\d+/active: liq_threshold_usdt",
        ),
        (
            ("raw", json.dumps({"rev": "bad", "features": {"enabled": ["atr_15"]}}).encode()),
            r"unknown feature\(s\) \['atr_15'\]",
        ),
        (("hang", None), r"no answer within 0\.3 s"),
    ],
    ids=[
        "http-500",
        "http-503",
        "bad-json",
        "not-utf8",
        "not-an-object",
        "no-rev",
        "schema",
        "unknown-feature",
        "timeout",
    ],
)
def test_every_failure_is_one_fetch_error_with_a_one_line_reason(
    server: ConfigServer, breakage: tuple[str, Any], reason: str
) -> None:
    kind, value = breakage
    if kind == "status":
        server.break_with_status(value)
    elif kind == "raw":
        server.break_with_body(value)
    else:
        server.hang()
    with pytest.raises(ConfigFetchError, match=reason) as caught:
        ActiveBundleClient(server.url, timeout_s=0.3).fetch()
    assert "\n" not in str(caught.value)


def test_a_stopped_server_is_a_fetch_error(server: ConfigServer) -> None:
    url = server.url
    server.stop()
    with pytest.raises(ConfigFetchError, match=r"GET http://127\.0\.0\.1:\d+/active: .*refused"):
        ActiveBundleClient(url, timeout_s=2).fetch()


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(
    server: ConfigServer,
) -> None:
    secret_url = server.url.replace("http://", "http://ops:s%3Acret@")
    client = ActiveBundleClient(secret_url, timeout_s=5)
    assert client.fetch() is not None
    expected = "Basic " + base64.b64encode(b"ops:s:cret").decode()
    assert server.requests[-1].authorization == expected
    assert "cret" not in client.url
    server.break_with_status(500)
    with pytest.raises(ConfigFetchError) as caught:
        client.fetch()
    assert "cret" not in str(caught.value)
    assert "ops" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@cfg.local:8500/x", "http://cfg.local:8500/x"),
        ("https://token@cfg.local/", "https://cfg.local/"),
        ("http://[::1]:81/a?b=1", "http://[::1]:81/a?b=1"),
        ("http://u:p@[::1]:81/", "http://[::1]:81/"),
        ("http://cfg.local", "http://cfg.local"),
    ],
)
def test_display_url_strips_userinfo_only(url: str, shown: str) -> None:
    assert display_url(url) == shown


@pytest.mark.parametrize(
    "url", ["ftp://cfg.local/", "cfg.local:8500", "http:///active", "http://u:secret@"]
)
def test_a_url_that_is_not_http_is_refused_without_its_credentials(url: str) -> None:
    with pytest.raises(ValueError, match="config service URL must be http") as caught:
        ActiveBundleClient(url, timeout_s=1)
    assert "secret" not in str(caught.value)
