"""``telematics bench fleet-scale``: the whole product with a realistic fleet, stepped up.

Runs ``telematics up`` (a closed private Mosquitto with per-VIN credentials and the
Dynamic Security plugin, the gateway, the API with its command service, the fleet rules
worker process, supervised) on a fresh data directory, then for each step N of
``--steps`` (1k, 5k, 10k, 20k, 50k, 100k by default) until a limit breaks:

1. **provisions** the step's new vehicles in the state database in one transaction
   (``AccountRepository.provision_vehicles``; one organization; every vehicle gets a broker
   password hash, the same one: the broker still checks it per login); **ACL reload**: from
   the last commit until the broker accepts the last new VIN's login (the installation's
   sync notices the change, renders the password and plugin files and restarts the broker
   or sends plugin commands, decision 0008);
2. **connects** them: :mod:`device_sim.fleetload` processes of ``--per-process`` units
   each (every unit its own authenticated connection; parked units a full 28-signal report
   every 30-60 s, one in ten driving at 1 Hz with send-on-change); units of earlier steps
   stay connected;
3. **measures** for ``--window`` seconds: messages and signal values per second (from the
   generators), ingest lag (sample ``ts``, its publish time, to the moment the benchmark
   first sees it committed, polled every 100 ms: that resolution is in the figure), the
   latency of a trickle of commands (``--command-rate``, API call -> ``succeeded``, to a
   few simulated units of :mod:`device_sim` that answer them), CPU and RSS per process,
   stored bytes per sample (growth of the samples table and its indexes / samples stored;
   the per-vehicle rows a vehicle's first report writes are counted per vehicle, and a day
   of the step's traffic is projected from both, decision 0052), the lag per 5 s;
4. **accounts**: pauses the generators until every message is acknowledged, waits for the
   gateway to commit them as long as it keeps committing (``STALL_S`` without progress ends
   the wait, ``DRAIN_MAX_S`` in all); lost = acknowledged by the broker and not stored when
   nothing more arrived for ``STALL_S``; pending = not stored yet when the wait ran out
   while the gateway was still committing (behind, not lost); ``drain_s`` = how long after
   the pause everything was committed; duplicated = redeliveries the gateway recognised
   (its duplicate counter), then resumes.

A step **breaks** on: units not all connected, a login refused, anything lost, lag p99 over
``--max-lag-ms`` (2,000), command p99 over ``--max-command-ms`` (500) or a command not
succeeded, the generators themselves late (more than 1 % of reports a second behind: then
the machine measured the load generator, not the product), or the product and its load
generators using more than 95 % of the machine's CPU (others' use is printed, not counted:
on a shared machine it would end every run). The first step that breaks ends the run; the
reasons are printed.

All processes run on this machine, the generators too: on a 2-core machine they take a
share of the CPU. The figures say so (CPU per process, ``others``). They run at
``--load-nice`` (10 by default, below the product's gateway and fleet worker at 5): real
units are on other machines, so the product gets the CPU first; a generator starved by it
reports late and the step breaks on that (decision 0047).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import resource
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, get_origin, get_type_hints

import httpx

from device_sim.loadgen import bench_vin
from gateway import metrics
from gateway.bench.commands import _finished, _login, _send
from gateway.bench.jsonout import strict_json
from gateway.bench.probes import CpuWindow, percentile, stop_children_on_signals, track, untrack
from gateway.broker import free_port
from gateway.errors import ConfigurationError
from schemas.edges import edge_index

__all__ = [
    "ScaleBenchResult",
    "StepFigures",
    "Storage",
    "add_arguments",
    "descriptors_short",
    "run_from_args",
    "run_scale_bench",
    "storage",
    "storage_figures",
]

DEFAULT_STEPS = (1_000, 5_000, 10_000, 20_000, 50_000, 100_000)
LAG_POLL_S = 0.1
#: the ingest lag's timeline: p99 and max per this many seconds of the window
LAG_BUCKET_S = 5
#: the accounting waits for the gateway to commit what was acknowledged as long as it
#: commits something at least every STALL_S, up to DRAIN_MAX_S in all (issue 18: a fixed
#: 120 s called a backlog that was still draining "lost")
STALL_S = 30.0
DRAIN_MAX_S = 600.0
#: the load generators' CPU priority below the product's (os.nice); the gateway and the
#: fleet worker run at +5 (decision 0022), the generators below them (decision 0047)
DEFAULT_LOAD_NICE = 10
#: the bench fleet's MQTT password (the same for every unit: the broker still checks a
#: PBKDF2 hash per login, and the generators need not carry 100,000 secrets)
_ORG = "fleet-scale bench"


@dataclass(frozen=True, slots=True)
class StepFigures:
    vehicles: int
    connected: int
    provision_s: float
    acl_reload_s: float
    connect_s: float
    window_s: float
    messages_per_s: float
    values_per_s: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    lag_samples: int
    commands: int
    commands_succeeded: int
    command_p50_ms: float
    command_p99_ms: float
    command_max_ms: float
    #: process name -> percent of one core over the window (200 = both cores of 2)
    cpu: dict[str, float]
    #: process name -> resident memory, MB, at the window's end
    rss_mb: dict[str, float]
    machine_cpu: float
    others_cpu: float
    bytes_per_sample: float
    acked: int
    lost: int
    duplicated: int
    late: int
    reconnects: int
    refused: int
    #: acknowledged with PUBACK 0x10 "no matching subscribers" (dropped by the broker: the
    #: gateway's shared subscription was not there, e.g. right after a broker restart)
    no_subscribers: int = 0
    #: acknowledged, not committed when the accounting gave up while the gateway was still
    #: committing (it was behind, nothing says they are lost); ``lost`` counts only what is
    #: missing once the gateway stopped committing anything for ``STALL_S``
    pending: int = 0
    #: seconds from the generators' pause until every acknowledged sample was committed
    #: (or the accounting gave up): how far behind the gateway was
    drain_s: float = 0.0
    #: ``bytes_per_sample`` is what the samples and their indexes grew by per stored sample
    #: (what grows with time); this is the whole file's growth of used pages per sample, the
    #: figure before decision 0052: it also counts the per-vehicle rows that first reports
    #: in the window wrote
    file_bytes_per_sample: float = 0.0
    #: latest state, vehicle row and seq tracking per vehicle at the window's end (fixed)
    state_bytes_per_vehicle: float = 0.0
    #: a day of this step's traffic on disk: bytes_per_sample x msg/s x 86,400 plus every
    #: vehicle's fixed rows, GB (10^9)
    disk_gb_per_day: float = 0.0
    #: ingest lag by ``LAG_BUCKET_S`` of the window: [start s, samples, p99 ms, max ms]
    lag_timeline: list[list[float]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ScaleBenchResult:
    cores: int
    fd_limit: int
    steps: list[StepFigures]
    #: the first step that broke and why ("" and [] if none did)
    broke_at: int
    broke_because: list[str]
    #: a parked unit's full-report interval range, seconds
    heartbeat_s: tuple[float, float] = (30.0, 60.0)
    #: the load generators' nice value (the product's gateway and fleet worker run at 5)
    load_nice: int = DEFAULT_LOAD_NICE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps",
        default=",".join(str(n) for n in DEFAULT_STEPS),
        help="vehicle counts to step through, comma-separated (default: "
        "1000,5000,10000,20000,50000,100000); the run ends at the first step that breaks",
    )
    p.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds measured at each step, after every unit connected (default: 60; at "
        "least the longest heartbeat interval, 60 s, to see every parked unit report)",
    )
    p.add_argument(
        "--per-process", type=int, default=5000, help="units per load process (default: 5000)"
    )
    p.add_argument(
        "--command-rate",
        type=float,
        default=1.0,
        help="remote commands per second through the API during each window (default: 1)",
    )
    p.add_argument(
        "--command-units",
        type=int,
        default=5,
        help="simulated units that answer the commands (default: 5)",
    )
    p.add_argument(
        "--edge-brokers",
        type=int,
        default=0,
        metavar="N",
        help="run the installation with N unit-facing edge brokers bridged to its broker "
        "(telematics up --edge-brokers, decision 0038); every unit connects to its VIN's "
        "edge (default: 0, units on the one broker)",
    )
    p.add_argument(
        "--heartbeat",
        default="30-60",
        metavar="MIN-MAX",
        help="seconds between a parked unit's full reports, each unit its own interval drawn "
        "from MIN-MAX (default: 30-60); the issue's floor and goal say every 30 s: 30-30",
    )
    p.add_argument(
        "--load-nice",
        type=int,
        default=DEFAULT_LOAD_NICE,
        choices=range(20),
        metavar="N",
        help="run the load generators at this nice value (0-19, default: "
        f"{DEFAULT_LOAD_NICE}: below the product, whose gateway and fleet worker run at 5; "
        "real units are on other machines, so the product gets the CPU first and a "
        "generator that cannot keep up shows as late reports; 0: they compete with it)",
    )
    p.add_argument(
        "--max-lag-ms",
        type=float,
        default=2000.0,
        help="ingest lag p99 limit in ms: a step over it breaks (default: 2000)",
    )
    p.add_argument(
        "--max-command-ms",
        type=float,
        default=500.0,
        help="command latency p99 limit in ms: a step over it breaks (default: 500)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        steps = [int(s) for s in str(args.steps).split(",") if s.strip()]
    except ValueError as exc:
        raise ConfigurationError(f"--steps: comma-separated vehicle counts ({exc})") from exc
    if not steps or steps != sorted(set(steps)) or steps[0] <= 0:
        raise ConfigurationError("--steps: increasing positive vehicle counts, e.g. 1000,5000")
    result = run_scale_bench(
        steps=steps,
        heartbeat=_heartbeat(str(args.heartbeat)),
        window_s=args.window,
        per_process=args.per_process,
        command_rate=args.command_rate,
        command_units=args.command_units,
        max_lag_ms=args.max_lag_ms,
        max_command_ms=args.max_command_ms,
        progress=not args.json,
        edge_brokers=args.edge_brokers,
        load_nice=args.load_nice,
    )
    _print(result)
    if args.json:
        print(strict_json(asdict(result)))
    return 0


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


def _print(r: ScaleBenchResult) -> None:
    lines = [
        f"\nfleet-scale benchmark: {r.cores} cores, file descriptors {r.fd_limit}, parked "
        f"units report every {r.heartbeat_s[0]:g}-{r.heartbeat_s[1]:g} s; load generators "
        f"at nice {r.load_nice} (the product's gateway and fleet worker at 5)"
    ]
    for s in r.steps:
        if not s.window_s and s.broken:  # broke before it started (descriptors)
            lines.append(f"  {s.vehicles:>7,} vehicles: not run: {'; '.join(s.broken)}")
            continue
        cpu = "  ".join(f"{k} {v:.0f}%" for k, v in s.cpu.items())
        rss = "  ".join(f"{k} {v:.0f}" for k, v in s.rss_mb.items())
        lines.append(
            f"  {s.vehicles:>7,} vehicles: connected {s.connected:,} in {s.connect_s:.1f} s; "
            f"provisioning {s.provision_s:.1f} s, ACL reload {s.acl_reload_s:.1f} s\n"
            f"           {s.messages_per_s:,.0f} msg/s, {s.values_per_s:,.0f} values/s; ingest "
            f"lag p50 {s.lag_p50_ms:.0f} p99 {s.lag_p99_ms:.0f} max {s.lag_max_ms:.0f} ms; "
            f"commands {s.commands_succeeded}/{s.commands} p50 {s.command_p50_ms:.0f} p99 "
            f"{s.command_p99_ms:.0f} max {s.command_max_ms:.0f} ms\n"
            f"           ingest lag p99 per {LAG_BUCKET_S} s: "
            f"{' '.join(f'{b[2]:.0f}' for b in s.lag_timeline)} ms\n"
            f"           {s.bytes_per_sample:.0f} bytes/sample (samples and their indexes; "
            f"the whole file {s.file_bytes_per_sample:.0f}), {s.state_bytes_per_vehicle:,.0f} "
            f"bytes/vehicle of state, a day of this traffic {s.disk_gb_per_day:.1f} GB\n"
            f"           lost {s.lost}, pending "
            f"{s.pending} (all committed {s.drain_s:.0f} s after the pause), duplicated "
            f"{s.duplicated}; generator late {s.late}, reconnects {s.reconnects}, refused "
            f"{s.refused}, acknowledged to no subscriber {s.no_subscribers}\n"
            f"           CPU (% of a core): {cpu}; machine {s.machine_cpu:.0f}, others "
            f"{s.others_cpu:.0f}\n           RSS MB: {rss}"
            + (f"\n           BROKE: {'; '.join(s.broken)}" if s.broken else "")
        )
    if r.broke_at:
        lines.append(f"  first limit: at {r.broke_at:,} vehicles: {'; '.join(r.broke_because)}")
    else:
        lines.append("  no limit broke in the steps run")
    print("\n".join(lines), file=sys.stderr)


# --- processes -------------------------------------------------------------------------------


#: file descriptors the benchmark asks for (the broker holds one per connection, each
#: load process one per unit): above 100,000 vehicles with room to spare
WANTED_FDS = 262_144


def _raise_fd_limit() -> int:
    """Raise this process's descriptor limit, which its children inherit (``ulimit -n``):
    the hard limit too where allowed (root), else the soft one to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_FDS, max(hard, WANTED_FDS)))
        return WANTED_FDS
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


