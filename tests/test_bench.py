"""The ingest benchmark runs end to end and its accounting is right (tiny sizes: this checks
the benchmark, it does not measure; run ``telematics bench ingest`` for figures)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.bench.ingest import run_ingest_bench


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "provisioned"), [(1, False), (10, False), (1, True)])
def test_ingest_bench_counts_every_sample_once(batch: int, provisioned: bool) -> None:
    result = run_ingest_bench(
        vehicles=5,
        messages_per_vehicle=40,
        batch=batch,
        latency_seconds=1.0,
        progress=False,
        provisioned=provisioned,
    )
    assert result.samples == 5 * 40 * batch
    assert result.lost == 0
    assert result.duplicated == 0
    assert result.baseline_messages_per_s > 0
    assert result.ingest_samples_per_s > 0
    # the ratio is printed with three decimals
    assert result.ratio == pytest.approx(
        result.ingest_samples_per_s / result.baseline_samples_per_s, rel=0.01, abs=0.0005
    )
    # every paced sample of the latency phase was seen committed
    assert result.latency_samples > 0
    assert 0 <= result.latency_p50_ms <= result.latency_p99_ms <= result.latency_max_ms
    # CPU per process during the full-speed phase, and what the rest of the machine took
    # (a tiny run may take less than one clock tick of the gateway's CPU: 0 is possible)
    assert {"broker", "gateway", "loadgen", "others"} <= set(result.cpu)
    assert all(v >= 0 for v in result.cpu.values())


@pytest.mark.parametrize(("vehicles", "restarted"), [(40, False), (1500, True)])
def test_identity_bench_runs_both_paths(vehicles: int, restarted: bool) -> None:
    """A small bulk goes through the plugin, a large one restarts the broker; either way
    every login the benchmark times succeeded (it asserts them)."""
    from gateway.bench.identities import run_identity_bench

    result = run_identity_bench(vehicles)
    assert result.vehicles == vehicles
    assert result.bulk_restarted is restarted
    assert result.dynsec_file_mb > 0
    assert min(result.render_s, result.one_added_s, result.one_revoked_s, result.bulk_s) > 0


def test_identity_bench_with_the_vehicle_table_never_restarts(tmp_path: Path) -> None:
    """With the vehicle_auth plugin (decision 0060) the bulk of 1,500 that restarts the
    broker above is one table swap: no restart, every timed login asserted."""
    from gateway.bench.identities import run_identity_bench
    from gateway.broker.vehicle_auth import ensure_vehicle_auth_plugin

    result = run_identity_bench(1500, ensure_vehicle_auth_plugin(tmp_path / "plugin"))
    assert result.bulk_restarted is False
    assert min(result.render_s, result.one_added_s, result.one_revoked_s, result.bulk_s) > 0


@pytest.mark.slow
def test_fleet_bench_runs_both_phases_and_sees_alerts() -> None:
    """Tiny: 10 vehicles; the accounting (nothing lost or doubled), alerts raised by the
    rules, and the latency phase's overspeed alerts seen on the live stream (SSE)."""
    from gateway.bench.fleet import run_fleet_bench

    result = run_fleet_bench(
        vehicles=10, per_vehicle=60, latency_seconds=4.0, reps=1, progress=False
    )
    (rep,) = result.reps
    assert (rep.lost, rep.duplicated) == (0, 0)
    assert rep.alerts_by_kind.get("overspeed", 0) >= 10  # one per vehicle and 40 samples
    assert rep.alerts == sum(rep.alerts_by_kind.values())
    assert rep.with_rules_evaluated_samples_per_s > 0
    assert min(rep.without_rules_gateway_cpu_us, rep.with_rules_worker_cpu_us) > 0
    assert result.latency_source == "alert.raised on GET /v1/stream"
    assert rep.latency_alerts > rep.latency_unseen >= 0
    assert 0 <= rep.latency_p50_ms <= rep.latency_p99_ms <= rep.latency_max_ms
    assert result.worst["ratio"] == rep.ratio


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reports_bench_times_every_report(backend: str) -> None:
    """Tiny: 5 vehicles over 3 days; the CSV has a row per vehicle and day and a total per
    vehicle (the range starts mid-day, before the first trip of the day). On PostgreSQL
    the bench's database is vacuumed and analyzed after the load."""
    from gateway.bench.reports import run_reports_bench

    server = "postgresql://postgres@127.0.0.1:5432/postgres" if backend == "postgresql" else None
    result = run_reports_bench(vehicles=5, days=3, trips_per_day=2, reps=2, progress=False,
                               postgresql=server)  # fmt: skip
    assert result.database == backend
    assert (result.trips, result.alerts) == (5 * 3 * 2, 5 * 3)
    assert result.csv_rows == 5 * 3 + 5
    assert len(result.csv_ms) == len(result.json_ms) == len(result.utilization_csv_ms) == 2
    assert result.worst_csv_ms == max(result.csv_ms) > 0
    assert len(result.csv_api_cpu_ms) == 2
    assert min(result.csv_api_cpu_ms) >= 0


