"""Service settings: SPEC defaults, and a clear message naming the variable for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2feature.cli import main
from s2feature.domain import SeriesId
from s2feature.service.settings import SettingsError, load_settings

BASE = {"S2_SYMBOLS": "binance:fut:BTCUSDT"}


def test_defaults() -> None:
    settings = load_settings({**BASE, "S2_CONSUMER_NAME": "c1"})
    assert settings.series == (SeriesId("binance", "fut", "BTCUSDT"),)
    assert settings.redis.addresses == (("127.0.0.1", 6379),)
    assert not settings.redis.is_cluster
    assert settings.windows == ("1m", "5m", "1h")
    assert (settings.group, settings.consumer) == ("s2", "c1")
    assert (settings.batch_size, settings.block_ms) == (200, 200)
    assert settings.claim_idle_ms == 30_000
    assert settings.lake_dir == Path("data/lake")


def test_several_addresses_mean_a_cluster_and_windows_are_put_in_order() -> None:
    settings = load_settings(
        {**BASE, "S2_REDIS_ADDRESSES": "10.0.0.1:7000,10.0.0.2:7001", "S2_WINDOWS": "1h,1m"}
    )
    assert settings.redis.is_cluster
    assert settings.windows == ("1m", "1h")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "S2_SYMBOLS"),
        ({"S2_SYMBOLS": "binance:futures:BTCUSDT"}, "S2_SYMBOLS"),
        ({"S2_SYMBOLS": "a:fut:BTC,b:spot:BTC"}, "S2_SYMBOLS"),
        ({**BASE, "S2_REDIS_ADDRESSES": "localhost"}, "S2_REDIS_ADDRESSES"),
        ({**BASE, "S2_REDIS_ADDRESSES": "h:99999"}, "S2_REDIS_ADDRESSES"),
        ({**BASE, "S2_WINDOWS": "2h"}, "S2_WINDOWS"),
        ({**BASE, "S2_WINDOWS": ""}, "S2_WINDOWS"),
        ({**BASE, "S2_BATCH_SIZE": "-3"}, "S2_BATCH_SIZE"),
        ({**BASE, "S2_CHECKPOINT_MS": "soon"}, "S2_CHECKPOINT_MS"),
        ({**BASE, "S2_CONFIG_FILE": "/nonexistent/bundle.yaml"}, "S2_CONFIG_FILE"),
        ({**BASE, "S2_BLOCK_MS": "10000"}, "S2_BLOCK_MS"),
        ({**BASE, "S2_CLAIM_IDLE_MS": "0"}, "S2_CLAIM_IDLE_MS"),
    ],
    ids=[
        "no-symbols",
        "bad-market",
        "symbol-twice",
        "address-without-port",
        "port-out-of-range",
        "unknown-window",
        "empty-windows",
        "negative-batch",
        "non-numeric-checkpoint",
        "missing-config-file",
        "block-outlasting-the-lease",
        "zero-lease",
    ],
)
def test_bad_setting_is_named_in_the_error(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(env)


def test_run_with_a_bad_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("S2_SYMBOLS", "nonsense")
    assert main(["run"]) == 2
    assert "S2_SYMBOLS" in capsys.readouterr().err


def test_socket_timeout_outlasts_the_blocking_read() -> None:
    settings = load_settings({**BASE, "S2_BLOCK_MS": "8000"})
    assert settings.redis.socket_timeout_s > 8.0


def test_a_wrong_password_is_not_retried() -> None:
    import redis

    from s2feature.streams.client import is_retryable

    assert not is_retryable(redis.AuthenticationError("WRONGPASS"))
    assert is_retryable(redis.ConnectionError("reset"))


def test_traces_are_off_without_an_endpoint_and_sampled_at_one_percent_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from s2feature.launcher import signal_tracer

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    settings = load_settings({"S2_SYMBOLS": "binance:fut:BTCUSDT"})
    assert (settings.trace_sample, settings.otlp_endpoint) == (0.01, None)
    assert signal_tracer(settings) is None  # no tracer: nothing on the loop's path
    traced = load_settings(
        {
            "S2_SYMBOLS": "binance:fut:BTCUSDT",
            "S2_TRACE_SAMPLE": "0.5",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        }
    )
    assert (traced.trace_sample, traced.otlp_endpoint) == (0.5, "http://127.0.0.1:4318")
    tracer = signal_tracer(traced)
    assert tracer is not None
    tracer.shutdown()
    with pytest.raises(SettingsError, match="S2_TRACE_SAMPLE"):
        load_settings({"S2_SYMBOLS": "binance:fut:BTCUSDT", "S2_TRACE_SAMPLE": "1.5"})


def test_the_api_token_is_a_secret_and_empty_means_unset() -> None:
    settings = load_settings({**BASE, "S2_API_TOKEN": "t0ps3cret"})
    assert settings.api.token is not None
    assert settings.api.token.get_secret_value() == "t0ps3cret"
    assert "t0ps3cret" not in repr(settings)
    assert load_settings(BASE).api.token is None
    assert load_settings({**BASE, "S2_API_TOKEN": "  "}).api.token is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [("2h", 7_200_000), ("90m", 5_400_000), ("45s", 45_000), ("1d", 86_400_000), ("0", 0)],
)
def test_the_recompute_lookback_is_a_duration(text: str, ms: int) -> None:
    assert load_settings({**BASE, "S2_RECOMPUTE_LOOKBACK": text}).recompute_lookback_ms == ms


def test_the_recompute_lookback_defaults_to_two_hours_and_a_bad_one_is_named() -> None:
    assert load_settings(BASE).recompute_lookback_ms == 7_200_000
    with pytest.raises(SettingsError, match="S2_RECOMPUTE_LOOKBACK"):
        load_settings({**BASE, "S2_RECOMPUTE_LOOKBACK": "two hours"})
