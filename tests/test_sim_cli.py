"""``telematics sim`` (``python -m device_sim``): options, JSON summary, ``--procs`` sharding,
exit status when the broker refuses or is missing; and ``telematics bench sim`` at tiny size
(this checks the benchmark, it does not measure: run ``telematics bench sim`` for figures)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device_sim.fleet import build_parser, main, parse_shard
from device_sim.stats import LatencyHistogram, Shard, resources_summary
from device_sim.vehicle import make_vin
from gateway.bench.sim import SimBenchResult, _print_result, run_sim_bench
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from tests.support.sim_credentials import sim

OPTIONS = (
    "--mqtt-url",
    "--credentials",
    "--vins-from-credentials",
    "--tls-ca",
    "--tls-cert-dir",
    "--vehicles",
    "--vin-prefix",
    "--list-vins",
    "--rate",
    "--interval",
    "--procs",
    "--connect-rate",
    "--seed",
    "--duration",
    "--seq-state",
    "--json",
    "--no-progress",
    "--progress",
    "--buffer-limit",
    "--faults",
    "--send-on-change",
    "--min-signal-interval",
    "--heartbeat",
    "--slow-share",
    "--slow-delay",
    "--silent-share",
    "--misbehave",
    "--username",
    "--gateway-public-key",
    "--shard",
    "--log-level",
)


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text, option
    parser_options = {
        o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")
    }
    assert parser_options == {*OPTIONS, "--help"}
    assert "default" in text
    assert "examples:" in text
    assert "--vehicles 5000 --rate 0.2" in text
    # decision 0046: no default broker, and every example names one
    assert "there is no default broker" in " ".join(text.split())
    examples = text.split("examples:")[1].split("credentials file (")[0]
    runs = [line for line in examples.splitlines() if line.strip().startswith("telematics sim ")]
    assert runs
    for line in runs:
        assert any(w in line for w in ("--mqtt-url", "--credentials", "--list-vins", "scenario"))


def test_shards_split_the_fleet_once() -> None:
    assert parse_shard("1/3") == Shard(1, 3)
    for bad in ("3/3", "-1/2", "x", "1/0"):
        with pytest.raises(ValueError, match="invalid shard"):
            parse_shard(bad)
    numbers = [n for i in range(3) for n in Shard(i, 3).numbers(10)]
    assert sorted(numbers) == list(range(1, 11))


def test_latency_histogram_percentiles_and_merge() -> None:
    one, two = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 101):
        (one if ms % 2 else two).add(float(ms))
    one.merge(LatencyHistogram.from_wire(json.loads(json.dumps(two.to_wire()))))
    assert one.count == 100
    p50, p99 = one.percentile(0.5), one.percentile(0.99)
    assert p50 is not None
    assert p99 is not None
    assert p50 == pytest.approx(50, rel=0.02)
    assert p99 == pytest.approx(99, rel=0.02)
    assert LatencyHistogram().percentile(0.5) is None


def test_run_prints_a_json_summary_with_every_message_acknowledged(
    mosquitto: MosquittoProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    argv = ["--mqtt-url", mosquitto.url, "--vehicles", "20", "--rate", "2"]
    gmqtt_log = logging.getLogger("gmqtt")
    level = gmqtt_log.level
    try:
        code = asyncio.run(main([*argv, "--duration", "3", "--json"], out=out))
    finally:
        gmqtt_log.setLevel(level)  # main() quiets gmqtt for the command line
    assert code == 0
    assert capsys.readouterr().err == ""  # --json: nothing but the summary
    s: dict[str, Any] = json.loads(out.getvalue())
    assert (s["vehicles"], s["procs"], s["connected"], s["connected_peak"]) == (20, 1, 20, 20)
    assert s["published"] == s["acknowledged"] > 0
    assert s["samples_published"] >= 20 * 4
    assert s["rejected_by_broker"] == 0
    assert s["commands_answered"] == 0
    assert s["rate_per_unit"] == 2.0
    latency = s["latency_ms"]
    assert latency["count"] == s["acknowledged"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert s["steady"]["target_messages_per_s"] == 40.0
    res = s["resources"]
    assert res["cpu_s"] > 0
    assert res["max_rss_mb"] > 0
    assert res["per_1000_units"] is None  # 20 units say nothing about 1,000
    assert sorted(s["units"]) == [make_vin(i) for i in range(1, 21)]


def test_procs_split_the_vehicles_and_aggregate(mosquitto: MosquittoProcess) -> None:
    done = sim(
        "--mqtt-url", mosquitto.url, "--vehicles", "20", "--rate", "2",
        "--duration", "3", "--procs", "2", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["procs"] == 2
    assert [(x["shard"], x["vehicles"]) for x in s["shards"]] == [("0/2", 10), ("1/2", 10)]
    assert sorted(s["units"]) == [make_vin(i) for i in range(1, 21)]  # each VIN once
    assert s["published"] == sum(u["messages"] for u in s["units"].values())
    assert s["published"] == s["acknowledged"] > 0
    assert s["connected_peak"] == 20
    assert len(s["resources"]["processes"]) == 2
    assert len({p["pid"] for p in s["resources"]["processes"]}) == 2
    assert s["latency_ms"]["count"] == s["acknowledged"]


def test_a_broker_that_refuses_gives_exit_1_and_says_what_to_fix(tmp_path: Path) -> None:
    """A closed broker (as telematics up's) refusing anonymous units: a short message that
    says to give them credentials, not a page of per-unit JSON; --json still gets it."""
    config = BrokerConfig(port=free_port(), data_dir=tmp_path / "b", allow_anonymous=False)
    with MosquittoProcess(config) as broker:
        done = sim("--mqtt-url", broker.url, "--vehicles", "200", "--duration", "10")
        as_json = sim("--mqtt-url", broker.url, "--vehicles", "3", "--duration", "10", "--json")
    assert done.returncode == 1
    assert done.stdout == ""
    (message,) = [line for line in done.stderr.splitlines() if "device_sim: error:" in line]
    assert "refused" in message
    assert "--credentials FILE" in message
    assert "telematics vehicle add" in message
    assert len(done.stderr) < 2000, done.stderr
    assert as_json.returncode == 1
    summary = json.loads(as_json.stdout)
    assert summary["rejected_by_broker"] >= 1
    assert "--credentials FILE" in as_json.stderr


def test_without_json_the_summary_is_one_line(mosquitto: MosquittoProcess) -> None:
    """The demo's simulator prints this at every Ctrl-C: one line, nothing per 1,000 units
    for a handful of them; the JSON summary is for --json."""
    done = sim("--mqtt-url", mosquitto.url, "--vehicles", "3", "--rate", "2", "--duration", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("device_sim: done in")]
    assert "3/3 connected at peak" in line
    assert "per 1,000 units" not in line
    assert "{" not in done.stderr


def test_figures_per_1000_units_need_1000_units() -> None:
    processes = [{"pid": 1, "cpu_s": 2.0, "max_rss_mb": 60.0}]
    assert resources_summary(processes, 5, 10.0)["per_1000_units"] is None
    assert resources_summary(processes, 999, 10.0)["per_1000_units"] is None
    per_k = resources_summary(processes, 2000, 10.0)["per_1000_units"]
    assert per_k == {"cpu_s": 1.0, "cpu_percent": 10.0, "max_rss_mb": 30.0}


def test_a_second_signal_while_the_summary_is_written_does_not_kill_it(
    mosquitto: MosquittoProcess,
) -> None:
    """Ctrl-C reaches the demo's simulator, then telematics up's SIGTERM: the summary must
    still come out whole. Here the signal arrives while the summary is being written."""

    class Interrupting(io.StringIO):
        sent = False

        def write(self, text: str) -> int:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return super().write(text)

    out = Interrupting()
    gmqtt_log = logging.getLogger("gmqtt")
    level = gmqtt_log.level
    argv = ["--mqtt-url", mosquitto.url, "--vehicles", "2", "--duration", "1", "--json"]
    try:
        code = asyncio.run(main(argv, out=out))
    finally:
        gmqtt_log.setLevel(level)
    assert code == 0
    assert out.sent
    assert json.loads(out.getvalue())["vehicles"] == 2


def test_list_vins_prints_the_fleet_to_provision(capsys: pytest.CaptureFixture[str]) -> None:
    def listed(*argv: str) -> list[str]:
        out = io.StringIO()
        assert asyncio.run(main([*argv, "--list-vins"], out=out)) == 0
        return out.getvalue().split()

    assert listed("--vehicles", "3", "--vin-prefix", "WSMNEW") == [
        f"WSMNEW0000000000{i}" for i in (1, 2, 3)
    ]
    assert listed() == [make_vin(i) for i in range(1, 6)]
    with pytest.raises(SystemExit) as exit_info:
        listed("--vin-prefix", "WSMIOQ")
    assert exit_info.value.code == 2
    assert "without I, O, Q" in capsys.readouterr().err


def test_an_unreachable_broker_gives_exit_1() -> None:
    done = sim("--mqtt-url", f"mqtt://127.0.0.1:{free_port()}", "--duration", "1")
    assert done.returncode == 1
    assert "cannot reach the MQTT broker" in done.stderr
    assert "--mqtt-url" in done.stderr


def test_bench_at_tiny_size_connects_every_unit() -> None:
    result = run_sim_bench(units=50, rate=1.0, seconds=3.0, procs=1)
    assert result.exit_status == 0
    assert result.connected_peak == 50
    assert result.all_connected
    assert result.published == result.acknowledged > 0
    assert result.messages_per_s > 0
    assert result.latency_p50_ms is not None
    assert result.broker_rss_mb > 0


def _bench_result(units: int) -> SimBenchResult:
    return SimBenchResult(
        units=units, rate_per_unit=1.0, procs=1, seconds=5.0, exit_status=0,
        connected_peak=units, all_connected=True, target_messages_per_s=float(units),
        messages_per_s=float(units), published=5 * units, acknowledged=5 * units,
        latency_p50_ms=1.0, latency_p99_ms=20.0, sim_cpu_percent=1.0,
        sim_cpu_percent_per_1000=1000.0 / units, sim_rss_mb=61.0,
        sim_rss_mb_per_1000=61.0 * 1000 / units, broker_cpu_percent=0.0, broker_rss_mb=8.0,
        broker_peak_rss_mb=8.0,
    )  # fmt: skip


def test_bench_sim_prints_figures_per_1000_units_only_for_1000_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`telematics bench sim --units 20` printed "per 1,000 units: ... 3050 MB": one Python
    process's 61 MB times 50 (newcomer round 7, decision 0046)."""
    _print_result(_bench_result(20))
    small = capsys.readouterr().err
    assert "per 1,000 units: n/a (needs 1,000 units or more)" in small
    assert "3050 MB" not in small
    _print_result(_bench_result(1000))
    assert "per 1,000 units: 1.0 % CPU, 61 MB" in capsys.readouterr().err


def test_faults_flag_is_checked_and_explained() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "device_sim", "--faults", "warp_drive=0.1", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "warp_drive" in bad.stderr
    assert "malformed_json" in bad.stderr


def test_the_first_progress_line_shows_the_rate_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's first progress line read ``5/5 connected  30 published ... 0 msg/s``: the
    rate of the first interval was never computed (there was no previous line), so a
    newcomer's first look said nothing was flowing. The first rate is since the start."""
    from device_sim.console import ProgressDisplay

    progress = ProgressDisplay("plain", interval_s=5, title="t")
    line = {"connected": 5, "vehicles": 5, "acknowledged": 30, "buffered": 0, "errors": 0}
    line |= {"commands_answered": 0, "commands_received": 0}
    progress.update({**line, "elapsed_s": 5.0, "published": 30})
    progress.update({**line, "elapsed_s": 10.0, "published": 80})
    first, second = capsys.readouterr().err.splitlines()
    assert "30 published" in first, first
    assert " 6 msg/s" in first, first
    assert " 10 msg/s" in second, second


def test_progress_counts_reconnects_apart_from_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Decision 0054: the demo's progress line read "5 errors" for the rest of the run after
    the broker restart that bulk provisioning causes: each unit's second connect was counted
    as an error. A reconnect is what a unit does after a dropped link; errors are samples
    lost to a full buffer, logins the broker refused and connections taken over."""
    import dataclasses
    import functools

    from device_sim.console import ProgressDisplay
    from device_sim.fleet import FleetRun, FleetSettings
    from device_sim.unit import UnitSettings

    fleet = FleetRun(FleetSettings(count=3), UnitSettings())
    for unit, (connects, dropped) in zip(fleet.units, [(2, 0), (2, 0), (3, 4)], strict=True):
        stats = dataclasses.replace(unit.stats(), connects=connects, dropped=dropped)
        setattr(unit, "stats", functools.partial(lambda s: s, stats))  # noqa: B010
    p = fleet.progress(5.0)
    assert (p["reconnects"], p["errors"]) == (4, 4)
    fleet.rejected = 1
    p = fleet.progress(6.0)  # the per-unit counters are cached for a couple of seconds
    assert (p["reconnects"], p["errors"]) == (4, 5)
    ProgressDisplay("plain", interval_s=5, title="t").update(p)
    assert "5 errors  4 reconnects" in capsys.readouterr().err


def test_bench_sim_header_names_the_window_asked_and_the_one_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Decision 0054: `telematics bench sim --units 20 --seconds 3` printed "5 s after all
    connected", the window it measured, as if it were the one asked for (the run allows
    units / connect rate + 2 s for connecting; 20 units connect in milliseconds)."""
    import dataclasses

    _print_result(dataclasses.replace(_bench_result(20), seconds=5.04, seconds_asked=3.0))
    header = capsys.readouterr().err.strip().splitlines()[0]
    assert "3 s asked, measured over 5.0 s after all connected" in header, header
