"""Ownership periods (tenures) in the parts that keep them: the telemetry store (its schema
step from version 1, filing by tenure and sample time, reads per tenure), the ingest
batcher, and the state database (migration 0003 with data, provisioning and revocation,
commands per period, invitations, ending a user's sessions), each state-database test on
SQLite and on PostgreSQL. The attacker's view of the same rules is in
tests/test_abuse_api_ownership.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from gateway.core.batching import Batcher
from gateway.core.lifecycle import CommandEvent, CommandStatus
from gateway.ingest.registry import VehicleRegistry
from gateway.ingest.service import IngestService, IngestSettings
from gateway.statedb import (
    AccountRepository,
    CommandRepository,
    InvitationClosed,
    SessionsEnded,
    StateDatabase,
    TenureEnded,
)
from gateway.statedb.database import alembic_config
from gateway.store import IngestBatch, QuarantineEntry, TelemetryBackend, Tenure, open_store
from gateway.store.sqlite import SCHEMA_VERSION, SqliteTelemetryStore
from schemas import Event, EventType, Reason, Rejection, Sample

VIN = "WVWZZZ1JZXW000031"
OTHER = "WVWZZZ1JZXW000032"
NOW = 1_764_230_400_000
SPEED = "Vehicle.Speed"

# --- the telemetry store ----------------------------------------------------------------------

#: the telemetry store's schema as version 1 wrote it (before quarantine caps and ownership
#: periods), with data
V1_SCHEMA = """
CREATE TABLE vehicles (id INTEGER PRIMARY KEY, vin TEXT NOT NULL UNIQUE,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, online INTEGER,
    status_changed_at INTEGER);
CREATE TABLE samples (id INTEGER PRIMARY KEY, vehicle_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    ts INTEGER NOT NULL, received_at INTEGER NOT NULL, signals TEXT NOT NULL,
    UNIQUE (vehicle_id, seq));
CREATE INDEX samples_by_time ON samples (vehicle_id, ts);
CREATE TABLE latest (vehicle_id INTEGER NOT NULL, signal TEXT NOT NULL, value TEXT NOT NULL,
    ts INTEGER NOT NULL, PRIMARY KEY (vehicle_id, signal)) WITHOUT ROWID;
CREATE TABLE events (vehicle_id INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL, type TEXT NOT NULL, code TEXT, detail TEXT,
    PRIMARY KEY (vehicle_id, seq)) WITHOUT ROWID;
CREATE TABLE quarantine (id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL,
    topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, vin TEXT, seq INTEGER,
    signal TEXT, payload BLOB NOT NULL);
CREATE INDEX quarantine_by_reason ON quarantine (reason, id);
CREATE INDEX quarantine_by_vin ON quarantine (vin, id);
CREATE TABLE counters (name TEXT NOT NULL, label TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, label)) WITHOUT ROWID;
INSERT INTO vehicles VALUES (1, 'WVWZZZ1JZXW000031', 10, 20, 1, 20);
INSERT INTO samples VALUES (1, 1, 1, 10, 10, '{"Vehicle.Speed": 50.0}');
INSERT INTO samples VALUES (2, 1, 2, 20, 20, '{"Vehicle.Speed": 60.0}');
INSERT INTO latest VALUES (1, 'Vehicle.Speed', '60.0', 20);
INSERT INTO events VALUES (1, 1, 15, 15, 'ignition_on', NULL, NULL);
INSERT INTO quarantine VALUES (1, 12, 't', 'out_of_range', 'd', 'WVWZZZ1JZXW000031', 3, NULL,
    x'00');
