"""The state database (gateway.statedb): migrations, the command repository, idempotency,
lifecycle transitions and the sweeps, each on SQLite and on PostgreSQL.

Every test runs on both backends (the ``state_db_url`` fixture): SQLite in a file under
tmp_path, and a fresh PostgreSQL database per test on the machine's server, dropped
afterwards. A test never skips when PostgreSQL is down: it fails and says how to start it,
because a backend that silently stops being tested is a backend that breaks unnoticed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from gateway.core.lifecycle import CommandEvent, CommandStatus, IllegalTransition
from gateway.errors import ConfigurationError
from gateway.statedb import (
    CommandNotFound,
    CommandRecord,
    CommandRepository,
    IdempotencyConflict,
    StateDatabase,
    default_url,
)
from gateway.statedb.database import alembic_config
from gateway.statedb.events import EventLog, publish
from gateway.statedb.models import AuditRow, Base, CommandRow, CommandTransitionRow

# --- fixtures -------------------------------------------------------------------------------

# ``state_db_url`` (every test on SQLite and on PostgreSQL) is in conftest.py


@pytest.fixture
def db(state_db_url: str) -> Iterator[StateDatabase]:
    """The state database at head; its pool is closed after the test."""
    database = StateDatabase(state_db_url)
    database.upgrade()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def repo(db: StateDatabase) -> CommandRepository:
    return CommandRepository(db)


NOW = 1_764_230_400_000
VIN = "WVWZZZ1JZXW000001"
OTHER_VIN = "WVWZZZ1JZXW000002"


def create(
    repo: CommandRepository,
    *,
    vin: str = VIN,
    type: str = "lock",
    params: dict[str, Any] | None = None,
    now: int = NOW,
    ttl_ms: int = 60_000,
    result_timeout_ms: int = 30_000,
    idempotency_key: str | None = None,
    requested_by: str | None = "alice",
    confirmation: str = "pending",
) -> CommandRecord:
    record, created = repo.create(
        vin=vin,
        type=type,
        params={} if params is None else params,
        now=now,
        ttl_ms=ttl_ms,
        result_timeout_ms=result_timeout_ms,
        idempotency_key=idempotency_key,
        requested_by=requested_by,
        confirmation=confirmation,
    )
    assert created
    return record


def walk(repo: CommandRepository, command_id: str, *events: CommandEvent, at: int) -> None:
    for step, event in enumerate(events):
        repo.apply(command_id, event, at=at + step)


def ids(records: list[CommandRecord]) -> list[str]:
    return [record.id for record in records]


# --- the database and its migrations --------------------------------------------------------


def test_upgrade_creates_the_tables_and_a_second_upgrade_is_a_no_op(state_db_url: str) -> None:
    with StateDatabase(state_db_url) as db:
        assert db.current_revision() is None
        db.upgrade()
        assert db.current_revision() == StateDatabase.head_revision() == "0018_fleet_write_behind"
        inspector = inspect(db.engine)
        assert {"commands", "command_transitions", "alembic_version"} <= set(
            inspector.get_table_names()
        )
        assert {ix["name"] for ix in inspector.get_indexes("commands")} >= {
            "ix_commands_vin_created_at",
            "ix_commands_status_expires_at",
            "ix_commands_status_confirmation",
        }
        assert [uq["column_names"] for uq in inspector.get_unique_constraints("commands")] == [
            ["vin", "tenure", "requested_by", "idempotency_key"]
        ]
        record = create(CommandRepository(db))

        db.upgrade()

        assert db.current_revision() == "0018_fleet_write_behind"
        assert CommandRepository(db).get(record.id) == record


def test_models_and_migrations_agree(db: StateDatabase) -> None:
    """Alembic's autogenerate finds nothing to do after upgrade: no drift between the two."""
    with db.engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_concurrent_upgrades_of_a_fresh_database_all_succeed(state_db_url: str) -> None:
    """Four processes starting at once: one migrates, the others wait and find it done."""
    databases = [StateDatabase(state_db_url) for _ in range(4)]
    barrier = threading.Barrier(len(databases))

    def start(database: StateDatabase) -> str | None:
        barrier.wait()
        database.upgrade()
        return database.current_revision()

    try:
        with ThreadPoolExecutor(len(databases)) as pool:
            assert list(pool.map(start, databases)) == ["0018_fleet_write_behind"] * len(databases)
    finally:
        for database in databases:
            database.dispose()