@pytest.mark.slow
def test_command_bench_attributes_every_command() -> None:
    """Tiny: every command succeeds in every phase, and each has its stages, the API's
    loop lag and the CPU of the API's threads (issue 17)."""
    from gateway.bench.commands import STAGES, run_commands_bench

    result = run_commands_bench(
        vehicles=3, commands=10, rate=10.0, loads=[0.5], ingest_samples=2000, pairs=2
    )
    assert [p.name for p in result.phases] == ["idle", "ingest at 50%"]
    assert result.ok
    assert result.ingest_max_samples_per_s > 0
    assert result.ingest_max_with_commands_samples_per_s > 0
    # without, with, without, with, without (decision 0045)
    assert len(result.ingest_pairs) == len(result.ingest_ratio_each) == 2
    assert result.ingest_pairs[0].without_after == result.ingest_pairs[1].without_before
    for phase in result.phases:
        assert phase.succeeded == phase.commands == 10
        assert set(STAGES) <= set(phase.stages)
        assert phase.loop_lag.max_ms >= 0
        assert {"api", "api.loop", "api.writer", "fleet-worker"} <= set(phase.cpu.processes)
        assert phase.commits > 0
    # each ingest phase has its CPU, the with-commands one the commands it saw (0064)
    for pair in result.ingest_pairs:
        for cpu in (pair.cpu_without_before, pair.cpu_with, pair.cpu_without_after):
            assert cpu is not None
            assert {"api", "gateway", "broker", "loadgen", "units"} <= set(cpu.processes)
        assert pair.commands_in_window > 0
        assert "api" in pair.command_cpu_ms()


def test_the_ingest_ratio_compares_each_with_commands_phase_with_its_neighbours() -> None:
    """Decision 0045: the machine drifts between phases as much as commands cost ingest, so
    each with-commands maximum is divided by the mean of the maxima without either side of
    it (a steady drift cancels), every pair is reported, and the worst run's ratio is the
    one the target reads."""
    from gateway.bench.commands import CommandBenchResult, IngestPair, _as_json, _worst

    # the machine slows 10 % per phase; commands cost nothing: every pair says 1.0
    drifting = IngestPair(30_000, 27_000, 24_300)
    assert drifting.without == 27_150
    assert abs(drifting.ratio - 27_000 / 27_150) < 1e-9  # 0.994, not 27,000 / 30,000 = 0.9
    pairs = [IngestPair(30_000, 27_000, 30_000), IngestPair(30_000, 28_500, 30_000)]
    run = CommandBenchResult(
        vehicles=100, commands_per_phase=400, rate_per_s=25, ingest_max_samples_per_s=30_000,
        ingest_max_with_commands_samples_per_s=27_750, ingest_ratio_with_commands=0.925,
        phases=[], ingest_pairs=pairs,
    )  # fmt: skip
    assert run.ingest_ratio_each == [0.9, 0.95]
    assert [p["ratio"] for p in _as_json(run)["ingest_pairs"]] == [0.9, 0.95]
    worse = dataclasses.replace(run, ingest_ratio_with_commands=0.88)
    summary = _worst([run, worse])
    assert summary["ingest_ratio_with_commands"] == 0.88
    assert summary["ingest_ratio_with_commands_each_run"] == [0.925, 0.88]
    assert summary["ingest_ratio_pairs"] == [0.9, 0.95, 0.9, 0.95]