PRAGMA user_version = 1;
"""
#: version 2: the quarantine's payload size and hash (still before ownership periods)
V2_SCHEMA = (
    V1_SCHEMA.replace(
        "signal TEXT, payload BLOB NOT NULL);",
        "signal TEXT, payload BLOB NOT NULL, payload_size INTEGER, payload_sha256 TEXT);",
    )
    .replace("x'00');", "x'00', 1, NULL);")
    .replace("PRAGMA user_version = 1;", "PRAGMA user_version = 2;")
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTelemetryStore]:
    s = SqliteTelemetryStore(tmp_path / "telemetry.db")
    try:
        yield s
    finally:
        s.close()


def speeds(store: TelemetryBackend, vin: str, tenure: int) -> list[tuple[int, float]]:
    points = store.history(vin, [SPEED], tenure=tenure, start=0, end=2**62, limit=100)
    return [(p.seq, p.values[SPEED]) for p in points]  # type: ignore[misc]


@pytest.mark.parametrize("old_schema", [V1_SCHEMA, V2_SCHEMA], ids=["version 1", "version 2"])
def test_an_older_file_is_upgraded_in_place_its_data_in_the_first_tenure(
    tmp_path: Path, old_schema: str
) -> None:
    path = tmp_path / "telemetry.db"
    old = sqlite3.connect(path)
    old.executescript(old_schema)
    old.close()

    store = SqliteTelemetryStore(path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (5,)
        # the old data is the first tenure's, exactly as it was
        assert speeds(store, VIN, 1) == [(1, 50.0), (2, 60.0)]
        state = store.vehicle_state(VIN, tenure=1)
        assert state is not None
        assert (state.summary.online, state.latest) == (True, {SPEED: (60.0, 20)})
        assert [q.tenure for q in store.quarantine(limit=10)] == [None]
        # schema 4: the old event got a row id and is in the log (and still deduplicated)
        (event,) = store.events_after(0, limit=10)
        assert (event.vin, event.tenure, event.seq, event.type) == (VIN, 1, 1, "ignition_on")
        # a second holder's seq 1 and 2 are new samples, not duplicates of the first's
        result = store.commit(
            IngestBatch(
                received_at=NOW,
                samples=[Sample(VIN, 1, NOW, {SPEED: 5.0}), Sample(VIN, 2, NOW + 1, {SPEED: 6.0})],
                tenures={VIN: Tenure(2, NOW - 1000)},
            )
        )
        assert (result.samples_stored, result.sample_duplicates) == (2, 0)
        assert speeds(store, VIN, 2) == [(1, 5.0), (2, 6.0)]
        assert speeds(store, VIN, 1) == [(1, 50.0), (2, 60.0)]
    finally:
        store.close()
    # opening it again changes nothing
    again = SqliteTelemetryStore(path)
    try:
        assert speeds(again, VIN, 1) == [(1, 50.0), (2, 60.0)]
    finally:
        again.close()


def test_each_sample_is_filed_by_its_own_time_against_the_tenure(
    store: SqliteTelemetryStore,
) -> None:
    started = NOW
    store.commit(
        IngestBatch(
            received_at=NOW + 5,
            samples=[
                # the previous holder's unit, its last samples delivered late
                Sample(VIN, 7, started - 10, {SPEED: 90.0}),
                # the new holder's unit
                Sample(VIN, 1, started, {SPEED: 10.0}),
                Sample(VIN, 2, started + 1, {SPEED: 11.0}),
            ],
            events=[
                Event(VIN, 3, started - 1, EventType.DTC_SET, "P0301", None),
                Event(VIN, 3, started + 2, EventType.IGNITION_ON, None, None),
            ],
            tenures={VIN: Tenure(2, started)},
            seen={VIN: NOW + 5},
        )
    )
    assert speeds(store, VIN, 2) == [(1, 10.0), (2, 11.0)]
    assert speeds(store, VIN, 1) == [(7, 90.0)]
    new, old = store.vehicle_state(VIN, tenure=2), store.vehicle_state(VIN, tenure=1)
    assert new is not None
    assert old is not None
    assert new.latest == {SPEED: (11.0, started + 1)}
    assert old.latest == {SPEED: (90.0, started - 10)}
    events = store._db.execute(
        "SELECT v.tenure, e.seq, e.type FROM events e JOIN vehicles v ON v.id = e.vehicle_id "
        "ORDER BY v.tenure"
    ).fetchall()
    assert events == [(1, 3, "dtc_set"), (2, 3, "ignition_on")]
    # the first tenure has nothing before it: a first holder keeps what its unit sent early
    store.commit(
        IngestBatch(
            received_at=NOW,
            samples=[Sample(OTHER, 1, started - 10, {SPEED: 1.0})],
            tenures={OTHER: Tenure(1, started)},
        )
    )
    assert speeds(store, OTHER, 1) == [(1, 1.0)]


def test_reads_are_per_tenure_and_lists_take_the_newest_or_the_given_one(
    store: SqliteTelemetryStore,
) -> None:
    for tenure, seen in ((1, 100), (2, 200)):
        store.commit(
            IngestBatch(
                received_at=seen,
                samples=[Sample(VIN, 1, seen, {SPEED: float(tenure)})],
                tenures={VIN: Tenure(tenure, 0)},
                seen={VIN: seen},
            )
        )
    store.commit(IngestBatch(received_at=50, samples=[Sample(OTHER, 1, 50, {SPEED: 3.0})]))

    listed = {v.vin: v.first_seen for v in store.list_vehicles(limit=10)}
    assert listed == {VIN: 200, OTHER: 50}  # every VIN once, at its newest tenure
    assert store.vehicle_counts() == (2, 0)
    chosen = store.list_vehicles(limit=10, vins={VIN: 1})
    assert [(v.vin, v.first_seen) for v in chosen] == [(VIN, 100)]
    assert store.vehicle_counts({VIN: 1, OTHER: 1}) == (2, 0)
    assert store.list_vehicles(limit=10, vins={VIN: 3}) == []
    assert store.vehicle_state(VIN, tenure=3) is None
    assert speeds(store, VIN, 3) == []


def test_quarantine_entries_keep_the_tenure_they_were_refused_in(
    store: SqliteTelemetryStore,
) -> None:
    rejection = Rejection(Reason.OUT_OF_RANGE, "too fast", vin=VIN, seq=1, signal=SPEED)
    store.commit(
        IngestBatch(
            received_at=NOW,
            quarantine=[
                QuarantineEntry(NOW, "t", b"{}", rejection, 2),
                QuarantineEntry(NOW, "t", b"{}", rejection),
            ],
        )
    )
    assert [q.tenure for q in store.quarantine(limit=10)] == [None, 2]


# --- the ingest batcher -----------------------------------------------------------------------


def sample_message(vin: str, seq: int, ts: int = NOW) -> tuple[str, bytes]:
    return (
        f"v1/vehicles/{vin}/telemetry",
        f'{{"vin": "{vin}", "seq": {seq}, "ts": {ts}, "signals": {{"{SPEED}": 1.0}}}}'.encode(),
    )


def event_message(vin: str, seq: int, ts: int = NOW) -> tuple[str, bytes]:
    return (
        f"v1/vehicles/{vin}/events",
        f'{{"vin": "{vin}", "seq": {seq}, "ts": {ts}, "type": "ignition_on"}}'.encode(),
    )


def test_the_batcher_stamps_tenures_and_refuses_a_change_of_tenure_within_a_batch() -> None:
    tenures = {VIN: Tenure(1, 0)}
    batcher = Batcher(clock_ms=lambda: NOW, tenure_of=tenures.get)

    assert batcher.add(*sample_message(VIN, 1))
    assert batcher.add(*sample_message(OTHER, 1))  # not provisioned: quarantined
    tenures[VIN] = Tenure(2, NOW)  # revoked and claimed again while the batch is open
    assert not batcher.add(*sample_message(VIN, 1))
    batch = batcher.take()
    assert batch.tenures == {VIN: Tenure(1, 0)}
    assert [s.seq for s in batch.samples] == [1]
    assert [(q.rejection.reason, q.tenure) for q in batch.quarantine] == [
        (Reason.UNPROVISIONED_VEHICLE, None)
    ]
    assert batcher.messages == 0  # the refused message was not counted
    assert batcher.add(*sample_message(VIN, 1))  # the next batch takes it
    assert batcher.take().tenures == {VIN: Tenure(2, NOW)}


def test_the_ingest_service_commits_before_a_vin_changes_tenure_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The message refused by the batcher waits for the next batch, in order, with its
    acknowledgement (run on the service itself and a real store; no broker needed)."""
    from gateway.ingest.service import IngestService, IngestSettings

    tenures = {VIN: Tenure(1, 0)}
    store = open_store(tmp_path / "telemetry.db")
    service = IngestService(
        IngestSettings(), store, clock_ms=lambda: NOW + 10, tenure_of=tenures.get
    )

    async def scenario() -> None:
        service._receive(*sample_message(VIN, 1, NOW - 5), None, {})  # the old unit
        tenures[VIN] = Tenure(2, NOW)  # revoked and claimed again
        for seq in (1, 2):  # the new unit, its own seq 1 and 2
            service._receive(*sample_message(VIN, seq, NOW + seq), None, {})
        await service._commit_current()  # the old unit's batch
        await service._commit_current()  # the new unit's, deferred until now
        assert service._first_at is None

    try:
        asyncio.run(scenario())
        assert speeds(store, VIN, 1) == [(1, 1.0)]
        assert speeds(store, VIN, 2) == [(1, 1.0), (2, 1.0)]
        assert service.commits == 2
    finally:
        store.close()


