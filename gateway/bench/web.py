"""First load of the web dashboard's fleet map in a real headless Chromium (Debian's, driven
by Playwright; a test dependency), each repetition in a fresh browser context (cold cache):
bytes shipped per kind, the time from navigation until the page is ready and until its first
vehicle marker is drawn (measured in the page), then the lag of the live updates over
``--watch`` seconds (a position's sample time to the moment the page applied it).

Against a running installation (the lag then spans unit, broker, ingest commit, the feed's
poll and the stream)::

    TELEMATICS_BENCH_PASSWORD=... python -m gateway.bench.web --api http://127.0.0.1:8080 \\
        --email fleet@demo.local --reps 3

Or at fleet scale, on an installation of its own (``--vehicles 2000``): an organization with
that many vehicles and a fleet manager, each vehicle's position, speed and charge written
into the store once a second by the benchmark itself (the lag then spans store commit ->
marker moved: the feed's poll, the stream and the page), and ``telematics api`` on it. It
also measures the CPU time of one snapshot (the stream's first event) read in one query
against reading each vehicle's state one by one (how it was read before), and the API
process's CPU while the map watches::

    python -m gateway.bench.web --vehicles 2000 --reps 3

docs/decisions/0019-web-dashboard.md and 0025-web-dashboard-rest.md record its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from gateway.bench.jsonout import strict_json

__all__ = ["first_load", "fleet_scale", "snapshot_cpu"]

_CHROMIUM = "/usr/bin/chromium"


def _one(browser: Any, api: str, email: str, password: str, watch_s: float) -> dict[str, Any]:
    context = browser.new_context()
    try:
        r = context.request.post(
            f"{api}/v1/auth/session",
            data=json.dumps({"email": email, "password": password}),
            headers={"Content-Type": "application/json"},
        )
        if r.status != 200:
            raise SystemExit(f"cannot log in as {email}: {r.status} {r.text()}")
        page = context.new_page()
        page.goto(f"{api}/")
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("path.vehicle-marker")
        page.wait_for_timeout(watch_s * 1000)  # live updates arrive meanwhile
        stats = page.evaluate(
            "() => ({ready: tgStats.readyMs, marker: tgStats.firstMarkerMs, lags: tgStats.lags})"
        )
        # bytes as received (encoded body) by kind, from the page's own resource timing;
        # the live streams never complete, so they are not in it
        sizes = page.evaluate(
            """() => {
              const out = {document: performance.getEntriesByType('navigation')[0].encodedBodySize};
              for (const e of performance.getEntriesByType('resource')) {
                if (e.name.includes('/stream')) continue;
                out[e.initiatorType] = (out[e.initiatorType] || 0) + e.encodedBodySize;
              }
              return out;
            }"""
        )
        heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : null")
        lags = sorted(stats["lags"])
        return {
            "ready_ms": stats["ready"],
            "first_marker_ms": stats["marker"],
            "bytes": sizes,
            "updates": len(lags),
            "lag_p50_ms": lags[len(lags) // 2] if lags else None,
            "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
            "js_heap_bytes": heap,
        }
    finally:
        context.close()


def first_load(
    api: str, email: str, password: str, reps: int, watch_s: float = 10.0
) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            return [_one(browser, api, email, password, watch_s) for _ in range(reps)]
        finally:
            browser.close()


# --- at fleet scale -------------------------------------------------------------------------

_LAT = "Vehicle.CurrentLocation.Latitude"
_LON = "Vehicle.CurrentLocation.Longitude"
_SPEED = "Vehicle.Speed"
_SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
_EMAIL = "fleet@bench.web"


def _vin(i: int) -> str:
    return f"WWEBB{i:012d}"


def _position(i: int, n: int, t: float) -> tuple[float, float]:
    """Vehicle ``i`` of ``n`` on a circle around central Munich, moving slowly."""
    angle = 2 * math.pi * i / n + t / 600
    radius = 0.01 + 0.03 * (i % 7) / 7
    return 48.137 + radius * math.sin(angle), 11.575 + radius * 1.5 * math.cos(angle)


def _prepare(data: Path, vehicles: int) -> tuple[str, list[str]]:
    """A data directory: an organization with ``vehicles`` vehicles and a fleet manager
    (the password), each vehicle online with one sample."""
    from gateway.auth.passwords import hash_password
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url
    from gateway.store import IngestBatch, StatusChange, open_store
    from schemas import Sample, StatusState

    data.mkdir(parents=True, mode=0o700)
    password = secrets.token_urlsafe(16)
    vins = [_vin(i) for i in range(vehicles)]
    db = StateDatabase(default_url(data))
    try:
        db.upgrade()
        accounts = AccountRepository(db)
        now = time.time_ns() // 1_000_000
        org = accounts.create_account("organization", "web bench fleet", now=now)
        accounts.create_user(
            email=_EMAIL,
            name="Bench",
            password_hash=hash_password(password),
            role="fleet_manager",
            account_id=org.id,
            now=now,
        )
        for vin in vins:
            accounts.provision_vehicle(
                vin=vin,
                account_id=org.id,
                label=None,
                mqtt_password_hash=None,
                provisioned_by=None,
                now=now,
            )
    finally:
        db.dispose()
    store = open_store(data / "telemetry.db")
    try:
        now = time.time_ns() // 1_000_000
        samples = []
        for i, vin in enumerate(vins):
            lat, lon = _position(i, vehicles, 0)
            samples.append(Sample(vin, 1, now, {_LAT: lat, _LON: lon, _SPEED: 0.0, _SOC: 80.0}))
        statuses = [StatusChange(vin, StatusState.ONLINE, now) for vin in vins]
        store.commit(IngestBatch(received_at=now, samples=samples, statuses=statuses))
    finally:
        store.close()
    return password, vins


def snapshot_cpu(data: Path, repeats: int = 20) -> dict[str, float]:
    """CPU milliseconds (this process, ``time.process_time``) of one live-map snapshot of
    the fleet manager's vehicles: in one read (``map_states``, as the stream does), and
    reading each vehicle's state one by one (as it did before); and of finding what the
    manager may see (``visible_vins``, also once per stream)."""
    from gateway.api.routes.positions import _snapshot
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url
    from gateway.store import open_store

    db = StateDatabase(default_url(data))
    reader = open_store(data / "telemetry.db", readonly=True)
    try:
        accounts = AccountRepository(db)
        user = accounts.get_user_by_email(_EMAIL)
        assert user is not None
        started = time.process_time()
        for _ in range(repeats):
            visible = accounts.visible_vins(
                account_id=user.account_id, user_id=user.id, include_account=True
            )
        visible_ms = (time.process_time() - started) * 1000 / repeats
        silence = (time.time_ns() // 1_000_000, 600_000)
        started = time.process_time()
        for _ in range(repeats):
            positions = _snapshot(reader, visible, silence)
        one_read_ms = (time.process_time() - started) * 1000 / repeats
        started = time.process_time()
        for _ in range(repeats):
            _per_vehicle_snapshot(reader, visible, silence)
        per_vehicle_ms = (time.process_time() - started) * 1000 / repeats
        return {
            "vehicles": float(len(positions)),
            "snapshot_one_read_cpu_ms": one_read_ms,
            "snapshot_per_vehicle_cpu_ms": per_vehicle_ms,
            "visible_vins_cpu_ms": visible_ms,
        }
    finally:
        reader.close()
        db.dispose()


def _per_vehicle_snapshot(
    reader: Any, visible: dict[str, int], silence: tuple[int, int]
) -> list[Any]:
    """The snapshot as it was read before (commit 0c82671 and earlier): the summaries,
    then each vehicle's state by itself; kept here to compare."""
    from dataclasses import replace

    from gateway.api.positions import MAP_SIGNALS, Position, position_of

    now_ms, silent_ms = silence
    out = []
    for summary in reader.list_vehicles(limit=10_000, vins=visible):
        tenure = visible[summary.vin]
        state = reader.vehicle_state(summary.vin, tenure=tenure)
        base = Position(
            summary.vin,
            tenure,
            ts=summary.last_seen,
            online=bool(summary.online) and now_ms - summary.last_seen < silent_ms,
        )
        if state is not None:
            values = {k: v for k, (v, _) in state.latest.items() if k in MAP_SIGNALS}
            moved = position_of(base, values, summary.last_seen, 0)
            base = base if moved is None else replace(moved, online=base.online)
        out.append(base)
    return out


