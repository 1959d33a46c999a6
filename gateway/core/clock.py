"""The gateway's clocks, as plain callables the core's decisions and the adapters take.

Every decision in the core gets its time as an argument (``now_ms``) or as one of these
callables, so a test moves time by passing another function. This module is where the real
clock is read; nothing here sleeps or waits (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["ClockMs", "wall_clock_ms"]

#: a wall clock in epoch milliseconds
ClockMs: TypeAlias = Callable[[], int]


def wall_clock_ms() -> int:
    """Now, in milliseconds since the epoch (the gateway's receive and decision time)."""
    return time.time_ns() // 1_000_000