def test_a_claim_the_registry_has_not_reloaded_yet_is_seen_before_the_commit(
    tmp_path: Path,
) -> None:
    """The registry's map is reloaded every half second; a VIN revoked and claimed in between
    used to have the new unit's first samples filed under the previous holder (and its seq 1,
    2, ... swallowed as duplicates of the old unit's). The service reads the registry once
    more before each commit, so the batch is filed by the holding period the state database
    has when the messages are already in."""
    from gateway.ingest.service import IngestService, IngestSettings

    stale = {VIN: Tenure(1, 0)}  # what the periodic reload last saw
    current = {VIN: Tenure(2, NOW)}  # the state database: revoked and claimed at NOW
    store = open_store(tmp_path / "telemetry.db")
    service = IngestService(
        IngestSettings(),
        store,
        clock_ms=lambda: NOW + 10,
        tenure_of=stale.get,
        current_tenures=lambda: current,
    )

    async def scenario() -> None:
        service._receive(*sample_message(VIN, 5, NOW - 5), None, {})  # the old unit, before
        for seq in (1, 2):  # the new unit, its own seq 1 and 2
            service._receive(*sample_message(VIN, seq, NOW + seq), None, {})
        service._receive(f"v1/vehicles/{VIN}/telemetry", b"{not json", None, {})  # refused
        await service._commit_current()

    try:
        asyncio.run(scenario())
        assert speeds(store, VIN, 1) == [(5, 1.0)]
        assert speeds(store, VIN, 2) == [(1, 1.0), (2, 1.0)]
        # what the new unit got refused is the new holder's too (received after the claim)
        assert [q.tenure for q in store.quarantine(limit=10, vin=VIN)] == [2]
    finally:
        store.close()


