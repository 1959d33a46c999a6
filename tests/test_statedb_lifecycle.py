"""The lifecycle registry's storage under concurrency, on SQLite and PostgreSQL: two
transactions that both find no lifecycle row for a VIN (nothing to lock yet) and both
create it must not end in a database error."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from gateway.statedb import AccountRepository, StateDatabase
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


def _waiting(url: str, count: int, deadline_s: float = 10.0) -> None:
    """Until ``count`` other sessions of the database wait for a lock."""
    end = time.monotonic() + deadline_s
    with psycopg.connect(url, autocommit=True) as probe:
        while time.monotonic() < end:
            waiting = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0] >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"{count} sessions never waited for a lock")


def test_an_offer_and_an_accept_at_once_do_not_deadlock(
    repo: LifecycleRepository, state_db_url: str
) -> None:
    """Security review 2 (decision 0023): accepting locked the transfer, then the VIN's
    lifecycle and vehicle rows; offering locked lifecycle and vehicle, then the transfers:
    opposite orders, a deadlock on PostgreSQL (one of them failed with a database error).
    A third session holds the vehicle row so both are inside their transactions at once:
    the offer holding the lifecycle row, the accept starting."""
    if not state_db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions: no two hold locks at once")
    db = StateDatabase(state_db_url)
    try:
        accounts = AccountRepository(db)
        seller = accounts.create_account("private", "seller", now=NOW).id
        buyer = accounts.create_account("private", "buyer", now=NOW).id
        vin = "WDEAD000000000001"
        accounts.provision_vehicle(
            vin=vin, account_id=seller, label=None, mqtt_password_hash=None,
            provisioned_by=None, now=NOW,
        )  # fmt: skip
        first = repo.offer_transfer(
            vin, to_email="b@example.com", note=None, by=None, now=NOW, expires_at=NOW + 10**6
        )
        outcomes: dict[str, str] = {}

        def run(name: str, call: Callable[[], object]) -> None:
            try:
                call()
                outcomes[name] = "ok"
            except Exception as exc:
                outcomes[name] = type(exc).__name__

        offer = functools.partial(
            repo.offer_transfer, vin, to_email="c@example.com", note=None, by=None,
            now=NOW + 1, expires_at=NOW + 10**6,
        )  # fmt: skip
        accept = functools.partial(
            repo.accept_transfer, first.id, account_id=buyer, label=None,
            mqtt_password_hash=None, by=None, now=NOW + 2,
        )  # fmt: skip
        url = state_db_url
        with psycopg.connect(url) as holder:
            holder.execute("SELECT vin FROM vehicles WHERE vin = %s FOR UPDATE", (vin,))
            offering = threading.Thread(target=run, args=("offer", offer))
            offering.start()
            _waiting(url, 1)  # the offer holds the lifecycle row, waits for the vehicle
            accepting = threading.Thread(target=run, args=("accept", accept))
            accepting.start()
            _waiting(url, 2)  # the accept waits too (before: holding the transfer row)
            holder.rollback()
        offering.join(30)
        accepting.join(30)
        # no database error: the offer withdrew the first offer, whose accept is refused
        assert outcomes == {"offer": "ok", "accept": "TransferClosed"}, outcomes
    finally:
        db.dispose()