def test_fleet_scale_heartbeat_option_reads_a_range_and_refuses_nonsense() -> None:
    from gateway.bench.scale import _heartbeat
    from gateway.errors import ConfigurationError

    assert _heartbeat("30-60") == (30.0, 60.0)
    assert _heartbeat("30-30") == _heartbeat("30") == (30.0, 30.0)
    for bad in ("x", "60-30", "0-5", "-5"):
        with pytest.raises(ConfigurationError, match="--heartbeat"):
            _heartbeat(bad)


@pytest.mark.slow
@pytest.mark.parametrize("edges", [0, 2])
def test_fleet_scale_bench_steps_up_and_accounts_for_every_sample(edges: int) -> None:
    """Tiny: two steps (8 then 24 vehicles) through ``telematics up`` with its closed
    broker (and with two edge brokers, decision 0038); every unit connected with its own
    credentials, nothing lost, every command answered, and the figures filled in (this
    checks the benchmark, it does not measure)."""
    from gateway.bench.scale import run_scale_bench

    result = run_scale_bench(
        steps=[8, 24],
        window_s=6.0,
        per_process=10,
        command_rate=1.0,
        command_units=1,
        max_lag_ms=60_000,
        max_command_ms=60_000,
        progress=False,
        edge_brokers=edges,
    )
    assert [s.vehicles for s in result.steps] == [8, 24]
    for step in result.steps:
        assert step.connected == step.vehicles
        assert (step.lost, step.refused) == (0, 0)
        assert step.acked > 0
        assert step.messages_per_s > 0
        assert step.values_per_s > step.messages_per_s  # several signals per report
        assert step.commands == step.commands_succeeded == 6
        assert 0 < step.command_p50_ms <= step.command_p99_ms
        assert step.lag_samples > 0
        assert step.provision_s > 0
        assert step.acl_reload_s > 0
        assert step.bytes_per_sample >= 0  # a tiny step may fit in the pages there were
        assert {"broker", "gateway-1", "api", "load-1"} <= set(step.cpu)
        assert {"broker", "gateway-1", "api"} <= set(step.rss_mb)
        assert {f"edge-{i}" for i in range(1, edges + 1)} <= set(step.cpu)
    # the second step's generators are new processes; the first step's stayed connected
    assert "load-3" in result.steps[1].cpu