# --- the state database ----------------------------------------------------------------------


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


def provision(repo: AccountRepository, account_id: int, now: int, vin: str = VIN) -> int:
    return repo.provision_vehicle(
        vin=vin,
        account_id=account_id,
        label=None,
        mqtt_password_hash=None,
        provisioned_by=None,
        now=now,
    ).tenure


def test_migration_0003_gives_existing_data_its_holding_periods(state_db_url: str) -> None:
    """Data written at revision 0002 (the VIN re-provisioned once by then) comes through the
    upgrade with periods: the current holder's is 1, what was there before it is 0 (nobody's
    to read), grants gain 'read', idempotency keys are per period."""
    with StateDatabase(state_db_url) as db:
        db.upgrade()
        with db.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0002")
        statements = [
            "INSERT INTO accounts (id, kind, name, created_at) VALUES (1, 'organization', 'a', 0),"
            " (2, 'private', 'b', 0)",
            "INSERT INTO users (id, email, name, password_hash, role, account_id, created_at, "
            "failed_logins) VALUES (1, 'd@x', 'd', 'h', 'driver', 2, 0, 3)",
            # provisioned again by account 2 at 1000 (account 1 had it before)
            "INSERT INTO vehicles (vin, account_id, provisioned_at) "
            f"VALUES ('{VIN}', 2, 1000), ('{OTHER}', 1, 10)",
            "UPDATE vehicles SET revoked_at = 50 WHERE vin = '" + OTHER + "'",
            "INSERT INTO vehicle_grants (vin, user_id, services, created_at, revoked_at) VALUES "
            f"('{VIN}', 1, '[]', 500, 900), ('{VIN}', 1, '[\"lock\"]', 1500, NULL)",
        ]
        command_columns = (
            "id, vin, type, params, status, idempotency_key, request_hash, created_at, "
            "expires_at, result_timeout_ms, confirmation"
        )
        for command_id, created_at in (("c-old", 600), ("c-new", 1600)):
            statements.append(
                f"INSERT INTO commands ({command_columns}) VALUES ('{command_id}', '{VIN}', "
                f"'lock', '{{}}', 'succeeded', 'k', 'h', {created_at}, 9, 9, 'not_applicable')"
                if command_id == "c-old"
                else f"INSERT INTO commands ({command_columns}) VALUES ('{command_id}', '{VIN}', "
                f"'lock', '{{}}', 'queued', NULL, 'h', {created_at}, 9, 9, 'not_applicable')"
            )
        with db.engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))

        db.upgrade()

        assert db.current_revision() == StateDatabase.head_revision()
        repo = AccountRepository(db)
        vehicle = repo.get_vehicle(VIN)
        assert vehicle is not None
        assert vehicle.tenure == 1
        (period,) = repo.tenures(VIN)
        assert (period.number, period.account_id, period.started_at, period.ended_at) == (
            1,
            2,
            1000,
            None,
        )
        (ended,) = repo.tenures(OTHER)
        assert (ended.ended_at, ended.end_reason) == (50, "revoked")
        grants = repo.list_grants(vin=VIN, include_revoked=True)
        assert [(g.tenure, g.services) for g in grants] == [(0, ("read",)), (1, ("read", "lock"))]
        commands = CommandRepository(db)
        old, new = commands.get("c-old"), commands.get("c-new")
        assert old is not None
        assert new is not None
        assert (old.tenure, new.tenure) == (0, 1)
        assert [c.id for c in commands.list_for_vehicle(VIN, tenure=1)] == ["c-new"]
        assert [c.id for c in commands.queued_for_vehicle(VIN)] == ["c-new"]
        # and back: 0002 holds what it can
        with db.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0002")
            services = connection.execute(
                text("SELECT services FROM vehicle_grants ORDER BY id")
            ).scalars()
            assert [list(s) if not isinstance(s, str) else s for s in services] in (
                [[], ["lock"]],
                ["[]", '["lock"]'],
            )
        db.upgrade()
        assert db.current_revision() == StateDatabase.head_revision()
        # the earlier holder's idempotency key no longer collides
        record, created = commands.create(
            vin=VIN, type="lock", params={}, now=2000, ttl_ms=1, result_timeout_ms=1,
            tenure=1, idempotency_key="k",
        )  # fmt: skip
        assert created
        assert record.tenure == 1
        user = repo.get_user(1)
        assert user is not None
        assert user.token_version == 0


