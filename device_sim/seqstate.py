"""Each simulated unit's ``seq`` counters, kept in a file as a real unit keeps them in
non-volatile memory (device contract §5.3).

A real telematics unit numbers its samples (and, separately, its events) consecutively over
its whole life, across reboots. Without a state file the simulator starts every run at the
start time in milliseconds, which never reuses a number but makes a restarted fleet show a
gap of every millisecond it was stopped (~330,000 "missing" samples after a 5-minute stop).
With ``--seq-state FILE`` (``telematics up --demo`` gives ``DATA_DIR/simulator/seq-state.json``)
the units continue where they stopped:

- **Block reservation**, the contract's own example: while a fleet runs, the file holds for
  every unit the counters *plus* :data:`RESERVED_BLOCK` (numbers reserved, not yet used), with
  ``"clean": false``. When a unit has used half of its block, the file is written again with
  a new block for every unit (one small durable write: a temporary file, ``fsync``,
  ``rename``, ``fsync`` of the directory). At 1 sample per second that is one write per
  unit every ~50 s.
- **Clean stop** (Ctrl-C, SIGTERM, ``--duration``): the exact next numbers, ``"clean": true``.
  The next run continues with them: no gap at all.
- **Unclean stop** (``kill -9``, a power loss): the file still holds the reservation, so the
  next run continues at the reserved value, above every number the last run can have used.
  The gateway then counts at most :data:`RESERVED_BLOCK` numbers per unit as missing (fewer
  those the unit had sent: the numbers skipped are those between its last sample and the end
  of its block). That is what the contract allows: skip rather than reuse.
- **No entry for a VIN** (first run, or a file from before): the start time in milliseconds,
  as without a file, which is above every number a clock-numbered run used.

Entries of VINs not in this run are kept as they are. The file is JSON::

    {"format": 1, "clean": true,
     "vehicles": {"WSMZZZ00000000001": {"next_seq": 1234, "next_event_seq": 56}}}

Imports: the standard library and ``schemas`` (the simulator never imports ``gateway``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from schemas.credentials import write_atomically

__all__ = ["RESERVED_BLOCK", "Counters", "SeqStateFile"]

#: numbers reserved ahead per unit and per counter (samples, events): the most a unit skips
#: after an unclean stop
RESERVED_BLOCK: Final = 100
_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class Counters:
    """A unit's next sample ``seq`` and next event ``seq``."""

    next_seq: int
    next_event_seq: int


class SeqStateFile:
    """The state file of one simulator run (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stored: dict[str, Counters] = {}
        #: whether the file was written by a clean stop (True for a file that does not exist)
        self.was_clean = True
        self._reserved: dict[str, Counters] = {}
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError(f'"format" is not {_FORMAT}')
            clean = data["clean"]
            vehicles = data["vehicles"]
            if not isinstance(clean, bool) or not isinstance(vehicles, dict):
                raise ValueError('"clean" must be true or false, "vehicles" an object')
            stored = {}
            for vin, entry in vehicles.items():
                seq, event_seq = entry["next_seq"], entry["next_event_seq"]
                if not all(type(n) is int and n >= 0 for n in (seq, event_seq)):
                    raise ValueError(f"{vin}: the counters must be integers >= 0")
                stored[str(vin)] = Counters(seq, event_seq)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{self.path}: not a simulator seq state file ({exc}); move it away to start "
                "the units' counters afresh"
            ) from None
        self._stored = stored
        self.was_clean = clean

    def start(self, vin: str, default: int) -> Counters:
        """Where ``vin``'s counters start: the stored ones (after a clean stop the exact
        next numbers, after an unclean one the end of the reserved block), else ``default``
        for both."""
        return self._stored.get(vin, Counters(default, default))

    def reserve(self, current: Mapping[str, Counters]) -> None:
        """Write ``current`` + :data:`RESERVED_BLOCK` for every unit, durably, before the
        units use those numbers."""
        self._reserved = {
            vin: Counters(c.next_seq + RESERVED_BLOCK, c.next_event_seq + RESERVED_BLOCK)
            for vin, c in current.items()
        }
        self._write(self._reserved, clean=False)

    def needs_renewal(self, current: Mapping[str, Counters]) -> bool:
        """Whether a unit has used half of its reserved block (or more)."""
        half = RESERVED_BLOCK // 2
        for vin, c in current.items():
            r = self._reserved.get(vin)
            if (
                r is None
                or c.next_seq > r.next_seq - half
                or c.next_event_seq > r.next_event_seq - half
            ):
                return True
        return False

    def close(self, current: Mapping[str, Counters]) -> None:
        """Write the exact next numbers after a clean stop."""
        self._write(dict(current), clean=True)

    def _write(self, counters: Mapping[str, Counters], *, clean: bool) -> None:
        self._stored.update(counters)
        data = {
            "format": _FORMAT,
            "clean": clean,
            "vehicles": {
                vin: {"next_seq": c.next_seq, "next_event_seq": c.next_event_seq}
                for vin, c in sorted(self._stored.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(data, separators=(",", ":")).encode())