def test_fleet_scale_accounting_tells_a_backlog_still_draining_from_a_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: the accounting waited a fixed 120 s and called whatever the gateway had not
    committed by then "lost" (82,048 of 194,026 in the coordinator's run, with the gateway
    still committing). Now it waits while samples keep arriving; only what is missing once
    nothing arrives for STALL_S is lost, what is still coming when DRAIN_MAX_S runs out is
    pending. The gateway is a thread writing rows into a telemetry file of the same shape."""
    import sqlite3
    import threading
    from types import SimpleNamespace

    from gateway.bench import scale

    db = sqlite3.connect(tmp_path / "telemetry.db")
    db.executescript(
        "CREATE TABLE vehicles (id INTEGER PRIMARY KEY, vin TEXT);"
        "CREATE TABLE samples (id INTEGER PRIMARY KEY, vehicle_id INTEGER);"
        "INSERT INTO vehicles VALUES (1, 'WBENCH00000000001');"
    )
    db.close()
    inst: Any = SimpleNamespace(data=tmp_path)

    def gateway(rows: int, every_s: float) -> threading.Thread:
        def commit() -> None:
            conn = sqlite3.connect(tmp_path / "telemetry.db")
            for _ in range(rows):
                time.sleep(every_s)
                conn.execute("INSERT INTO samples (vehicle_id) VALUES (1)")
                conn.commit()
            conn.close()

        thread = threading.Thread(target=commit)
        thread.start()
        return thread

    monkeypatch.setattr(scale, "STALL_S", 1.0)
    monkeypatch.setattr(scale, "DRAIN_MAX_S", 30.0)
    # behind, but committing: all 10 arrive, though it takes longer than STALL_S in all
    gateway(10, 0.3).join()
    assert scale._drain(inst, 10, time.monotonic())[::2] == (10, False)
    slow = gateway(10, 0.3)
    stored, drain_s, stalled = scale._drain(inst, 20, time.monotonic())
    slow.join()
    assert (stored, stalled) == (20, False)
    assert drain_s >= 2.5
    # 5 acknowledged samples never arrive: lost, once nothing came for STALL_S
    assert scale._drain(inst, 25, time.monotonic())[::2] == (20, True)
    # still committing when the wait ends: pending, not lost
    monkeypatch.setattr(scale, "DRAIN_MAX_S", 1.0)
    busy = gateway(10, 0.3)
    stored, _, stalled = scale._drain(inst, 40, time.monotonic())
    busy.join()
    assert stored < 30
    assert not stalled


def test_fleet_scale_bytes_per_sample_do_not_count_a_vehicles_first_report(
    tmp_path: Path,
) -> None:
    """Issue 18 (decision 0052): the figure was the whole file's growth over the window per
    sample, and a vehicle's first report also writes its latest state, row and seq tracking
    (~1 KB, once). A window holding many first reports (units connected quickly, their
    first heartbeats still to come) read 213-229 bytes a sample where the samples and their
    indexes grew by ~146. Two windows of the same traffic through the real store, one with
    every vehicle's first report in it and one after them, must give the same per-sample
    figure; the per-vehicle rows are counted per vehicle."""
    from device_sim.loadgen import bench_vin, heartbeat_signals
    from gateway.bench.scale import storage, storage_figures
    from gateway.core.batching import IngestBatch
    from gateway.store.sqlite import SqliteTelemetryStore
    from schemas.payloads import Sample

    vehicles, reports = 300, 4
    path = tmp_path / "telemetry.db"
    store = SqliteTelemetryStore(path)

    def window(n: int) -> dict[str, float]:
        before = storage(path)
        for i in range(vehicles):
            store.commit(
                IngestBatch(
                    received_at=1_800_000_000_000 + n * 1000,
                    samples=[
                        Sample(bench_vin(i), n * reports + k + 1, 1_800_000_000_000 + k, sig)
                        for k in range(reports)
                        for sig in [heartbeat_signals(i, n * reports + k)]
                    ],
                )
            )
        return storage_figures(before, storage(path), vehicles * reports, 100.0)

    first, later = window(0), window(1)
    store.close()
    # the whole file's figure tells the first window from the second by the vehicles' rows
    assert first["file_bytes_per_sample"] > later["file_bytes_per_sample"] + 100
    # the per-sample figure does not: same traffic, same bytes (within a page's share)
    assert abs(first["bytes_per_sample"] - later["bytes_per_sample"]) < 15
    assert 100 < later["bytes_per_sample"] < 200  # 28-signal reports, two indexes
    assert 500 < first["state_bytes_per_vehicle"] < 2000
    # a day: the samples at 100 a second plus the vehicles' rows
    day = later["bytes_per_sample"] * 100 * 86_400 + first["state_bytes_per_vehicle"] * vehicles
    assert later["disk_gb_per_day"] == pytest.approx(day / 1e9, abs=0.01)


def test_fleet_scale_step_over_a_brokers_descriptors_breaks_before_it_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Decision 0052: at 50,000 vehicles on 2 edge brokers the fullest edge gets ~25,000
    units, over the 20,000 descriptors a process may hold here; the step would wait ~10
    minutes for logins that cannot succeed. It breaks at once, saying how many edges fit."""
    from gateway.bench import scale
    from gateway.bench.scale import BROKER_OWN_FDS, descriptors_short

    short = descriptors_short(50_000, 2, 20_000)
    assert short.startswith("file descriptors: 25,")
    assert "--edge-brokers 3" in short
    assert descriptors_short(50_000, 3, 20_000) == ""
    assert descriptors_short(20_000 - BROKER_OWN_FDS, 0, 20_000) == ""
    assert "--edge-brokers 2" in descriptors_short(20_000, 0, 20_000)
    assert descriptors_short(100_000, 0, 262_144) == ""  # where the limit could be raised
    step = scale._not_run(50_000, short)
    scale._print(scale.ScaleBenchResult(2, 20_000, [step], 50_000, step.broken))
    assert f"50,000 vehicles: not run: {short}" in capsys.readouterr().err