def test_provisioning_starts_and_revocation_ends_a_period(repo: AccountRepository) -> None:
    first = repo.create_account("organization", "first", now=0)
    second = repo.create_account("private", "second", now=0)
    user = repo.create_user(
        email="m@x.example", name="m", password_hash="h", role="owner", account_id=second.id,
        now=0,
    )  # fmt: skip

    assert provision(repo, first.id, NOW) == 1
    assert repo.active_tenures() == {VIN: (1, NOW)}
    repo.revoke_vehicle(VIN, now=NOW + 10, by=None)
    assert repo.active_tenures() == {}
    assert provision(repo, second.id, NOW + 20) == 2
    repo.revoke_vehicle(VIN, now=NOW + 30, by=user.id)
    assert provision(repo, second.id, NOW + 40) == 3

    periods = [
        (t.number, t.account_id, t.started_at, t.ended_at, t.ended_by, t.end_reason)
        for t in repo.tenures(VIN)
    ]
    assert periods == [
        (1, first.id, NOW, NOW + 10, None, "revoked"),
        (2, second.id, NOW + 20, NOW + 30, user.id, "revoked"),
        (3, second.id, NOW + 40, None, None, None),
    ]
    assert repo.active_tenures() == {VIN: (3, NOW + 40)}


def test_revocation_cancels_every_open_command_and_ends_the_period_for_new_ones(
    db: StateDatabase, repo: AccountRepository
) -> None:
    account = repo.create_account("organization", "a", now=0)
    provision(repo, account.id, NOW)
    commands = CommandRepository(db)

    def create(type_: str, now: int, tenure: int = 1) -> str:
        record, _ = commands.create(
            vin=VIN, type=type_, params={}, now=now, ttl_ms=60_000, result_timeout_ms=30_000,
            tenure=tenure,
        )  # fmt: skip
        return record.id

    queued, sent, accepted, done = (create(t, NOW + i) for i, t in enumerate("ABCD"))
    commands.apply(sent, CommandEvent.PUBLISHED, at=NOW + 5)
    for event in (CommandEvent.PUBLISHED, CommandEvent.UNIT_ACCEPTED):
        commands.apply(accepted, event, at=NOW + 5)
    for event in (CommandEvent.PUBLISHED, CommandEvent.UNIT_SUCCEEDED):
        commands.apply(done, event, at=NOW + 5)

    repo.revoke_vehicle(VIN, now=NOW + 10)

    for command_id in (queued, sent, accepted):
        record = commands.get(command_id)
        assert record is not None
        assert (record.status, record.reason, record.finished_at) == (
            CommandStatus.CANCELLED,
            "vehicle_revoked",
            NOW + 10,
        )
        last = commands.transitions(command_id)[-1]
        assert (last.event, last.status, last.reason) == (
            "vehicle_revoked",
            CommandStatus.CANCELLED,
            "vehicle_revoked",
        )
    finished = commands.get(done)
    assert finished is not None
    assert finished.status is CommandStatus.SUCCEEDED
    assert commands.queued() == []
    # a request authorized before the revocation cannot create a command after it, and
    # neither can one naming the ended period once the VIN is held again
    with pytest.raises(TenureEnded):
        create("E", NOW + 11)
    provision(repo, account.id, NOW + 20)
    with pytest.raises(TenureEnded):
        create("F", NOW + 21, tenure=1)
    fresh = create("G", NOW + 22, tenure=2)
    assert [c.id for c in commands.queued_for_vehicle(VIN)] == [fresh]
    assert [c.id for c in commands.list_for_vehicle(VIN, tenure=2)] == [fresh]
    assert len(commands.list_for_vehicle(VIN)) == 5  # administrators: every period


