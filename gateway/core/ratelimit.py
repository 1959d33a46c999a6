"""Token-bucket rate limits, in memory, with an injectable clock.

Used for remote commands (per user and per vehicle) and for password attempts (per client
address). In memory and per API process: limits protect vehicles and the service from a
runaway script, and with N API processes behind a balancer the effective limit is at most
N times the configured one. A limit shared across processes would need a shared store
(Redis or the state database) on the hot path of every command; not worth it for this.

Pure apart from its default clock (``time.monotonic``; pass another to move time), so it
lives in the core (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_INVITATION_LIMIT",
    "DEFAULT_LOGIN_LIMIT",
    "DEFAULT_REFUSAL_AUDIT_LIMIT",
    "DEFAULT_USER_COMMAND_LIMIT",
    "DEFAULT_VEHICLE_COMMAND_LIMIT",
    "Limit",
    "RateLimiter",
    "parse_limit",
]


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` events per second on average, bursts of up to ``burst``."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")

    def __str__(self) -> str:
        per_min = self.rate * 60
        return f"{per_min:g}/min (burst {self.burst})"


#: defaults: a person taps a few remote services a minute; a vehicle needs seconds per
#: command; a person types a password a few times a minute. Here rather than with the API's
#: settings so the command line shows them without importing the API.
DEFAULT_USER_COMMAND_LIMIT: Final = Limit(rate=1.0, burst=30)
DEFAULT_VEHICLE_COMMAND_LIMIT: Final = Limit(rate=0.2, burst=10)
DEFAULT_LOGIN_LIMIT: Final = Limit(rate=10 / 60, burst=10)
#: sharing invitations per user: a family shares a car a few times, not hundreds
DEFAULT_INVITATION_LIMIT: Final = Limit(rate=20 / 3600, burst=10)
#: refused or failed attempts written to the audit log per caller (a user, else a client
#: address): the log is append-only, so each is a row for good (security review 5)
DEFAULT_REFUSAL_AUDIT_LIMIT: Final = Limit(rate=1.0, burst=120)


def parse_limit(text: str) -> Limit | None:
    """``"30/min"``, ``"5/s"``, ``"100/h"``, optionally ``",burst=N"``; ``"off"`` -> None.

    The burst defaults to the count per period capped at 100 (so "30/min" may be used up at
    once, then refills at one per two seconds).
    """
    raw = text.strip().lower()
    if raw in {"off", "none", "0"}:
        return None
    rate_part, _, burst_part = raw.partition(",")
    count_text, sep, period = rate_part.partition("/")
    seconds = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}
    try:
        count = float(count_text)
        if not sep or period.strip() not in seconds or count <= 0:
            raise ValueError
        burst = max(1, min(100, math.ceil(count)))
        if burst_part:
            key, _, value = burst_part.partition("=")
            if key.strip() != "burst":
                raise ValueError
            burst = int(value)
        return Limit(rate=count / seconds[period.strip()], burst=burst)
    except ValueError:
        raise ValueError(
            f"invalid rate limit {text!r}: use COUNT/PERIOD with PERIOD s, min or h, "
            "optionally ',burst=N' (e.g. 30/min or 5/s,burst=10), or 'off'"
        ) from None


class RateLimiter:
    """One token bucket per key; thread-safe. Idle buckets are forgotten."""

    def __init__(self, limit: Limit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (tokens, last refill time)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._last_sweep = clock()

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else seconds until one is free
        (nothing is taken then)."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - last) * self.limit.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.limit.rate
            if now - self._last_sweep > 60.0:
                self._sweep(now)
            return wait

    def peek(self, key: str) -> float:
        """Seconds until ``key`` could take a token (0.0: now), taking nothing."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - last) * self.limit.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.limit.rate

    def refund(self, key: str) -> None:
        """Give back a token taken by :meth:`acquire` for a request that did not happen."""
        with self._lock:
            if key in self._buckets:
                tokens, last = self._buckets[key]
                self._buckets[key] = (min(float(self.limit.burst), tokens + 1.0), last)

    def _sweep(self, now: float) -> None:
        full_after = self.limit.burst / self.limit.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._last_sweep = now
