"""``telematics bench sim``: how many simulated units one command holds on this machine.

A private Mosquitto (free port, data in a temporary directory, no persistence) and
``python -m device_sim`` (:mod:`device_sim.fleet`) as a child process, exactly as a tester
runs it, in two phases from one command:

a. 10,000 units at 0.2 messages/s each (2,000 msg/s) for 60 s after all are connected;
b. 1,000 units at 1 message/s each (1,000 msg/s) for 30 s.

Each phase runs once per ``--procs`` value (default: 1 and 2), each run with a fresh broker.
Per run it prints: units connected at the same time (must equal the target), messages/s
achieved after all were connected vs the target, publish -> PUBACK latency p50/p99 (timed in
the units), the simulator's CPU % and peak RSS per 1,000 units, and the broker's CPU % and
RSS (read from /proc). ``--units``, ``--rate`` and ``--seconds`` replace both phases with one
of that size (for small runs). ``--json``: one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device_sim.stats import PER_1000_MIN_UNITS
from gateway.bench.jsonout import strict_json
from gateway.broker import BrokerConfig, MosquittoProcess, free_port

__all__ = ["SimBenchResult", "add_arguments", "run_from_args", "run_sim_bench"]

#: (units, messages/s per unit, seconds after all are connected)
PHASES: tuple[tuple[int, float, float], ...] = ((10_000, 0.2, 60.0), (1_000, 1.0, 30.0))
CONNECT_RATE = 500.0


@dataclass(frozen=True, slots=True)
class SimBenchResult:
    units: int
    rate_per_unit: float
    procs: int
    seconds: float
    exit_status: int
    connected_peak: int
    all_connected: bool
    target_messages_per_s: float
    messages_per_s: float
    published: int
    acknowledged: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    sim_cpu_percent: float
    sim_cpu_percent_per_1000: float
    sim_rss_mb: float
    sim_rss_mb_per_1000: float
    broker_cpu_percent: float
    broker_rss_mb: float
    broker_peak_rss_mb: float
    #: the window asked for (``--seconds``); ``seconds`` is the one measured, longer when the
    #: units connected faster than the run allows for (units / connect rate + 2 s)
    seconds_asked: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--procs",
        default="1,2",
        metavar="LIST",
        help="simulator processes to try, comma-separated (default: 1,2)",
    )
    p.add_argument(
        "--units",
        type=int,
        default=None,
        help="one phase of this many units instead of the two standard phases",
    )
    p.add_argument(
        "--rate", type=float, default=1.0, help="with --units: messages/s per unit (default: 1)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="with --units: seconds after all units are connected (default: 10)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the results as one JSON object on the last line"
    )


def run_from_args(args: argparse.Namespace) -> int:
    procs = [int(x) for x in str(args.procs).split(",") if x.strip()]
    phases = PHASES if args.units is None else ((args.units, args.rate, args.seconds),)
    results: list[SimBenchResult] = []
    for units, rate, seconds in phases:
        for n in procs:
            _say(not args.json, f"{units:,} units at {rate:g} msg/s each, --procs {n}")
            result = run_sim_bench(units=units, rate=rate, seconds=seconds, procs=n)
            _print_result(result)
            results.append(result)
    if args.json:
        print(strict_json({"runs": [asdict(r) for r in results]}))
    return 0 if all(r.all_connected and r.exit_status == 0 for r in results) else 1


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


def _print_result(r: SimBenchResult) -> None:
    lat = (
        f"p50 {r.latency_p50_ms:.1f} ms  p99 {r.latency_p99_ms:.1f} ms"
        if r.latency_p50_ms is not None and r.latency_p99_ms is not None
        else "n/a"
    )
    # like the simulator's own summary: a few units say nothing about 1,000 (20 units' one
    # Python process extrapolated to "3055 MB per 1,000 units"; decision 0046)
    per_1000 = (
        f"{r.sim_cpu_percent_per_1000:.1f} % CPU, {r.sim_rss_mb_per_1000:.0f} MB"
        if r.units >= PER_1000_MIN_UNITS
        else f"n/a (needs {PER_1000_MIN_UNITS:,} units or more)"
    )
    print(
        f"""
