"""``telematics bench ingest``: how fast the gateway commits samples, against the broker.

Three phases, each with a private Mosquitto started here and 100 (``--vehicles``) concurrent
vehicle connections, each a ``mosquitto_pub -l`` process (C, so the publishers cost little
CPU and are the same in every phase):

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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import orjson

from gateway import metrics
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.errors import ConfigurationError

__all__ = ["IngestBenchResult", "add_arguments", "run_from_args", "run_ingest_bench"]

_SIGNALS = {
    "Vehicle.Speed": 48.5,
    "Vehicle.IsMoving": True,
    "Vehicle.TraveledDistance": 123456,
    "Vehicle.CurrentLocation.Latitude": 48.137154,
    "Vehicle.CurrentLocation.Longitude": 11.576124,
    "Vehicle.CurrentLocation.Heading": 87.5,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 76.4,
    "Vehicle.LowVoltageSystemState": "ON",
}


def bench_vin(i: int) -> str:
    return f"WBENCH{i:011d}"


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
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory")


def run_from_args(args: argparse.Namespace) -> int:
    per_vehicle = args.messages_per_vehicle or (2000 if args.batch == 1 else 500)
    result = run_ingest_bench(
        vehicles=args.vehicles,
        messages_per_vehicle=per_vehicle,
        batch=args.batch,
        latency_seconds=args.latency_seconds,
        keep=args.keep,
        progress=not args.json,
    )
    _print_result(result)
    if args.json:
        print(json.dumps(asdict(result)))
    return 0 if result.lost == 0 and result.duplicated == 0 else 1


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


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- payloads and publishers ---------------------------------------------------------------


def _message(vin: str, first_seq: int, batch: int, ts: int) -> bytes:
    if batch == 1:
        return orjson.dumps({"vin": vin, "seq": first_seq, "ts": ts, "signals": _SIGNALS})
    return orjson.dumps(
        {
            "vin": vin,
            "samples": [
                {"seq": first_seq + k, "ts": ts, "signals": _SIGNALS} for k in range(batch)
            ],
        }
    )


def _write_files(workdir: Path, vehicles: int, per_vehicle: int, batch: int) -> list[Path]:
    ts = time.time_ns() // 1_000_000
    paths = []
    for i in range(vehicles):
        vin = bench_vin(i)
        path = workdir / f"{vin}.jsonl"
        with path.open("wb") as f:
            f.writelines(_message(vin, k * batch, batch, ts) + b"\n" for k in range(per_vehicle))
        paths.append(path)
    return paths


def _publishers(
    port: int, vehicles: int, stdin: Sequence[IO[bytes]] | None
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(vehicles):
        vin = bench_vin(i)
        procs.append(
            subprocess.Popen(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-q",
                    "1",
                    "-V",
                    "mqttv5",
                    "-i",
                    f"bench-{vin}",
                    "-t",
                    f"v1/vehicles/{vin}/telemetry",
                    "-l",
                ],
                stdin=stdin[i] if stdin is not None else subprocess.PIPE,
            )
        )
    return procs


def _publish_files(port: int, files: list[Path]) -> None:
    handles = [f.open("rb") for f in files]
    try:
        procs = _publishers(port, len(files), handles)
        for p in procs:
            if p.wait(600) != 0:
                raise RuntimeError(f"mosquitto_pub exited with {p.returncode}")
    finally:
        for h in handles:
            h.close()


# --- phases -------------------------------------------------------------------------------


def _baseline(port: int, files: list[Path], messages: int) -> float:
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
    started = time.perf_counter()
    _publish_files(port, files)
    if sub.wait(600) != 0:
        raise RuntimeError("mosquitto_sub did not receive every message")
    elapsed = time.perf_counter() - started
    reader.join(10)
    sub.stdout.close()
    return messages / elapsed


@contextlib.contextmanager
def _gateway(port: int, data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
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
    row = db.execute(
        "SELECT value FROM counters WHERE name = ? AND label = ''", (metrics.SAMPLES_STORED,)
    ).fetchone()
    return int(row[0]) if row else 0


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
                _message(vin, seq, 1, time.time_ns() // 1_000_000).decode(),
            ],
            check=True,
        )
        probe_deadline = time.monotonic() + 1
        while time.monotonic() < probe_deadline:
            if _stored(db) > 0:
                return
            time.sleep(0.02)
    raise RuntimeError("the gateway did not store a probe sample within 30 s")


def _ingest(port: int, files: list[Path], samples: int, db: sqlite3.Connection) -> float:
    base = _stored(db)
    started = time.perf_counter()
    _publish_files(port, files)
    deadline = time.monotonic() + 600
    while _stored(db) - base < samples:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_stored(db) - base} of {samples} samples committed")
        time.sleep(0.01)
    return samples / (time.perf_counter() - started)


def _latency(
    port: int, vehicles: int, batch: int, rate: float, seconds: float, db: sqlite3.Connection
) -> list[float]:
    """Pace ``rate`` samples/s over ``vehicles`` publishers for ``seconds``; return the
    publish-to-visible latencies in ms."""
    procs = _publishers(port, vehicles, None)
    (last_id,) = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()
    latencies: list[float] = []
    messages_per_s = rate / batch
    next_seq = [10_000_000] * vehicles
    started = time.perf_counter()
    sent = 0
    expected = int(messages_per_s * seconds) * batch
    try:
        while True:
            now = time.perf_counter()
            elapsed = now - started
            if elapsed < seconds:
                due = int(elapsed * messages_per_s) - sent
                ts = time.time_ns() // 1_000_000
                for _ in range(due):
                    i = sent % vehicles
                    procs[i].stdin.write(_message(bench_vin(i), next_seq[i], batch, ts) + b"\n")  # type: ignore[union-attr]
                    next_seq[i] += batch
                    sent += 1
                for p in procs:
                    p.stdin.flush()  # type: ignore[union-attr]
            seen_at = time.time_ns() / 1_000_000
            for row_id, ts in db.execute(
                "SELECT id, ts FROM samples WHERE id > ? ORDER BY id", (last_id,)
            ):
                latencies.append(seen_at - ts)
                last_id = row_id
            if elapsed >= seconds and len(latencies) >= sent * batch:
                break
            if elapsed > seconds + 30:
                raise RuntimeError(
                    f"latency phase: only {len(latencies)} of {sent * batch} samples committed"
                )
            time.sleep(0.005)
    finally:
        for p in procs:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.close()  # type: ignore[union-attr]
            p.wait(30)
    del expected
    return latencies


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_ingest_bench(
    *,
    vehicles: int = 100,
    messages_per_vehicle: int = 2000,
    batch: int = 1,
    latency_seconds: float = 5.0,
    keep: bool = False,
    progress: bool = True,
) -> IngestBenchResult:
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise ConfigurationError(
                f"{tool} not found: install it with: sudo apt-get install -y mosquitto-clients"
            )
    workdir = Path(tempfile.mkdtemp(prefix="telematics-bench-"))
    messages = vehicles * messages_per_vehicle
    samples = messages * batch
    try:
        _say(progress, f"writing {messages:,} messages for {vehicles} vehicles to {workdir}")
        files = _write_files(workdir, vehicles, messages_per_vehicle, batch)

        _say(progress, "phase 1: baseline, broker -> mosquitto_sub")
        with MosquittoProcess(BrokerConfig(port=free_port(), data_dir=workdir / "broker-1")) as b:
            baseline = _baseline(b.port, files, messages)
        _say(progress, f"  {baseline:,.0f} msg/s")

        _say(progress, "phase 2: broker -> gateway -> SQLite, acked after commit")
        data_dir = workdir / "data"
        with (
            MosquittoProcess(BrokerConfig(port=free_port(), data_dir=workdir / "broker-2")) as b,
            _gateway(b.port, data_dir) as gw,
        ):
            db = _open_reader(data_dir / "telemetry.db", gw)
            _wait_ready(b.port, db, gw)
            rate = _ingest(b.port, files, samples, db)
            _say(progress, f"  {rate:,.0f} samples/s")
            half = rate / 2
            _say(progress, f"phase 3: latency at {half:,.0f} samples/s for {latency_seconds} s")
            latencies = _latency(b.port, vehicles, batch, half, latency_seconds, db)
            (total, distinct) = db.execute(
                "SELECT count(*), count(DISTINCT vehicle_id || ':' || seq) FROM samples "
                "WHERE seq < 10000000 AND vehicle_id IN "
                "(SELECT id FROM vehicles WHERE vin LIKE 'WBENCH%' AND vin != ?)",
                (bench_vin(999_999),),
            ).fetchone()
            dup_row = db.execute(
                "SELECT value FROM counters WHERE name = ?", (metrics.SAMPLES_DUPLICATE,)
            ).fetchone()
            db.close()
        return IngestBenchResult(
            vehicles=vehicles,
            batch=batch,
            messages=messages,
            samples=samples,
            baseline_messages_per_s=round(baseline, 1),
            baseline_samples_per_s=round(baseline * batch, 1),
            ingest_samples_per_s=round(rate, 1),
            ratio=round(rate / (baseline * batch), 3),
            lost=samples - distinct,
            duplicated=total - distinct,
            redelivered_duplicates=int(dup_row[0]) if dup_row else 0,
            latency_rate_samples_per_s=round(half, 1),
            latency_samples=len(latencies),
            latency_p50_ms=round(_percentile(latencies, 0.50), 1),
            latency_p99_ms=round(_percentile(latencies, 0.99), 1),
            latency_max_ms=round(max(latencies, default=float("nan")), 1),
        )
    finally:
        if keep:
            _say(progress, f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
