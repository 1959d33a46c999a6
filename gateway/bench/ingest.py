"""``telematics bench ingest``: how fast the gateway commits samples, against the broker.

Three phases, each with a private Mosquitto started here and 100 (``--vehicles``) concurrent
vehicle connections from :mod:`device_sim.loadgen` in a separate process (a minimal MQTT 5
publisher that costs a few microseconds per message, so the publishers are not what is
measured; ``mosquitto_pub`` cost ~70 us of CPU per message and starved the machine):

1. **baseline**: the same messages delivered by the broker to a plain subscriber
   (``mosquitto_sub``, QoS 1): the broker's raw delivery rate on this machine, now.
2. **ingest at full speed**: the gateway (``telematics gateway``, a child process exactly as
   deployed) ingests the same messages; the rate is samples committed per second, read from
   the counters it commits with the data. Lost and duplicated samples are counted from the
   database afterwards.
3. **latency at half that rate**: paced publishers stamp each sample with its publish time;
   the benchmark polls the database for new rows and records when each became visible, so
   the latency is publish to committed (plus at most one poll interval).

All messages are QoS 1 and the gateway acknowledges them only after commit.

With ``--store influxdb://host:port/db`` the gateway runs on the InfluxDB store and one
more figure is measured twice, between phases 1 and 2 and again after phase 2: InfluxDB's
own raw write rate for the same points (``gateway.bench.influx``); the ratio is to the mean
of the two, so a machine whose load changes during the run skews it less. A sample counts
as committed in phases 2 and 3 only once it is in InfluxDB (the local spool's watermark
has passed it), and lost and duplicated are counted from InfluxDB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from device_sim.loadgen import bench_signals, bench_vin
from gateway import metrics
from gateway.bench.influx import bench_databases, count_points, raw_write_rate
from gateway.bench.jsonout import strict_json
from gateway.bench.probes import (
    CpuFigures,
    CpuWindow,
    percentile,
    stop_children_on_signals,
    track,
    untrack,
    worst,
)
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.errors import ConfigurationError
from gateway.store.influx import spool_depth
from schemas import Sample, encode_sample

__all__ = [
    "IngestBenchResult",
    "LoadProcess",
    "add_arguments",
    "percentile",
    "run_from_args",
    "run_ingest_bench",
]


@dataclass(frozen=True, slots=True)
class IngestBenchResult:
    vehicles: int
    batch: int
    messages: int
    samples: int
    baseline_messages_per_s: float
    baseline_samples_per_s: float
    ingest_samples_per_s: float
    ratio: float
    lost: int
    duplicated: int
    redelivered_duplicates: int
    latency_rate_samples_per_s: float
    latency_samples: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    #: "sqlite", or the InfluxDB store's URL (without credentials)
    store: str = "sqlite"
    #: InfluxDB's raw line-protocol write rate for the same points (0: SQLite run): the
    #: mean of the writes before and after the gateway's phase 2
    store_raw_samples_per_s: float = 0.0
    #: the two raw writes, before and after phase 2
    store_raw_before_samples_per_s: float = 0.0
    store_raw_after_samples_per_s: float = 0.0
    #: ingest rate / that raw rate
    store_ratio: float = 0.0
    #: CPU during phase 2 in percent of one core: broker, gateway, load generator, and
    #: the rest of the machine ("others": someone else's work on a shared machine)
    cpu: dict[str, float] = field(default_factory=dict)
    #: 1-minute load average at the end of phase 2
    load_1m: float = 0.0
    #: samples committed per CPU-second of the gateway in phase 2: the rate a busy machine
    #: disturbs least (the rate follows the CPU the gateway gets; decision 0022)
    samples_per_gateway_cpu_s: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="samples per message (1: single-sample messages; 10: batches as a "
        "unit uploads its buffer); default: 1",
    )
    p.add_argument(
        "--vehicles", type=int, default=100, help="concurrent vehicle connections (default: 100)"
    )
    p.add_argument(
        "--messages-per-vehicle",
        type=int,
        default=0,
        help="messages each vehicle publishes in phases 1 and 2 "
        "(default: 2000, or 500 with --batch > 1)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=5.0,
        help="length of the half-rate latency phase (default: 5)",
    )
    p.add_argument(
        "--provisioned",
        action="store_true",
        help="provision the benchmark's vehicles in a state database and run the gateway "
        "with --require-provisioned (the registry lookup on every message, as under "
        "telematics up)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="run the gateway on this telemetry store, e.g. influxdb://127.0.0.1:8086/bench "
        "(fresh databases named after it are created and dropped), and measure InfluxDB's "
        "own raw write rate for the same points; default: SQLite in a temporary directory",
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument(
        "--reps", type=int, default=3, help="repetitions, each from a fresh start (default: 3)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    per_vehicle = args.messages_per_vehicle or (2000 if args.batch == 1 else 500)
    runs: list[IngestBenchResult] = []
    with stop_children_on_signals():
        for rep in range(1, args.reps + 1):
            _say(True, f"repetition {rep} of {args.reps}")
            result = run_ingest_bench(
                vehicles=args.vehicles,
                messages_per_vehicle=per_vehicle,
                batch=args.batch,
                latency_seconds=args.latency_seconds,
                keep=args.keep,
                progress=True,
                provisioned=args.provisioned,
                store=args.store,
            )
            _print_result(result)
            runs.append(result)
    summary = _worst(runs)
    print(
        f"\nworst of {len(runs)}: {summary['ingest_samples_per_s']:,.0f} samples/s "
        f"(each: {' / '.join(f'{r.ingest_samples_per_s:,.0f}' for r in runs)}; best / worst "
        f"{summary['spread']:.2f}); latency p99 {summary['latency_p99_ms']:.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    if args.json:
        print(strict_json({"runs": [asdict(r) for r in runs], "worst": summary}), flush=True)
    return 0 if all(r.lost == 0 and r.duplicated == 0 for r in runs) else 1


def _worst(runs: list[IngestBenchResult]) -> dict[str, float]:
    rates = [r.ingest_samples_per_s for r in runs]
    return {
        "ingest_samples_per_s": worst(rates, higher_is_worse=False),
        "spread": round(max(rates) / min(rates), 3) if rates and min(rates) > 0 else 0.0,
        "ratio": worst([r.ratio for r in runs], higher_is_worse=False),
        "latency_p99_ms": worst([r.latency_p99_ms for r in runs]),
        "samples_per_gateway_cpu_s": worst(
            [r.samples_per_gateway_cpu_s for r in runs], higher_is_worse=False
        ),
        "lost": sum(r.lost for r in runs),
        "duplicated": sum(r.duplicated for r in runs),
    }


def _print_result(r: IngestBenchResult) -> None:
    print(
        f"""
