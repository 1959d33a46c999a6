"""``telematics bench commands``: how long from the API call to ``succeeded``.

Runs the product as deployed (a private Mosquitto, ``telematics gateway``, ``telematics api``
with its command service, ``telematics fleet-worker`` as ``telematics up`` runs them, and
``python -m device_sim`` with 100 simulated units, each its own MQTT connection), sends
commands over HTTP to the 100 online vehicles, and reads the time each command reached
``succeeded`` from the transitions the command service recorded (same machine, same clock),
so measuring adds no polling load to the API.

Phases: ingest idle, then ingest at each of ``--loads`` (50 % and 80 %) of its maximum rate
(measured first in the same run by :mod:`device_sim.loadgen` publishing as fast as the
gateway acknowledges); ``--reps`` repetitions (3), each from a fresh start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway import metrics
from gateway.bench.client import KeepAliveClient
from gateway.bench.ingest import LoadProcess
from gateway.bench.jsonout import strict_json
from gateway.bench.probes import CpuFigures, CpuWindow, percentile, stop_children_on_signals, worst
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.errors import ConfigurationError
from gateway.trace import read_trace

__all__ = ["CommandBenchResult", "add_arguments", "run_commands_bench", "run_from_args"]

#: safe while driving, and each one a different path through the simulated vehicle
BENCH_COMMANDS = (
    {"type": "lock"},
    {"type": "horn_and_lights"},
    {"type": "climate_start", "params": {"target_temperature_c": 21.5}},
    {"type": "locate"},
    {"type": "request_diagnostics"},
)


#: the stages of one command, in order, each the time from the previous mark to its own;
#: they add up to the command's latency until its ``succeeded`` was recorded. Clocks: the
#: benchmark's (the request), the unit's own (its answers' ``ts``), the API process's (the
#: rest), all on this one machine. "request": HTTP, authentication, admission (the
#: telemetry read) until the command's time of creation; "store": the create transaction
#: (its wait for the state database's write lock, its fsync) and the start of dispatch (0
#: for a command stored and recorded ``sent`` in one transaction: its commit is then in
#: "to_unit");
#: "to_unit": the ``sent`` transaction, the publish, the broker and the unit until it
#: accepted; "unit_work": the unit, accepted to succeeded; "succeeded_in": the broker, the
#: command service's socket and event loop until the answer is read; "succeeded_record":
#: the in-order lock (behind earlier answers) and the transition's transaction.
STAGES = ("request", "store", "to_unit", "unit_work", "succeeded_in", "succeeded_record")
#: the same two steps for the ``accepted`` answer, which overlap the chain above
SIDE_STAGES = ("accepted_in", "accepted_record")


@dataclass(frozen=True, slots=True)
class Spread:
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(
            p50_ms=round(percentile(values, 0.5), 1),
            p99_ms=round(percentile(values, 0.99), 1),
            max_ms=round(max(values, default=float("nan")), 1),
        )


@dataclass(frozen=True, slots=True)
class PhaseFigures:
    name: str
    #: the paced ingest rate during the phase (0: idle)
    ingest_samples_per_s: float
    commands: int
    succeeded: int
    other_final: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float
    #: API call -> its 201 answer, as the client saw it
    response: Spread
    #: stage name (STAGES) -> its spread; empty without a trace
    stages: dict[str, Spread]
    #: the API process's event loop (the command service's too): oversleep of a 50 ms sleep
    loop_lag: Spread
    cpu: CpuFigures
    #: the API process's CPU time per command (all its threads; the fleet rules worker is a
    #: process of its own since decision 0029): a figure a busy machine disturbs less than a
    #: latency
    api_cpu_ms_per_command: float
    #: the command writer's grouped transactions during the phase: how many, writes per
    #: transaction, the wait for the write lock and the transaction after it
    commits: int
    writes_per_commit: float
    commit_wait: Spread
    commit_took: Spread
    #: samples the gateway committed per second during the phase (the paced load's target
    #: is ``ingest_samples_per_s``; on a starved machine it may fall short)
    ingest_achieved_samples_per_s: float


@dataclass(frozen=True, slots=True)
class IngestPair:
    """One with-commands ingest maximum and the without-commands ones either side of it
    (samples/s): the machine's drift between phases is as large as the commands' effect, so
    each with-commands phase is compared with the mean of its two neighbours (decision
    0045)."""

    without_before: float
    with_commands: float
    without_after: float
    #: CPU in each of the three phases (decision 0064): what the commands cost each process
    #: while ingest runs flat out, and what others on the machine took meanwhile (a pair's
    #: ratio moves with that)
    cpu_without_before: CpuFigures | None = None
    cpu_with: CpuFigures | None = None
    cpu_without_after: CpuFigures | None = None
    #: commands sent during the with-commands phase's CPU window
    commands_in_window: int = 0

    @property
    def without(self) -> float:
        return (self.without_before + self.without_after) / 2

    @property
    def ratio(self) -> float:
        return self.with_commands / self.without if self.without > 0 else float("nan")

    def command_cpu_ms(self) -> dict[str, float]:
        """Each process's CPU per command in the with-commands phase beyond its rate in the
        two phases either side (ms; a process that does less ingest work with commands
        flowing, as the gateway and the broker do, shows that saving as negative): what
        the commands take from the cores ingest needs. Empty without the CPU figures."""
        before, with_, after = self.cpu_without_before, self.cpu_with, self.cpu_without_after
        if before is None or with_ is None or after is None or not self.commands_in_window:
            return {}
        names = [*with_.processes, "others"]
        out: dict[str, float] = {}
        for name in names:
            if name == "others":
                rates = (before.others, with_.others, after.others)
            elif name in before.processes and name in after.processes:
                rates = (before.processes[name], with_.processes[name], after.processes[name])
            else:
                continue
            extra = rates[1] - (rates[0] + rates[2]) / 2  # % of a core
            out[name] = round(extra * 10 * with_.seconds / self.commands_in_window, 2)
        return out


@dataclass(frozen=True, slots=True)
class CommandBenchResult:
    vehicles: int
    commands_per_phase: int
    rate_per_s: float
    #: the mean of the without-commands ingest maxima (the loads are fractions of it)
    ingest_max_samples_per_s: float
    #: the mean of the same ingest measured while commands flow at ``rate_per_s``
    ingest_max_with_commands_samples_per_s: float
    #: issue 17's ratio: every with-commands phase's samples over those of the mean of its
    #: neighbours without, pooled over the pairs (as one longer measurement of each)
    ingest_ratio_with_commands: float
    phases: list[PhaseFigures]
    #: the alternating ingest maxima: without, with, without, ... (``--pairs`` with)
    ingest_pairs: list[IngestPair] = dataclasses.field(default_factory=list)

    @property
    def ingest_ratio_each(self) -> list[float]:
        return [round(p.ratio, 3) for p in self.ingest_pairs]

    @property
    def ok(self) -> bool:
        return all(p.succeeded == p.commands for p in self.phases)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vehicles", type=int, default=100, help="simulated units (default: 100)")
    p.add_argument(
        "--commands",
        type=int,
        default=400,
        help="commands per phase; a phase lasts COMMANDS / RATE seconds (default: 400)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=25.0,
        help="commands per second, sent open loop like many app users (default: 25)",
    )
    p.add_argument(
        "--loads",
        default="0.5,0.8",
        metavar="LIST",
        help="ingest loads of the phases under ingest, as fractions of the maximum measured "
        "in the same run (default: 0.5,0.8)",
    )
    p.add_argument(
        "--ingest-samples",
        type=int,
        default=100_000,
        help="samples of each ingest-maximum measurement (default: 100000)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="with-commands ingest maxima per repetition, each between two without (default: "
        "3, i.e. without, with, without, with, without, with, without)",
    )
    p.add_argument(
        "--reps", type=int, default=3, help="repetitions, each from a fresh start (default: 3)"
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )


def run_from_args(args: argparse.Namespace) -> int:
    loads = [float(x) for x in str(args.loads).split(",") if x.strip()]
    runs: list[CommandBenchResult] = []
    with stop_children_on_signals():
        for rep in range(1, args.reps + 1):
            _say(True, f"repetition {rep} of {args.reps}")
            result = run_commands_bench(
                vehicles=args.vehicles,
                commands=args.commands,
                rate=args.rate,
                loads=loads,
                ingest_samples=args.ingest_samples,
                pairs=args.pairs,
            )
            _print(result, f"repetition {rep}")
            runs.append(result)
    summary = _worst(runs)
    _print_worst(summary)
    if args.json:
        print(strict_json({"runs": [_as_json(r) for r in runs], "worst": summary}), flush=True)
    return 0 if all(r.ok for r in runs) else 1


def _as_json(r: CommandBenchResult) -> dict[str, Any]:
    out = asdict(r)
    out["ingest_pairs"] = [
        {**asdict(p), "ratio": round(p.ratio, 3), "command_cpu_ms": p.command_cpu_ms()}
        for p in r.ingest_pairs
    ]
    return out


def _worst(runs: list[CommandBenchResult]) -> dict[str, Any]:
    """The worst of each figure over the repetitions, and its spread (worst / best)."""
    each = [ratio for r in runs for ratio in r.ingest_ratio_each]
    out: dict[str, Any] = {
        "ingest_ratio_with_commands": worst(
            [r.ingest_ratio_with_commands for r in runs], higher_is_worse=False
        ),
        "ingest_ratio_with_commands_each_run": [r.ingest_ratio_with_commands for r in runs],
        #: every pair of every run: the spread a single pair's ratio has on this machine
        "ingest_ratio_pairs": each,
        "ingest_max_samples_per_s": [r.ingest_max_samples_per_s for r in runs],
    }
    for i, phase in enumerate(runs[0].phases if runs else []):
        p99s = [r.phases[i].p99_ms for r in runs]
        out[phase.name] = {
            "p50_ms": worst([r.phases[i].p50_ms for r in runs]),
            "p99_ms": worst(p99s),
            "max_ms": worst([r.phases[i].max_ms for r in runs]),
            "p99_each_ms": p99s,
            "loop_lag_max_ms": worst([r.phases[i].loop_lag.max_ms for r in runs]),
            "api_cpu_ms_per_command": worst([r.phases[i].api_cpu_ms_per_command for r in runs]),
            "succeeded": sum(r.phases[i].succeeded for r in runs),
            "commands": sum(r.phases[i].commands for r in runs),
        }
    return out


def _print(r: CommandBenchResult, title: str) -> None:
    lines = [
        f"\ncommand benchmark, {title}: {r.commands_per_phase} commands per phase to "
        f"{r.vehicles} online units, {r.rate_per_s:g}/s; API call -> succeeded",
        f"  ingest maximum {r.ingest_max_samples_per_s:,.0f} samples/s; with commands at "
        f"{r.rate_per_s:g}/s {r.ingest_max_with_commands_samples_per_s:,.0f} "
        f"(ratio {r.ingest_ratio_with_commands:.3f}, pooled over {len(r.ingest_pairs)} pairs)",
        *[
            f"    pair {i}: without {p.without_before:,.0f}, with {p.with_commands:,.0f}, "
            f"without {p.without_after:,.0f}: ratio {p.ratio:.3f}"
            for i, p in enumerate(r.ingest_pairs, 1)
        ],
    ]
    for i, pair in enumerate(r.ingest_pairs, 1):
        for label, cpu in (("before", pair.cpu_without_before), ("with", pair.cpu_with),
                           ("after", pair.cpu_without_after)):  # fmt: skip
            if cpu is not None:
                lines.append(f"    pair {i} {label}: {cpu.line()}")
        if costs := pair.command_cpu_ms():
            shown = "  ".join(f"{k} {v:+.2f}" for k, v in costs.items() if "." not in k)
            lines.append(
                f"    pair {i}: CPU per command beyond the neighbours' rate, ms "
                f"({pair.commands_in_window} commands): {shown}"
            )
    if r.ingest_pairs:
        ratios = r.ingest_ratio_each
        lines.append(
            f"    pairs' ratios {min(ratios):.3f}-{max(ratios):.3f} "
            f"(spread {max(ratios) - min(ratios):.3f})"
        )
    for p in r.phases:
        extra = f"  (not succeeded: {p.other_final})" if p.other_final else ""
        lines += [
            f"  {p.name:<28} p50 {p.p50_ms:7.1f} ms  p99 {p.p99_ms:7.1f} ms  "
            f"max {p.max_ms:7.1f} ms  {p.succeeded}/{p.commands} succeeded{extra}",
            f"    201 answer p50 {p.response.p50_ms:.0f} / p99 {p.response.p99_ms:.0f} ms; "
            f"loop lag p99 {p.loop_lag.p99_ms:.0f} / max {p.loop_lag.max_ms:.0f} ms; "
            f"API CPU {p.api_cpu_ms_per_command:.1f} ms per command; "
            f"ingest committed {p.ingest_achieved_samples_per_s:,.0f} samples/s",
            "    stages p50/p99 ms: "
            + "  ".join(f"{k} {v.p50_ms:.0f}/{v.p99_ms:.0f}" for k, v in p.stages.items()),
            f"    writer: {p.commits} commits, {p.writes_per_commit:.1f} writes each; lock wait "
            f"p50/p99 {p.commit_wait.p50_ms:.0f}/{p.commit_wait.p99_ms:.0f} ms, transaction "
            f"{p.commit_took.p50_ms:.0f}/{p.commit_took.p99_ms:.0f} ms",
            f"    {p.cpu.line()}",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _print_worst(summary: dict[str, Any]) -> None:
    lines = ["\nworst of the repetitions:"]
    for name, figures in summary.items():
        if isinstance(figures, dict):
            each = " / ".join(f"{v:.0f}" for v in figures["p99_each_ms"])
            lines.append(
                f"  {name:<28} p99 {figures['p99_ms']:.1f} ms (each: {each}); "
                f"max {figures['max_ms']:.1f} ms; "
                f"loop lag max {figures['loop_lag_max_ms']:.0f} ms; "
                f"{figures['succeeded']}/{figures['commands']} succeeded"
            )
    ratio = summary.get("ingest_ratio_with_commands", float("nan"))
    runs = summary.get("ingest_ratio_with_commands_each_run", [])
    each_run = " / ".join(f"{v:.3f}" for v in runs)
    pairs = summary.get("ingest_ratio_pairs", [])
    lines.append(f"  ingest with commands / without: {ratio:.3f} (lowest run; each: {each_run})")
    if pairs:
        lines.append(
            f"  single pairs: {min(pairs):.3f}-{max(pairs):.3f} over {len(pairs)} pairs "
            f"(median {percentile(pairs, 0.5):.3f})"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _process(
    argv: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _login(api: str, password: str) -> dict[str, str]:
    """An API key for the administrator (an access token would expire in a long run)."""
    token = httpx.post(
        f"{api}/v1/auth/token",
        data={"grant_type": "password", "username": "admin@localhost", "password": password},
    )
    token.raise_for_status()
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    key = httpx.post(f"{api}/v1/api-keys", json={"name": "bench commands"}, headers=bearer)
    key.raise_for_status()
    return {"Authorization": f"Bearer {key.json()['key']}"}


def _wait(condition: object, what: str, timeout: float = 60, *, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def _stored(db_path: Path) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT value FROM counters WHERE name = ? AND label = ''", (metrics.SAMPLES_STORED,)
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


async def _send(
    api: str,
    vins: list[str],
    count: int,
    rate: float,
    headers: dict[str, str],
    *,
    until: threading.Event | None = None,
) -> dict[str, tuple[float, float]]:
    """POST ``count`` commands round-robin over ``vins`` at ``rate`` per second (open loop:
    a request does not wait for the previous one, as with many app users); return command
    id -> (when its request was sent, when its answer came), wall clock ms. With ``until``,
    commands go on at the rate until it is set (``count`` is then ignored)."""
    sent: dict[str, tuple[float, float]] = {}
    retried: dict[str, int] = {}

    async def one(client: KeepAliveClient, i: int) -> None:
        body = BENCH_COMMANDS[i % len(BENCH_COMMANDS)]
        path = f"/v1/vehicles/{vins[i % len(vins)]}/commands"
        # as an app should: a request whose connection dropped (a keep-alive connection the
        # server closed just as it was reused, on a busy machine) is sent again with the
        # same Idempotency-Key, so it cannot make a second command; its latency counts
        # from the first attempt, as the user waited from there
        key = {"Idempotency-Key": uuid.uuid4().hex}
        started = time.time_ns() / 1_000_000
        for attempt in range(3):
            try:
                r = await client.post_json(path, body, key)
                break
            except OSError as exc:  # dropped, refused, timed out
                if attempt == 2:
                    raise
                retried[type(exc).__name__] = retried.get(type(exc).__name__, 0) + 1
        if r.status_code not in (200, 201):  # 200: the first attempt's, replayed
            raise RuntimeError(f"command request failed: {r.status_code} {r.text}")
        sent[r.json()["id"]] = (started, time.time_ns() / 1_000_000)  # type: ignore[index]

    # a client that costs the machine what an app's would not is a measurement defect:
    # HTTP/1.1 keep-alive on asyncio's streams, not httpx (decision 0058)
    async with KeepAliveClient(api, headers, timeout=300) as client:
        tasks = []
        start = time.perf_counter()
        for i in itertools.count() if until is not None else range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if until is not None and until.is_set():
                break
            tasks.append(asyncio.create_task(one(client, i)))
        await asyncio.gather(*tasks)
    if retried:
        why = ", ".join(f"{k} {v}" for k, v in sorted(retried.items()))
        print(f"[bench]   {sum(retried.values())} request(s) sent again ({why})",
              file=sys.stderr)  # fmt: skip
    return sent


_FINAL = ("succeeded", "failed", "rejected", "expired", "timed_out", "cancelled")


def _finished(state_db: Path, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """Wait until every command of ``ids`` has ended; id -> (status, created_at, sent_at,
    unit_accepted_at, accepted_at, succeeded_at)."""
    db = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    marks = ",".join("?" * len(ids))
    try:

        def ended() -> bool:
            rows = db.execute(f"SELECT status FROM commands WHERE id IN ({marks})", ids)
            return sum(1 for (status,) in rows if status in _FINAL) == len(ids)

        _wait(ended, "every command to finish", timeout=180)
        rows = db.execute(
            "SELECT c.id, c.status, c.created_at, c.sent_at, c.unit_accepted_at, "
            "c.accepted_at, (SELECT t.at FROM command_transitions t WHERE t.command_id = c.id "
            f"AND t.status = 'succeeded') FROM commands c WHERE c.id IN ({marks})",
            ids,
        ).fetchall()
    finally:
        db.close()
    return {row[0]: tuple(row[1:]) for row in rows}


def _stages(
    sent: dict[str, tuple[float, float]],
    rows: dict[str, tuple[Any, ...]],
    trace: list[tuple[float, str, str, str]],
) -> dict[str, Spread]:
    """Each stage's spread over the succeeded commands (see STAGES)."""
    results: dict[tuple[str, str], tuple[float, float]] = {}  # (id, status) -> (unit, in)
    recorded: dict[tuple[str, str], float] = {}
    for at, stage, key, detail in trace:
        status, _, unit_ts = detail.partition(" ")
        if stage == "result" and unit_ts:
            results.setdefault((key, status), (float(unit_ts), at))
        elif stage == "recorded":
            recorded.setdefault((key, status), at)
    values: dict[str, list[float]] = {k: [] for k in (*STAGES, *SIDE_STAGES)}
    for command_id, (status, created, sent_at, _, _, _) in rows.items():
        if status != "succeeded" or command_id not in sent:
            continue
        acc = results.get((command_id, "accepted"))
        suc = results.get((command_id, "succeeded"))
        acc_done = recorded.get((command_id, "accepted"))
        suc_done = recorded.get((command_id, "succeeded"))
        if acc is None or suc is None or acc_done is None or suc_done is None:
            continue
        marks = [sent[command_id][0], created, sent_at, acc[0], suc[0], suc[1], suc_done]
        for name, (a, b) in zip(STAGES, itertools.pairwise(marks), strict=True):
            values[name].append(b - a)
        values["accepted_in"].append(acc[1] - acc[0])
        values["accepted_record"].append(acc_done - acc[1])
    return {k: Spread.of(v) for k, v in values.items() if v}