#: descriptors a broker process keeps for itself (listeners, bridges, the gateways' and
#: API's sessions, its persistence and log files) besides one per unit
BROKER_OWN_FDS = 100


def descriptors_short(vehicles: int, edges: int, fd_limit: int) -> str:
    """Why ``vehicles`` units cannot all connect: the most that one broker process would
    hold (the one broker, or the fullest edge by the VINs' hash) over its descriptor limit
    (the benchmark's, which every process it starts inherits), with what to do; "" if they
    fit. A step that does not fit breaks on it at once instead of waiting minutes for
    logins the broker must refuse (decision 0052)."""
    if edges:
        per_edge = [0] * edges
        for i in range(vehicles):
            per_edge[edge_index(bench_vin(i), edges) - 1] += 1
        most = max(per_edge)
    else:
        most = vehicles
    if most + BROKER_OWN_FDS <= fd_limit:
        return ""
    need = next(
        n
        for n in range(max(1, edges), vehicles + 2)
        if vehicles / n * 1.05 + BROKER_OWN_FDS <= fd_limit
    )
    return (
        f"file descriptors: {most:,} units on one broker process, its limit is {fd_limit:,} "
        f"(ulimit -n; raise it, or run --edge-brokers {need})"
    )


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))[:-1]
    except OSError:
        return []