def test_url_is_pinned_to_the_supported_driver(state_db_url: str) -> None:
    with StateDatabase(state_db_url) as db:
        if db.backend == "sqlite":
            assert db.url.drivername == "sqlite"
            with db.engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        else:
            assert db.url.drivername == "postgresql+psycopg"
            with db.engine.connect() as connection:
                assert connection.execute(text("SELECT 1")).scalar() == 1


def test_sqlite_writes_lock_from_their_begin_and_reads_see_one_snapshot(tmp_path: Path) -> None:
    """SQLite: a write transaction holds the database's write lock from its BEGIN
    (IMMEDIATE), before it has written anything; a read transaction (deferred BEGIN) sees
    one snapshot and blocks no writer. Since decision 0041 the dialect emits these BEGINs
    (an engine each for reads and writes), no longer a "begin" event listener: the same
    statements, so this holds before and after."""
    path = tmp_path / "state.db"
    with StateDatabase(f"sqlite:///{path}") as db:
        db.upgrade()
        repo = CommandRepository(db)
        create(repo)
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with db.write() as session:
                session.execute(text("SELECT 1"))  # a read only, yet the lock is taken
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            with db.read() as session:
                count = select(func.count()).select_from(CommandRow)
                assert session.execute(count).scalar() == 1
                other.execute("BEGIN IMMEDIATE")  # the reader blocks no writer
                other.execute("COMMIT")
                create(repo, idempotency_key="second")  # committed by another connection
                assert session.execute(count).scalar() == 1  # the read's snapshot
            with db.read() as session:
                assert session.execute(count).scalar() == 2
        finally:
            other.close()
    assert len(db.engines) == 2


def test_bad_urls_are_configuration_errors(state_db_url: str) -> None:
    backend = state_db_url.split(":", 1)[0]
    other_driver = state_db_url.replace(backend, f"{backend}+asyncdriver", 1)
    with pytest.raises(ConfigurationError, match="unsupported driver"):
        StateDatabase(other_driver)
    with pytest.raises(ConfigurationError, match="in-memory"):
        StateDatabase("sqlite://")
    with pytest.raises(ConfigurationError, match="not a valid URL"):
        StateDatabase("not a url")
    assert default_url(Path("/var/lib/telematics")) == "sqlite:////var/lib/telematics/state.db"


def test_the_migration_downgrades_and_upgrades_again(db: StateDatabase) -> None:
    with db.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert db.current_revision() is None
    assert "commands" not in inspect(db.engine).get_table_names()
    db.upgrade()
    assert db.current_revision() == "0018_fleet_write_behind"
    assert create(CommandRepository(db)).status is CommandStatus.QUEUED


def test_migration_0018_takes_the_stored_fleet_states_as_of_each_partitions_cursor(
    db: StateDatabase,
) -> None:
    """Before 0018 every pass wrote its states: an upgraded database's states are as of
    the partitions' cursors, with no pass to replay (decision 0050)."""
    from gateway.statedb.fleet_log import FleetLog

    with db.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0016_fleet_workers")
        connection.execute(
            text(
                "INSERT INTO fleet_partitions (partition, owner, lease_until, sample_cursor, "
                "event_cursor) VALUES (0, NULL, 0, 41, 7), (1, NULL, 0, 0, 0)"
            )
        )
    db.upgrade()
    assert FleetLog(db).replay_plan([0, 1]) == {0: ((41, 7), []), 1: ((0, 0), [])}


