"""The lifecycle registry's storage under concurrency, on SQLite and PostgreSQL: two
transactions that both find no lifecycle row for a VIN (nothing to lock yet) and both
create it must not end in a database error."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from gateway.statedb import StateDatabase
from gateway.statedb.lifecycle import LifecycleRepository, pairing_code_hash
from gateway.statedb.lifecycle_log import LifecycleRefused

NOW = 1_764_230_400_000


@pytest.fixture
def repo(state_db_url: str) -> Iterator[LifecycleRepository]:
    db = StateDatabase(state_db_url)
    db.upgrade()
    try:
        yield LifecycleRepository(db)
    finally:
        db.dispose()


def race(repo: LifecycleRepository, vin: str) -> list[str]:
    """Two registrations of ``vin`` at once: what each got."""
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def register(code: str) -> None:
        start.wait()
        try:
            repo.register(vin, code_hash=pairing_code_hash(vin, code), by=None, now=NOW)
            outcomes.append("registered")
        except LifecycleRefused as exc:
            outcomes.append(exc.reason)
        except Exception as exc:  # the bug this test is about: a database error
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=register, args=(c,)) for c in ("AAAA", "BBBB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes)


def test_concurrent_registrations_of_one_vin_register_it_once(repo: LifecycleRepository) -> None:
    for round_ in range(8):
        vin = f"WRACE0000000000{round_:02d}"
        assert race(repo, vin) == ["registered", "vehicle_already_registered"]
        assert [e.event for e in repo.history(vin)] == ["register"]