def _lag(trace: list[tuple[float, str, str, str]], since: float, until: float) -> Spread:
    return Spread.of(
        [float(d) for at, stage, _, d in trace if stage == "lag" and since <= at <= until]
    )


@dataclass(frozen=True, slots=True)
class _Run:
    """One benchmark run's running installation."""

    api: str
    data: Path
    trace: Path
    broker_port: int
    vins: list[str]
    headers: dict[str, str]
    pids: dict[str, int | tuple[int, int]]


def _phase(
    run: _Run, name: str, count: int, rate: float, ingest: LoadProcess | None
) -> PhaseFigures:
    pids: dict[str, int | tuple[int, int]] = dict(run.pids)
    if ingest is not None:
        pids["loadgen"] = ingest.pid
    cpu = CpuWindow(pids)
    since = time.time_ns() / 1_000_000
    started = time.perf_counter()
    stored = _stored(run.data / "telemetry.db")
    sent = asyncio.run(_send(run.api, run.vins, count, rate, run.headers))
    rows = _finished(run.data / "state.db", list(sent))
    seconds = time.perf_counter() - started
    stored = _stored(run.data / "telemetry.db") - stored
    figures = cpu.end()
    time.sleep(1.0)  # the trace is written every half second
    trace = read_trace(run.trace)
    latencies = [r[5] - sent[i][0] for i, r in rows.items() if r[0] == "succeeded"]
    others: dict[str, int] = {}
    for status, *_ in rows.values():
        if status != "succeeded":
            others[status] = others.get(status, 0) + 1
    total = Spread.of(latencies)
    return PhaseFigures(
        name=name,
        ingest_samples_per_s=0.0,
        commands=len(sent),
        succeeded=len(latencies),
        other_final=others,
        p50_ms=total.p50_ms,
        p99_ms=total.p99_ms,
        max_ms=total.max_ms,
        seconds=round(seconds, 2),
        response=Spread.of([b - a for a, b in sent.values()]),
        stages=_stages(sent, rows, trace),
        loop_lag=_lag(trace, since, since + seconds * 1000),
        cpu=figures,
        api_cpu_ms_per_command=round(
            figures.processes.get("api", 0.0) * 10 * figures.seconds / max(1, len(sent)), 2
        ),
        ingest_achieved_samples_per_s=round(stored / seconds, 1),
        **_commits(trace, since, since + seconds * 1000),
    )


