"""``telematics bench identities``: what vehicle identities cost the closed broker.

A private Mosquitto with the closed set-up of ``telematics up`` (password file, Dynamic
Security plugin, the real :class:`~gateway.broker.auth.BrokerAuthSync` over an in-memory
identity source) and ``--vehicles`` provisioned vehicles (default 10,000). Measured, worst
of ``--repeat`` runs (default 3), each with a fresh broker:

* **render**: writing the password file and the plugin's file for all of them (what every
  broker start does) and the start itself, until the broker answers;
* **one change live**: one vehicle provisioned while all the others are there, until it can
  log in (two plugin commands, the password file, a SIGHUP), and one revoked until it is
  refused; the broker serves nobody while the plugin rewrites its file;
* **bulk**: all ``--vehicles`` provisioned at once into a running broker, until the last can
  log in (the sync restarts the broker with re-rendered files instead of sending two
  commands per vehicle).

With ``--vehicle-auth`` the vehicles' passwords and rights are in our vehicle_auth plugin's
table instead (decisions 0055 and 0060, what ``telematics up`` runs where it can compile
it): a change of any size is one table swap, no plugin command, no restart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.bench.jsonout import strict_json
from gateway.broker import BrokerConfig, DynsecControl, MosquittoProcess, free_port
from gateway.broker.auth import (
    BrokerAuthFiles,
    BrokerAuthSync,
    ServiceIdentity,
    VehicleIdentity,
    hash_password,
)
from gateway.broker.control import login_code
from gateway.broker.mosquitto import probe_mqtt
from gateway.errors import GatewayError
from gateway.supervisor import BrokerKeeper

__all__ = ["IdentityBenchResult", "add_arguments", "run_from_args", "run_identity_bench"]

_CONTROL = ("bench-broker-admin", "bench-control-password")
_PASSWORD = "bench-vehicle-password"


@dataclass(frozen=True, slots=True)
class IdentityBenchResult:
    vehicles: int
    render_s: float
    start_s: float
    dynsec_file_mb: float
    broker_rss_mb: float
    one_added_s: float
    one_revoked_s: float
    bulk_s: float
    bulk_restarted: bool


class _Source:
    def __init__(self) -> None:
        self.version = 0
        self.vehicles: list[VehicleIdentity] = []
        self.lock = threading.Lock()

    def get_version(self) -> int:
        with self.lock:
            return self.version

    def get(self) -> list[VehicleIdentity]:
        with self.lock:
            return list(self.vehicles)

    def set(self, vehicles: list[VehicleIdentity]) -> None:
        with self.lock:
            self.vehicles = vehicles
            self.version += 1


def _vin(i: int) -> str:
    return f"WBENCH{i:011d}"


def _login(broker: MosquittoProcess, vin: str) -> int:
    """CONNACK return code of a login as ``vin`` (0: accepted)."""
    return login_code(broker.host, broker.port, vin, _PASSWORD)


def _expect(broker: MosquittoProcess, vin: str, *, admitted: bool) -> None:
    if (_login(broker, vin) == 0) != admitted:
        raise GatewayError(
            f"{vin} was {'refused' if admitted else 'admitted'} after the sync: the "
            "measurement would be meaningless"
        )


def _keeper(directory: Path, source: _Source, vehicle_auth: Path | None = None) -> BrokerKeeper:
    files = BrokerAuthFiles(directory / "auth", vehicle_table=vehicle_auth is not None)
    services = [ServiceIdentity(_CONTROL[0], hash_password(_CONTROL[1]), kind="control")]
    config = BrokerConfig(
        port=free_port(),
        data_dir=directory / "mosquitto",
        persistence=False,
        allow_anonymous=False,
        password_file=files.password_file,
        dynsec_config_file=files.dynsec_file,
        vehicle_auth_plugin=vehicle_auth,
        vehicle_table_file=None if vehicle_auth is None else files.vehicle_table_file,
    )

    def sync(keeper: BrokerKeeper) -> BrokerAuthSync:
        broker = keeper.process
        return BrokerAuthSync(
            files,
            services=services,
            version=source.get_version,
            identities=source.get,
            control=DynsecControl(broker.host, broker.port, *_CONTROL, timeout=600),
            reload=broker.reload,
            restart=keeper.restart,
            lock=keeper.lock,
        )

    return BrokerKeeper(config, sync=sync)


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_identity_bench(vehicles: int, vehicle_auth: Path | None = None) -> IdentityBenchResult:
    """One run; ``vehicle_auth``: the compiled vehicle_auth plugin (its table instead of the
    password file and Dynamic Security for the vehicles)."""
    hashed = hash_password(_PASSWORD)  # one hash for all: hashing is not what is measured
    fleet = [VehicleIdentity(_vin(i), hashed) for i in range(vehicles)]
    with tempfile.TemporaryDirectory(prefix="bench-identities-") as tmp:
        source = _Source()
        source.set(fleet)
        keeper = _keeper(Path(tmp) / "one", source, vehicle_auth)
        assert keeper.sync is not None
        started = time.perf_counter()
        keeper.sync.render()
        render_s = time.perf_counter() - started
        started = time.perf_counter()
        keeper.process.start()
        start_s = time.perf_counter() - started
        size = keeper.sync.files.dynsec_file.stat().st_size / 1e6
        rss = _rss_mb(keeper.process.pid)
        try:
            newcomer = VehicleIdentity(_vin(vehicles), hashed)
            source.set([*fleet, newcomer])
            started = time.perf_counter()
            keeper.sync.sync_once()
            _expect(keeper.process, newcomer.vin, admitted=True)
            one_added_s = time.perf_counter() - started
            source.set(fleet)
            started = time.perf_counter()
            keeper.sync.sync_once()
            _expect(keeper.process, newcomer.vin, admitted=False)
            one_revoked_s = time.perf_counter() - started
        finally:
            keeper.stop()

        source = _Source()
        keeper = _keeper(Path(tmp) / "bulk", source, vehicle_auth)
        assert keeper.sync is not None
        keeper.sync.render()
        keeper.process.start()
        try:
            pid = keeper.process.pid
            source.set(fleet)
            started = time.perf_counter()
            keeper.sync.sync_once()
            probe_mqtt(keeper.process.host, keeper.process.port)
            _expect(keeper.process, fleet[-1].vin, admitted=True)
            bulk_s = time.perf_counter() - started
            restarted = keeper.process.pid != pid
        finally:
            keeper.stop()
    return IdentityBenchResult(
        vehicles=vehicles,
        render_s=round(render_s, 3),
        start_s=round(start_s, 3),
        dynsec_file_mb=round(size, 2),
        broker_rss_mb=round(rss, 1),
        one_added_s=round(one_added_s, 3),
        one_revoked_s=round(one_revoked_s, 3),
        bulk_s=round(bulk_s, 3),
        bulk_restarted=restarted,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vehicles", type=int, default=10_000, help="provisioned vehicles (default: 10,000)"
    )
    p.add_argument("--repeat", type=int, default=3, help="runs; the worst is reported (default: 3)")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    p.add_argument(
        "--vehicle-auth",
        action="store_true",
        help="the vehicles in our vehicle_auth plugin's table (compiled here; decision 0060), "
        "not the password file and Dynamic Security",
    )


def run_from_args(args: argparse.Namespace) -> int:
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-identities-plugin-") as plugins:
        plugin = None
        if args.vehicle_auth:
            from gateway.broker.vehicle_auth import ensure_vehicle_auth_plugin

            plugin = ensure_vehicle_auth_plugin(Path(plugins))
        for n in range(1, args.repeat + 1):
            print(f"[bench] run {n}/{args.repeat}: {args.vehicles:,} vehicles", file=sys.stderr)
            runs.append(run_identity_bench(args.vehicles, plugin))
    worst = IdentityBenchResult(
        vehicles=args.vehicles,
        **{
            f: max(getattr(r, f) for r in runs)
            for f in IdentityBenchResult.__dataclass_fields__
            if f not in ("vehicles", "bulk_restarted")
        },
        bulk_restarted=all(r.bulk_restarted for r in runs),
    )
    print(
        f"{worst.vehicles:,} vehicles, worst of {len(runs)} runs:\n"
        f"  render files            {worst.render_s:.3f} s "
        f"(plugin file {worst.dynsec_file_mb} MB)\n"
        f"  start broker            {worst.start_s:.3f} s (RSS {worst.broker_rss_mb} MB)\n"
        f"  one vehicle added live  {worst.one_added_s:.3f} s until it logs in\n"
        f"  one vehicle revoked     {worst.one_revoked_s:.3f} s until it is refused\n"
        f"  all {worst.vehicles:,} added at once  {worst.bulk_s:.3f} s until the last logs in"
        f" ({'broker restarted' if worst.bulk_restarted else 'through the plugin'}"
        f"{', vehicle_auth table' if args.vehicle_auth else ''})"
    )
    if args.json:
        print(strict_json({"worst": asdict(worst), "runs": [asdict(r) for r in runs]}))
    return 0