sim benchmark: {r.units:,} units at {r.rate_per_unit:g} msg/s each, --procs {r.procs}, {r.seconds_asked:g} s asked, measured over {r.seconds:.1f} s after all connected
  connected at once          {r.connected_peak:,} / {r.units:,}{"" if r.all_connected else "   NOT ALL CONNECTED"}
  messages/s                 {r.messages_per_s:,.0f} of {r.target_messages_per_s:,.0f} target   ({r.published:,} published, {r.acknowledged:,} acknowledged)
  publish -> PUBACK          {lat}
  simulator                  {r.sim_cpu_percent:.0f} % CPU, {r.sim_rss_mb:.0f} MB RSS   per 1,000 units: {per_1000}
  broker (mosquitto)         {r.broker_cpu_percent:.0f} % CPU, {r.broker_rss_mb:.0f} MB RSS (peak {r.broker_peak_rss_mb:.0f} MB)""",  # noqa: E501
        file=sys.stderr,
        flush=True,
    )


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def run_sim_bench(
    *, units: int, rate: float, seconds: float, procs: int, connect_rate: float = CONNECT_RATE
) -> SimBenchResult:
    """One run: a fresh private broker, ``units`` simulated units at ``rate`` msg/s each in
    ``procs`` processes, for ``seconds`` after the last one is due to connect."""
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        config = BrokerConfig(port=free_port(), data_dir=Path(tmp) / "broker", persistence=False)
        with MosquittoProcess(config) as broker:
            pid = broker.pid
            assert pid is not None
            cpu0 = _proc_cpu_s(pid)
            duration = units / connect_rate + seconds + 2.0
            started = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "device_sim",
                    "--mqtt-url",
                    broker.url,
                    "--vehicles",
                    str(units),
                    "--rate",
                    repr(rate),
                    "--procs",
                    str(procs),
                    "--connect-rate",
                    repr(connect_rate),
                    "--duration",
                    repr(duration),
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                check=False,
                timeout=duration + 300,
            )
            wall = time.perf_counter() - started
            broker_cpu = _proc_cpu_s(pid) - cpu0
            broker_rss, broker_peak = _proc_rss_mb(pid)
    summary: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    if not summary:
        raise RuntimeError(f"the simulator exited with {done.returncode} and no summary")
    steady = summary.get("steady") or {}
    latency = summary.get("latency_ms") or {}
    res = summary["resources"]
    return SimBenchResult(
        units=units,
        rate_per_unit=rate,
        procs=procs,
        seconds=float(steady.get("seconds", 0.0)),
        seconds_asked=seconds,
        exit_status=done.returncode,
        connected_peak=int(summary["connected_peak"]),
        all_connected=int(summary["connected_peak"]) == units and bool(steady),
        target_messages_per_s=units * rate,
        messages_per_s=float(steady.get("messages_per_s", 0.0)),
        published=int(summary["published"]),
        acknowledged=int(summary["acknowledged"]),
        latency_p50_ms=latency.get("p50"),
        latency_p99_ms=latency.get("p99"),
        sim_cpu_percent=float(steady.get("cpu_percent", res["cpu_percent"])),
        sim_cpu_percent_per_1000=round(
            float(steady.get("cpu_percent", res["cpu_percent"])) / (units / 1000), 2
        ),
        sim_rss_mb=float(res["max_rss_mb"]),
        sim_rss_mb_per_1000=round(float(res["max_rss_mb"]) / (units / 1000), 1),
        broker_cpu_percent=round(100.0 * broker_cpu / wall, 1),
        broker_rss_mb=round(broker_rss, 1),
        broker_peak_rss_mb=round(broker_peak, 1),
    )