ingest benchmark: {r.vehicles} vehicles, {r.messages} QoS 1 messages of {r.batch} sample(s)
  baseline (broker -> mosquitto_sub)   {r.baseline_messages_per_s:>10,.0f} msg/s  = {r.baseline_samples_per_s:>10,.0f} samples/s
  gateway (committed, acked after)     {r.ingest_samples_per_s:>10,.0f} samples/s
  ratio                                {r.ratio:>10.2f}
  lost / duplicated                    {r.lost} / {r.duplicated}   (redeliveries dropped as duplicates: {r.redelivered_duplicates})
  latency at {r.latency_rate_samples_per_s:,.0f} samples/s ({r.latency_samples:,} samples)
    publish -> committed  p50 {r.latency_p50_ms:.1f} ms   p99 {r.latency_p99_ms:.1f} ms   max {r.latency_max_ms:.1f} ms""",  # noqa: E501
        file=sys.stderr,
    )
    if r.cpu:
        shown = "  ".join(f"{k} {v:.0f}" for k, v in r.cpu.items())
        print(
            f"  CPU % of a core during phase 2: {shown}; load {r.load_1m:.1f}; "
            f"{r.samples_per_gateway_cpu_s:,.0f} samples per gateway CPU-second",
            file=sys.stderr,
        )
    if r.store_raw_samples_per_s:
        print(
            f"  store {r.store}: raw line-protocol write {r.store_raw_samples_per_s:>10,.0f} "
            f"samples/s (before {r.store_raw_before_samples_per_s:,.0f}, after "
            f"{r.store_raw_after_samples_per_s:,.0f}); gateway / raw = {r.store_ratio:.2f}",
            file=sys.stderr,
        )


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- publishers -----------------------------------------------------------------------------


class LoadProcess:
    """``python -m device_sim.loadgen`` as a child process; ``started`` is when it began
    publishing (after every connection was up and every payload encoded)."""

    def __init__(
        self,
        port: int,
        vehicles: int,
        per_vehicle: int,
        batch: int,
        *,
        rate: float = 0.0,
        seq_base: int = 0,
        profile: str = "constant",
    ) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "device_sim.loadgen",
                "--port",
                str(port),
                "--vehicles",
                str(vehicles),
                "--messages-per-vehicle",
                str(per_vehicle),
                "--batch",
                str(batch),
                "--rate",
                str(rate),
                "--seq-base",
                str(seq_base),
                "--profile",
                profile,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        track(self.process)  # stopped if the benchmark is (gateway.bench.probes)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.wait(30)
            raise RuntimeError(f"load generator failed to start (exit {self.process.returncode})")
        self.started = time.perf_counter()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stop it before it has published everything (a paced load of a fixed length)."""
        self.process.terminate()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        untrack(self.process)

    def finish(self) -> dict[str, float]:
        assert self.process.stdout is not None
        out = self.process.stdout.read()
        self.process.stdout.close()
        untrack(self.process)
        if self.process.wait(600) != 0:
            raise RuntimeError(f"load generator exited with {self.process.returncode}")
        figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return figures


