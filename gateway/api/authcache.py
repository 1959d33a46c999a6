"""What authentication reads from the state database, kept for a moment (decision 0035).

Authenticating a request read the state database every time: the user of an access token
by id, an API key and its user by the key's prefix, a dashboard session and its user. At
25 commands a second that was the largest single cost of the event loop. :class:`AuthReads`
keeps each of those reads for at most ``ttl_s`` seconds (1 by default), per process, and
every check made on what was read still runs on every request, exactly as before: the
token's signature and expiry, its version against the user's, the API key's hash, whether
the key is revoked, whether the session has expired, whether the user is disabled.

What a cached read could miss is a change made since, and there are two kinds:

* **made by this process** (a password change, disabling a user, a new role, revoking an
  API key, logging out, through ``AccountRepository``): every such method counts the change
  once its transaction has ended (:func:`~gateway.statedb.accounts.authentication_changes`),
  and a read taken under an older count is not used again. The count is taken *before* the
  read, so a read that raced with the commit is older than the new count and is dropped:
  the change takes effect on the next request, as without the cache;
* **made by another process** (a second API process, ``telematics user set-password``):
  seen once the read is ``ttl_s`` old, so within a second. ``ttl_s = 0`` reads on every
  request (``telematics api --auth-cache-s 0``).

Only found records are kept (an unknown user, key or session is read again each time), at
most ``max_entries`` of them (all are dropped when full: the cache refills in a second).
Keys are the user id, the API key's public prefix and the session token's SHA-256, the
forms the database holds; no secret is kept in memory longer than a request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from gateway.statedb.accounts import (
    AccountRepository,
    ApiKeyRecord,
    UserRecord,
    authentication_changes,
)

__all__ = ["DEFAULT_AUTH_CACHE_S", "AuthReads"]

#: how long a read of authentication may be used for the same caller (seconds)
DEFAULT_AUTH_CACHE_S: Final = 1.0

_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[_V]):
    value: _V
    #: ``authentication_changes()`` before the read
    changes: int
    #: monotonic seconds of the read
    read_at: float


class AuthReads:
    """The reads authentication makes, each kept for ``ttl_s`` seconds unless this process
    changes authentication meanwhile (see the module docstring). Thread-safe."""

    def __init__(
        self,
        accounts: AccountRepository,
        ttl_s: float = DEFAULT_AUTH_CACHE_S,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accounts = accounts
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[Hashable, _Entry[object]] = {}
        self._lock = threading.Lock()
        #: reads made and reads saved, for tests and the decision's figures
        self.reads = 0
        self.hits = 0

    def user(self, user_id: int) -> UserRecord | None:
        """The user an access token names (None: no such user)."""
        return self._read(("user", user_id), lambda: self.accounts.get_user(user_id))

    def api_key(self, prefix: str) -> tuple[ApiKeyRecord, UserRecord] | None:
        """The API key with this public prefix and its user (None: no such key)."""
        return self._read(("api_key", prefix), lambda: self.accounts.api_key_and_user(prefix))

    def web_session(self, token_hash: str) -> tuple[UserRecord, int] | None:
        """The user of a dashboard session that has not been revoked, and when it expires
        (None: unknown or revoked)."""
        return self._read(("session", token_hash), lambda: self.accounts.web_session(token_hash))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _read(self, key: Hashable, read: Callable[[], _V | None]) -> _V | None:
        changes = authentication_changes()  # before the read: see the module docstring
        now = self._clock()
        if self.ttl_s > 0:
            entry = self._entries.get(key)
            if entry is not None and entry.changes == changes and now - entry.read_at < self.ttl_s:
                self.hits += 1
                return entry.value  # type: ignore[return-value]
        self.reads += 1
        value = read()
        if value is not None and self.ttl_s > 0:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[key] = _Entry(value, changes, now)
        return value
