"""Polling until a condition holds, for tests of processes and brokers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest


def wait_until(condition: Callable[[], object], *, timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


def stream_ends_within(lines: Iterator[str], seconds: float) -> bool:
    """Read a live stream's lines until it ends (True) or ``seconds`` pass (False; a
    stream sends keep-alives, so the deadline is seen)."""
    deadline = time.monotonic() + seconds
    return all(time.monotonic() <= deadline for _ in lines)
