"""The cluster client's own key parsing of stream reads, and the replica-wait marker keys."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from s2feature.service.settings import SettingsError, load_settings
from s2feature.streams.client import stream_read_keys
from s2feature.streams.replicas import marker_key, slot_tag


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("XREADGROUP", b"GROUP", "g", "c", b"STREAMS", "s1", ">"), ["s1"]),
        (
            ("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "BLOCK", 0, "STREAMS", "a", "b", 0, 0),
            ["a", "b"],
        ),
        (("xreadgroup", "group", "streams", "streams", "noack", "streams", "k", ">"), ["k"]),
        (("XREAD", "COUNT", "2", "STREAMS", b"k", "0-0"), [b"k"]),
        (("XREAD", "BLOCK", "10", "STREAMS", "x", "y", "$", "$"), ["x", "y"]),
    ],
)
def test_stream_read_keys_are_the_first_half_after_streams(
    args: tuple[object, ...], keys: list[object]
) -> None:
    assert stream_read_keys(args) == keys


@pytest.mark.parametrize(
    "args",
    [
        ("XRANGE", "k", "-", "+"),
        ("XREADGROUP", "GROUP", "g", "c", "CLAIM", 10, "STREAMS", "k", ">"),  # unknown option
        ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "k"),  # odd: malformed
        ("XREAD", "COUNT", "1"),
        ("XREADGROUP", "g", "c", "STREAMS", "k", ">"),
        (),
    ],
)
def test_other_commands_are_left_to_the_client(args: tuple[object, ...]) -> None:
    assert stream_read_keys(args) is None


@pytest.mark.parametrize(
    "key", ["feat:events:BTCUSDT", "feat:{cache}:BTCUSDT", "feat:last:X", "a{}b", "{x}{y}"]
)
def test_a_marker_key_shares_the_slot_of_its_key(key: str) -> None:
    assert key_slot(marker_key(key).encode()) == key_slot(key.encode())
    assert marker_key(key) != key


def test_slot_tag_follows_the_cluster_rule() -> None:
    assert slot_tag("feat:{cache}:BTC") == "cache"
    assert slot_tag("a{}b{c}") == "a{}b{c}"  # an empty first tag: the whole key
    assert slot_tag("plain") == "plain"


BASE = {"S2_SYMBOLS": "binance:fut:BTCUSDT"}


def test_replica_settings_default_to_no_wait() -> None:
    redis = load_settings(BASE).redis
    assert (redis.min_replicas, redis.wait_ms) == (0, 1000)


def test_replica_settings_are_read_and_the_socket_outlasts_the_wait() -> None:
    env = {**BASE, "S2_REDIS_MIN_REPLICAS": "2", "S2_REDIS_WAIT_MS": "9000"}
    redis = load_settings(env).redis
    assert (redis.min_replicas, redis.wait_ms) == (2, 9000)
    assert redis.socket_timeout_s > 9.0


@pytest.mark.parametrize(
    ("name", "value"),
    [("S2_REDIS_MIN_REPLICAS", "-1"), ("S2_REDIS_MIN_REPLICAS", "one"), ("S2_REDIS_WAIT_MS", "0")],
)
def test_bad_replica_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({**BASE, name: value})
