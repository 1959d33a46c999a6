"""The login lock-out rule: how long a client address waits after wrong passwords.

Wrong passwords are counted per (user, client address) in the state database; after
``lockout_after`` of them in a row, that address waits 1 s, then 2 s, 4 s, ... up to
``max_lockout_s`` before its next attempt for that user (other addresses are not held up,
so whoever knows the address cannot lock the owner out). :func:`lockout_ms` is the rule;
the API's login route asks it when it records a failure.

Pure (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

__all__ = ["lockout_ms"]


def lockout_ms(failures: int, *, lockout_after: int, max_lockout_s: int) -> int | None:
    """How long (ms) an address waits after ``failures`` wrong passwords in a row for a
    user: nothing (None) before ``lockout_after``, then 1 s, 2 s, 4 s, ... up to
    ``max_lockout_s``."""
    if failures < lockout_after:
        return None
    return int(min(2 ** (failures - lockout_after), max_lockout_s)) * 1000