def _commits(
    trace: list[tuple[float, str, str, str]], since: float, until: float
) -> dict[str, Any]:
    groups = [
        [float(x) for x in detail.split()]
        for at, stage, _, detail in trace
        if stage == "commit" and since <= at <= until
    ]
    return {
        "commits": len(groups),
        "writes_per_commit": round(sum(g[0] for g in groups) / max(1, len(groups)), 2),
        "commit_wait": Spread.of([g[1] for g in groups]),
        "commit_took": Spread.of([g[2] for g in groups]),
    }


def run_commands_bench(
    *,
    vehicles: int = 100,
    commands: int = 400,
    rate: float = 25.0,
    loads: list[float] | None = None,
    ingest_samples: int = 100_000,
    pairs: int = 3,
) -> CommandBenchResult:
    """One run from a fresh start: broker, gateway, API, simulated units; the phases idle,
    ingest maxima alternating without and with commands (``pairs`` with, each between two
    without), and under each of ``loads``."""
    if shutil.which("mosquitto_pub") is None:
        raise ConfigurationError(
            "mosquitto_pub not found: install it with: sudo apt-get install -y mosquitto-clients"
        )
    workdir = Path(tempfile.mkdtemp(prefix="telematics-bench-commands-"))
    try:
        with _installation(workdir, vehicles) as run:
            phases = _Phases(run, commands, rate)
            _say(True, f"  phase idle: {commands} commands at {rate:g}/s")
            measured = [phases.idle()]
            _say(True, f"  ingest maximum, alternating without and with commands ({pairs} pairs)")
            measured_pairs = phases.ingest_pairs(ingest_samples, max(1, pairs))
            without = [measured_pairs[0].without_before] + [p.without_after for p in measured_pairs]
            maximum = sum(without) / len(without)
            with_commands = sum(p.with_commands for p in measured_pairs) / len(measured_pairs)
            pooled = with_commands / (sum(p.without for p in measured_pairs) / len(measured_pairs))
            _say(True, f"    {maximum:,.0f} and {with_commands:,.0f} samples/s")
            for load in loads if loads is not None else [0.5, 0.8]:
                _say(True, f"  phase ingest at {load:.0%}: {maximum * load:,.0f} samples/s")
                measured.append(phases.under_ingest(load, maximum * load))
        return CommandBenchResult(
            vehicles=vehicles,
            commands_per_phase=commands,
            rate_per_s=rate,
            ingest_max_samples_per_s=round(maximum, 1),
            ingest_max_with_commands_samples_per_s=round(with_commands, 1),
            ingest_ratio_with_commands=round(pooled, 3),
            phases=measured,
            ingest_pairs=measured_pairs,
        )
    finally:
        if os.environ.get("TELEMATICS_BENCH_KEEP"):
            _say(True, f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _installation(workdir: Path, vehicles: int) -> Iterator[_Run]:
    """Broker, gateway, API (tracing) and the simulated units, all online."""
    data = workdir / "data"
    trace = workdir / "api-trace.tsv"
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    # the benchmark logs in as the first administrator, with a password of its own, and
    # switches the per-user and per-vehicle command limits off: it measures the pipeline,
    # not the limits (one user sends 25 commands/s, far above a person's limit)
    admin_password = secrets.token_urlsafe(16)
    api_env = {
        **os.environ,
        "TELEMATICS_ADMIN_PASSWORD": admin_password,
        "TELEMATICS_TRACE_FILE": str(trace),
    }
    with MosquittoProcess(BrokerConfig(port=free_port(), data_dir=workdir / "broker")) as b:
        url = b.url
        with (
            _process(_gateway_argv("gateway", data, url)) as gateway,
            _process(
                [*_gateway_argv("api", data, url), *_api_options(api_port), "--no-fleet-worker"],
                env=api_env,
            ) as ap,
            _process(_fleet_argv(url, vehicles)) as fleet,
            # the rules in their own niced process, as telematics up runs them (decision 0029)
            _process(_gateway_argv("fleet-worker", data, url)[:-2]) as rules,
        ):
            _say(True, f"  waiting for {vehicles} simulated units to come online")
            headers, vins = _wait_online(api, admin_password, fleet, vehicles)
            assert b.pid is not None
            pids: dict[str, int | tuple[int, int]] = {"broker": b.pid, "gateway": gateway.pid}
            pids |= {"api": ap.pid, "units": fleet.pid, "bench": os.getpid()}
            pids |= {"fleet-worker": rules.pid}
            pids |= _api_threads(ap.pid, trace)
            yield _Run(api, data, trace, b.port, vins, headers, pids)


def _api_threads(api_pid: int, trace: Path) -> dict[str, tuple[int, int]]:
    """The API's event loop (its main thread) and command writer threads (and the fleet
    rules thread when it runs in the API), as the trace names them."""
    time.sleep(1.0)  # the trace is written every half second
    threads = {"api.loop": (api_pid, api_pid)}
    for _, stage, _, detail in read_trace(trace):
        name, _, tid = detail.partition(" ")
        if stage == "thread" and tid.isdigit():
            threads[f"api.{name}"] = (api_pid, int(tid))
    return threads


def _gateway_argv(command: str, data: Path, mqtt_url: str) -> list[str]:
    """``python -m gateway COMMAND`` on the benchmark's data directory and broker."""
    return [
        *[sys.executable, "-m", "gateway", command],
        *["--data-dir", str(data), "--log-level", "WARNING", "--mqtt-url", mqtt_url],
    ]


def _api_options(port: int) -> list[str]:
    """The API's port, and the per-user and per-vehicle command limits off."""
    return ["--port", str(port), "--user-command-limit", "off", "--vehicle-command-limit", "off"]


def _fleet_argv(mqtt_url: str, vehicles: int) -> list[str]:
    return [
        *[sys.executable, "-m", "device_sim", "--mqtt-url", mqtt_url],
        *["--vehicles", str(vehicles), "--interval", "1", "--progress", "3600"],
    ]


def _wait_online(
    api: str, admin_password: str, fleet: subprocess.Popen[bytes], vehicles: int
) -> tuple[dict[str, str], list[str]]:
    """Log in and wait until ``vehicles`` units are online; the headers and their VINs."""
    headers: dict[str, str] = {}

    def all_online() -> bool:
        if fleet.poll() is not None:
            raise RuntimeError(f"the simulator exited with {fleet.returncode}")
        try:
            if not headers:
                headers.update(_login(api, admin_password))
            listed = httpx.get(f"{api}/v1/vehicles", params={"limit": 1000}, headers=headers).json()
        except httpx.HTTPError:
            return False
        online = [v["vin"] for v in listed.get("items", []) if v["online"]]
        return len(online) >= vehicles

    _wait(all_online, "the simulated units", timeout=180)
    listed = httpx.get(f"{api}/v1/vehicles", params={"limit": 1000}, headers=headers).json()
    return headers, [v["vin"] for v in listed["items"] if v["online"]][:vehicles]


@dataclass(slots=True)
class _Phases:
    """The measurements of one benchmark run, against its running installation."""

    run: _Run
    commands: int
    rate: float
    #: seq numbers of each load generator start here (a new range per load)
    seq_base: int = 0

    def idle(self) -> PhaseFigures:
        return _phase(self.run, "idle", self.commands, self.rate, None)

    def _next_seq_base(self) -> int:
        self.seq_base += 10_000_000
        return self.seq_base

    def ingest_pairs(self, samples: int, pairs: int) -> list[IngestPair]:
        """Ingest maxima alternating without and with commands: without, (with, without)
        ``pairs`` times; each with-commands phase between its two neighbours, so a drift of
        the machine between phases cancels (to first order) instead of counting as the
        commands' effect (decision 0045)."""
        without = [self.ingest_maximum(samples, with_commands=False)]
        found: list[IngestPair] = []
        for _ in range(pairs):
            with_commands = self.ingest_maximum(samples, with_commands=True)
            without.append(self.ingest_maximum(samples, with_commands=False))
            (before, cpu_before, _), (with_, cpu_with, sent), (after, cpu_after, _) = (
                without[-2],
                with_commands,
                without[-1],
            )
            found.append(IngestPair(before, with_, after, cpu_before, cpu_with, cpu_after, sent))
        return found

    def ingest_maximum(self, samples: int, *, with_commands: bool) -> tuple[float, CpuFigures, int]:
        """Samples per second the gateway stores at most (100 units publishing as fast as
        it acknowledges), optionally while commands flow at the benchmark's rate (from a
        second before the first sample on, so the phase sees them at their steady rate,
        not their client starting); with each process's CPU from the first sample to the
        last and the commands sent meanwhile."""
        telemetry_db = self.run.data / "telemetry.db"
        per_vehicle = max(1, samples // 100)
        stop = threading.Event()
        sender = None
        sent: list[float] = []
        if with_commands:
            sender = threading.Thread(target=self._commands_until, args=(stop, sent), daemon=True)
            sender.start()
            time.sleep(1.0)
        base = _stored(telemetry_db)
        try:
            load = LoadProcess(
                self.run.broker_port, 100, per_vehicle, 1, seq_base=self._next_seq_base()
            )
            cpu = CpuWindow({**self.run.pids, "loadgen": load.pid})
            window_from = time.time_ns() / 1_000_000
            # polled every 10 ms: at ~34,000 samples/s a phase lasts ~3 s, and the 100 ms
            # polls of before put up to 3 % of noise on its end (decision 0045)
            _wait(
                lambda: _stored(telemetry_db) - base >= per_vehicle * 100,
                "ingest",
                300,
                interval=0.01,
            )
            maximum = per_vehicle * 100 / (time.perf_counter() - load.started)
            figures = cpu.end()
            window_to = time.time_ns() / 1_000_000
        finally:
            stop.set()
            if sender is not None:
                sender.join(120)
        load.finish()
        return maximum, figures, sum(1 for t in sent if window_from <= t <= window_to)

    def _commands_until(self, stop: threading.Event, sent: list[float]) -> None:
        """Commands at the benchmark's rate until ``stop``, from one HTTP client as in the
        other phases (it was one new client a second: its TLS context alone cost the
        benchmark ~26 ms of CPU a second, ~1 ms per command taken from the ingest it
        measures; decision 0041); ``sent`` gets each one's time of sending (wall ms)."""
        answered = asyncio.run(
            _send(self.run.api, self.run.vins, 0, self.rate, self.run.headers, until=stop)
        )
        sent.extend(started for started, _ in answered.values())

    def under_ingest(self, load: float, samples_per_s: float) -> PhaseFigures:
        """The commands while ingest runs at ``samples_per_s``."""
        seconds = self.commands / self.rate + 60
        paced = LoadProcess(
            self.run.broker_port,
            100,
            int(samples_per_s * seconds / 100),
            1,
            rate=samples_per_s,
            seq_base=self._next_seq_base(),
        )
        try:
            time.sleep(2)  # ingest at its pace before the first command
            figures = _phase(self.run, f"ingest at {load:.0%}", self.commands, self.rate, paced)
        finally:
            paced.stop()
        return dataclasses.replace(figures, ingest_samples_per_s=round(samples_per_s, 1))
