"""Accounts and access in the state database (gateway.statedb.accounts and .audit), and
migration 0002, each on SQLite and on PostgreSQL (the ``state_db_url`` fixture, conftest.py).

The clock is the tests': every time is an explicit epoch-millisecond ``now``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from gateway.errors import GatewayError
from gateway.statedb import (
    AccountRecord,
    AccountRepository,
    AuditLog,
    Conflict,
    DuplicateApiKeyPrefix,
    DuplicateEmail,
    LoginThrottle,
    NotFound,
    StateDatabase,
    UserRecord,
    VehicleAlreadyProvisioned,
    VehicleRecord,
    VehicleRevoked,
)
from gateway.statedb.database import alembic_config

NOW = 1_764_230_400_000
VIN = "WVWZZZ1JZXW000001"
VIN2 = "WVWZZZ1JZXW000002"
VIN3 = "WVWZZZ1JZXW000003"
NEW_TABLES = {
    "accounts",
    "users",
    "vehicles",
    "vehicle_grants",
    "api_keys",
    "refresh_tokens",
    "audit_log",
    "broker_auth_state",
}
T = TypeVar("T")


@pytest.fixture
def db(state_db_url: str) -> Iterator[StateDatabase]:
    database = StateDatabase(state_db_url)
    database.upgrade()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def repo(db: StateDatabase) -> AccountRepository:
    return AccountRepository(db)


@pytest.fixture
def audit(db: StateDatabase) -> AuditLog:
    return AuditLog(db)


@pytest.fixture
def org(repo: AccountRepository) -> AccountRecord:
    return repo.create_account("organization", "ACME Logistics", now=NOW)


def make_user(
    repo: AccountRepository,
    email: str,
    *,
    account_id: int | None,
    role: str = "driver",
    now: int = NOW,
) -> UserRecord:
    return repo.create_user(
        email=email,
        name=email.split("@")[0],
        password_hash=f"$argon2id$hash-of-{email}",
        role=role,
        account_id=account_id,
        now=now,
    )


def provision(repo: AccountRepository, vin: str, account_id: int, *, now: int = NOW) -> Any:
    return repo.provision_vehicle(
        vin=vin,
        account_id=account_id,
        label=f"car {vin[-1]}",
        mqtt_password_hash=f"$7$hash-{vin}",
        provisioned_by=None,
        now=now,
    )


def race(workers: int, action: Callable[[], T]) -> list[T | BaseException]:
    """Run ``action`` in ``workers`` threads released at once; results or exceptions."""
    return race_all(*[action] * workers)


def race_all(*actions: Callable[[], T]) -> list[T | BaseException]:
    """Run each action in a thread of its own, released at once; results or exceptions."""
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], T]) -> T | BaseException:
        barrier.wait()
        try:
            return action()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(run, actions))


def triggers(db: StateDatabase) -> set[str]:
    query = (
        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        if db.backend == "sqlite"
        else "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    )
    with db.engine.connect() as connection:
        return set(connection.execute(text(query)).scalars())


# --- migration 0002 -------------------------------------------------------------------------


def test_upgrade_creates_the_tables_the_triggers_and_the_broker_state(db: StateDatabase) -> None:
    assert db.current_revision() == StateDatabase.head_revision() == "0018_fleet_write_behind"
    assert set(inspect(db.engine).get_table_names()) >= NEW_TABLES | {"commands"}
    expected = {"audit_log_no_update", "audit_log_no_delete"}
    if db.backend == "postgresql":
        expected.add("audit_log_no_truncate")
    assert triggers(db) == expected
    assert AccountRepository(db).broker_version() == 0


def test_0002_downgrades_to_0001_and_upgrades_again(db: StateDatabase) -> None:
    repo = AccountRepository(db)
    org = repo.create_account("private", "Alice", now=NOW)
    provision(repo, VIN, org.id)
    AuditLog(db).append(at=NOW, actor="system", action="vehicle_provision", target=VIN)

    with db.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")

    assert db.current_revision() == "0001"
    tables = set(inspect(db.engine).get_table_names())
    assert not tables & NEW_TABLES
    assert "commands" in tables
    assert triggers(db) == set()
    if db.backend == "postgresql":
        with db.engine.connect() as connection:
            assert (
                connection.scalar(
                    text("SELECT count(*) FROM pg_proc WHERE proname = 'audit_log_append_only'")
                )
                == 0
            )

    db.upgrade()

    assert db.current_revision() == StateDatabase.head_revision()
    assert repo.list_accounts() == []
    assert repo.broker_version() == 0
    AuditLog(db).append(at=NOW, actor="system", action="again")
    with pytest.raises(IntegrityError, match="append-only"), db.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log"))


# --- accounts -------------------------------------------------------------------------------


def test_accounts(repo: AccountRepository) -> None:
    org = repo.create_account("organization", "ACME", now=NOW)
    private = repo.create_account("private", "Bob", now=NOW + 1)

    assert (org.kind, org.name, org.created_at) == ("organization", "ACME", NOW)
    assert repo.get_account(org.id) == org
    assert repo.get_account(private.id + 100) is None
    assert repo.list_accounts() == [org, private]


# --- users ----------------------------------------------------------------------------------


def test_create_user_keeps_the_email_lower_case_and_finds_it_in_any_case(
    repo: AccountRepository, org: AccountRecord
) -> None:
    user = make_user(repo, "  Alice.Smith@Example.COM ", account_id=org.id, role="fleet_manager")

    assert user.email == "alice.smith@example.com"
    assert (user.role, user.account_id, user.created_at) == ("fleet_manager", org.id, NOW)
    assert (user.disabled_at, user.token_version) == (None, 0)
    assert repo.get_user(user.id) == user
    assert repo.get_user_by_email("ALICE.smith@example.com ") == user
    assert repo.get_user_by_email("bob@example.com") is None
    assert repo.get_user(user.id + 100) is None
    assert "argon2" not in repr(user)
    assert user.password_hash == "$argon2id$hash-of-  Alice.Smith@Example.COM "


def test_a_duplicate_email_is_refused_in_any_case(
    repo: AccountRepository, org: AccountRecord
) -> None:
    make_user(repo, "alice@example.com", account_id=org.id)

    with pytest.raises(DuplicateEmail, match=r"alice@example\.com") as caught:
        make_user(repo, "ALICE@Example.com", account_id=None, role="admin")
    assert isinstance(caught.value, Conflict)
    assert isinstance(caught.value, GatewayError)
    with pytest.raises(NotFound, match="no account with id 999"):
        make_user(repo, "bob@example.com", account_id=999)
    with pytest.raises(ValueError, match="e-mail"):
        make_user(repo, "   ", account_id=org.id)
    assert [user.email for user in repo.list_users()] == ["alice@example.com"]


def test_concurrent_sign_ups_with_one_email_make_one_user(
    repo: AccountRepository, org: AccountRecord
) -> None:
    outcomes = race(4, lambda: make_user(repo, "Racer@Example.com", account_id=org.id))

    assert sum(isinstance(outcome, UserRecord) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, DuplicateEmail) for outcome in outcomes) == 3
    assert repo.count_users() == 1


def test_list_and_count_users(repo: AccountRepository, org: AccountRecord) -> None:
    other = repo.create_account("private", "Bob", now=NOW)
    admin = make_user(repo, "root@example.com", account_id=None, role="admin")
    manager = make_user(repo, "m@example.com", account_id=org.id, role="fleet_manager")
    driver = make_user(repo, "d@example.com", account_id=org.id)
    owner = make_user(repo, "bob@example.com", account_id=other.id, role="owner")

    assert repo.list_users() == [admin, manager, driver, owner]
    assert repo.list_users(account_id=org.id) == [manager, driver]
    assert repo.list_users(account_id=other.id + 100) == []
    assert repo.count_users() == 4
    assert repo.count_users(role="admin") == 1
    assert repo.count_users(role="fleet_viewer") == 0


def test_update_user_changes_only_the_fields_given(
    repo: AccountRepository, org: AccountRecord
) -> None:
    user = make_user(repo, "alice@example.com", account_id=org.id)

    renamed = repo.update_user(user.id, name="Alice S.")
    assert renamed is not None
    assert (renamed.name, renamed.role, renamed.password_hash) == (
        "Alice S.",
        "driver",
        user.password_hash,
    )

    disabled = repo.update_user(user.id, role="fleet_viewer", disabled_at=NOW + 5)
    assert disabled is not None
    assert (disabled.role, disabled.disabled_at, disabled.disabled) == (
        "fleet_viewer",
        NOW + 5,
        True,
    )
    assert repo.update_user(user.id, password_hash="$argon2id$new") == repo.get_user(user.id)
    assert repo.get_user(user.id).disabled_at == NOW + 5  # type: ignore[union-attr]

    enabled = repo.update_user(user.id, disabled_at=None)
    assert enabled is not None
    assert (enabled.disabled_at, enabled.password_hash, enabled.name) == (
        None,
        "$argon2id$new",
        "Alice S.",
    )
    assert repo.update_user(user.id + 100, name="nobody") is None


def test_login_failures_count_up_atomically_per_address_and_a_success_resets_them(
    repo: AccountRepository, org: AccountRecord
) -> None:
    user = make_user(repo, "alice@example.com", account_id=org.id)

    def lockout(failures: int) -> int | None:
        return None if failures < 5 else 60_000

    first = repo.record_login_failure(user.id, "10.0.0.1", now=NOW, lockout_ms=lockout)
    assert (first.failures, first.locked_until) == (1, None)
    outcomes = race(
        6, lambda: repo.record_login_failure(user.id, "10.0.0.1", now=NOW, lockout_ms=lockout)
    )
    assert not [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert repo.login_throttle(user.id, "10.0.0.1") == LoginThrottle(7, NOW + 60_000)
    # another address is counted apart: its owner is not locked out by the first one
    assert repo.login_throttle(user.id, "10.0.0.2") is None
    other = repo.record_login_failure(user.id, "10.0.0.2", now=NOW, lockout_ms=lockout)
    assert (other.failures, other.locked_until) == (1, None)

    repo.record_login_success(user.id, "10.0.0.1")
    assert repo.login_throttle(user.id, "10.0.0.1") is None
    assert repo.login_throttle(user.id, "10.0.0.2") == LoginThrottle(1, None)
    repo.record_login_success(user.id, "10.0.0.1")  # nothing to reset: fine
    repo.record_login_success(user.id + 100, "10.0.0.1")  # unknown: a no-op
    with pytest.raises(NotFound, match="no user"):
        repo.record_login_failure(user.id + 100, "10.0.0.1", now=NOW, lockout_ms=lockout)


# --- vehicles -------------------------------------------------------------------------------


def test_provisioning_bumps_the_broker_version(repo: AccountRepository, org: AccountRecord) -> None:
    manager = make_user(repo, "m@example.com", account_id=org.id, role="fleet_manager")
    other = repo.create_account("private", "Bob", now=NOW)

    second = provision(repo, VIN2, org.id)
    assert repo.broker_version() == 1
    first = repo.provision_vehicle(
        vin=VIN,
        account_id=org.id,
        label=None,
        mqtt_password_hash=None,  # client certificate only
        provisioned_by=manager.id,
        now=NOW + 1,
    )
    third = provision(repo, VIN3, other.id)

    assert repo.broker_version() == 3
    assert (first.account_id, first.label, first.provisioned_by, first.provisioned_at) == (
        org.id,
        None,
        manager.id,
        NOW + 1,
    )
    assert first.active
    assert "$7$" not in repr(second)
    assert repo.get_vehicle(VIN) == first
    assert repo.get_vehicle("WVWZZZ1JZXW000009") is None
    assert repo.list_vehicles() == [first, second, third]
    assert repo.list_vehicles(account_id=org.id) == [first, second]
    assert repo.broker_identities() == [
        (VIN, None),
        (VIN2, f"$7$hash-{VIN2}"),
        (VIN3, f"$7$hash-{VIN3}"),
    ]
    assert repo.active_vins() == {VIN, VIN2, VIN3}


def test_provisioning_an_active_vin_again_is_refused(
    repo: AccountRepository, org: AccountRecord
) -> None:
    original = provision(repo, VIN, org.id)
    other = repo.create_account("private", "Bob", now=NOW)

    with pytest.raises(VehicleAlreadyProvisioned, match=VIN) as caught:
        provision(repo, VIN, other.id, now=NOW + 1)
    assert caught.value.account_id == org.id
    with pytest.raises(NotFound, match="account"):
        provision(repo, VIN2, 999)
    with pytest.raises(NotFound, match="user"):
        repo.provision_vehicle(
            vin=VIN2,
            account_id=org.id,
            label=None,
            mqtt_password_hash=None,
            provisioned_by=999,
            now=NOW,
        )
    assert repo.get_vehicle(VIN) == original
    assert repo.list_vehicles() == [original]
    assert repo.broker_version() == 1


def test_provisioning_in_bulk_is_all_or_nothing(
    repo: AccountRepository, org: AccountRecord
) -> None:
    """One transaction for many VINs (one change for the broker's sync to apply); a VIN
    refused refuses all of them."""
    made = repo.provision_vehicles(
        [VIN, VIN2],
        account_id=org.id,
        label=None,
        mqtt_password_hash="$7$hash-bulk",
        provisioned_by=None,
        now=NOW,
    )
    assert [v.vin for v in made] == [VIN, VIN2]
    assert all(v.active and v.account_id == org.id for v in made)
    assert repo.broker_identities() == [(VIN, "$7$hash-bulk"), (VIN2, "$7$hash-bulk")]
    version = repo.broker_version()
    with pytest.raises(VehicleAlreadyProvisioned, match=VIN2):
        repo.provision_vehicles(
            [VIN3, VIN2],
            account_id=org.id,
            label=None,
            mqtt_password_hash=None,
            provisioned_by=None,
            now=NOW + 1,
        )
    assert repo.get_vehicle(VIN3) is None  # not half done
    assert repo.broker_version() == version


def test_concurrent_provisioning_of_a_new_vin_makes_one_vehicle(
    repo: AccountRepository, org: AccountRecord
) -> None:
    outcomes = race(4, lambda: provision(repo, VIN, org.id))

    assert sum(isinstance(outcome, VehicleAlreadyProvisioned) for outcome in outcomes) == 3
    (made,) = [outcome for outcome in outcomes if isinstance(outcome, VehicleRecord)]
    assert repo.list_vehicles() == [made]
    assert repo.broker_version() == 1


def test_revoking_a_vehicle_revokes_its_grants_and_it_can_be_provisioned_again(
    repo: AccountRepository, org: AccountRecord
) -> None:
    provision(repo, VIN, org.id)
    provision(repo, VIN2, org.id)
    driver = make_user(repo, "d@example.com", account_id=org.id)
    grant = repo.create_grant(
        vin=VIN, user_id=driver.id, services=["lock"], granted_by=None, now=NOW
    )
    other_grant = repo.create_grant(
        vin=VIN2, user_id=driver.id, services=["lock"], granted_by=None, now=NOW
    )

    revoked = repo.revoke_vehicle(VIN, now=NOW + 10)

    assert revoked is not None
    assert (revoked.revoked_at, revoked.active) == (NOW + 10, False)
    assert repo.broker_version() == 3
    assert repo.get_grant(grant.id).revoked_at == NOW + 10  # type: ignore[union-attr]
    assert repo.get_grant(other_grant.id) == other_grant
    assert repo.active_vins() == {VIN2}
    assert [vin for vin, _ in repo.broker_identities()] == [VIN2]
    assert [v.vin for v in repo.list_vehicles()] == [VIN2]
    assert [v.vin for v in repo.list_vehicles(include_revoked=True)] == [VIN, VIN2]
    # revoking again changes nothing; an unknown VIN is None
    assert repo.revoke_vehicle(VIN, now=NOW + 20) == revoked
    assert repo.broker_version() == 3
    assert repo.revoke_vehicle("WVWZZZ1JZXW000009", now=NOW) is None

    # sold: provisioned again in place, for another account; the old grant stays revoked
    buyer = repo.create_account("private", "Bob", now=NOW)
    again = repo.provision_vehicle(
        vin=VIN,
        account_id=buyer.id,
        label="Bob's car",
        mqtt_password_hash="$7$new",
        provisioned_by=None,
        now=NOW + 30,
    )
    assert (again.account_id, again.label, again.provisioned_at, again.revoked_at) == (
        buyer.id,
        "Bob's car",
        NOW + 30,
        None,
    )
    assert again.mqtt_password_hash == "$7$new"
    assert repo.broker_version() == 4
    assert repo.list_grants(vin=VIN) == []
    assert repo.get_grant(grant.id).revoked_at == NOW + 10  # type: ignore[union-attr]
    assert repo.active_vins() == {VIN, VIN2}


def test_set_mqtt_password_rotates_and_bumps_the_version(
    repo: AccountRepository, org: AccountRecord
) -> None:
    provision(repo, VIN, org.id)

    rotated = repo.set_mqtt_password(VIN, "$7$rotated")

    assert rotated is not None
    assert rotated.mqtt_password_hash == "$7$rotated"
    assert repo.broker_identities() == [(VIN, "$7$rotated")]
    assert repo.broker_version() == 2
    assert repo.set_mqtt_password("WVWZZZ1JZXW000009", "$7$x") is None
    repo.revoke_vehicle(VIN, now=NOW + 2)
    with pytest.raises(VehicleRevoked, match="revoked"):
        repo.set_mqtt_password(VIN, "$7$again")
    assert repo.broker_version() == 3


# --- access ---------------------------------------------------------------------------------


def test_visible_vins_are_the_accounts_vehicles_plus_granted_ones(
    repo: AccountRepository, org: AccountRecord
) -> None:
    family = repo.create_account("private", "Bob", now=NOW)
    provision(repo, VIN, org.id)
    provision(repo, VIN2, org.id)
    provision(repo, VIN3, family.id)
    driver = make_user(repo, "d@example.com", account_id=org.id)
    repo.create_grant(vin=VIN3, user_id=driver.id, services=["read"], granted_by=None, now=NOW)
    revoked = repo.create_grant(
        vin=VIN, user_id=driver.id, services=["read"], granted_by=None, now=NOW
    )
    repo.revoke_grant(revoked.id, now=NOW + 1)

    assert repo.visible_vins(account_id=org.id, user_id=driver.id, include_account=True) == {
        VIN: 1,
        VIN2: 1,
        VIN3: 1,
    }
    assert repo.visible_vins(account_id=org.id, user_id=driver.id, include_account=False) == {
        VIN3: 1
    }
    assert repo.visible_vins(account_id=None, user_id=driver.id + 100, include_account=True) == {}
    # a grant without 'read' lets its holder command the vehicle, not read it
    repo.create_grant(vin=VIN3, user_id=driver.id, services=["lock"], granted_by=None, now=NOW)
    assert repo.visible_vins(account_id=org.id, user_id=driver.id, include_account=False) == {}

    repo.revoke_vehicle(VIN2, now=NOW + 2)
    repo.revoke_vehicle(VIN3, now=NOW + 2)
    assert repo.visible_vins(account_id=org.id, user_id=driver.id, include_account=True) == {VIN: 1}
    # VIN2 provisioned again: the account sees it in its second holding period
    provision(repo, VIN2, org.id, now=NOW + 3)
    assert repo.visible_vins(account_id=org.id, user_id=driver.id, include_account=True) == {
        VIN: 1,
        VIN2: 2,
    }


def test_vehicle_access_returns_the_vehicle_and_the_users_active_grant(
    repo: AccountRepository, org: AccountRecord
) -> None:
    vehicle = provision(repo, VIN, org.id)
    driver = make_user(repo, "d@example.com", account_id=org.id)
    stranger = make_user(repo, "s@example.com", account_id=None, role="admin")
    grant = repo.create_grant(
        vin=VIN, user_id=driver.id, services=["lock", "unlock"], granted_by=None, now=NOW
    )

    assert repo.vehicle_access(VIN, driver.id) == (vehicle, grant)
    assert repo.vehicle_access(VIN, stranger.id) == (vehicle, None)
    assert repo.vehicle_access("WVWZZZ1JZXW000009", driver.id) == (None, None)

    repo.revoke_vehicle(VIN, now=NOW + 1)
    revoked_vehicle, no_grant = repo.vehicle_access(VIN, driver.id)
    assert revoked_vehicle is not None
    assert (revoked_vehicle.active, no_grant) == (False, None)


# --- grants ---------------------------------------------------------------------------------


def test_a_new_grant_replaces_the_active_one(repo: AccountRepository, org: AccountRecord) -> None:
    provision(repo, VIN, org.id)
    provision(repo, VIN2, org.id)
    manager = make_user(repo, "m@example.com", account_id=org.id, role="fleet_manager")
    driver = make_user(repo, "d@example.com", account_id=org.id)

    first = repo.create_grant(
        vin=VIN, user_id=driver.id, services=("lock",), granted_by=manager.id, now=NOW
    )
    second = repo.create_grant(
        vin=VIN,
        user_id=driver.id,
        services=["lock", "horn", "lock"],
        granted_by=manager.id,
        now=NOW + 5,
    )
    elsewhere = repo.create_grant(
        vin=VIN2, user_id=driver.id, services=["read"], granted_by=None, now=NOW + 6
    )

    assert (first.services, first.granted_by, first.active) == (("lock",), manager.id, True)
    assert (second.services, second.created_at) == (("lock", "horn"), NOW + 5)
    old = repo.get_grant(first.id)
    assert old is not None
    assert (old.revoked_at, old.active) == (NOW + 5, False)
    assert repo.list_grants() == [second, elsewhere]
    assert repo.list_grants(vin=VIN) == [second]
    assert repo.list_grants(vin=VIN, include_revoked=True) == [old, second]
    assert repo.list_grants(user_id=driver.id, vin=VIN2) == [elsewhere]
    assert repo.list_grants(user_id=manager.id) == []
    assert repo.get_grant(elsewhere.id + 100) is None


def test_grants_need_an_active_vehicle_known_users_and_a_list_of_services(
    repo: AccountRepository, org: AccountRecord
) -> None:
    provision(repo, VIN, org.id)
    provision(repo, VIN2, org.id)
    repo.revoke_vehicle(VIN2, now=NOW)
    driver = make_user(repo, "d@example.com", account_id=org.id)

    def grant(**changes: Any) -> Any:
        arguments: dict[str, Any] = {
            "vin": VIN,
            "user_id": driver.id,
            "services": ["lock"],
            "granted_by": None,
            "now": NOW,
        }
        return repo.create_grant(**(arguments | changes))

    with pytest.raises(NotFound, match="vehicle"):
        grant(vin="WVWZZZ1JZXW000009")
    with pytest.raises(VehicleRevoked, match="revoked"):
        grant(vin=VIN2)
    with pytest.raises(NotFound, match="user"):
        grant(user_id=999)
    with pytest.raises(NotFound, match="user"):
        grant(granted_by=999)
    with pytest.raises(TypeError, match="not the string"):
        grant(services="lock")
    with pytest.raises(ValueError, match="non-empty"):
        grant(services=["lock", ""])
    with pytest.raises(ValueError, match="at least one service"):
        grant(services=[])
    assert repo.list_grants(include_revoked=True) == []


def test_revoke_grant(repo: AccountRepository, org: AccountRecord) -> None:
    provision(repo, VIN, org.id)
    driver = make_user(repo, "d@example.com", account_id=org.id)
    grant = repo.create_grant(
        vin=VIN, user_id=driver.id, services=["read"], granted_by=None, now=NOW
    )

    revoked = repo.revoke_grant(grant.id, now=NOW + 1)

    assert revoked is not None
    assert (revoked.revoked_at, revoked.active) == (NOW + 1, False)
    assert repo.revoke_grant(grant.id, now=NOW + 2) == revoked
    assert repo.revoke_grant(grant.id + 100, now=NOW) is None
    assert repo.vehicle_access(VIN, driver.id)[1] is None


# --- API keys -------------------------------------------------------------------------------


def test_api_keys(repo: AccountRepository, org: AccountRecord) -> None:
    user = make_user(repo, "bot@example.com", account_id=org.id)
    other = make_user(repo, "other@example.com", account_id=org.id)

    key = repo.create_api_key(
        user_id=user.id, name="CI", prefix="0123456789ab", key_hash="a" * 64, now=NOW
    )
    second = repo.create_api_key(
        user_id=user.id, name="ETL", prefix="ba9876543210", key_hash="b" * 64, now=NOW + 1
    )

    assert (key.name, key.prefix, key.created_at, key.last_used_at, key.active) == (
        "CI",
        "0123456789ab",
        NOW,
        None,
        True,
    )
    assert "a" * 64 not in repr(key)
    assert repo.get_api_key_by_prefix("0123456789ab") == key
    assert repo.get_api_key_by_prefix("ffffffffffff") is None
    assert repo.get_api_key(key.id) == key
    assert repo.list_api_keys(user.id) == [key, second]
    assert repo.list_api_keys(other.id) == []

    repo.touch_api_key(key.id, now=NOW + 100)
    repo.touch_api_key(key.id, now=NOW + 50)  # a request that finished late: no step back
    repo.touch_api_key(key.id + 100, now=NOW)  # unknown: ignored
    assert repo.get_api_key(key.id).last_used_at == NOW + 100  # type: ignore[union-attr]

    revoked = repo.revoke_api_key(key.id, now=NOW + 200)
    assert revoked is not None
    assert (revoked.revoked_at, revoked.active) == (NOW + 200, False)
    assert repo.revoke_api_key(key.id, now=NOW + 300) == revoked
    assert repo.revoke_api_key(key.id + 100, now=NOW) is None
    assert repo.get_api_key_by_prefix("0123456789ab") == revoked

    with pytest.raises(DuplicateApiKeyPrefix):
        repo.create_api_key(
            user_id=other.id, name="x", prefix="0123456789ab", key_hash="c" * 64, now=NOW
        )
    with pytest.raises(NotFound, match="user"):
        repo.create_api_key(user_id=999, name="x", prefix="cafe", key_hash="c" * 64, now=NOW)


# --- refresh tokens -------------------------------------------------------------------------


@pytest.fixture
def user(repo: AccountRepository, org: AccountRecord) -> UserRecord:
    return make_user(repo, "alice@example.com", account_id=org.id)


def login(repo: AccountRepository, user: UserRecord, token: str, family: str) -> None:
    repo.create_refresh_token(
        user_id=user.id, family=family, token_hash=token, expires_at=NOW + 1000, now=NOW
    )


def test_rotation_then_reuse_of_the_old_token_revokes_the_family(
    repo: AccountRepository, user: UserRecord
) -> None:
    login(repo, user, "t1", "family-a")
    login(repo, user, "other-device", "family-b")

    outcome, new = repo.rotate_refresh_token(
        "t1", new_token_hash="t2", new_expires_at=NOW + 2000, now=NOW + 10
    )
    assert outcome == "ok"
    assert new is not None
    assert (new.user_id, new.family, new.created_at, new.expires_at) == (
        user.id,
        "family-a",
        NOW + 10,
        NOW + 2000,
    )
    assert (new.revoked_at, new.replaced_at) == (None, None)
    assert "t2" not in repr(new).replace("token_hash", "")

    # the thief (or the client) presents t1 again: theft detected, the session is over
    assert repo.rotate_refresh_token(
        "t1", new_token_hash="t3", new_expires_at=NOW + 3000, now=NOW + 20
    ) == ("reused", None)
    assert repo.rotate_refresh_token(
        "t2", new_token_hash="t4", new_expires_at=NOW + 3000, now=NOW + 30
    ) == ("revoked", None)
    # the same user's other session is untouched
    outcome, _ = repo.rotate_refresh_token(
        "other-device", new_token_hash="t5", new_expires_at=NOW + 3000, now=NOW + 40
    )
    assert outcome == "ok"


def test_expired_revoked_and_unknown_refresh_tokens(
    repo: AccountRepository, user: UserRecord
) -> None:
    login(repo, user, "t1", "family-a")
    login(repo, user, "t2", "family-b")
    repo.revoke_refresh_token("t2", now=NOW)

    def rotate(token: str, now: int) -> tuple[str, object]:
        return repo.rotate_refresh_token(
            token, new_token_hash=f"{token}-next", new_expires_at=now + 1000, now=now
        )

    assert rotate("t1", NOW + 1000) == ("expired", None)  # expires_at itself is too late
    assert rotate("t2", NOW + 1) == ("revoked", None)
    assert rotate("nope", NOW + 1) == ("unknown", None)
    assert rotate("t1", NOW + 999)[0] == "ok"  # an expired answer changed nothing
    with pytest.raises(NotFound, match="user"):
        repo.create_refresh_token(
            user_id=999, family="f", token_hash="x", expires_at=NOW + 1, now=NOW
        )


def test_logout_revokes_the_family_and_everywhere_revokes_every_session(
    repo: AccountRepository, user: UserRecord
) -> None:
    login(repo, user, "a1", "family-a")
    repo.rotate_refresh_token("a1", new_token_hash="a2", new_expires_at=NOW + 500, now=NOW + 1)
    login(repo, user, "b1", "family-b")

    logged_out = repo.revoke_refresh_token("a1", now=NOW + 5)

    assert logged_out is not None
    assert (logged_out.family, logged_out.revoked_at) == ("family-a", NOW + 5)
    assert repo.rotate_refresh_token(
        "a2", new_token_hash="a3", new_expires_at=NOW + 600, now=NOW + 6
    ) == ("revoked", None)
    assert repo.revoke_refresh_token("nope", now=NOW) is None

    login(repo, user, "c1", "family-c")
    # live sessions b and c; a is revoked already
    assert repo.revoke_user_refresh_tokens(user.id, now=NOW + 7) == 2
    assert repo.revoke_user_refresh_tokens(user.id, now=NOW + 8) == 0
    assert repo.rotate_refresh_token(
        "c1", new_token_hash="c2", new_expires_at=NOW + 600, now=NOW + 9
    ) == ("revoked", None)


def test_concurrent_rotation_of_one_token_succeeds_once(
    repo: AccountRepository, user: UserRecord
) -> None:
    login(repo, user, "t1", "family-a")
    names = iter(("t2-first", "t2-second"))
    lock = threading.Lock()

    def rotate() -> str:
        with lock:
            new_hash = next(names)
        outcome, _ = repo.rotate_refresh_token(
            "t1", new_token_hash=new_hash, new_expires_at=NOW + 2000, now=NOW + 10
        )
        return outcome

    assert sorted(map(str, race(2, rotate))) == ["ok", "reused"]
    # the reuse revoked the whole family, including the token the winner got; the loser's
    # token was never stored
    results = [
        repo.rotate_refresh_token(
            token, new_token_hash=f"{token}-x", new_expires_at=NOW + 3000, now=NOW + 20
        )
        for token in ("t2-first", "t2-second")
    ]
    assert sorted(results, key=str) == [("revoked", None), ("unknown", None)]


def test_a_reuse_racing_a_rotation_or_a_logout_everywhere_leaves_no_live_token(
    repo: AccountRepository, user: UserRecord, db: StateDatabase
) -> None:
    """The old token is presented while the current one is being rotated (and, every other
    round, while every session of the user is ended). Locking only the presented token's row
    let the family's revocation miss the token the rotation inserted, about every other
    round on PostgreSQL; the family lock (its first row) serialises them."""
    for round_ in range(6):
        family = f"family-{round_}"
        login(repo, user, f"{round_}-t1", family)
        repo.rotate_refresh_token(
            f"{round_}-t1", new_token_hash=f"{round_}-t2", new_expires_at=NOW + 2000, now=NOW
        )

        def reuse(token: str = f"{round_}-t1") -> object:
            return repo.rotate_refresh_token(
                token, new_token_hash=f"{token}-x", new_expires_at=NOW + 2000, now=NOW + 1
            )

        def rotate(token: str = f"{round_}-t2") -> object:
            return repo.rotate_refresh_token(
                token, new_token_hash=f"{token}-next", new_expires_at=NOW + 2000, now=NOW + 1
            )

        actions: list[Callable[[], object]] = [reuse, rotate]
        if round_ % 2:
            actions.append(lambda: repo.revoke_user_refresh_tokens(user.id, now=NOW + 1))
        outcomes = race_all(*actions)

        assert not [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        # "revoked" when the logout everywhere (odd rounds only) came first
        expected = {("reused", None), ("revoked", None)} if round_ % 2 else {("reused", None)}
        assert outcomes[0] in expected
        with db.engine.connect() as connection:
            live = connection.scalar(
                text(
                    "SELECT count(*) FROM refresh_tokens "
                    "WHERE family = :family AND revoked_at IS NULL"
                ),
                {"family": family},
            )
        assert live == 0, f"round {round_}: {outcomes}"


# --- audit log ------------------------------------------------------------------------------


def test_audit_append_and_query(audit: AuditLog) -> None:
    first = audit.append(
        at=NOW,
        actor="user:7 alice@example.com",
        actor_user_id=7,
        account_id=1,
        action="login",
        remote_addr="203.0.113.9",
    )
    assert (first.actor, first.outcome, first.detail, first.target) == (
        "user:7 alice@example.com",
        "ok",
        None,
        None,
    )
    entries = [first]
    for index in range(1, 8):
        entries.append(
            audit.append(
                at=NOW + index,
                actor="user:8 bob@example.com" if index % 2 else "system",
                actor_user_id=8 if index % 2 else None,
                account_id=1 if index < 5 else 2,
                action="command_create" if index % 3 else "grant_create",
                target=VIN if index % 2 else VIN2,
                outcome="denied" if index == 7 else "ok",
                detail={"type": "lock", "params": {"n": index}, "services": ["lock"]},
            )
        )
    newest_first = entries[::-1]

    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert audit.query() == newest_first
    assert audit.query(limit=3) == newest_first[:3]
    assert audit.query(before_id=newest_first[2].id, limit=3) == newest_first[3:6]
    assert audit.query(before_id=entries[0].id) == []
    assert audit.query(account_id=2) == [e for e in newest_first if e.account_id == 2]
    assert audit.query(actor_user_id=8) == [e for e in newest_first if e.actor_user_id == 8]
    assert audit.query(action="grant_create") == [
        e for e in newest_first if e.action == "grant_create"
    ]
    assert audit.query(target=VIN2, account_id=1) == [
        e for e in newest_first if e.target == VIN2 and e.account_id == 1
    ]
    assert entries[7].outcome == "denied"
    assert entries[3].detail == {"type": "lock", "params": {"n": 3}, "services": ["lock"]}
    with pytest.raises(ValueError, match="limit"):
        audit.query(limit=0)


def test_audit_refuses_secret_looking_detail_keys_and_bad_values(
    audit: AuditLog, db: StateDatabase
) -> None:
    for detail in (
        {"password": "hunter2"},
        {"New_Password": "x"},
        {"refresh_TOKEN": "x"},
        {"client_secret": "x"},
        {"api_key": "x"},
        {"request": {"headers": {"Authorization-Key": "x"}}},
        {"items": [{"ok": 1}, {"token": "x"}]},
    ):
        with pytest.raises(ValueError, match="looks like a secret"):
            audit.append(at=NOW, actor="system", action="test", detail=detail)
    with pytest.raises(ValueError, match="JSON"):
        audit.append(at=NOW, actor="system", action="test", detail={"at": object()})
    with pytest.raises(ValueError, match="JSON"):
        audit.append(at=NOW, actor="system", action="test", detail={"x": float("nan")})
    with pytest.raises(ValueError, match="outcome"):
        audit.append(at=NOW, actor="system", action="test", outcome="maybe")
    with pytest.raises(ValueError, match="action"):
        audit.append(at=NOW, actor="system", action="x" * 65)
    assert audit.query() == []

    # values may mention anything; tuples are stored as lists; no detail is SQL NULL
    stored = audit.append(
        at=NOW,
        actor="system",
        action="test",
        remote_addr="x" * 100,
        detail={"reason": "wrong password", "path": ("a", "b")},
    )
    assert stored.detail == {"reason": "wrong password", "path": ["a", "b"]}
    assert stored.remote_addr == "x" * 64
    bare = audit.append(at=NOW, actor="system", action="test")
    assert audit.query() == [bare, stored]
    with db.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM audit_log WHERE detail IS NULL")) == 1


def test_the_audit_log_refuses_update_and_delete(audit: AuditLog, db: StateDatabase) -> None:
    entry = audit.append(at=NOW, actor="system", action="login", detail={"reason": "x"})
    statements = [
        "UPDATE audit_log SET outcome = 'denied'",
        "UPDATE audit_log SET detail = NULL WHERE id = :id",
        "DELETE FROM audit_log WHERE id = :id",
        "DELETE FROM audit_log",
    ]
    if db.backend == "postgresql":
        statements.append("TRUNCATE audit_log")

    for statement in statements:
        with pytest.raises(IntegrityError, match="append-only"), db.engine.begin() as connection:
            connection.execute(text(statement), {"id": entry.id})

    assert audit.query() == [entry]


def test_a_deleted_integration_credential_id_never_comes_back(
    db: StateDatabase, repo: AccountRepository
) -> None:
    """An integration's id is its broker user name and names its organization's ACL: on
    SQLite a freed highest rowid was handed to the next credential, another organization's,
    which the broker sync (comparing names) could leave holding the first one's role
    (found by an outside review)."""
    from gateway.statedb.integrations import IntegrationRepository

    integrations = IntegrationRepository(db)
    first, second = (repo.create_account("organization", n, now=NOW) for n in ("A", "B"))
    made = integrations.create(
        account_id=first.id, password_hash="x", description=None, created_by=1, now=NOW, limit=20
    )
    assert made is not None
    integrations.delete(made.id)
    again = integrations.create(
        account_id=second.id, password_hash="y", description=None, created_by=1, now=NOW, limit=20
    )
    assert again is not None
    assert again.id != made.id