def test_foreign_keys_are_enforced(db: StateDatabase) -> None:
    """A transition for a command that does not exist is refused (SQLite's default is off)."""
    with pytest.raises(IntegrityError), db.write() as session:
        session.add(
            CommandTransitionRow(
                command_id=str(uuid.uuid4()),
                seq=1,
                status="queued",
                event=None,
                at=NOW,
                reason=None,
                detail=None,
            )
        )


def test_data_survives_closing_and_reopening(state_db_url: str) -> None:
    with StateDatabase(state_db_url) as db:
        db.upgrade()
        repo = CommandRepository(db)
        first = create(repo, idempotency_key="k1")
        walk(repo, first.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_ACCEPTED, at=NOW + 10)
        before = repo.get(first.id)
        history = repo.transitions(first.id)

    with StateDatabase(state_db_url) as db:
        db.upgrade()
        repo = CommandRepository(db)
        assert repo.get(first.id) == before
        assert repo.transitions(first.id) == history
        # the idempotency key still holds after the restart
        again, created = repo.create(
            vin=VIN,
            type="lock",
            params={},
            now=NOW + 99_000,
            ttl_ms=60_000,
            result_timeout_ms=30_000,
            idempotency_key="k1",
            requested_by="alice",
        )
        assert (again, created) == (before, False)
        # and the lifecycle carries on where it stopped
        assert repo.apply(first.id, CommandEvent.UNIT_SUCCEEDED, at=NOW + 20).status == (
            CommandStatus.SUCCEEDED
        )


# --- create, get, list ----------------------------------------------------------------------


def test_create_and_get(repo: CommandRepository) -> None:
    params = {"target_temperature_c": 21.5, "nested": {"b": [1, 2], "a": True}}
    record = create(
        repo, type="climate_start", params=params, idempotency_key="key-1", requested_by="bob"
    )

    uuid.UUID(record.id)  # a UUID in its 36-character text form
    assert len(record.id) == 36
    assert record.vin == VIN
    assert record.type == "climate_start"
    assert record.params == params
    assert record.status is CommandStatus.QUEUED
    assert record.idempotency_key == "key-1"
    assert record.requested_by == "bob"
    assert (record.created_at, record.expires_at, record.result_timeout_ms) == (
        NOW,
        NOW + 60_000,
        30_000,
    )
    assert record.sent_at is record.accepted_at is record.finished_at is None
    assert record.reason is record.detail is None
    assert record.confirmed_at is None
    assert record.confirmation == "pending"
    assert repo.get(record.id) == record
    assert repo.get(str(uuid.uuid4())) is None
    [queued] = repo.transitions(record.id)
    assert (queued.command_id, queued.seq, queued.status, queued.event, queued.at) == (
        record.id,
        1,
        CommandStatus.QUEUED,
        None,
        NOW,
    )


def test_create_refuses_arguments_no_caller_should_pass(repo: CommandRepository) -> None:
    with pytest.raises(ValueError, match="positive"):
        create(repo, ttl_ms=0)
    with pytest.raises(ValueError, match="idempotency key"):
        create(repo, idempotency_key="")
    with pytest.raises(ValueError, match="idempotency key"):
        create(repo, idempotency_key="k" * 256)
    with pytest.raises(ValueError, match="confirmation"):
        create(repo, confirmation="confirmed")
    assert repo.list_for_vehicle(VIN) == []


def test_list_for_vehicle_is_newest_first_and_pages(repo: CommandRepository) -> None:
    records = [create(repo, now=NOW + i * 1000) for i in range(5)]
    create(repo, vin=OTHER_VIN)

    assert ids(repo.list_for_vehicle(VIN)) == ids(records[::-1])
    first_page = repo.list_for_vehicle(VIN, limit=2)
    assert ids(first_page) == ids(records[4:2:-1])
    second_page = repo.list_for_vehicle(VIN, limit=2, before_created_at=first_page[-1].created_at)
    assert ids(second_page) == ids(records[2:0:-1])
    assert ids(repo.list_for_vehicle(VIN, before_created_at=NOW)) == []
    assert repo.list_for_vehicle("WVWZZZ1JZXW000009") == []


