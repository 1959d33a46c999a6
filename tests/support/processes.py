"""Finding and stopping processes a test started (by a string on their command line)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.waiting import wait_until


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, session id, command line) of every process (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            session = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        yield int(entry.name), session, cmdline


def _kill(pids: list[int]) -> bool:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


def kill_processes_mentioning(path: Path) -> bool:
    """Kill every process whose command line mentions ``path`` (a test's own directory: what
    it started there and what outlived it); True if there was any."""
    return _kill([pid for pid, _, cmdline in _processes() if str(path) in cmdline])


@contextlib.contextmanager
def serving(process: subprocess.Popen[bytes], url: str) -> Iterator[None]:
    """Wait until the API ``process`` started answers ``url``/healthz (failing at once if
    it exits), then hand over; terminate it afterwards."""

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            assert process.poll() is None, "the API exited"
            return False

    try:
        wait_until(healthy, timeout=30, what="the API to answer /healthz")
        yield
    finally:
        process.terminate()
        process.wait(30)