def _drive(data: Path, vins: list[str], stop: threading.Event) -> None:
    """Every second, a sample per vehicle (moved a little), committed to the store."""
    from gateway.store import IngestBatch, open_store
    from schemas import Sample

    store = open_store(data / "telemetry.db")
    try:
        seq = 1
        while not stop.wait(1.0):
            seq += 1
            now = time.time_ns() // 1_000_000
            samples = []
            for i, vin in enumerate(vins):
                lat, lon = _position(i, len(vins), seq)
                samples.append(Sample(vin, seq, now, {_LAT: lat, _LON: lon, _SPEED: 30.0}))
            store.commit(IngestBatch(received_at=now, samples=samples))
    finally:
        store.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _api(data: Path) -> Iterator[tuple[str, int]]:
    """``telematics api`` on ``data`` (no rules worker, no broker): (its URL, its pid)."""
    import subprocess

    from gateway.broker import free_port

    port = free_port()
    argv = [sys.executable, "-m", "gateway", "api", "--data-dir", str(data)]
    argv += ["--log-level", "WARNING", "--port", str(port), "--no-fleet-worker"]
    env = {**os.environ, "TELEMATICS_ADMIN_PASSWORD": secrets.token_urlsafe(16)}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"telematics api exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/login", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("telematics api did not answer within 120 s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fleet_scale(vehicles: int, reps: int, watch_s: float) -> dict[str, Any]:
    """See the module docstring: snapshot CPU, then the browser's first loads and live
    lag with every vehicle moving once a second, and the API's CPU meanwhile."""
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        data = Path(tmp) / "data"
        password, vins = _prepare(data, vehicles)
        cpu = snapshot_cpu(data)
        with _api(data) as (url, pid):
            stop = threading.Event()
            writer = threading.Thread(target=_drive, args=(data, vins, stop), daemon=True)
            writer.start()
            try:
                cpu_before, started = _cpu_s(pid), time.monotonic()
                runs = first_load(url, _EMAIL, password, reps, watch_s)
                api_cpu = (_cpu_s(pid) - cpu_before) / (time.monotonic() - started)
            finally:
                stop.set()
                writer.join(30)
        return {"snapshot": cpu, "api_cpu_share": api_cpu, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--email", default="fleet@demo.local")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--watch", type=float, default=10.0, help="seconds of live updates")
    parser.add_argument(
        "--vehicles",
        type=int,
        default=0,
        help="run at fleet scale on an installation of its own with this many vehicles "
        "(--api and --email are then not used)",
    )
    args = parser.parse_args()
    if args.vehicles > 0:
        result = fleet_scale(args.vehicles, args.reps, args.watch)
        snap = result["snapshot"]
        print(
            f"{args.vehicles} vehicles: snapshot CPU {snap['snapshot_one_read_cpu_ms']:.1f} ms "
            f"in one read, {snap['snapshot_per_vehicle_cpu_ms']:.1f} ms vehicle by vehicle; "
            f"visible_vins {snap['visible_vins_cpu_ms']:.1f} ms; API process CPU while "
            f"watched {result['api_cpu_share'] * 100:.0f} % of a core"
        )
        runs = result["runs"]
    else:
        password = os.environ.get("TELEMATICS_BENCH_PASSWORD", "")
        runs = first_load(args.api, args.email, password, args.reps, args.watch)
    for i, run in enumerate(runs, 1):
        total = sum(run["bytes"].values())
        print(
            f"rep {i}: ready {run['ready_ms']:.0f} ms, first marker {run['first_marker_ms']:.0f} "
            f"ms after navigation; {total} bytes {run['bytes']}; {run['updates']} live updates, "
            f"lag p50 {run['lag_p50_ms']} ms p99 {run['lag_p99_ms']} ms; "
            f"JS heap {run['js_heap_bytes']} bytes"
        )
    marker = [r["first_marker_ms"] for r in runs]
    print(f"first marker: worst {max(marker):.0f} ms, spread {max(marker) - min(marker):.0f} ms")
    print(strict_json({"runs": runs}))


if __name__ == "__main__":
    main()