# --- idempotency ----------------------------------------------------------------------------


def test_same_key_and_same_request_returns_the_first_command(repo: CommandRepository) -> None:
    first = create(repo, params={"a": 1, "b": 2}, idempotency_key="retry-me")
    repo.apply(first.id, CommandEvent.PUBLISHED, at=NOW + 5)
    sent = repo.get(first.id)

    again, created = repo.create(
        vin=VIN,
        type="lock",
        params={"b": 2, "a": 1},  # key order does not matter
        now=NOW + 30_000,  # a retry later is still the same request
        ttl_ms=60_000,
        result_timeout_ms=30_000,
        idempotency_key="retry-me",
        requested_by="alice",
    )

    assert created is False
    assert again == sent  # returned unchanged, in its current state
    assert len(repo.list_for_vehicle(VIN)) == 1
    assert len(repo.transitions(first.id)) == 2


def test_same_key_with_a_different_request_is_a_conflict(repo: CommandRepository) -> None:
    first = create(
        repo, type="climate_start", params={"target_temperature_c": 21.0}, idempotency_key="k"
    )
    different: list[dict[str, Any]] = [
        {"params": {"target_temperature_c": 22.0}},
        {"type": "lock", "params": {}},
        {"ttl_ms": 120_000},
    ]
    for change in different:
        arguments: dict[str, Any] = {
            "vin": VIN,
            "type": "climate_start",
            "params": {"target_temperature_c": 21.0},
            "now": NOW,
            "ttl_ms": 60_000,
            "result_timeout_ms": 30_000,
            "idempotency_key": "k",
            "requested_by": "alice",
        } | change
        with pytest.raises(IdempotencyConflict, match="different request") as caught:
            repo.create(**arguments)
        assert caught.value.command_id == first.id
        assert "'k'" in str(caught.value)
    assert ids(repo.list_for_vehicle(VIN)) == [first.id]


def test_a_key_is_per_requesting_user(repo: CommandRepository) -> None:
    """Security review 2 (decision 0023): the key was per vehicle, so a driver who shares
    the car and guessed (or saw) its owner's key used it up first, and the owner's
    command was refused as a conflict. Another user's use of the same key is their own
    command; each user's retry finds their own."""
    mallory = create(repo, type="unlock", idempotency_key="k", requested_by="user:7")
    alice = create(repo, type="lock", idempotency_key="k", requested_by="user:1")
    assert mallory.id != alice.id
    for who, expected in (("user:1", alice), ("user:7", mallory)):
        again, created = repo.create(
            vin=VIN, type=expected.type, params={}, now=NOW, ttl_ms=60_000,
            result_timeout_ms=30_000, idempotency_key="k", requested_by=who,
        )  # fmt: skip
        assert (again.id, created) == (expected.id, False)


def test_same_key_on_another_vehicle_is_a_new_command(repo: CommandRepository) -> None:
    first = create(repo, idempotency_key="shared")
    second = create(repo, vin=OTHER_VIN, idempotency_key="shared")
    assert first.id != second.id
    assert second.vin == OTHER_VIN
    # and requests without a key never collide
    assert create(repo).id != create(repo).id


