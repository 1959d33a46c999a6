"""Where a command's time goes, and how late the event loop runs: a trace file for the
benchmarks (``TELEMATICS_TRACE_FILE``, off by default).

Two kinds of line, tab-separated, each starting with the wall clock in milliseconds:

* ``AT_MS  stage  COMMAND_ID  DETAIL``: a command reached a stage this process alone sees
  (its MQTT result arrived, before it waited for the in-order lock and the state
  database; DETAIL is the result's status and the unit's own timestamp);
* ``AT_MS  lag  -  LAG_MS``: the event loop's oversleep of one ``asyncio.sleep(0.05)``:
  how long a ready task waited for the loop (every other task's turn, a blocking call, a
  lock, the GIL, the CPU).

The command stages the state database records anyway (queued, sent, accepted, succeeded,
with the unit's clock of ``accepted``) are read from there; this file adds only what it
does not hold. Lines are buffered and written by the lag probe every half second, so
tracing costs no write per command on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TextIO

__all__ = ["PROBE_INTERVAL_S", "Trace", "read_trace"]

log = logging.getLogger(__name__)

#: the lag probe's sleep; its oversleep is the lag
PROBE_INTERVAL_S = 0.05
_FLUSH_EVERY_S = 0.5


def _now_ms() -> float:
    return time.time_ns() / 1_000_000


class Trace:
    """A trace file (see the module docstring); with ``path`` None every call is a no-op."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lines: list[str] = []
        self._file: TextIO | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def mark(self, command_id: str, stage: str, detail: str = "") -> None:
        if self.path is not None:
            self._lines.append(f"{_now_ms():.1f}\t{stage}\t{command_id}\t{detail}\n")

    def start(self) -> None:
        """Open the file (appending) and start the lag probe on the running loop."""
        if self.path is None or self._probe is not None:
            return
        self._file = self.path.open("a", encoding="utf-8")
        self._probe = asyncio.get_running_loop().create_task(self._run_probe())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    async def _run_probe(self) -> None:
        last_flush = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL_S)
            after = time.monotonic()
            lag_ms = max(0.0, (after - before - PROBE_INTERVAL_S) * 1000)
            self._lines.append(f"{_now_ms():.1f}\tlag\t-\t{lag_ms:.1f}\n")
            if after - last_flush >= _FLUSH_EVERY_S:
                last_flush = after
                self._flush()

    def _flush(self) -> None:
        if self._file is None or not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self._file.writelines(lines)
            self._file.flush()
        except OSError as exc:  # a full disk must not stop the API
            log.warning("cannot write the trace file %s: %s", self.path, exc)


def read_trace(path: Path) -> list[tuple[float, str, str, str]]:
    """The lines of a trace file: (at_ms, stage, key, detail); a torn last line is skipped."""
    rows: list[tuple[float, str, str, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        try:
            rows.append((float(parts[0]), parts[1], parts[2], parts[3]))
        except ValueError:
            continue
    return rows
