"""The databases are as private as the keys next to them (issue 10, item 11): the telemetry
store and the state database, with their WAL and shared-memory files, mode 0600 whatever
the umask; the data directory 0700. Files of an older version are tightened on open.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.files import private_directory, private_sqlite_file
from gateway.statedb.database import StateDatabase
from gateway.store import open_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most systems run with: without care, files come out 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_telemetry_store_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "telemetry.db"
    store = open_store(path)
    try:
        store.list_vehicles(limit=1)
        files = [path, path.with_name("telemetry.db-wal"), path.with_name("telemetry.db-shm")]
        for file in files:
            assert file.exists(), file
            assert mode(file) == 0o600, file
    finally:
        store.close()
    assert mode(path.parent) == 0o700  # a directory it had to create


def test_the_state_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = StateDatabase(f"sqlite:///{path}")
    try:
        db.upgrade()
        with db.engine.connect() as connection:  # keep it open: WAL and SHM exist now
            connection.exec_driver_sql("SELECT 1")
            for file in (path, path.with_name("state.db-wal"), path.with_name("state.db-shm")):
                assert file.exists(), file
                assert mode(file) == 0o600, file
    finally:
        db.dispose()


def test_files_of_an_older_version_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    open_store(path).close()
    for file in tmp_path.iterdir():
        file.chmod(0o644)
    tmp_path.chmod(0o755)
    store = open_store(path)
    store.close()
    for file in tmp_path.iterdir():
        assert mode(file) == 0o600, file
    private_directory(tmp_path)
    assert mode(tmp_path) == 0o700


def test_a_shared_parent_directory_is_left_alone(tmp_path: Path) -> None:
    """Only a directory the databases needed created is made private: an existing one may
    be shared (say /var/lib); the data directory itself is the CLI's to tighten."""
    tmp_path.chmod(0o755)
    private_sqlite_file(tmp_path / "state.db")
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "state.db") == 0o600
    # a directory where the database file should be: not touched, SQLite will say so
    (tmp_path / "not-a-file.db").mkdir(mode=0o755)
    private_sqlite_file(tmp_path / "not-a-file.db")
    assert mode(tmp_path / "not-a-file.db") == 0o755