def test_concurrent_creates_with_one_key_make_one_command(
    db: StateDatabase, repo: CommandRepository
) -> None:
    workers = 8
    barrier = threading.Barrier(workers)

    def attempt(_: int) -> tuple[CommandRecord, bool]:
        barrier.wait()
        return repo.create(
            vin=VIN,
            type="unlock",
            params={},
            now=NOW,
            ttl_ms=60_000,
            result_timeout_ms=30_000,
            idempotency_key="double-tap",
            requested_by="alice",
        )

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(attempt, range(workers)))

    assert len({record.id for record, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(CommandRow)) == 1
        assert session.scalar(select(func.count()).select_from(CommandTransitionRow)) == 1


# --- lifecycle ------------------------------------------------------------------------------


def test_apply_walks_the_lifecycle_with_timestamps_and_history(repo: CommandRepository) -> None:
    record = create(repo)

    sent = repo.apply(record.id, CommandEvent.PUBLISHED, at=NOW + 100)
    assert (sent.status, sent.sent_at, sent.accepted_at, sent.finished_at) == (
        CommandStatus.SENT,
        NOW + 100,
        None,
        None,
    )
    accepted = repo.apply(record.id, CommandEvent.UNIT_ACCEPTED, at=NOW + 350)
    assert (accepted.status, accepted.accepted_at, accepted.finished_at) == (
        CommandStatus.ACCEPTED,
        NOW + 350,
        None,
    )
    done = repo.apply(record.id, CommandEvent.UNIT_SUCCEEDED, at=NOW + 2000, detail="doors locked")
    assert (done.status, done.sent_at, done.accepted_at, done.finished_at) == (
        CommandStatus.SUCCEEDED,
        NOW + 100,
        NOW + 350,
        NOW + 2000,
    )
    assert (done.reason, done.detail) == (None, "doors locked")
    assert repo.get(record.id) == done

    history = repo.transitions(record.id)
    assert [(t.seq, t.status, t.event, t.at) for t in history] == [
        (1, CommandStatus.QUEUED, None, NOW),
        (2, CommandStatus.SENT, "published", NOW + 100),
        (3, CommandStatus.ACCEPTED, "unit_accepted", NOW + 350),
        (4, CommandStatus.SUCCEEDED, "unit_succeeded", NOW + 2000),
    ]
    assert history[3].detail == "doors locked"
    assert repo.transitions(record.id, after_seq=2) == history[2:]
    assert repo.transitions(record.id, after_seq=4) == []


def test_a_rejection_keeps_its_reason(repo: CommandRepository) -> None:
    record = create(repo)
    repo.apply(record.id, CommandEvent.PUBLISHED, at=NOW + 1)
    rejected = repo.apply(
        record.id,
        CommandEvent.UNIT_REJECTED,
        at=NOW + 2,
        reason="vehicle_moving",
        detail="speed 48 km/h",
    )
    assert (rejected.status, rejected.finished_at, rejected.reason, rejected.detail) == (
        CommandStatus.REJECTED,
        NOW + 2,
        "vehicle_moving",
        "speed 48 km/h",
    )
    last = repo.transitions(record.id)[-1]
    assert (last.reason, last.detail) == ("vehicle_moving", "speed 48 km/h")


def test_an_illegal_transition_raises_and_writes_nothing(
    repo: CommandRepository, caplog: pytest.LogCaptureFixture
) -> None:
    record = create(repo)
    caplog.set_level(logging.WARNING, logger="gateway.statedb.commands")

    with pytest.raises(IllegalTransition):
        repo.apply(record.id, CommandEvent.UNIT_SUCCEEDED, at=NOW + 1, reason="x", detail="y")

    assert repo.get(record.id) == record
    assert len(repo.transitions(record.id)) == 1
    assert any(record.id in message for message in caplog.messages)

    # a repeated final answer (QoS 1 redelivery) cannot rewrite a terminal command
    walk(repo, record.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_SUCCEEDED, at=NOW + 10)
    done = repo.get(record.id)
    with pytest.raises(IllegalTransition):
        repo.apply(record.id, CommandEvent.UNIT_FAILED, at=NOW + 20, reason="late")
    assert repo.get(record.id) == done
    assert len(repo.transitions(record.id)) == 3


def test_racing_answers_are_applied_one_after_the_other(repo: CommandRepository) -> None:
    """Eight deliveries of the same answer at once: one is applied, the rest are illegal.

    Without the row lock, two of them could read ``sent`` and both write a transition.
    """
    record = create(repo)
    repo.apply(record.id, CommandEvent.PUBLISHED, at=NOW + 1)
    workers = 8
    barrier = threading.Barrier(workers)

    def answer(_: int) -> str:
        barrier.wait()
        try:
            repo.apply(record.id, CommandEvent.UNIT_ACCEPTED, at=NOW + 2)
        except IllegalTransition:
            return "illegal"
        return "applied"

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(answer, range(workers)))

    assert sorted(outcomes) == ["applied"] + ["illegal"] * (workers - 1)
    assert [t.status for t in repo.transitions(record.id)] == [
        CommandStatus.QUEUED,
        CommandStatus.SENT,
        CommandStatus.ACCEPTED,
    ]