def test_fleet_scale_step_not_run_claims_no_figure() -> None:
    """Decision 0054: ``_not_run`` listed every ``StepFigures`` field by hand, and the ones
    added later with a default (bytes per vehicle, a day on disk, drain time) said 0.0, as
    did provisioning, connect and the message rate: a measured zero, in the JSON too. Every
    figure of a step that never ran is NaN, every count 0, every table empty."""
    import math
    from dataclasses import fields

    from gateway.bench import scale

    step = scale._not_run(50_000, "file descriptors: too few")
    assert (step.vehicles, step.window_s, step.broken) == (
        50_000,
        0.0,
        ["file descriptors: too few"],
    )
    for f in fields(scale.StepFigures):
        if f.name in {"vehicles", "window_s", "broken"}:
            continue
        value = getattr(step, f.name)
        if isinstance(value, float):
            assert math.isnan(value), f.name
        else:
            assert value in (0, {}, []), f.name
    assert scale._not_run(1, "a").lag_timeline is not scale._not_run(2, "b").lag_timeline


def _strict(text: str) -> Any:
    """Parse as strict JSON: NaN and Infinity are not JSON (RFC 8259)."""
    import json

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_fleet_scale_json_is_strict_json_with_null_for_what_was_not_measured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decision 0065: ``bench fleet-scale --json`` wrote ``NaN`` for a step not run (0054
    left it), which jq and JSON.parse refuse. The figures are ``null`` now."""
    import argparse
    import json
    import math

    from gateway.bench import scale

    result = scale.ScaleBenchResult(
        cores=2,
        fd_limit=1024,
        steps=[scale._not_run(50_000, "file descriptors: too few")],
        broke_at=50_000,
        broke_because=["file descriptors: too few"],
    )
    monkeypatch.setattr(scale, "run_scale_bench", lambda **_: result)
    parser = argparse.ArgumentParser()
    scale.add_arguments(parser)
    args = parser.parse_args(["--steps", "50000", "--json"])
    assert scale.run_from_args(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    data = _strict(line)
    json.dumps(data, allow_nan=False)
    step = data["steps"][0]
    floats = [f.name for f in dataclasses.fields(scale.StepFigures) if f.type == "float"]
    assert floats
    for name in floats:
        original = getattr(result.steps[0], name)
        if math.isnan(original):
            assert step[name] is None, name


def test_every_bench_json_goes_through_the_strict_writer() -> None:
    """No ``bench ... --json`` prints with ``json.dumps`` directly (which writes NaN)."""
    import re

    bench = Path(__file__).resolve().parents[1] / "gateway" / "bench"
    direct = [
        f"{p.name}:{n}"
        for p in sorted(bench.glob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"print\(\s*json\.dumps", line)
    ]
    assert direct == []


def test_the_strict_writer_writes_null_for_every_non_finite_float() -> None:
    import json

    from gateway.bench.jsonout import strict_json

    text = strict_json({"a": float("nan"), "b": [1.5, float("inf"), (float("-inf"),)], "c": 0})
    assert json.loads(text) == {"a": None, "b": [1.5, None, [None]], "c": 0}


def test_an_ingest_pair_charges_each_process_its_cpu_beyond_the_neighbours_rate() -> None:
    """Decision 0064: a process's CPU per command in a pair is its rate in the
    with-commands phase minus the mean of its rates either side, over the commands sent in
    that phase's window; a process that works less with commands flowing (the gateway,
    storing fewer samples) shows it as negative, and the other sessions' share is kept
    apart."""
    from gateway.bench.commands import IngestPair
    from gateway.bench.probes import CpuFigures

    def cpu(api: float, gateway: float, others: float) -> CpuFigures:
        return CpuFigures(
            seconds=4.0, processes={"api": api, "gateway": gateway, "api.loop": api / 2},
            machine=api + gateway + others, others=others, cores=2, load_1m=1.0,
        )  # fmt: skip

    # 100 commands in 4 s; the API at 10 % then 32 % then 14 %: 20 % of a core beyond
    # its neighbours' 12 %, 0.2 x 4,000 ms / 100 = 8 ms per command
    pair = IngestPair(20_000, 18_000, 20_000, cpu(10, 90, 4), cpu(32, 80, 10), cpu(14, 90, 6), 100)
    costs = pair.command_cpu_ms()
    assert costs["api"] == 8.0
    assert costs["gateway"] == -4.0
    assert costs["others"] == 2.0
    assert costs["api.loop"] == 4.0
    assert IngestPair(20_000, 18_000, 20_000).command_cpu_ms() == {}