def test_an_invitation_becomes_a_grant_only_when_accepted_in_its_period(
    repo: AccountRepository,
) -> None:
    account = repo.create_account("private", "a", now=0)
    stranger = repo.create_user(
        email="s@x.example", name="s", password_hash="h", role="owner", account_id=None, now=0
    )
    provision(repo, account.id, NOW)

    def invite(email: str = "S@X.example ") -> int:
        return repo.create_invitation(
            vin=VIN, email=email, services=["read", "lock"], invited_by=None, now=NOW,
            expires_at=NOW + 1000,
        ).id  # fmt: skip

    first = invite()
    assert repo.get_invitation(first).email == "s@x.example"  # type: ignore[union-attr]
    assert repo.vehicle_access(VIN, stranger.id)[1] is None  # nothing shared yet
    invitation, grant = repo.answer_invitation(first, user_id=stranger.id, accept=True, now=NOW)
    assert grant is not None
    assert (invitation.status, invitation.grant_id) == ("accepted", grant.id)
    assert (grant.services, grant.tenure) == (("read", "lock"), 1)
    with pytest.raises(InvitationClosed, match="accepted"):
        repo.answer_invitation(first, user_id=stranger.id, accept=False, now=NOW)
    late = invite()
    with pytest.raises(InvitationClosed, match="expired"):
        repo.answer_invitation(late, user_id=stranger.id, accept=True, now=NOW + 1000)
    # a revocation ends the period: its grants, and its pending invitations
    pending = invite()
    repo.revoke_vehicle(VIN, now=NOW + 5)
    assert repo.get_invitation(pending).status == "withdrawn"  # type: ignore[union-attr]
    provision(repo, account.id, NOW + 6)
    with pytest.raises(InvitationClosed):
        repo.answer_invitation(late, user_id=stranger.id, accept=True, now=NOW + 7)
    assert repo.vehicle_access(VIN, stranger.id)[1] is None


