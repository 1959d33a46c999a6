"""``telematics bench commands``: how long from the API call to ``succeeded``.

Runs the product as deployed (a private Mosquitto, ``telematics gateway``, ``telematics api``
with its command service, and ``python -m device_sim`` with 100 simulated units, each its
own MQTT connection), sends 1,000 commands over HTTP to the 100 online vehicles, and reads
the time each command reached ``succeeded`` from the transitions the command service
recorded (same machine, same clock), so measuring adds no polling load to the API.

Twice: with ingest idle, and with ingest running at half its maximum rate (measured first in
the same run by :mod:`device_sim.loadgen` publishing as fast as the gateway acknowledges).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from gateway import metrics
from gateway.bench.ingest import LoadProcess, percentile
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.errors import ConfigurationError

__all__ = ["CommandBenchResult", "add_arguments", "run_commands_bench", "run_from_args"]

#: safe while driving, and each one a different path through the simulated vehicle
BENCH_COMMANDS = (
    {"type": "lock"},
    {"type": "horn_and_lights"},
    {"type": "climate_start", "params": {"target_temperature_c": 21.5}},
    {"type": "locate"},
    {"type": "request_diagnostics"},
)


@dataclass(frozen=True, slots=True)
class PhaseFigures:
    commands: int
    succeeded: int
    other_final: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float


@dataclass(frozen=True, slots=True)
class CommandBenchResult:
    vehicles: int
    commands_per_phase: int
    rate_per_s: float
    ingest_max_samples_per_s: float
    ingest_load_samples_per_s: float
    idle: PhaseFigures
    under_ingest: PhaseFigures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vehicles", type=int, default=100, help="simulated units (default: 100)")
    p.add_argument("--commands", type=int, default=1000, help="commands per phase (default: 1000)")
    p.add_argument(
        "--rate",
        type=float,
        default=25.0,
        help="commands per second, sent open loop like many app users; one API process "
        "handles about 90/s on the 2-core machine (default: 25)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )


def run_from_args(args: argparse.Namespace) -> int:
    result = run_commands_bench(
        vehicles=args.vehicles,
        commands=args.commands,
        rate=args.rate,
        progress=not args.json,
    )
    _print(result)
    if args.json:
        print(json.dumps(asdict(result)))
    ok = all(p.succeeded == p.commands for p in (result.idle, result.under_ingest))
    return 0 if ok else 1


def _print(r: CommandBenchResult) -> None:
    def line(name: str, p: PhaseFigures) -> str:
        extra = f"  (not succeeded: {p.other_final})" if p.other_final else ""
        return (
            f"  {name:<34} p50 {p.p50_ms:6.1f} ms   p99 {p.p99_ms:6.1f} ms   "
            f"max {p.max_ms:6.1f} ms   {p.succeeded}/{p.commands} succeeded{extra}"
        )

    print(
        f"\ncommand benchmark: {r.commands_per_phase} commands to {r.vehicles} online units, "
        f"{r.rate_per_s:g}/s; API call -> succeeded\n"
        + line("ingest idle", r.idle)
        + "\n"
        + line(f"ingest at {r.ingest_load_samples_per_s:,.0f} samples/s", r.under_ingest)
        + f"\n  (ingest maximum measured in this run: {r.ingest_max_samples_per_s:,.0f} samples/s)",
        file=sys.stderr,
    )


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


def _wait(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


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
    api: str, vins: list[str], count: int, rate: float, headers: dict[str, str]
) -> dict[str, int]:
    """POST ``count`` commands round-robin over ``vins`` at ``rate`` per second (open loop:
    a request does not wait for the previous one, as with many app users); return command
    id -> the time its request was sent."""
    sent: dict[str, int] = {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = BENCH_COMMANDS[i % len(BENCH_COMMANDS)]
        started = time.time_ns() // 1_000_000
        r = await client.post(f"{api}/v1/vehicles/{vins[i % len(vins)]}/commands", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"command request failed: {r.status_code} {r.text}")
        sent[r.json()["id"]] = started

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        tasks = []
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, i)))
        await asyncio.gather(*tasks)
    return sent


def _phase(
    api: str, state_db: Path, vins: list[str], count: int, rate: float, headers: dict[str, str]
) -> PhaseFigures:
    started = time.perf_counter()
    sent = asyncio.run(_send(api, vins, count, rate, headers))
    ids = list(sent)
    db = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(ids))
        final = ("succeeded", "failed", "rejected", "expired", "timed_out", "cancelled")

        def finished() -> list[tuple[str, str]]:
            rows: list[tuple[str, str]] = db.execute(
                f"SELECT id, status FROM commands WHERE id IN ({marks})", ids
            ).fetchall()
            return [(i, s) for i, s in rows if s in final]

        _wait(lambda: len(finished()) == len(ids), "every command to finish", timeout=120)
        seconds = time.perf_counter() - started
        at = dict(
            db.execute(
                f"SELECT command_id, at FROM command_transitions WHERE status = 'succeeded' "
                f"AND command_id IN ({marks})",
                ids,
            ).fetchall()
        )
        statuses = dict(finished())
    finally:
        db.close()
    latencies = [at[i] - sent[i] for i in ids if i in at]
    others: dict[str, int] = {}
    for status in statuses.values():
        if status != "succeeded":
            others[status] = others.get(status, 0) + 1
    return PhaseFigures(
        commands=len(ids),
        succeeded=len(latencies),
        other_final=others,
        p50_ms=round(percentile(latencies, 0.5), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        max_ms=round(max(latencies, default=float("nan")), 1),
        seconds=round(seconds, 2),
    )


def run_commands_bench(
    *, vehicles: int = 100, commands: int = 1000, rate: float = 25.0, progress: bool = True
) -> CommandBenchResult:
    if shutil.which("mosquitto_pub") is None:
        raise ConfigurationError(
            "mosquitto_pub not found: install it with: sudo apt-get install -y mosquitto-clients"
        )
    workdir = Path(tempfile.mkdtemp(prefix="telematics-bench-commands-"))
    data = workdir / "data"
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    # the benchmark logs in as the first administrator, with a password of its own, and
    # switches the per-user and per-vehicle command limits off: it measures the pipeline,
    # not the limits (one user sends 25 commands/s, far above a person's limit)
    admin_password = secrets.token_urlsafe(16)
    api_env = {**os.environ, "TELEMATICS_ADMIN_PASSWORD": admin_password}
    try:
        with MosquittoProcess(BrokerConfig(port=free_port(), data_dir=workdir / "broker")) as b:
            url = b.url
            with (
                _process(_gateway_argv("gateway", data, url)),
                _process([*_gateway_argv("api", data, url), *_api_options(api_port)], env=api_env),
                _process(_fleet_argv(url, vehicles)) as fleet,
            ):
                _say(progress, f"waiting for {vehicles} simulated units to come online")
                headers, vins = _wait_online(api, admin_password, fleet, vehicles)
                phases = _Phases(api, data, b.port, vins, commands, rate, headers)
                _say(progress, f"phase 1: {commands} commands, ingest idle")
                idle = phases.idle()
                _say(progress, f"  p99 {idle.p99_ms} ms")
                _say(progress, "phase 2: measuring the ingest maximum")
                maximum = phases.ingest_maximum()
                half = maximum / 2
                _say(progress, f"  {maximum:,.0f} samples/s; commands under {half:,.0f}/s")
                under = phases.under_ingest(half)
        return CommandBenchResult(
            vehicles=vehicles,
            commands_per_phase=commands,
            rate_per_s=rate,
            ingest_max_samples_per_s=round(maximum, 1),
            ingest_load_samples_per_s=round(half, 1),
            idle=idle,
            under_ingest=under,
        )
    finally:
        if os.environ.get("TELEMATICS_BENCH_KEEP"):
            _say(progress, f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


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

    _wait(all_online, "the simulated units", timeout=120)
    listed = httpx.get(f"{api}/v1/vehicles", params={"limit": 1000}, headers=headers).json()
    return headers, [v["vin"] for v in listed["items"] if v["online"]][:vehicles]


@dataclass(frozen=True, slots=True)
class _Phases:
    """The measurements of one benchmark run, against its running gateway."""

    api: str
    data: Path
    broker_port: int
    vins: list[str]
    commands: int
    rate: float
    headers: dict[str, str]

    def idle(self) -> PhaseFigures:
        """Phase 1: the commands with ingest idle."""
        return self._commands()

    def ingest_maximum(self) -> float:
        """Samples per second the gateway stores at most (100 units, 600 samples each)."""
        telemetry_db = self.data / "telemetry.db"
        base = _stored(telemetry_db)
        load = LoadProcess(self.broker_port, 100, 600, 1, seq_base=0)
        samples = 100 * 600
        _wait(lambda: _stored(telemetry_db) - base >= samples, "ingest")
        maximum = samples / (time.perf_counter() - load.started)
        load.finish()
        return maximum

    def under_ingest(self, samples_per_s: float) -> PhaseFigures:
        """Phase 2: the commands while ingest runs at ``samples_per_s``."""
        seconds = self.commands / self.rate + 30
        paced = LoadProcess(
            self.broker_port,
            100,
            int(samples_per_s * seconds / 100),
            1,
            rate=samples_per_s,
            seq_base=1_000_000,
        )
        under = self._commands()
        paced.process.terminate()
        paced.process.wait(30)
        if paced.process.stdout is not None:
            paced.process.stdout.close()
        return under

    def _commands(self) -> PhaseFigures:
        state_db = self.data / "state.db"
        return _phase(self.api, state_db, self.vins, self.commands, self.rate, self.headers)
