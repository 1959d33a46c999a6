"""What a vehicle identity change costs the broker's other units (decision 0055).

Run from a checkout, with the test helpers importable:

    PYTHONPATH=. .venv/bin/python scripts/bench_vehicle_auth.py --connected 2000 --mode plugin
    PYTHONPATH=/tmp/main-archive .venv/bin/python scripts/bench_vehicle_auth.py --mode file

``--mode file``: vehicle passwords in the password file and a reload per change (the only
mode before decision 0055, and what runs without a compiler); ``--mode plugin``: the
vehicle password plugin. A real Mosquitto with the product's identities
(``tests.support.broker.start_closed_broker``), ``--connected`` password units connected,
and one honest unit publishing QoS 1 every 20 ms throughout, its PUBACK delays recorded.
Phases: (1) connect cost; (2) three single password renewals 1 s apart, applied by the
sync; (3) three reloads (a service or integration change); (4) 0049's churn: the sync
thread running while one vehicle's password is renewed ten times a second for
``--churn-s``; (5) ``--bulk`` vehicles provisioned in one sync (``--only-bulk``: this one
only; with the plugin since decision 0060 a table swap, no Dynamic Security command).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gateway.broker import auth as broker_auth
from schemas.topics import Channel, topic_for
from tests.support.broker import ClosedBroker, start_closed_broker
from tests.support.mqtt_raw import Mqtt5Client

HONEST = "1HGCM82630HNEST01"
ATTACKER = "1HGCM82639CHRN999"


def _vin(i: int) -> str:
    return f"1HGCM8263{i:08d}"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Honest:
    """One unit publishing QoS 1 every 20 ms; (sent at, PUBACK delay) of each message."""

    def __init__(self, client: Mqtt5Client) -> None:
        self.client = client
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        topic = topic_for(HONEST, Channel.STATUS)
        while not self.stop.is_set():
            sent = time.monotonic()
            code = self.client.publish(topic, b"x")
            assert code < 0x80, code
            self.samples.append((sent, time.monotonic() - sent))
            self.stop.wait(0.02)

    def worst(self, start: float, end: float) -> float:
        return max((d for t, d in self.samples if start <= t <= end), default=0.0)

    def p99(self, start: float, end: float) -> float:
        values = sorted(d for t, d in self.samples if start <= t <= end)
        return values[int(len(values) * 0.99)] if values else 0.0


def _connect_all(
    closed: ClosedBroker, vins: list[str]
) -> tuple[list[Mqtt5Client], dict[str, float]]:
    """Phase 1: every unit connects once; what a CONNECT costs."""
    broker = closed.broker
    assert broker.pid is not None
    clients = []
    cpu0, t0 = _cpu_s(broker.pid), time.monotonic()
    for vin in vins:
        client, code = Mqtt5Client.connect(
            broker.host, broker.port, vin, username=vin, password=closed.vehicles[vin]
        )
        assert code == 0, (vin, code)
        clients.append(client)
    return clients, {
        "connect_s_per_unit_ms": (time.monotonic() - t0) / len(vins) * 1e3,
        "connect_broker_cpu_per_unit_us": (_cpu_s(broker.pid) - cpu0) / len(vins) * 1e6,
    }


def _singles(closed: ClosedBroker, honest: Honest) -> list[dict[str, float]]:
    """Phase 2: three password renewals 1 s apart, each applied by the sync."""
    singles = []
    for _ in range(3):
        started = time.monotonic()
        closed.vehicles[ATTACKER] = broker_auth.generate_password()
        closed.apply()
        applied = time.monotonic()
        time.sleep(1.0)
        singles.append(
            {
                "sync_ms": (applied - started) * 1e3,
                "worst_puback_ms": honest.worst(started - 0.05, applied + 0.05) * 1e3,
            }
        )
    return singles


def _reloads(closed: ClosedBroker, honest: Honest) -> list[dict[str, float]]:
    """Phase 3: three reloads (what a service account or integration change costs)."""
    reloads = []
    for _ in range(3):
        started = time.monotonic()
        closed.broker.reload(timeout=120)
        done = time.monotonic()
        time.sleep(0.5)
        reloads.append(
            {
                "reload_ms": (done - started) * 1e3,
                "worst_puback_ms": honest.worst(started - 0.05, done + 0.05) * 1e3,
            }
        )
    return reloads


def _churn(closed: ClosedBroker, honest: Honest, churn_s: float) -> dict[str, float]:
    """Phase 4: 0049's churn, the sync thread running while one vehicle's password is
    renewed ten times a second."""
    broker, sync = closed.broker, closed.sync
    assert broker.pid is not None
    busy: list[float] = []
    applying = sync.sync_once

    def timed_sync() -> bool:
        began = time.monotonic()
        changed = applying()
        if changed:
            busy.append(time.monotonic() - began)
        return changed

    sync.sync_once = timed_sync  # type: ignore[method-assign]
    sync.start()
    cpu0, started = _cpu_s(broker.pid), time.monotonic()
    while time.monotonic() - started < churn_s:
        closed.vehicles[ATTACKER] = broker_auth.generate_password()
        closed.source.set(closed.identities())
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    sync.stop(timeout=60)
    sync.sync_once = applying  # type: ignore[method-assign]
    return {
        "syncs": len(busy),
        "sync_share": sum(busy) / elapsed,
        "broker_cpu_share": (_cpu_s(broker.pid) - cpu0) / elapsed,
        "p99_puback_ms": honest.p99(started, started + elapsed) * 1e3,
        "worst_puback_ms": honest.worst(started, started + elapsed) * 1e3,
    }


def _bulk(closed: ClosedBroker, honest: Honest, count: int) -> dict[str, Any]:
    """Phase 5: ``count`` vehicles provisioned in one sync (applied live: no keeper, so
    no restart)."""
    broker = closed.broker
    assert broker.pid is not None
    for i in range(count):
        closed.vehicles[f"1HGCM8264{i:08d}"] = broker_auth.generate_password()
    cpu0, started = _cpu_s(broker.pid), time.monotonic()
    closed.apply()
    applied = time.monotonic()
    time.sleep(0.3)
    present = len(closed.vehicles) - count
    return {
        "vehicles": count,
        "sync_s": applied - started,
        "broker_cpu_s": _cpu_s(broker.pid) - cpu0,
        "worst_puback_ms": honest.worst(started, applied) * 1e3,
        "estimate_restart": broker_auth.estimate_control_s(count, present)
        > broker_auth.LIVE_CHANGES_BUDGET_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connected", type=int, default=2000)
    parser.add_argument("--mode", choices=("file", "plugin"), required=True)
    parser.add_argument("--churn-s", type=float, default=8.0)
    parser.add_argument("--bulk", type=int, default=100)
    parser.add_argument(
        "--only-bulk",
        action="store_true",
        help="skip phases 2-4 (the bulk provisioning of decision 0060 only)",
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vehicle-auth-bench-") as tmp:
        if args.mode == "plugin":
            from gateway.broker.vehicle_auth import ensure_vehicle_auth_plugin

            extra["vehicle_auth"] = ensure_vehicle_auth_plugin(Path(tmp) / "plugin")
        vins = [_vin(i) for i in range(args.connected)]
        passwords: dict[str, str | None] = {
            v: broker_auth.generate_password() for v in [*vins, HONEST, ATTACKER]
        }
        closed = start_closed_broker(Path(tmp), vehicles=passwords, persistence=False, **extra)
        result: dict[str, Any] = {"mode": args.mode, "connected": args.connected}
        clients: list[Mqtt5Client] = []
        try:
            clients, result["connect"] = _connect_all(closed, vins)
            honest_client = _connect_all(closed, [HONEST])[0][0]
            clients.append(honest_client)
            honest = Honest(honest_client)
            honest.thread.start()
            time.sleep(1.0)
            result["quiet_p99_ms"] = honest.p99(time.monotonic() - 1.0, time.monotonic()) * 1e3
            if not args.only_bulk:
                result["single"] = _singles(closed, honest)
                result["reload"] = _reloads(closed, honest)
                result["churn"] = _churn(closed, honest, args.churn_s)
            time.sleep(0.5)
            result["bulk"] = _bulk(closed, honest, args.bulk)
            honest.stop.set()
            honest.thread.join(5)
            result["median_puback_ms"] = statistics.median(d for _, d in honest.samples) * 1e3
            result["loadavg"] = os.getloadavg()[0]
        finally:
            for client in clients:
                client.close()
            closed.sync.stop(timeout=60)
            closed.broker.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