def test_ending_a_users_sessions_ends_tokens_and_keys(repo: AccountRepository) -> None:
    user = repo.create_user(
        email="u@x.example", name="u", password_hash="h", role="admin", account_id=None, now=0
    )
    for n in range(2):
        repo.create_refresh_token(
            user_id=user.id, family=f"f{n}", token_hash=f"t{n}", expires_at=NOW + 10, now=NOW
        )
        repo.create_api_key(user_id=user.id, name="k", prefix=f"p{n}", key_hash="h", now=NOW)

    ended = repo.end_user_sessions(user.id, now=NOW + 1)

    assert (ended.refresh_sessions, ended.api_keys) == (2, 2)
    assert repo.get_user(user.id).token_version == 1  # type: ignore[union-attr]
    assert all(k.revoked_at == NOW + 1 for k in repo.list_api_keys(user.id))
    assert (
        repo.rotate_refresh_token("t0", new_token_hash="x", new_expires_at=NOW + 9, now=NOW + 2)[0]
        == "revoked"
    )
    assert repo.end_user_sessions(user.id + 100, now=NOW) == SessionsEnded(0, 0)


# --- the end of a period: nothing stamped after a revocation is filed in the ended one --------


@dataclass
class _Wired:
    repo: AccountRepository
    store: SqliteTelemetryStore
    service: IngestService


@pytest.fixture
def wired(tmp_path: Path, state_db_url: str) -> Iterator[_Wired]:
    """A state database with VIN provisioned, the gateway's registry on it (loaded) and an
    ingest service that looks tenures up there, as ``telematics gateway`` wires them."""
    database = StateDatabase(state_db_url)
    database.upgrade()
    repo = AccountRepository(database)
    account = repo.create_account("organization", "first", now=0)
    provision(repo, account.id, NOW - 60_000)
    registry = VehicleRegistry(state_db_url)
    registry.open()
    store = SqliteTelemetryStore(tmp_path / "telemetry.db")
    service = IngestService(
        IngestSettings(),
        store,
        clock_ms=lambda: NOW + 20,
        tenure_of=registry.tenure_of,
        current_tenures=registry.current_tenures,
    )
    try:
        yield _Wired(repo, store, service)
    finally:
        store.close()
        registry.close()
        database.dispose()


