"""Issue 17: what makes a command's latency independent of telemetry load, and what
measures it (docs/decisions/0022-command-latency-under-ingest.md).

* the state database's write queue lets a person's transaction go before background work
  (the fleet rules worker) that is already waiting;
* the trace file (command stages the database does not hold, event-loop lag) and the
  benchmark's stage arithmetic over it;
* the benchmarks stop every child process when they are stopped (SIGTERM).
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import os
import pstats
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event

from gateway.bench.commands import SIDE_STAGES, STAGES, _stages
from gateway.bench.probes import CpuWindow
from gateway.commands.service import CommandService, CommandSettings
from gateway.commands.writer import GroupWriter
from gateway.core.lifecycle import CommandEvent, CommandStatus, IllegalTransition
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.commands import CommandRecord, CommandRepository
from gateway.statedb.database import StateDatabase
from gateway.store import open_store
from gateway.trace import PROBE_INTERVAL_S, Trace, read_trace
from schemas.commands import (
    CommandResult,
    ResultStatus,
    command_result_topic,
    encode_command_result,
)


def _database(tmp_path: Path) -> StateDatabase:
    db = StateDatabase(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade()
    return db


def _queued(repo: CommandRepository, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        record, _ = repo.create(
            vin="WVWZZZ1JZXW000001",
            type="lock",
            params={},
            now=1_000,
            ttl_ms=10**12,
            result_timeout_ms=30_000,
        )
        ids.append(record.id)
    return ids


def _send(repo: CommandRepository, command_id: str) -> CommandRecord:
    return repo.apply(command_id, CommandEvent.PUBLISHED, at=5)


def test_writes_handed_over_together_commit_together_in_order(tmp_path: Path) -> None:
    db = _database(tmp_path)
    repo = CommandRepository(db)
    (command_id,) = _queued(repo, 1)
    others = _queued(repo, 5)
    writer = GroupWriter(db)

    async def main() -> list[CommandRecord | BaseException]:
        writer.start()
        with db.write():  # the writer waits for this: everything queues behind it
            futures = [
                writer.submit(lambda: repo.apply(command_id, CommandEvent.PUBLISHED, at=2)),
                writer.submit(lambda: repo.apply(command_id, CommandEvent.UNIT_ACCEPTED, at=3)),
                writer.submit(lambda: repo.apply(command_id, CommandEvent.PUBLISHED, at=4)),
                *[writer.submit(functools.partial(_send, repo, i)) for i in others],
            ]
            await asyncio.sleep(0.3)
            assert not any(f.done() for f in futures)  # nothing is answered before commit
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await writer.stop()
        return outcomes

    outcomes = asyncio.run(main())
    # in order: sent, then accepted; the illegal third fails alone
    assert isinstance(outcomes[2], IllegalTransition)
    assert [o.status for o in outcomes if isinstance(o, CommandRecord)] == [
        CommandStatus.SENT,
        CommandStatus.ACCEPTED,
        *[CommandStatus.SENT] * 5,
    ]
    assert writer.writes == 8
    assert writer.transactions <= 2  # the first may have gone alone before the rest queued
    stored = repo.get(command_id)
    assert stored is not None
    assert stored.status is CommandStatus.ACCEPTED
    assert [t.status for t in repo.transitions(command_id)] == [
        CommandStatus.QUEUED,
        CommandStatus.SENT,
        CommandStatus.ACCEPTED,
    ]
    db.dispose()


def test_a_commands_writes_are_few_statements_and_a_lone_write_no_savepoint(
    tmp_path: Path,
) -> None:
    """Decision 0036: the writer's statements were most of the API's CPU per command (33
    per command through the ORM). A command's life (created with a key and sent at once,
    accepted, succeeded; each write alone, as on a calm machine) now takes 3 transactions
    of 19 statements in all (20 with the API's audit entry), and a write alone opens no
    savepoint. Fails on the ORM version (a savepoint per write, 32 statements)."""
    db = _database(tmp_path)
    accounts = AccountRepository(db)
    account = accounts.create_account("organization", "org", now=1)
    vin = "WVWZZZ1JZXW000001"
    accounts.provision_vehicle(
        vin=vin, account_id=account.id, label=None, mqtt_password_hash=None,
        provisioned_by=None, now=1,
    )  # fmt: skip
    repo = CommandRepository(db)
    writer = GroupWriter(db)
    statements: list[str] = []
    commits: list[str] = []

    async def life(key: str, now: int) -> str:
        record, _ = await writer.write(
            lambda: repo.create(
                vin=vin,
                type="lock",
                params={},
                now=now,
                ttl_ms=60_000,
                result_timeout_ms=30_000,
                idempotency_key=key,
                requested_by="user:1",
                sent_at=now,
            )
        )
        for step in (CommandEvent.UNIT_ACCEPTED, CommandEvent.UNIT_SUCCEEDED):
            await writer.write(functools.partial(repo.apply, record.id, step, at=now + 1))
        return record.id

    def on_sql(sql: str) -> None:
        # SQLite's own trace: it also sees the statements run on the DBAPI cursor
        # (gateway.statedb.prepared), which SQLAlchemy's statement events do not
        word = sql.split()[0].upper()
        (commits if word == "COMMIT" else statements).append(word)

    def on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(on_sql)

    async def main() -> str:
        writer.start()
        await life("first", 1_000)  # the first reads what later ones keep
        for engine in db.engines:  # reads' and writes' (decision 0041)
            engine.dispose()  # new connections, each with the trace
            event.listen(engine, "connect", on_connect)
        command_id = await life("second", 2_000)
        for engine in db.engines:
            event.remove(engine, "connect", on_connect)
            engine.dispose()
        await writer.stop()
        return command_id

    command_id = asyncio.run(main())
    stored = repo.get(command_id)
    db.dispose()
    assert stored is not None
    assert stored.status is CommandStatus.SUCCEEDED
    assert "SAVEPOINT" not in statements
    assert len(commits) == 3
    # BEGIN 3; INSERT 8 (the command, its two history rows (one executemany, which SQLite's
    # trace shows as two executions), three events, two more history rows); UPDATE 2;
    # SELECT 7 (the key, the period, the locked command twice, the account's webhooks three
    # times). The ORM took 32 (no audit entry here).
    assert len(statements) <= 20, statements


def test_a_commands_writes_cost_few_python_calls(tmp_path: Path) -> None:
    """Decision 0041: the CPU of a command's writes is mostly Python, so their function
    calls are a measure of it that a busy machine does not disturb. The three writes of a
    command (create with its key and sent, accepted, succeeded) made 3,324 calls while a
    "begin" event listener on the engine had SQLAlchemy dispatch every connection event on
    every statement; 2,008 with the BEGIN emitted by the dialect (1,878 on a later main).
    Decision 0045: the command path's statements run on the DBAPI cursor, compiled once
    (gateway.statedb.prepared): 1,383. Decision 0051: their transactions without an ORM
    session (``StateDatabase.write_transaction``): 981. Fails with the session (1,383)."""
    db = _database(tmp_path)
    accounts = AccountRepository(db)
    account = accounts.create_account("organization", "org", now=1)
    vin = "WVWZZZ1JZXW000001"
    accounts.provision_vehicle(
        vin=vin, account_id=account.id, label=None, mqtt_password_hash=None,
        provisioned_by=None, now=1,
    )  # fmt: skip
    repo = CommandRepository(db)

    def life(i: int) -> None:
        record, _ = repo.create(
            vin=vin, type="lock", params={}, now=1_000 + i, ttl_ms=60_000,
            result_timeout_ms=30_000, idempotency_key=f"k{i}", requested_by="user:1",
            sent_at=1_000 + i,
        )  # fmt: skip
        for step in (CommandEvent.UNIT_ACCEPTED, CommandEvent.UNIT_SUCCEEDED):
            repo.apply(record.id, step, at=2_000 + i)

    for i in range(5):  # the first ones read what later ones keep (and warm the caches)
        life(i)
    profile = cProfile.Profile()
    profile.enable()
    for i in range(5, 25):
        life(i)
    profile.disable()
    db.dispose()
    calls = pstats.Stats(profile).total_calls / 20  # type: ignore[attr-defined]
    assert calls < 1_100, f"{calls:.0f} Python calls per command's writes"


def test_the_command_services_loop_runs_while_the_state_database_is_locked(
    tmp_path: Path,
) -> None:
    """Before issue 17 the transition was written on the event loop: while another writer
    held the database (the fleet rules worker, a slow fsync) every request and answer of
    the API process waited."""
    db = _database(tmp_path)
    repo = CommandRepository(db)
    (command_id,) = _queued(repo, 1)
    service = CommandService(
        CommandSettings(state_db_url=f"sqlite:///{tmp_path / 'state.db'}"),
        repo,
        tmp_path / "telemetry.db",
    )
    release = threading.Event()

    def someone_else_writes() -> None:
        with db.write():
            release.wait(10)

    async def main() -> tuple[int, CommandStatus]:
        service.writer.start()
        other = threading.Thread(target=someone_else_writes)
        other.start()
        await asyncio.sleep(0.1)
        cancel = asyncio.ensure_future(service.cancel(command_id))
        ticks = 0
        for _ in range(30):  # 0.3 s of 10 ms turns of the loop
            await asyncio.sleep(0.01)
            ticks += 1
        assert not cancel.done()
        release.set()
        record = await cancel
        other.join(10)
        await service.writer.stop()
        return ticks, record.status

    ticks, status = asyncio.run(main())
    assert ticks == 30
    assert status is CommandStatus.CANCELLED
    db.dispose()


def test_a_foreground_writer_goes_before_waiting_background_writers(tmp_path: Path) -> None:
    db = StateDatabase(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade()
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def first() -> None:
        with db.write():
            holding.set()
            release.wait(10)
            order.append("first")

    def writer(name: str, background: bool) -> None:
        with db.write(background=background):
            order.append(name)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(10)
    for i in range(3):  # background work queued first ...
        threads.append(threading.Thread(target=writer, args=(f"background-{i}", True)))
        threads[-1].start()
    time.sleep(0.2)
    threads.append(threading.Thread(target=writer, args=("person", False)))  # ... then a person
    threads[-1].start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(10)
    db.dispose()
    assert order[:2] == ["first", "person"]
    assert sorted(order[2:]) == ["background-0", "background-1", "background-2"]


def test_a_background_writer_still_gets_the_lock_when_nobody_waits(tmp_path: Path) -> None:
    db = StateDatabase(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade()
    done = threading.Event()

    def background() -> None:
        with db.write(background=True):
            done.set()

    t = threading.Thread(target=background)
    t.start()
    assert done.wait(5)
    t.join(5)
    db.dispose()


def test_the_trace_records_stages_and_the_loops_lag(tmp_path: Path) -> None:
    path = tmp_path / "trace.tsv"

    async def main() -> None:
        trace = Trace(path)
        trace.start()
        trace.mark("c-1", "result", "accepted 1764230400350")
        await asyncio.sleep(PROBE_INTERVAL_S * 2)
        time.sleep(0.3)  # noqa: ASYNC251 (the loop is blocked: the probe must see it late)
        await asyncio.sleep(PROBE_INTERVAL_S * 2)
        await trace.stop()

    asyncio.run(main())
    with path.open("a") as f:
        f.write("1764230400999.0\tlag\t-")  # a torn last line is skipped
    rows = read_trace(path)
    assert ("result", "c-1", "accepted 1764230400350") in [(s, k, d) for _, s, k, d in rows]
    lags = [float(d) for _, s, _, d in rows if s == "lag"]
    assert max(lags) >= 200  # the 300 ms block, less the probe's own sleep
    assert all(lag >= 0 for lag in lags)


def test_a_disabled_trace_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        trace = Trace(None)
        trace.start()
        trace.mark("c-1", "result", "accepted 1")
        await trace.stop()

    asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


def test_the_stages_add_up_to_the_commands_latency() -> None:
    sent = {"c-1": (1000.0, 1010.0)}
    # status, created, sent_at, unit_accepted_at, accepted_at, succeeded_at
    rows = {"c-1": ("succeeded", 1004, 1006, 1020, 1025, 1060)}
    trace = [
        (1021.0, "result", "c-1", "accepted 1020"),
        (1030.0, "recorded", "c-1", "accepted"),
        (1050.0, "result", "c-1", "succeeded 1045"),
        (1058.0, "result", "c-1", "succeeded 1045"),  # a redelivery: the first one counts
        (1062.0, "recorded", "c-1", "succeeded"),
    ]
    stages = _stages(sent, rows, trace)
    assert list(stages) == [*STAGES, *SIDE_STAGES]
    got = {k: v.p50_ms for k, v in stages.items()}
    assert got == {
        "request": 4,
        "store": 2,
        "to_unit": 14,
        "unit_work": 25,
        "succeeded_in": 5,
        "succeeded_record": 12,
        "accepted_in": 1,
        "accepted_record": 9,
    }
    assert sum(got[k] for k in STAGES) == 1062 - 1000


def test_the_cpu_window_sees_a_busy_process() -> None:
    window = CpuWindow({"me": os.getpid(), "me.main": (os.getpid(), threading.get_native_id())})
    spent = time.process_time() + 0.3  # CPU time, however busy the machine is
    while time.process_time() < spent:
        pass
    figures = window.end()
    cpu_seconds = figures.processes["me"] * figures.seconds / 100
    assert 0.25 <= cpu_seconds <= 0.5
    # the thread's own figure; a thread is not counted twice in what "others" took
    assert 0.25 <= figures.processes["me.main"] * figures.seconds / 100 <= 0.5
    assert figures.others == pytest.approx(
        max(0.0, figures.machine - figures.processes["me"]), abs=0.2
    )
    assert figures.machine >= figures.processes["me"] * 0.9
    assert figures.cores >= 1


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                child = int(stat.parent.name)
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_command_bench_stops_its_children(signum: int) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "gateway", "bench", "commands", "--reps", "1", "--vehicles", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        children: set[int] = set()
        while time.monotonic() < deadline:  # broker, gateway, API, simulator
            children |= _descendants(bench.pid)
            if len(children) >= 4:
                break
            time.sleep(0.2)
        assert len(children) >= 4, children
        time.sleep(1.0)
        children |= _descendants(bench.pid)
        bench.send_signal(signum)
        assert bench.wait(60) == 128 + signum
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.2)
        assert [p for p in children if _alive(p)] == []
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_the_command_route_resolves_few_dependants_per_request(tmp_path: Path) -> None:
    """Decision 0058: FastAPI solves every dependant of a route, and each one's own
    dependants, again on each request (its cache saves the call, not the walk): 27 % of
    the event loop's CPU per command in decision 0051's profile. The create route took the
    auth context and the caller's audit trail as dependencies too (``Auth``,
    ``CallerAudit``: the latter repeats the caller's tree), 10 dependants; now the caller and
    the command service, 4; the checks and the OpenAPI entry are the same (test_authz,
    test_api's docs_and_openapi)."""
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from gateway.api.app import create_app
    from gateway.api.settings import ApiSettings

    def walked(dependant: Dependant) -> int:
        return sum(1 + walked(sub) for sub in dependant.dependencies)

    app = create_app(ApiSettings(db_path=tmp_path / "telemetry.db"))
    (route,) = [
        r
        for r in app.state.api_routes
        if isinstance(r, APIRoute)
        and r.path == "/v1/vehicles/{vin}/commands"
        and "POST" in (r.methods or ())
    ]
    assert walked(route.dependant) <= 4


def test_a_ticks_confirmation_verdicts_share_one_commit(tmp_path: Path) -> None:
    """Decision 0064: the confirmation check wrote each verdict and waited for its commit
    before handing over the next, so a tick with N commands to judge cost N fsyncs in turn
    (at 25 commands/s about a dozen a tick). Now they are handed over together and commit
    together, in the same order, each one's command woken. Fails on main: 6 transactions."""
    db = _database(tmp_path)
    repo = CommandRepository(db)
    ids = _queued(repo, 6)
    for command_id in ids:
        repo.apply(command_id, CommandEvent.PUBLISHED, at=2_000)
        repo.apply(command_id, CommandEvent.UNIT_ACCEPTED, at=3_000)
        repo.apply(command_id, CommandEvent.UNIT_SUCCEEDED, at=4_000)
    assert sorted(r.id for r in repo.awaiting_confirmation()) == sorted(ids)
    open_store(tmp_path / "telemetry.db").close()  # an empty telemetry store
    # long after the confirmation window, with no telemetry stored: all "unconfirmed"
    service = CommandService(
        CommandSettings(state_db_url=f"sqlite:///{tmp_path / 'state.db'}"),
        repo,
        tmp_path / "telemetry.db",
        clock_ms=lambda: 10**9,
    )

    async def main() -> tuple[int, int, list[bool]]:
        service.writer.start()
        events = [service.changed(i) for i in ids]
        before = service.writer.transactions
        await service._tick()
        await service.writer.stop()
        return (
            service.writer.transactions - before,
            service.writer.writes,
            [e.is_set() for e in events],
        )

    transactions, writes, woken = asyncio.run(main())
    assert writes == 6
    assert transactions == 1
    assert woken == [True] * 6
    assert repo.awaiting_confirmation() == []
    for command_id in ids:
        stored = repo.get(command_id)
        assert stored is not None
        assert stored.confirmation == "unconfirmed"
    db.dispose()


def test_a_units_accepted_and_succeeded_share_one_commit(tmp_path: Path) -> None:
    """Decision 0064, "One commit per answer pair": the writer picked a unit's 'accepted' up
    alone the moment it was handed over and its 'succeeded', arriving right behind it, waited
    for that fsync and committed alone: two commits per command. An 'accepted' now lets the
    writer wait (briefly) for the answer behind it. Fails on main: 2 transactions."""
    db = _database(tmp_path)
    repo = CommandRepository(db)
    (command_id,) = _queued(repo, 1)
    _send(repo, command_id)
    open_store(tmp_path / "telemetry.db").close()
    service = CommandService(
        CommandSettings(state_db_url=f"sqlite:///{tmp_path / 'state.db'}"),
        repo,
        tmp_path / "telemetry.db",
    )
    vin = "WVWZZZ1JZXW000001"
    topic = command_result_topic(vin)
    answers = [
        encode_command_result(CommandResult(command_id, vin, status, 10_000 + i))
        for i, status in enumerate((ResultStatus.ACCEPTED, ResultStatus.SUCCEEDED))
    ]

    async def main() -> tuple[int, list[int]]:
        service.writer.start()
        before = service.writer.transactions
        # as gmqtt does: each message in its own task, the second one arriving a fraction
        # of a millisecond after the first (the unit's answers: 'unit_work' p50 0 ms)
        first = asyncio.create_task(service._on_message(None, topic, answers[0], 1, None))
        await asyncio.sleep(0)  # the first is handed to the writer
        # the loop busy with the second for 0.3 ms (asyncio's sleep is 1-ms-grained)
        time.sleep(0.0003)  # noqa: ASYNC251 - on purpose: the loop is busy, not waiting
        second = asyncio.create_task(service._on_message(None, topic, answers[1], 1, None))
        codes = list(await asyncio.gather(first, second))
        await service.writer.stop()
        return service.writer.transactions - before, codes

    transactions, codes = asyncio.run(main())
    assert codes == [0, 0]
    assert transactions == 1
    assert [t.status for t in repo.transitions(command_id)] == [
        CommandStatus.QUEUED,
        CommandStatus.SENT,
        CommandStatus.ACCEPTED,
        CommandStatus.SUCCEEDED,
    ]
    db.dispose()


def test_a_lingering_writes_failure_fails_it_alone_and_a_lone_one_waits_little(
    tmp_path: Path,
) -> None:
    """The wait for the write behind a ``follows`` one: the two share a transaction, the
    one that fails fails alone; a ``follows`` write nobody follows still commits, alone,
    after the short wait."""
    db = _database(tmp_path)
    repo = CommandRepository(db)
    (command_id,) = _queued(repo, 1)
    (lone,) = _queued(repo, 1)
    writer = GroupWriter(db)

    async def main() -> tuple[list[CommandRecord | BaseException], int, float]:
        writer.start()
        failing = writer.submit(
            lambda: repo.apply(command_id, CommandEvent.UNIT_ACCEPTED, at=3), follows=True
        )
        time.sleep(0.0003)  # noqa: ASYNC251 - on purpose, as above
        sent = writer.submit(functools.partial(_send, repo, command_id))
        outcomes = await asyncio.gather(failing, sent, return_exceptions=True)
        together = writer.transactions
        started = time.perf_counter()
        await writer.submit(functools.partial(_send, repo, lone), follows=True)
        took = time.perf_counter() - started
        await writer.stop()
        return list(outcomes), together, took

    outcomes, together, took = asyncio.run(main())
    assert isinstance(outcomes[0], IllegalTransition)  # not sent yet: refused, alone
    assert isinstance(outcomes[1], CommandRecord)
    assert outcomes[1].status is CommandStatus.SENT
    assert together == 1
    assert writer.writes == 3
    assert writer.transactions == 2
    assert took < 1.0  # the wait is LINGER_S (1.5 ms), plus the commit; generous for load
    db.dispose()