# --- phases -------------------------------------------------------------------------------


def _baseline(port: int, vehicles: int, per_vehicle: int, batch: int) -> float:
    messages = vehicles * per_vehicle
    # the subscriber also listens on a probe topic, so we know when its subscription is live
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-q",
            "1",
            "-V",
            "mqttv5",
            "-t",
            "bench/probe",
            "-t",
            "v1/vehicles/+/telemetry",
            "-F",
            "%t",
            "-C",
            str(messages + 1),
            "-W",
            "600",
        ],
        stdout=subprocess.PIPE,
    )
    assert sub.stdout is not None
    ready = threading.Event()

    def drain(stream: IO[bytes]) -> None:
        stream.readline()
        ready.set()
        while stream.read(1 << 16):
            pass

    reader = threading.Thread(target=drain, args=(sub.stdout,), daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while not ready.wait(0.1):
        if sub.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mosquitto_sub did not subscribe within 10 s")
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "bench/probe", "-m", "1"],
            check=True,
        )
    load = LoadProcess(port, vehicles, per_vehicle, batch)
    if sub.wait(600) != 0:
        raise RuntimeError("mosquitto_sub did not receive every message")
    elapsed = time.perf_counter() - load.started
    load.finish()
    reader.join(10)
    sub.stdout.close()
    return messages / elapsed


def _provision(state_db_url: str, vehicles: int) -> None:
    """Provision the benchmark's VINs (and the probe's) in one account of a new state
    database, as ``telematics vehicle add`` would (certificate-only: no password hashes
    to compute, the open benchmark broker does not check them anyway)."""
    from gateway.statedb import AccountRepository, StateDatabase

    db = StateDatabase(state_db_url)
    try:
        db.upgrade()
        accounts = AccountRepository(db)
        now = time.time_ns() // 1_000_000
        account = accounts.create_account("organization", "bench", now=now)
        for i in [*range(vehicles), 999_999]:
            accounts.provision_vehicle(
                vin=bench_vin(i),
                account_id=account.id,
                label=None,
                mqtt_password_hash=None,
                provisioned_by=None,
                now=now,
            )
    finally:
        db.dispose()


@contextlib.contextmanager
def _gateway(
    port: int, data_dir: Path, state_db_url: str | None = None, store: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    registry = ["--require-provisioned", "--state-db-url", state_db_url] if state_db_url else []
    if store:
        registry += ["--store", store]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "gateway",
            "--mqtt-url",
            f"mqtt://127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--client-id",
            "bench-gateway",
            "--log-level",
            "WARNING",
            # the gateway's own capacity, at the load generator's priority (as every figure
            # before decision 0022's --nice); bench commands runs it niced, as up does
            "--nice",
            "0",
            *registry,
        ],
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stored(db: sqlite3.Connection) -> int:
    """Samples committed; on the InfluxDB store's index, those of them in InfluxDB (its
    spool subtracted)."""
    row = db.execute(
        "SELECT value FROM counters WHERE name = ? AND label = ''", (metrics.SAMPLES_STORED,)
    ).fetchone()
    stored = int(row[0]) if row else 0
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'influx_outbox'").fetchall():
        stored -= spool_depth(db)
    return stored


def _open_reader(path: Path, proc: subprocess.Popen[bytes]) -> sqlite3.Connection:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        if path.exists():
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            with contextlib.suppress(sqlite3.OperationalError):
                db.execute("SELECT 1 FROM counters LIMIT 1").fetchall()
                return db
            db.close()
        time.sleep(0.05)
    raise RuntimeError("the gateway did not create its database within 30 s")