def test_a_sample_stamped_after_the_revocation_is_refused_not_filed_in_the_ended_period(
    wired: _Wired,
) -> None:
    """Found from outside: a sample stamped 7 ms after ``revoked_at`` was stored in the
    ended period. The unit is still connected for a moment after the revocation commits
    (until the broker drops its login) and the registry's map still admits it, so its
    samples went into the open batch with the old period, and at the commit a VIN gone
    from the map kept that period. Now a sample is filed by its own time against the
    period's end as well as its start: stamped before ``revoked_at`` it is kept (a unit's
    buffer arriving late), at or after it is quarantined as ``after_revocation``, under
    the ended period's number so an operator finds it by VIN."""
    service, store = wired.service, wired.store

    async def scenario() -> None:
        service._receive(*sample_message(VIN, 1, NOW - 100), None, {})
        wired.repo.revoke_vehicle(VIN, now=NOW)  # the registry's periodic reload has not run
        service._receive(*sample_message(VIN, 2, NOW - 1), None, {})
        service._receive(*sample_message(VIN, 3, NOW + 7), None, {})
        service._receive(*event_message(VIN, 4, NOW), None, {})
        await service._commit_current()

    asyncio.run(scenario())
    assert speeds(store, VIN, 1) == [(1, 1.0), (2, 1.0)]
    assert store.events_after(0, limit=10, vin=VIN, tenure=1) == []
    refused = store.quarantine(limit=10, vin=VIN)
    assert sorted((q.topic.rsplit("/", 1)[1], q.seq, q.reason, q.tenure) for q in refused) == [
        ("events", 4, "after_revocation", 1),
        ("telemetry", 3, "after_revocation", 1),
    ]
    assert all(f"revoked at {NOW}" in q.detail for q in refused)
    # the operator finds what was refused with its values
    sample = next(q for q in refused if q.seq == 3)
    assert json.loads(sample.payload) == {
        "vin": VIN, "seq": 3, "ts": NOW + 7, "signals": {SPEED: 1.0}
    }  # fmt: skip
    assert store.counters()[("telematics_quarantined_total", "after_revocation")] == 2


def test_a_sample_stamped_between_two_periods_belongs_to_neither(wired: _Wired) -> None:
    """Revoked at NOW, claimed again a second later: a sample stamped in between used to
    be filed in the ended period (``Tenure.of``: everything before the new start is the
    previous holder's). It belongs to nobody; it is quarantined. What the old unit stamped
    before the revocation and what the new one stamps after the claim are filed as before."""
    service, store = wired.service, wired.store
    wired.repo.revoke_vehicle(VIN, now=NOW)
    account = wired.repo.create_account("private", "second", now=0)
    assert provision(wired.repo, account.id, NOW + 1_000) == 2

    async def scenario() -> None:
        for seq, ts in ((8, NOW - 50), (9, NOW + 7), (10, NOW + 999), (1, NOW + 1_000)):
            service._receive(*sample_message(VIN, seq, ts), None, {})
        await service._commit_current()

    asyncio.run(scenario())
    assert speeds(store, VIN, 1) == [(8, 1.0)]
    assert speeds(store, VIN, 2) == [(1, 1.0)]
    refused = store.quarantine(limit=10, vin=VIN)
    assert sorted((q.seq, q.reason, q.tenure) for q in refused) == [
        (9, "after_revocation", 1),
        (10, "after_revocation", 1),
    ]


def test_the_bounds_of_a_period() -> None:
    first = Tenure(1, 100, ended_at=200)
    assert [first.ended_before(ts) for ts in (50, 100, 199, 200, 300)] == [
        None, None, None, 200, 200
    ]  # fmt: skip
    second = Tenure(2, 300, previous_ended_at=200)
    assert [(second.of(ts), second.ended_before(ts)) for ts in (199, 200, 299, 300)] == [
        (1, None), (1, 200), (1, 200), (2, None)
    ]  # fmt: skip
    # a transfer: the next period starts when the previous one ends, no gap
    assert Tenure(2, 300, previous_ended_at=300).ended_before(299) is None
    assert Tenure(3, 300).ended_before(10) is None  # the ends unknown: as before
