"""Files only their owner may read: the data directory, the SQLite databases in it, and
every secret, key, status and broker file the gateway writes (:func:`write_private_file`,
the one writer of such files, so none is ever readable by others, not even for a moment).

The telemetry store and the state database hold every vehicle's positions, accounts,
password hashes and audit entries; they are as secret as the keys next to them. A process
umask decides the mode of a file SQLite creates (0644 under the usual 022), so the
database file is created here first, with mode 0600; SQLite then gives its ``-wal`` and
``-shm`` files the database file's own mode (checked by experiment on SQLite 3.40 and by
``tests/test_file_modes.py``). Files an older version created with looser modes are
tightened when they are opened.

Standard library only; imported by the store, the state database, the broker files, the
token secret, the health reports and the CLI, like :mod:`gateway.errors` (see
docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["private_directory", "private_sqlite_file", "write_private_file"]

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


def write_private_file(
    path: Path,
    data: str | bytes,
    *,
    mode: int = 0o600,
    replace: bool = True,
    fsync: bool = True,
) -> None:
    """Write ``data`` (text as UTF-8) to ``path``, with ``mode`` from the first byte on.

    ``replace=True``: atomically, so a reader (the broker on SIGHUP, a health probe) sees the
    old file or the new one, never a half-written or missing one (a missing password file on
    reload would make Mosquitto disconnect every password client); ``fsync`` makes the file
    and its rename survive a crash. ``replace=False``: create only, ``FileExistsError`` if
    ``path`` exists (a secret generated once: of two processes starting at once, the first
    one's stays). A missing directory is created, mode 0700.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode != 0o600:  # what mkstemp creates
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:  # the rename itself must survive a crash too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