def _wait_ready(port: int, db: sqlite3.Connection, proc: subprocess.Popen[bytes]) -> None:
    """Publish a probe sample until the gateway has stored it: then its subscription is live."""
    vin = bench_vin(999_999)
    deadline = time.monotonic() + 30
    seq = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        seq += 1
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-q",
                "1",
                "-t",
                f"v1/vehicles/{vin}/telemetry",
                "-m",
                encode_sample(
                    Sample(vin, seq, time.time_ns() // 1_000_000, bench_signals())
                ).decode(),
            ],
            check=True,
        )
        probe_deadline = time.monotonic() + 1
        while time.monotonic() < probe_deadline:
            if _stored(db) > 0:
                return
            time.sleep(0.02)
    raise RuntimeError("the gateway did not store a probe sample within 30 s")


def _ingest(
    port: int,
    shape: tuple[int, int, int],
    db: sqlite3.Connection,
    pids: dict[str, int],
) -> tuple[float, CpuFigures]:
    vehicles, per_vehicle, batch = shape
    samples = vehicles * per_vehicle * batch
    base = _stored(db)
    load = LoadProcess(port, vehicles, per_vehicle, batch)
    cpu = CpuWindow({**pids, "loadgen": load.pid})
    deadline = time.monotonic() + 600
    while _stored(db) - base < samples:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_stored(db) - base} of {samples} samples committed")
        time.sleep(0.005)
    elapsed = time.perf_counter() - load.started
    figures = cpu.end()
    load.finish()
    return samples / elapsed, figures


#: seq numbers of the latency phase start here, apart from the throughput phase's
LATENCY_SEQ_BASE = 10_000_000


def _latency(
    port: int, vehicles: int, batch: int, rate: float, seconds: float, db: sqlite3.Connection
) -> list[float]:
    """Pace ``rate`` samples/s over ``vehicles`` connections for about ``seconds``; return the
    publish-to-visible latency of every sample in ms (visible = committed, polled every 5 ms)."""
    per_vehicle = max(1, int(rate * seconds / batch / vehicles))
    expected = per_vehicle * vehicles * batch
    (last_id,) = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()
    outbox = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'influx_outbox'").fetchall()
    # on the InfluxDB store, visible = in InfluxDB: at or below the spool's watermark
    shipped = " AND id <= (SELECT shipped FROM influx_outbox)" if outbox else ""
    latencies: list[float] = []
    load = LoadProcess(port, vehicles, per_vehicle, batch, rate=rate, seq_base=LATENCY_SEQ_BASE)
    deadline = time.monotonic() + seconds + 60
    while len(latencies) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"latency phase: only {len(latencies)} of {expected} committed")
        seen_at = time.time_ns() / 1_000_000
        for row_id, ts in db.execute(
            f"SELECT id, ts FROM samples WHERE id > ?{shipped} ORDER BY id", (last_id,)
        ):
            latencies.append(seen_at - ts)
            last_id = row_id
        time.sleep(0.005)
    load.finish()
    return latencies


@dataclass(frozen=True, slots=True)
class _Measured:
    rate: float
    latencies: list[float]
    total: int
    distinct: int
    redelivered: int
    cpu: CpuFigures | None = None


def _measure(
    port: int,
    data_dir: Path,
    *,
    shape: tuple[int, int, int],
    latency_seconds: float,
    state_db_url: str | None,
    store: str | None,
    progress: bool,
    broker_pid: int | None = None,
) -> _Measured:
    """Phases 2 and 3 against the broker on ``port``; ``shape``: (vehicles, messages per
    vehicle, batch)."""
    vehicles, _, batch = shape
    index = "influx-index.db" if store else "telemetry.db"
    with _gateway(port, data_dir, state_db_url, store) as gw:
        db = _open_reader(data_dir / index, gw)
        _wait_ready(port, db, gw)
        pids = {"gateway": gw.pid} | ({} if broker_pid is None else {"broker": broker_pid})
        rate, cpu = _ingest(port, shape, db, pids)
        _say(progress, f"  {rate:,.0f} samples/s; {cpu.line()}")
        half = rate / 2
        _say(progress, f"phase 3: latency at {half:,.0f} samples/s for {latency_seconds} s")
        latencies = _latency(port, vehicles, batch, half, latency_seconds, db)
        (total, distinct) = db.execute(
            "SELECT count(*), count(DISTINCT vehicle_id || ':' || seq) FROM samples "
            f"WHERE seq < {LATENCY_SEQ_BASE} AND vehicle_id IN "
            "(SELECT id FROM vehicles WHERE vin LIKE 'WBENCH%' AND vin != ?)",
            (bench_vin(999_999),),
        ).fetchone()
        dup_row = db.execute(
            "SELECT value FROM counters WHERE name = ?", (metrics.SAMPLES_DUPLICATE,)
        ).fetchone()
        db.close()
    if store:  # what counts is what InfluxDB holds
        total, distinct = count_points(store, below_seq=LATENCY_SEQ_BASE)
    return _Measured(rate, latencies, total, distinct, int(dup_row[0]) if dup_row else 0, cpu)


