"""Files only their owner may read: the data directory and the SQLite databases in it.

The telemetry store and the state database hold every vehicle's positions, accounts,
password hashes and audit entries; they are as secret as the keys next to them. A process
umask decides the mode of a file SQLite creates (0644 under the usual 022), so the
database file is created here first, with mode 0600; SQLite then gives its ``-wal`` and
``-shm`` files the database file's own mode (checked by experiment on SQLite 3.40 and by
``tests/test_file_modes.py``). Files an older version created with looser modes are
tightened when they are opened.

Standard library only; imported by the store, the state database and the CLI, like
:mod:`gateway.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["private_directory", "private_sqlite_file"]

log = logging.getLogger(__name__)

_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_directory(path: Path) -> None:
    """Create ``path`` (and its parents) if missing; make ``path`` itself mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_sqlite_file(path: Path) -> None:
    """Make sure the SQLite database at ``path`` and its companions are mode 0600.

    Creates the (empty) database file with mode 0600 if it does not exist, so that SQLite
    creates its WAL and shared-memory files with that mode too; tightens an existing one
    and its companions. The directory is created if missing (0700), an existing one is left
    as it is (it may be shared, say ``/var/lib``).
    """
    if not path.parent.exists():
        private_directory(path.parent)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    for candidate in (path, *(path.with_name(path.name + s) for s in _SQLITE_COMPANIONS)):
        if candidate.is_file():  # not a directory someone passed by mistake: SQLite says so
            _tighten(candidate, 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & ~mode:
        try:
            os.chmod(path, current & mode)
        except OSError as exc:  # not ours (a shared directory): say so, do not fail
            log.warning("%s is mode %o and could not be made %o: %s", path, current, mode, exc)
        else:
            log.info("made %s private (mode %o, was %o)", path, current & mode, current)