def test_unknown_commands_are_not_found(repo: CommandRepository) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(CommandNotFound, match=unknown):
        repo.apply(unknown, CommandEvent.PUBLISHED, at=NOW)
    with pytest.raises(CommandNotFound):
        repo.set_confirmation(unknown, confirmation="confirmed", confirmed_at=NOW)
    assert repo.transitions(unknown) == []


# --- sweeps ---------------------------------------------------------------------------------


def test_due_for_expiry_at_the_boundary(repo: CommandRepository) -> None:
    queued = create(repo, ttl_ms=1000)  # expires at NOW + 1000
    sent = create(repo, ttl_ms=2000)
    repo.apply(sent.id, CommandEvent.PUBLISHED, at=NOW + 1)
    accepted = create(repo, ttl_ms=1000)
    walk(repo, accepted.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_ACCEPTED, at=NOW + 1)
    cancelled = create(repo, ttl_ms=1000)
    repo.apply(cancelled.id, CommandEvent.CANCEL_REQUESTED, at=NOW + 1)
    create(repo, ttl_ms=5000)  # later

    assert repo.due_for_expiry(NOW + 999) == []
    assert ids(repo.due_for_expiry(NOW + 1000)) == [queued.id]
    assert ids(repo.due_for_expiry(NOW + 1999)) == [queued.id]
    assert ids(repo.due_for_expiry(NOW + 2000)) == [queued.id, sent.id]

    repo.apply(queued.id, CommandEvent.TTL_ELAPSED, at=NOW + 2000)
    assert ids(repo.due_for_expiry(NOW + 2000)) == [sent.id]


def test_due_for_timeout_at_the_boundary(repo: CommandRepository) -> None:
    slow = create(repo, result_timeout_ms=5000)
    walk(repo, slow.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_ACCEPTED, at=NOW + 100)
    accepted_at = NOW + 101
    fast = create(repo, result_timeout_ms=1000)
    walk(repo, fast.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_ACCEPTED, at=NOW + 100)
    finished = create(repo, result_timeout_ms=1000)
    walk(
        repo,
        finished.id,
        CommandEvent.PUBLISHED,
        CommandEvent.UNIT_ACCEPTED,
        CommandEvent.UNIT_SUCCEEDED,
        at=NOW + 100,
    )
    only_sent = create(repo, result_timeout_ms=1)
    repo.apply(only_sent.id, CommandEvent.PUBLISHED, at=NOW + 100)

    assert repo.due_for_timeout(accepted_at + 999) == []
    assert ids(repo.due_for_timeout(accepted_at + 1000)) == [fast.id]
    assert ids(repo.due_for_timeout(accepted_at + 4999)) == [fast.id]
    assert set(ids(repo.due_for_timeout(accepted_at + 5000))) == {fast.id, slow.id}


def test_awaiting_confirmation(repo: CommandRepository) -> None:
    def succeeded(confirmation: str, at: int) -> CommandRecord:
        record = create(repo, confirmation=confirmation)
        walk(repo, record.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_SUCCEEDED, at=at)
        return record

    older = succeeded("pending", NOW + 10)
    newer = succeeded("pending", NOW + 20)
    succeeded("not_applicable", NOW + 5)
    confirmed = succeeded("pending", NOW + 1)
    repo.set_confirmation(confirmed.id, confirmation="confirmed", confirmed_at=NOW + 30)
    create(repo)  # queued, pending
    failed = create(repo)
    walk(repo, failed.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_FAILED, at=NOW + 1)

    assert ids(repo.awaiting_confirmation()) == [older.id, newer.id]
    assert ids(repo.awaiting_confirmation(limit=1)) == [older.id]


