"""Per-client abuse limits on the client API: request rate, concurrent streams, failed logins.

Keys are an authenticated identity's address (its requests and streams) or, before anyone is
authenticated, the caller's host (its failed authentications: each costs the node a signature
check, so a stranger who sends bad tokens is cut off before it costs much CPU). Exceeding a limit
answers RESOURCE_EXHAUSTED with a reason (RATE_LIMITED, TOO_MANY_STREAMS, AUTH_FAILURES).

Memory is bounded: at most max_tracked keys are remembered per table; beyond, idle ones (full
buckets, no open stream) are forgotten first, then the oldest. Forgetting a bucket can only let a
client through sooner, never lock one out, and with a full table of busy keys the node is being
flooded by that many distinct identities, each still rate-limited.

Time comes from the caller (monotonic seconds), so tests drive it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.errors import ApiError

MAX_TRACKED: Final = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per key: rate tokens a second, at most burst."""

    def __init__(self, rate: float, burst: float, max_tracked: int = MAX_TRACKED) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_tracked
        self._buckets: dict[object, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, key: object, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._max:
                self._evict(now)
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        return b

    def take(self, key: object, now: float) -> bool:
        """Spend one token of key's bucket; False if it has none."""
        b = self._refill(key, now)
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def has(self, key: object, now: float) -> bool:
        """Whether key has a token left (without spending it)."""
        b = self._buckets.get(key)
        return b is None or min(self.burst, b.tokens + (now - b.at) * self.rate) >= 1

    def _evict(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) >= self._max:  # all busy: the oldest go
            del self._buckets[next(iter(self._buckets))]


class ClientLimits:
    def __init__(
        self,
        *,
        requests_per_s: float,
        burst: int,
        max_streams: int,
        auth_failures_per_s: float,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.max_streams = max_streams
        self._requests = TokenBuckets(requests_per_s, burst, max_tracked)
        self._failures = TokenBuckets(auth_failures_per_s, max(1.0, 2 * auth_failures_per_s), max_tracked)
        self._streams: dict[bytes, int] = {}

    def tracked(self) -> int:
        """Keys remembered over all tables (for tests of the memory bound)."""
        return len(self._requests) + len(self._failures) + len(self._streams)

    def check_host(self, host: str, now: float) -> None:
        """Refuse a host that has used up its failed authentications."""
        if not self._failures.has(host, now):
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                "AUTH_FAILURES",
                f"too many failed authentications from this host (at most {self._failures.rate:g}/s); retry later",
            )

    def auth_failed(self, host: str, now: float) -> None:
        self._failures.take(host, now)

    def request(self, address: bytes, now: float) -> None:
        if not self._requests.take(address, now):
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                "RATE_LIMITED",
                f"more than {self._requests.rate:g} requests/s (burst {self._requests.burst:g}) from this "
                "identity; slow down",
            )

    def open_stream(self, address: bytes) -> None:
        n = self._streams.get(address, 0)
        if n >= self.max_streams:
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                "TOO_MANY_STREAMS",
                f"this identity has {n} streams open, the most a client may; close one first",
            )
        self._streams[address] = n + 1

    def close_stream(self, address: bytes) -> None:
        n = self._streams.get(address, 0) - 1
        if n > 0:
            self._streams[address] = n
        else:
            self._streams.pop(address, None)