def _up_parts(up_pid: int) -> dict[str, int]:
    """The installation's processes by name: broker, gateway-N, api, fleet-worker (the
    rules, decision 0029; numbered when there are several)."""
    parts = {}
    workers = 0
    for pid in _children(up_pid):
        argv = _cmdline(pid)
        if argv and Path(argv[0]).name == "mosquitto":
            edge = Path(argv[-1]).parent.name  # -c DATA/broker-edge-N/mosquitto.conf
            parts[edge.replace("broker-", "") if edge.startswith("broker-edge-") else "broker"] = (
                pid
            )
        elif "api" in argv[3:4]:
            parts["api"] = pid
        elif "fleet-worker" in argv[3:4]:
            workers += 1
            parts["fleet-worker" if workers == 1 else f"fleet-worker-{workers}"] = pid
        elif "gateway" in argv[3:4]:
            cid = argv[argv.index("--client-id") + 1] if "--client-id" in argv else "gateway"
            parts[cid.replace("telematics-", "")] = pid
    return parts


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class _Load:
    """One :mod:`device_sim.fleetload` process: its newest figures line, and control."""

    def __init__(
        self,
        port: int,
        first: int,
        count: int,
        password: str,
        edge_ports: Sequence[int] = (),
        heartbeat: tuple[float, float] = (30.0, 60.0),
        nice: int = DEFAULT_LOAD_NICE,
    ) -> None:
        argv = [
            *[sys.executable, "-m", "device_sim.fleetload", "--port", str(port)],
            *["--nice", str(nice)],
            *["--heartbeat-min", str(heartbeat[0]), "--heartbeat-max", str(heartbeat[1])],
            *["--first", str(first), "--count", str(count), "--stats-every", "1"],
            *(["--edge-ports", ",".join(map(str, edge_ports))] if edge_ports else []),
        ]
        env = {**os.environ, "FLEETLOAD_PASSWORD": password}
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        track(self.proc)
        self.count = count
        self.last: dict[str, Any] = {}
        self.paused = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            with contextlib.suppress(ValueError):
                figures = json.loads(line)
                self.last = figures
                if figures.get("paused"):
                    self.paused.set()

    def say(self, word: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()

    def stop(self) -> None:
        self.say("stop")
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        untrack(self.proc)
        self._thread.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _total(loads: Sequence[_Load], key: str) -> int:
    return sum(int(load.last.get(key, 0)) for load in loads)


# --- the installation ------------------------------------------------------------------------


@dataclass(slots=True)
class _Installation:
    data: Path
    up: subprocess.Popen[bytes]
    mqtt_port: int
    api: str
    headers: dict[str, str]
    account_id: int
    command_vins: list[str]
    password: str
    edges: int = 0
    units: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def edge_ports(self) -> list[int]:
        """The edge brokers' ports (decision 0038: the ones after the core's)."""
        return [self.mqtt_port + i for i in range(1, self.edges + 1)]

    def unit_port(self, vin: str) -> int:
        """Where ``vin``'s unit logs in: its edge, or the one broker."""
        if not self.edges:
            return self.mqtt_port
        return self.mqtt_port + edge_index(vin, self.edges)


@contextlib.contextmanager
def _installation(
    workdir: Path, command_units: int, progress: bool, edges: int = 0
) -> Iterator[_Installation]:
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url

    data = workdir / "data"
    mqtt_port, api_port = _free_ports(edges + 1), free_port()
    admin = secrets.token_urlsafe(16)
    argv = [
        *[sys.executable, "-m", "gateway", "up", "--data-dir", str(data)],
        *["--mqtt-port", str(mqtt_port), "--api-port", str(api_port), "--log-level", "WARNING"],
        *["--user-command-limit", "off", "--vehicle-command-limit", "off"],
        *["--edge-brokers", str(edges)],
    ]
    env = {**os.environ, "TELEMATICS_ADMIN_PASSWORD": admin}
    _say(progress, "starting telematics up (closed broker, gateway, API)")
    up = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    track(up)
    try:
        api = f"http://127.0.0.1:{api_port}"
        headers: dict[str, str] = {}

        def ready() -> bool:
            if up.poll() is not None:
                raise RuntimeError(f"telematics up exited with {up.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                headers.update(_login(api, admin))
            return bool(headers)

        _wait(ready, "the API", 180)
        db = StateDatabase(default_url(data))
        try:
            accounts = AccountRepository(db)
            org = accounts.create_account("organization", _ORG, now=_now())
            account_id = org.id
        finally:
            db.dispose()
        inst = _Installation(
            data, up, mqtt_port, api, headers, account_id, [], secrets.token_urlsafe(18), edges
        )
        with _command_units(inst, command_units, progress):
            yield inst
    finally:
        _end(up, 60)


def _end(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate a child of the benchmark; kill it after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    untrack(proc)


@contextlib.contextmanager
def _command_units(inst: _Installation, count: int, progress: bool) -> Iterator[None]:
    """A few :mod:`device_sim` units, provisioned with credentials of their own, that
    answer the commands (the load generators do not)."""
    if count <= 0:
        yield
        return
    from gateway.broker.auth import hash_password

    listed = subprocess.run(
        [sys.executable, "-m", "device_sim", "--vehicles", str(count), "--list-vins"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    vins = listed.stdout.split()  # the simulator decides its VINs (as telematics up asks it)
    passwords = {vin: secrets.token_urlsafe(18) for vin in vins}
    _provision(inst, {vin: hash_password(pw) for vin, pw in passwords.items()})
    for vin, password in passwords.items():
        _wait_login(inst, vin, password)
    by_port: dict[int, list[str]] = {}
    for vin in vins:
        by_port.setdefault(inst.unit_port(vin), []).append(vin)
    _say(progress, f"starting {count} simulated units that answer commands")
    for port, port_vins in sorted(by_port.items()):
        inst.units.append(_command_unit_process(inst, port, {v: passwords[v] for v in port_vins}))
    units = inst.units
    try:

        def online() -> bool:
            for unit in units:
                if unit.poll() is not None:
                    raise RuntimeError(f"the simulator exited with {unit.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    f"{inst.api}/v1/vehicles", params={"limit": 1000}, headers=inst.headers
                )
                seen = {v["vin"] for v in r.json().get("items", []) if v["online"]}
                return set(vins) <= seen
            return False

        _wait(online, "the command units to come online", 180)
        inst.command_vins = vins
        yield
    finally:
        for unit in units:
            _end(unit, 30)


def _command_unit_process(
    inst: _Installation, port: int, passwords: dict[str, str]
) -> subprocess.Popen[bytes]:
    """One :mod:`device_sim` process for the command units that log in at ``port``."""
    from gateway.installation import write_unit_credentials

    url = f"mqtt://127.0.0.1:{port}"
    credentials = inst.data / "secrets" / f"bench-command-units-{port}.json"
    write_unit_credentials(
        credentials,
        dict(passwords),
        public_key_path=inst.data / "command-signing-key.pem.pub",
        broker_url=url,
    )
    argv = [
        *[sys.executable, "-m", "device_sim", "--mqtt-url", url, "--vins-from-credentials"],
        *["--vehicles", str(len(passwords)), "--credentials", str(credentials)],
        *["--progress", "3600"],
    ]
    units = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    track(units)
    return units


def _free_ports(count: int) -> int:
    """The first of ``count`` free consecutive ports (the core broker and its edges)."""
    for _ in range(200):
        first = free_port()
        if all(_port_free(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"no {count} free consecutive ports found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _provision(inst: _Installation, hashes: dict[str, str]) -> None:
    """In one transaction per password hash (the bench fleet shares one): one change of the
    broker identities, so the broker's sync applies it in one go."""
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url

    by_hash: dict[str, list[str]] = {}
    for vin, password_hash in hashes.items():
        by_hash.setdefault(password_hash, []).append(vin)
    db = StateDatabase(default_url(inst.data))
    try:
        accounts = AccountRepository(db)
        for password_hash, vins in by_hash.items():
            accounts.provision_vehicles(
                vins,
                account_id=inst.account_id,
                label=None,
                mqtt_password_hash=password_hash,
                provisioned_by=None,
                now=_now(),
            )
    finally:
        db.dispose()


def _wait_login(inst: _Installation, vin: str, password: str) -> float:
    """Seconds until the broker accepts ``vin``'s login (its sync has taken the change)."""
    from gateway.broker.control import login_code

    def accepted() -> bool:
        with contextlib.suppress(OSError):
            return login_code("127.0.0.1", inst.unit_port(vin), vin, password, client_id=vin) == 0
        return False

    return _wait(accepted, f"the broker to accept {vin}", 600)


def _now() -> int:
    return time.time_ns() // 1_000_000


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


# --- measuring -------------------------------------------------------------------------------


class _LagPoller:
    """Sees samples committed: every 100 ms the rows after the last one seen; lag = the
    moment seen - the sample's ts (its publish time)."""

    def __init__(self, telemetry: Path) -> None:
        self._db = sqlite3.connect(f"file:{telemetry}?mode=ro", uri=True, check_same_thread=False)
        ((self._cursor,),) = self._db.execute("SELECT coalesce(max(id), 0) FROM samples")
        self.lags: list[float] = []
        self._started = _now()
        #: LAG_BUCKET_S bucket of the window (by when the rows were seen) -> their lags
        self.buckets: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(LAG_POLL_S):
            rows = self._db.execute(
                "SELECT id, ts FROM samples WHERE id > ? ORDER BY id", (self._cursor,)
            ).fetchall()
            now = _now()
            if rows:
                self._cursor = rows[-1][0]
                lags = [float(now - ts) for _, ts in rows]
                self.lags.extend(lags)
                bucket = int((now - self._started) / 1000 / LAG_BUCKET_S)
                self.buckets.setdefault(bucket, []).extend(lags)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(10)
        self._db.close()
        return self.lags

    def timeline(self) -> list[list[float]]:
        """[bucket start s, samples, p99 ms, max ms] per ``LAG_BUCKET_S`` of the window: a
        burst (heartbeats falling due together, a checkpoint) shows as one bucket's p99."""
        return [
            [b * LAG_BUCKET_S, len(v), round(percentile(v, 0.99), 1), round(max(v), 1)]
            for b, v in sorted(self.buckets.items())
        ]


def _telemetry(inst: _Installation) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{inst.data / 'telemetry.db'}?mode=ro", uri=True, timeout=30)


#: the telemetry file's objects that grow with every stored sample: the samples table and
#: its two indexes (``UNIQUE (vehicle_id, seq)`` and ``samples_by_time``)
SAMPLE_OBJECTS = frozenset({"samples", "sqlite_autoindex_samples_1", "samples_by_time"})
#: ... and those that hold a fixed amount per vehicle, written by its first report and then
#: rewritten in place: its latest state, its row, its seq tracking
VEHICLE_OBJECTS = frozenset(
    {
        "latest_state",
        "vehicles",
        "sqlite_autoindex_vehicles_1",
        "seq_tracking",
        "seq_gaps",
    }
)


@dataclass(frozen=True, slots=True)
class Storage:
    """One look at the telemetry file: its used pages, the pages of the per-sample and
    per-vehicle objects (SQLite's ``dbstat``; NaN where this SQLite lacks it) and its
    vehicle rows."""

    used: int
    samples: float
    per_vehicle: float
    vehicles: int


def storage(path: Path) -> Storage:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        (vehicles,) = db.execute("SELECT count(*) FROM vehicles").fetchone()
        try:
            sizes = dict(
                db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
            )
        except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
            nan = float("nan")
            return Storage(int((pages - free) * size), nan, nan, int(vehicles))
        return Storage(
            used=int((pages - free) * size),
            samples=float(sum(sizes.get(name, 0) for name in SAMPLE_OBJECTS)),
            per_vehicle=float(sum(sizes.get(name, 0) for name in VEHICLE_OBJECTS)),
            vehicles=int(vehicles),
        )
    finally:
        db.close()


def storage_figures(
    before: Storage, after: Storage, stored: int, samples_per_s: float
) -> dict[str, float]:
    """Bytes on disk per stored sample, from two looks around a window in which ``stored``
    samples were committed: what grows with time, the samples and their indexes (a vehicle's
    first report also writes its latest state, row and seq tracking, a fixed ~1 KB per
    vehicle: counted per vehicle, not per sample, or a window that happens to hold many
    first reports looks 70 bytes a sample dearer, decision 0052); the whole file's growth
    (the figure before, for comparison); and a day of this fleet at ``samples_per_s``."""
    n = max(1, stored)
    file_figure = round((after.used - before.used) / n, 1)
    per_sample = (after.samples - before.samples) / n
    if per_sample != per_sample:  # no dbstat: the whole file's growth is all there is
        per_sample = file_figure
    per_vehicle = after.per_vehicle / max(1, after.vehicles)
    day = per_sample * samples_per_s * 86_400 + after.per_vehicle
    return {
        "bytes_per_sample": round(per_sample, 1),
        "file_bytes_per_sample": file_figure,
        "state_bytes_per_vehicle": round(per_vehicle, 1),
        "disk_gb_per_day": round(day / 1e9, 2),
    }


def _counter(inst: _Installation, name: str) -> int:
    db = _telemetry(inst)
    try:
        row = db.execute(
            "SELECT value FROM counters WHERE name = ? AND label = ''", (name,)
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def _bench_stored(inst: _Installation) -> int:
    db = _telemetry(inst)
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM samples WHERE vehicle_id IN "
            "(SELECT id FROM vehicles WHERE vin LIKE 'WBENCH%')"
        ).fetchone()
        return int(count)
    finally:
        db.close()


def _commands(inst: _Installation, seconds: float, rate: float) -> list[float]:
    """Send ``seconds * rate`` commands over the command units at ``rate``; each one's
    latency from its API call to its ``succeeded`` (NaN for one that did not succeed)."""
    count = max(1, int(seconds * rate))
    sent = asyncio.run(_send(inst.api, inst.command_vins, count, rate, inst.headers))
    rows = _finished(inst.data / "state.db", list(sent))
    out = []
    for command_id, (status, *_, succeeded_at) in rows.items():
        ok = status == "succeeded" and succeeded_at is not None
        out.append(float(succeeded_at) - sent[command_id][0] if ok else float("nan"))
    return out


@dataclass(slots=True)
class _Step:
    vehicles: int
    provision_s: float = 0.0
    acl_reload_s: float = 0.0
    connect_s: float = 0.0


def _heartbeat(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        interval = (float(low), float(high or low))
    except ValueError as exc:
        raise ConfigurationError(f"--heartbeat: MIN-MAX seconds, e.g. 30-60 ({exc})") from exc
    if not 0 < interval[0] <= interval[1]:
        raise ConfigurationError("--heartbeat: 0 < MIN <= MAX seconds, e.g. 30-60 or 30-30")
    return interval


def _grow(
    inst: _Installation,
    loads: list[_Load],
    step: _Step,
    per_process: int,
    heartbeat: tuple[float, float] = (30.0, 60.0),
    load_nice: int = DEFAULT_LOAD_NICE,
) -> None:
    """Provision the step's new vehicles, wait for the broker to take them, start their
    load processes and wait until every unit is connected."""
    from gateway.broker.auth import hash_password

    first = sum(load.count for load in loads)
    new = range(first, step.vehicles)
    started = time.monotonic()
    shared = hash_password(inst.password)
    _provision(inst, {bench_vin(i): shared for i in new})
    step.provision_s = round(time.monotonic() - started, 2)
    # every broker that takes units syncs on its own: wait for the last new VIN of each
    last_at = {inst.unit_port(bench_vin(i)): bench_vin(i) for i in new}
    waited = time.monotonic()
    for vin in last_at.values():
        _wait_login(inst, vin, inst.password)
    step.acl_reload_s = round(time.monotonic() - waited, 2)
    started = time.monotonic()
    for start in range(first, step.vehicles, per_process):
        count = min(per_process, step.vehicles - start)
        loads.append(
            _Load(
                inst.mqtt_port, start, count, inst.password, inst.edge_ports, heartbeat, load_nice
            )
        )

    def connected() -> bool:
        if any(load.proc.poll() is not None for load in loads):
            raise RuntimeError("a load process exited")
        return _total(loads, "connected") >= step.vehicles

    with contextlib.suppress(RuntimeError):
        _wait(connected, "every unit to connect", 120 + step.vehicles / 100)
    step.connect_s = round(time.monotonic() - started, 1)


def _pids(inst: _Installation, loads: list[_Load]) -> dict[str, int | tuple[int, int]]:
    pids: dict[str, int | tuple[int, int]] = dict(_up_parts(inst.up.pid))
    pids |= {f"load-{n}": load.proc.pid for n, load in enumerate(loads, 1)}
    for n, unit in enumerate(inst.units, 1):
        pids["command-units" if n == 1 else f"command-units-{n}"] = unit.pid
    pids["bench"] = os.getpid()
    return pids


def _measure(
    inst: _Installation, loads: list[_Load], step: _Step, window_s: float, command_rate: float
) -> dict[str, Any]:
    pids = _pids(inst, loads)
    used0, stored0 = storage(inst.data / "telemetry.db"), _counter(inst, metrics.SAMPLES_STORED)
    dup0 = _counter(inst, metrics.SAMPLES_DUPLICATE)
    sent0, values0 = _total(loads, "sent"), _total(loads, "values")
    late0 = _total(loads, "late")
    cpu = CpuWindow(pids)
    lag = _LagPoller(inst.data / "telemetry.db")
    started = time.monotonic()
    latencies: list[float] = []
    if inst.command_vins and command_rate > 0:
        latencies = _commands(inst, window_s, command_rate)
    rest = window_s - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)
    seconds = time.monotonic() - started
    figures = cpu.end()
    connected = _total(loads, "connected")  # at the window's end, before the accounting
    lags = lag.stop()
    timeline = lag.timeline()
    rss = {
        name: _rss_mb(pid) for name, pid in pids.items() if isinstance(pid, int) and name != "bench"
    }
    sent, values = _total(loads, "sent") - sent0, _total(loads, "values") - values0
    # accounting: every message acknowledged, then committed
    for load in loads:
        load.paused.clear()
        load.say("pause")
    for load in loads:
        load.paused.wait(90)
    acked = _total(loads, "acked")
    stored, drain_s, stalled = _drain(inst, acked, started + seconds)
    stored_all = _counter(inst, metrics.SAMPLES_STORED)
    used = storage(inst.data / "telemetry.db")
    duplicated = _counter(inst, metrics.SAMPLES_DUPLICATE) - dup0
    ok = [v for v in latencies if v == v]
    return {
        "connected": connected,
        "window_s": round(seconds, 1),
        "messages_per_s": round(sent / seconds, 1),
        "values_per_s": round(values / seconds, 1),
        "lags": lags,
        "lag_timeline": timeline,
        "commands": latencies,
        "commands_ok": ok,
        "cpu": figures,
        "rss": rss,
        **storage_figures(used0, used, stored_all - stored0, sent / seconds),
        "acked": acked,
        "lost": max(0, acked - stored) if stalled else 0,
        "pending": 0 if stalled else max(0, acked - stored),
        "drain_s": drain_s,
        "duplicated": duplicated,
        "late": _total(loads, "late") - late0,
        "sent": sent,
    }


def _drain(inst: _Installation, acked: int, since: float) -> tuple[int, float, bool]:
    """Wait for the gateway to commit ``acked`` bench samples while it makes progress:
    (committed, seconds since ``since``, whether it stopped committing short of them)."""
    stored = _bench_stored(inst)
    progress_at = started = time.monotonic()
    while stored < acked:
        now = time.monotonic()
        if now - progress_at > STALL_S:
            return stored, round(now - since, 1), True
        if now - started > DRAIN_MAX_S:
            return stored, round(now - since, 1), False
        time.sleep(0.5)
        now_stored = _bench_stored(inst)
        if now_stored > stored:
            progress_at = time.monotonic()
        stored = now_stored
    return stored, round(time.monotonic() - since, 1), False


def _figures(step: _Step, m: dict[str, Any], limits: tuple[float, float]) -> StepFigures:
    max_lag, max_command = limits
    lags, ok, cpu = m["lags"], m["commands_ok"], m["cpu"]
    figures = StepFigures(
        vehicles=step.vehicles,
        connected=m["connected"],
        provision_s=step.provision_s,
        acl_reload_s=step.acl_reload_s,
        connect_s=step.connect_s,
        window_s=m["window_s"],
        messages_per_s=m["messages_per_s"],
        values_per_s=m["values_per_s"],
        lag_p50_ms=round(percentile(lags, 0.5), 1),
        lag_p99_ms=round(percentile(lags, 0.99), 1),
        lag_max_ms=round(max(lags, default=float("nan")), 1),
        lag_samples=len(lags),
        commands=len(m["commands"]),
        commands_succeeded=len(ok),
        command_p50_ms=round(percentile(ok, 0.5), 1),
        command_p99_ms=round(percentile(ok, 0.99), 1),
        command_max_ms=round(max(ok, default=float("nan")), 1),
        cpu=dict(cpu.processes),
        rss_mb=m["rss"],
        machine_cpu=cpu.machine,
        others_cpu=cpu.others,
        bytes_per_sample=m["bytes_per_sample"],
        file_bytes_per_sample=m["file_bytes_per_sample"],
        state_bytes_per_vehicle=m["state_bytes_per_vehicle"],
        disk_gb_per_day=m["disk_gb_per_day"],
        lag_timeline=m["lag_timeline"],
        acked=m["acked"],
        lost=m["lost"],
        pending=m["pending"],
        drain_s=m["drain_s"],
        duplicated=m["duplicated"],
        late=m["late"],
        reconnects=0,
        refused=0,
    )
    broken = []
    if figures.connected < step.vehicles:
        broken.append(f"connections: {figures.connected:,} of {step.vehicles:,} connected")
    if figures.lost:
        broken.append(f"{figures.lost} samples lost")
    if figures.pending:
        broken.append(
            f"{figures.pending} acknowledged samples not committed {DRAIN_MAX_S:.0f} s after "
            "the pause (the gateway still behind, not lost)"
        )
    if not figures.lag_p99_ms <= max_lag:
        broken.append(f"ingest lag p99 {figures.lag_p99_ms:.0f} ms > {max_lag:.0f}")
    if figures.commands and figures.commands_succeeded < figures.commands:
        broken.append(f"{figures.commands - figures.commands_succeeded} commands not succeeded")
    if figures.commands and not figures.command_p99_ms <= max_command:
        broken.append(f"command p99 {figures.command_p99_ms:.0f} ms > {max_command:.0f}")
    if m["sent"] and figures.late > 0.01 * m["sent"]:
        broken.append(f"load generators late ({figures.late:,} reports): the machine is full")
    ours = sum(v for k, v in cpu.processes.items() if "." not in k)
    if ours > 0.95 * 100 * cpu.cores:
        broken.append(f"CPU: the product and its load took {ours:.0f} of {100 * cpu.cores} %")
    return StepFigures(**{**asdict(figures), "broken": broken})


def _not_run(vehicles: int, reason: str) -> StepFigures:
    """A step broken before it started: nothing measured (every figure NaN, every count 0,
    every table empty), no window, the reason given. Derived from the fields, so a new
    figure needs no line here."""
    empty: dict[type, Any] = {float: float("nan"), int: 0, dict: {}, list: []}
    hints = get_type_hints(StepFigures)
    values: dict[str, Any] = {
        f.name: copy.copy(empty[get_origin(hints[f.name]) or hints[f.name]])
        for f in fields(StepFigures)
    }
    return StepFigures(**{**values, "vehicles": vehicles, "window_s": 0.0, "broken": [reason]})


def _with_generators(figures: StepFigures, loads: Sequence[_Load]) -> StepFigures:
    """The step's figures with the generators' reconnects, refused logins and PUBACKs to
    no subscriber; refused logins break it."""
    figures = StepFigures(
        **{
            **asdict(figures),
            "reconnects": _total(loads, "reconnects"),
            "refused": _total(loads, "refused"),
            "no_subscribers": _total(loads, "no_subscribers"),
        }
    )
    if figures.refused:
        refused = f"{figures.refused} logins refused"
        figures = StepFigures(**{**asdict(figures), "broken": [*figures.broken, refused]})
    return figures


def run_scale_bench(
    *,
    steps: Sequence[int] = DEFAULT_STEPS,
    window_s: float = 60.0,
    per_process: int = 5000,
    command_rate: float = 1.0,
    command_units: int = 5,
    max_lag_ms: float = 2000.0,
    max_command_ms: float = 500.0,
    progress: bool = True,
    edge_brokers: int = 0,
    heartbeat: tuple[float, float] = (30.0, 60.0),
    load_nice: int = DEFAULT_LOAD_NICE,
) -> ScaleBenchResult:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise ConfigurationError("mosquitto not found: sudo apt-get install -y mosquitto")
    fd_limit = _raise_fd_limit()
    results: list[StepFigures] = []
    workdir = Path(tempfile.mkdtemp(prefix="telematics-bench-scale-"))
    loads: list[_Load] = []
    try:
        with (
            stop_children_on_signals(),
            _installation(workdir, command_units, progress, edge_brokers) as inst,
        ):
            try:
                for n in steps:
                    short = descriptors_short(n, edge_brokers, fd_limit)
                    if short:
                        _say(progress, f"step {n:,}: BROKE before starting: {short}")
                        results.append(_not_run(n, short))
                        break
                    step = _Step(n)
                    _say(progress, f"step {n:,}: provisioning and connecting")
                    _grow(inst, loads, step, per_process, heartbeat, load_nice)
                    _say(
                        progress,
                        f"  provisioned in {step.provision_s:.1f} s, ACL reload "
                        f"{step.acl_reload_s:.1f} s, {_total(loads, 'connected'):,} connected "
                        f"in {step.connect_s:.1f} s; measuring {window_s:.0f} s",
                    )
                    m = _measure(inst, loads, step, window_s, command_rate)
                    figures = _with_generators(
                        _figures(step, m, (max_lag_ms, max_command_ms)), loads
                    )
                    results.append(figures)
                    _say(
                        progress,
                        f"  {figures.messages_per_s:,.0f} msg/s, lag p99 "
                        f"{figures.lag_p99_ms:.0f} ms, command p99 {figures.command_p99_ms:.0f}"
                        f" ms, lost {figures.lost}, pending {figures.pending}"
                        + (f"; BROKE: {'; '.join(figures.broken)}" if figures.broken else ""),
                    )
                    if figures.broken:
                        break
                    for load in loads:
                        load.say("resume")
            finally:
                for load in loads:
                    load.stop()
    finally:
        if os.environ.get("TELEMATICS_BENCH_KEEP"):
            _say(progress, f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    broke = next((s for s in results if s.broken), None)
    return ScaleBenchResult(
        cores=os.cpu_count() or 1,
        fd_limit=fd_limit,
        steps=results,
        broke_at=broke.vehicles if broke else 0,
        broke_because=broke.broken if broke else [],
        heartbeat_s=heartbeat,
        load_nice=load_nice,
    )