def test_set_confirmation(repo: CommandRepository) -> None:
    record = create(repo)
    walk(repo, record.id, CommandEvent.PUBLISHED, CommandEvent.UNIT_SUCCEEDED, at=NOW + 1)

    confirmed = repo.set_confirmation(record.id, confirmation="confirmed", confirmed_at=NOW + 9)

    assert (confirmed.confirmation, confirmed.confirmed_at) == ("confirmed", NOW + 9)
    assert confirmed.status is CommandStatus.SUCCEEDED
    assert repo.get(record.id) == confirmed
    assert len(repo.transitions(record.id)) == 3  # confirmation is not a status change
    with pytest.raises(ValueError, match="confirmation must be one of"):
        repo.set_confirmation(record.id, confirmation="maybe", confirmed_at=None)
    assert repo.get(record.id) == confirmed


def test_queued_for_vehicle_is_oldest_first(repo: CommandRepository) -> None:
    newest = create(repo, now=NOW + 3000)
    oldest = create(repo, now=NOW + 1000)
    sent = create(repo, now=NOW)
    repo.apply(sent.id, CommandEvent.PUBLISHED, at=NOW + 4000)
    middle = create(repo, now=NOW + 2000)
    create(repo, vin=OTHER_VIN, now=NOW)

    assert ids(repo.queued_for_vehicle(VIN)) == [oldest.id, middle.id, newest.id]
    assert repo.queued_for_vehicle("WVWZZZ1JZXW000009") == []


def test_a_write_transaction_commits_at_its_end_and_rolls_back_on_error(
    db: StateDatabase,
) -> None:
    """Decision 0051: the command writer's transactions run without an ORM session
    (``StateDatabase.write_transaction``); what they write commits with them or not at all,
    the ``command.updated`` event included (on PostgreSQL under the event lock), and what goes
    through its ORM session (a job's end) commits in the same transaction."""
    events = EventLog(db)
    before = events.last_id()

    def fails() -> None:
        with db.write_transaction() as tx:
            publish(tx, type="probe.failed", at=1, data={}, account_id=None)
            raise RuntimeError("after the event")

    with pytest.raises(RuntimeError):
        fails()
    assert events.last_id() == before
    with db.write_transaction() as tx:
        event_id = publish(tx, type="probe.ok", at=2, data={}, account_id=None)
        tx.session.add(AuditRow(at=2, actor="probe", action="probe", outcome="ok"))
    assert events.last_id() == event_id > before
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(AuditRow)) == 1


def test_a_grouped_write_transaction_that_fails_is_undone_alone_orm_and_all(
    db: StateDatabase,
) -> None:
    """Decision 0051: inside ``grouped()`` a write transaction is a savepoint taken on the
    DBAPI cursor; one that fails is rolled back alone, what it added through the ORM
    included (nothing of it is flushed by a later write), and the others commit."""
    events = EventLog(db)
    before = events.last_id()

    def fails() -> None:
        with db.write_transaction() as tx:
            tx.session.add(AuditRow(at=1, actor="probe", action="failed", outcome="ok"))
            tx.flush()
            publish(tx, type="probe.failed", at=1, data={}, account_id=None)
            raise RuntimeError("after the event")

    with db.grouped():
        with db.write_transaction() as tx:
            first = publish(tx, type="probe.first", at=1, data={}, account_id=None)
        with pytest.raises(RuntimeError):
            fails()
        with db.write_transaction() as tx:
            tx.session.add(AuditRow(at=2, actor="probe", action="kept", outcome="ok"))
            last = publish(tx, type="probe.last", at=2, data={}, account_id=None)
    assert [e.type for e in events.after(before)] == ["probe.first", "probe.last"]
    assert before < first < last
    with db.read() as session:
        assert list(session.scalars(select(AuditRow.action))) == ["kept"]