def run_ingest_bench(
    *,
    vehicles: int = 100,
    messages_per_vehicle: int = 2000,
    batch: int = 1,
    latency_seconds: float = 5.0,
    keep: bool = False,
    progress: bool = True,
    provisioned: bool = False,
    store: str | None = None,
) -> IngestBenchResult:
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise ConfigurationError(
                f"{tool} not found: install it with: sudo apt-get install -y mosquitto-clients"
            )
    workdir = Path(tempfile.mkdtemp(prefix="telematics-bench-"))
    shape = (vehicles, messages_per_vehicle, batch)
    try:
        with contextlib.ExitStack() as stack:
            gateway_store, raw = (
                stack.enter_context(bench_databases(store)) if store else (None, None)
            )
            _say(progress, "phase 1: baseline, broker -> mosquitto_sub")
            with MosquittoProcess(
                BrokerConfig(port=free_port(), data_dir=workdir / "broker-1")
            ) as b:
                baseline = _baseline(b.port, *shape)
            _say(progress, f"  {baseline:,.0f} msg/s")
            raw_rate = 0.0
            if raw is not None:
                _say(progress, "phase 1b: InfluxDB's raw line-protocol write of the same points")
                raw_rate = raw_write_rate(raw, *shape)
                _say(progress, f"  {raw_rate:,.0f} samples/s")
            _say(progress, f"phase 2: broker -> gateway -> {'InfluxDB' if store else 'SQLite'}")
            state_db_url = None
            if provisioned:
                state_db_url = f"sqlite:///{workdir / 'state.db'}"
                _provision(state_db_url, vehicles)
            with MosquittoProcess(
                BrokerConfig(port=free_port(), data_dir=workdir / "broker-2")
            ) as b:
                m = _measure(
                    b.port,
                    workdir / "data",
                    shape=shape,
                    latency_seconds=latency_seconds,
                    state_db_url=state_db_url,
                    store=gateway_store,
                    progress=progress,
                    broker_pid=b.pid,
                )
            raw_after = 0.0
            if raw is not None:
                _say(progress, "phase 4: InfluxDB's raw write again (the machine may have changed)")
                raw_after = raw_write_rate(raw, *shape)
                _say(progress, f"  {raw_after:,.0f} samples/s")
        return _result(shape, baseline, m, store=store, raw_rates=(raw_rate, raw_after))
    finally:
        if keep:
            _say(progress, f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _result(
    shape: tuple[int, int, int],
    baseline: float,
    m: _Measured,
    *,
    store: str | None,
    raw_rates: tuple[float, float],
) -> IngestBenchResult:
    vehicles, per_vehicle, batch = shape
    raw_rate = sum(raw_rates) / 2
    messages = vehicles * per_vehicle
    samples = messages * batch
    return IngestBenchResult(
        vehicles=vehicles,
        batch=batch,
        messages=messages,
        samples=samples,
        baseline_messages_per_s=round(baseline, 1),
        baseline_samples_per_s=round(baseline * batch, 1),
        ingest_samples_per_s=round(m.rate, 1),
        ratio=round(m.rate / (baseline * batch), 3),
        lost=samples - m.distinct,
        duplicated=m.total - m.distinct,
        redelivered_duplicates=m.redelivered,
        latency_rate_samples_per_s=round(m.rate / 2, 1),
        latency_samples=len(m.latencies),
        latency_p50_ms=round(percentile(m.latencies, 0.50), 1),
        latency_p99_ms=round(percentile(m.latencies, 0.99), 1),
        latency_max_ms=round(max(m.latencies, default=float("nan")), 1),
        store=_shown_store(store),
        store_raw_samples_per_s=round(raw_rate, 1),
        store_raw_before_samples_per_s=round(raw_rates[0], 1),
        store_raw_after_samples_per_s=round(raw_rates[1], 1),
        store_ratio=round(m.rate / raw_rate, 3) if raw_rate else 0.0,
        cpu={} if m.cpu is None else {**m.cpu.processes, "others": m.cpu.others},
        load_1m=0.0 if m.cpu is None else m.cpu.load_1m,
        samples_per_gateway_cpu_s=_per_cpu_second(m),
    )


def _per_cpu_second(m: _Measured) -> float:
    share = 0.0 if m.cpu is None else m.cpu.processes.get("gateway", 0.0) / 100
    return round(m.rate / share, 1) if share > 0 else 0.0


def _shown_store(store: str | None) -> str:
    if not store:
        return "sqlite"
    scheme, _, rest = store.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
