"""Stream ownership: one consumer at a time per input stream, handed over on death or shutdown.

A stream's entries must be applied in order on one state, so two consumers of the group must never
read the same stream at once: they would split its entries and each compute from half of them.
Ownership is a lease, `feat:{cache}:<symbol>:owner`, holding `<random>@<consumer>` with a TTL:

- `acquire` takes it when it is free, when it holds a token of this very consumer name (the
  earlier incarnation of this process: a crash followed by a restart under the same name need
  not wait), or not at all while another consumer's token is alive;
- `renew` extends it only if it is still ours, and `release` deletes it only if it is ours
  (SIGTERM: the next owner takes over at once instead of after the TTL);
- `fenced_set` writes a key (the checkpoint) only while the lease is ours, in one script, so a
  consumer that stalled past its TTL and was replaced cannot overwrite its successor's state.

So a consumer that dies is replaced at most one TTL later (`S2_CLAIM_IDLE_MS`). The lease and the
checkpoint share the `{cache}` hash tag, which keeps the fenced write on one cluster slot.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Final

import redis

from s2feature.errors import S2FeatureError
from s2feature.streams.client import AnyRedis
from s2feature.streams.keys import lease_key

_ACQUIRE: Final = """
local holder = redis.call('GET', KEYS[1])
local at = holder and string.find(holder, '@', 1, true)
if holder == false or holder == ARGV[1] or (at and string.sub(holder, at + 1) == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_FENCED_SET: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


class LeaseLost(S2FeatureError):  # noqa: N818 - a state, not a failure of the call
    """Another consumer owns the stream now: this one must stop applying its entries."""


class StreamLease:
    """The ownership lease of one symbol's input stream, for one consumer."""

    def __init__(self, client: AnyRedis, symbol: str, consumer: str, ttl_ms: int) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        self.key = lease_key(symbol)
        self.ttl_ms = ttl_ms
        # A random part, then the consumer name: a restart under the same name is recognised,
        # while two processes can still tell their tokens apart.
        self.consumer = consumer
        self.token = f"{secrets.token_hex(8)}@{consumer}"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._fenced_set = client.register_script(_FENCED_SET)
        self._client = client

    def acquire(self) -> bool:
        """Take the lease if it is free, ours, or left by an incarnation of this consumer."""
        return self._call(self._acquire, [self.key], [self.token, self.ttl_ms, self.consumer])

    def renew(self) -> bool:
        """Extend the lease by a TTL; False when it is no longer ours (expired or taken)."""
        return self._call(self._renew, [self.key], [self.token, self.ttl_ms])

    def release(self) -> bool:
        return self._call(self._release, [self.key], [self.token])

    def fenced_set(self, key: str, value: str | bytes) -> None:
        """SET `key` (same hash tag as the lease) only while the lease is ours, else raise
        `LeaseLost` without writing."""
        if not self._call(self._fenced_set, [self.key, key], [self.token, value]):
            raise LeaseLost(f"{self.key} is no longer held by {self.consumer}")

    def holder(self) -> str | None:
        raw: Any = self._client.get(self.key)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    @staticmethod
    def _call(script: Any, keys: list[str], args: list[Any]) -> bool:
        return bool(script(keys=keys, args=args))


def renew_all(leases: Sequence[StreamLease]) -> list[bool]:
    """`renew` of several leases of one client, in order: one pipeline on a standalone server
    (a hundred leases renewed one round trip after the other held the loop for hundreds of
    milliseconds on a loaded machine), one call after the other on a cluster."""
    if len(leases) < 2 or not isinstance(leases[0]._client, redis.Redis):
        return [lease.renew() for lease in leases]
    pipe = leases[0]._client.pipeline(transaction=False)
    for lease in leases:
        lease._renew(keys=[lease.key], args=[lease.token, lease.ttl_ms], client=pipe)
    return [bool(kept) for kept in pipe.execute()]
