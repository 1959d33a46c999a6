"""The job repository and the event log on both backends: a job is stored whole, counts
follow its commands, it finishes with its last command (once, with one event), cancel
touches only what was not sent, a revoked member is refused, and events carry the right
account."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.core.lifecycle import CommandEvent, CommandStatus
from gateway.statedb import AccountRepository, CommandRepository, StateDatabase
from gateway.statedb.events import EventLog
from gateway.statedb.jobs import JobMember, JobRepository, NewJob, Refusal
from gateway.statedb.webhooks import WebhookRepository

VINS = [f"WJOBS{n:012d}" for n in range(1, 5)]


@pytest.fixture
def db(state_db_url: str) -> Iterator[StateDatabase]:
    with StateDatabase(state_db_url) as database:
        database.upgrade()
        yield database


def _world(db: StateDatabase) -> int:
    accounts = AccountRepository(db)
    account = accounts.create_account("organization", "org", now=1)
    for vin in VINS:
        accounts.provision_vehicle(
            vin=vin,
            account_id=account.id,
            label=None,
            mqtt_password_hash=None,
            provisioned_by=None,
            now=1,
        )
    return account.id


def _job(account_id: int, members: list[str], refused: list[str]) -> NewJob:
    return NewJob(
        account_id=account_id,
        created_by=1,
        type="lock",
        params={},
        target={"vins": len(members) + len(refused)},
        now=1000,
        ttl_ms=60_000,
        result_timeout_ms=30_000,
        confirmation="not_applicable",
        members=[JobMember(vin, 1) for vin in members],
        refusals=[Refusal(vin, "not_permitted") for vin in refused],
    )


def test_a_job_counts_its_commands_and_finishes_with_the_last(db: StateDatabase) -> None:
    account = _world(db)
    hooks = WebhookRepository(db)
    hooks.create(
        account_id=account,
        url="http://127.0.0.1:9/x",
        event_types=["command_job.*"],
        secret="s",
        description=None,
        created_by=1,
        now=1,
    )
    jobs, commands, events = JobRepository(db), CommandRepository(db), EventLog(db)
    job, created = jobs.create(_job(account, VINS[:3], VINS[3:]))
    assert job.total == 4
    assert job.counts["queued"] == 3
    assert job.counts["refused"] == 1
    assert {c.job_id for c in created} == {job.id}
    assert jobs.running(account) == 1

    commands.apply(created[0].id, CommandEvent.PUBLISHED, at=1001)
    commands.apply(created[0].id, CommandEvent.UNIT_SUCCEEDED, at=1002)
    commands.apply(created[1].id, CommandEvent.PUBLISHED, at=1003)
    job, cancelled = jobs.cancel(job.id, at=1004)
    assert cancelled == 1
    assert job.cancelled_at == 1004
    assert job.finished_at is None  # the sent one still runs
    assert job.counts["succeeded"] == 1
    assert job.counts["sent"] == 1
    assert job.counts["cancelled"] == 1
    commands.apply(created[1].id, CommandEvent.TTL_ELAPSED, at=1005)
    job_now = jobs.get(job.id)
    assert job_now is not None
    assert job_now.finished_at == 1005
    assert jobs.running(account) == 0

    log = events.after(0)
    assert [e.id for e in log] == sorted(e.id for e in log)
    assert all(e.account_id == account for e in log)
    finished = [e for e in log if e.type == "command_job.finished"]
    assert len(finished) == 1
    assert finished[0].data["counts"]["expired"] == 1
    updates = [e for e in log if e.type == "command.updated"]
    assert {e.data["job_id"] for e in updates} == {job.id}
    # the webhook asked for job events only: created + finished
    deliveries = hooks.deliveries(hooks.page(account_id=account, after_id=None, limit=1)[0].id,
                                  before_id=None, limit=10)  # fmt: skip
    assert sorted(d.event_type for d in deliveries) == [
        "command_job.created",
        "command_job.finished",
    ]


def test_a_member_revoked_before_creation_is_refused(db: StateDatabase) -> None:
    account = _world(db)
    AccountRepository(db).revoke_vehicle(VINS[0], now=2)
    job, created = JobRepository(db).create(_job(account, VINS[:2], []))
    assert [c.vin for c in created] == [VINS[1]]
    assert job.counts["refused"] == 1
    assert JobRepository(db).refusals(job.id)[0].reason == "vehicle_revoked"


def test_revocation_cancels_a_jobs_command_and_finishes_the_job(db: StateDatabase) -> None:
    account = _world(db)
    job, created = JobRepository(db).create(_job(account, VINS[:1], []))
    AccountRepository(db).revoke_vehicle(VINS[0], now=2000)
    after = JobRepository(db).get(job.id)
    assert after is not None
    assert after.finished_at == 2000
    command = CommandRepository(db).get(created[0].id)
    assert command is not None
    assert command.status is CommandStatus.CANCELLED


def test_events_are_pruned_oldest_first(db: StateDatabase) -> None:
    account = _world(db)
    JobRepository(db).create(_job(account, VINS[:2], []))
    JobRepository(db).create(_job(account, VINS[2:], []))
    log = EventLog(db)
    first, newest = log.after(0)  # a job's new commands are announced by the job, not one by one
    assert log.prune(before_at=10**12) == 1
    assert log.after(0) == [newest]  # the newest stays: its id must never come back
    assert first.id < newest.id


def test_an_event_id_is_never_given_again_after_a_prune(db: StateDatabase) -> None:
    """Security review 4: on SQLite the events table had no AUTOINCREMENT, so once the
    prune had emptied it (a day without events) the next event got id 1 again. Every
    reader that keeps its place by id (the integrations' MQTT fan-out cursor, the API
    processes' live streams, a client's ``Last-Event-ID``) then skipped every new event up
    to the old highest id: alerts were not published to the organizations' integrations."""
    account = _world(db)
    jobs, log = JobRepository(db), EventLog(db)
    jobs.create(_job(account, VINS[:1], []))
    jobs.create(_job(account, VINS[1:2], []))
    highest = log.last_id()
    assert highest >= 2
    log.prune(before_at=10**15)
    jobs.create(_job(account, VINS[2:3], []))
    assert log.last_id() > highest
    assert [e.id for e in log.after(0)] == [highest, log.last_id()]  # the newest was kept
