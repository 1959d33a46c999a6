"""``--procs N``: one fleet spread over N child processes, one event loop each.

One Python process drives a few thousand units; a bigger fleet (or a faster rate) needs more
cores. The parent starts N children ``python -m device_sim ... --shard i/N``; child ``i`` runs
vehicles ``i+1, i+1+N, i+1+2N, ...`` of the same fleet (a vehicle is the same whichever
process drives it: :func:`device_sim.fleet.build_vehicles` with ``numbers``), connecting at
``--connect-rate / N`` per second. Every child writes JSON lines to its stdout, a pipe to the
parent: ``{"progress": {...}}`` every second and ``{"summary": {...}}`` at the end. The
parent shows the summed progress, forwards Ctrl-C / SIGTERM / the end of ``--duration`` to
the children as SIGTERM (each stops its units cleanly), and prints one merged summary: the
counters summed, the latency histograms merged, each child's CPU and memory listed. A child
refused by the broker stops; the parent then stops the others and exits 1.

Secrets never go on a child's command line, which every user can read (ps): children inherit
the parent's environment (the password of a shared ``--username``) and get the credentials
file's path, from which each reads the passwords of its own units.

Imports: the standard library and ``device_sim`` only; never :mod:`device_sim.fleet`, which
imports this module (the pieces both need are in :mod:`device_sim.stats` and
:mod:`device_sim.console`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from device_sim.console import ProgressDisplay, report
from device_sim.stats import (
    SUMMED_KEYS,
    UNIT_DETAIL_LIMIT,
    LatencyHistogram,
    Shard,
    merge_progress,
    resources_summary,
)

__all__ = ["child_argv", "merge_summaries", "run_procs"]

#: a summary line with every unit's counters can be megabytes long
_LINE_LIMIT: Final = 256 * 1024 * 1024
#: how long children get to stop cleanly after SIGTERM before they are killed
_STOP_GRACE_S: Final = 30.0


def child_argv(args: argparse.Namespace, shard: Shard) -> list[str]:
    """The command line of the child that runs ``shard`` of the fleet ``args`` describes
    (``args`` as :func:`device_sim.fleet.main` resolved it: broker URL and vehicle count
    explicit). Never a secret: a command line is visible to every user (ps,
    /proc/PID/cmdline), so credentials go by file path and passwords by environment."""
    argv = [
        "--mqtt-url",
        args.mqtt_url,
        "--vehicles",
        str(args.vehicles),
        "--seed",
        str(args.seed),
        "--vin-prefix",
        args.vin_prefix,
        "--connect-rate",
        repr(float(args.connect_rate)),
        "--buffer-limit",
        str(args.buffer_limit),
        "--slow-share",
        repr(float(args.slow_share)),
        "--slow-delay",
        repr(float(args.slow_delay)),
        "--silent-share",
        repr(float(args.silent_share)),
        "--log-level",
        args.log_level,
        "--shard",
        str(shard),
    ]
    if args.interval is not None:
        argv += ["--interval", repr(float(args.interval))]
    elif args.rate is not None:
        argv += ["--rate", repr(float(args.rate))]
    if args.duration is not None:
        argv += ["--duration", repr(float(args.duration))]
    if args.username is not None:
        argv += ["--username", args.username]  # its password travels in the environment
    if args.credentials is not None:
        # the path only: each child reads the passwords from the file itself
        argv += ["--credentials", str(Path(args.credentials).absolute())]
        if args.vins_from_credentials:
            argv += ["--vins-from-credentials"]
    if args.tls_ca is not None:
        argv += ["--tls-ca", str(Path(args.tls_ca).absolute())]
    if args.tls_cert_dir is not None:
        argv += ["--tls-cert-dir", str(Path(args.tls_cert_dir).absolute())]
    if args.faults:
        argv += ["--faults", args.faults]
    if args.gateway_public_key is not None:
        argv += ["--gateway-public-key", str(args.gateway_public_key)]
    if args.misbehave:
        argv += ["--misbehave"]
    if args.send_on_change:
        argv += [
            "--send-on-change",
            "--min-signal-interval",
            repr(float(args.min_signal_interval)),
            "--heartbeat",
            repr(float(args.heartbeat)),
        ]
    return argv


def merge_summaries(
    parts: Sequence[Mapping[str, Any]], *, duration_s: float, details: bool
) -> dict[str, Any]:
    """One summary from the shards' summaries. Raises ValueError if a VIN ran twice."""
    if not parts:
        raise ValueError("no shard summaries to merge")
    merged: dict[str, Any] = dict.fromkeys(SUMMED_KEYS, 0)
    for part in parts:
        for key in SUMMED_KEYS:
            merged[key] += int(part.get(key, 0))
    first = parts[0]
    merged.update(
        rate_per_unit=first["rate_per_unit"],
        interval_s=first["interval_s"],
        duration_s=round(duration_s, 3),
        procs=len(parts),
        error=next((p["error"] for p in parts if p.get("error")), None),
    )
    vins: list[str] = [vin for part in parts for vin in part["vins"]]
    if len(set(vins)) != len(vins):
        raise ValueError("a VIN ran in two shards")
    if all(p.get("latency_histogram") for p in parts):
        histogram = LatencyHistogram()
        for part in parts:
            histogram.merge(LatencyHistogram.from_wire(part["latency_histogram"]))
        merged["latency_ms"] = histogram.as_json()
    else:
        merged["latency_ms"] = None
    steadies = [p.get("steady") for p in parts]
    if all(steadies):
        merged["steady"] = {
            "seconds": min(float(s["seconds"]) for s in steadies if s),
            **{
                key: round(sum(float(s[key]) for s in steadies if s), 3)
                for key in (
                    "messages",
                    "messages_per_s",
                    "target_messages_per_s",
                    "cpu_s",
                    "cpu_percent",
                )
            },
        }
    else:
        merged["steady"] = None
    merged["slow_units"] = sorted(vin for p in parts for vin in p.get("slow_units", []))
    merged["silent_units"] = sorted(vin for p in parts for vin in p.get("silent_units", []))
    merged["shards"] = [
        {"shard": p["shard"], "vehicles": p["vehicles"], "connected_peak": p["connected_peak"]}
        for p in parts
    ]
    processes = [proc for p in parts for proc in p["processes"]]
    merged["resources"] = resources_summary(processes, merged["vehicles"], duration_s)
    if details and all("units" in p for p in parts):
        units = {vin: u for p in parts for vin, u in p["units"].items()}
        merged["units"] = {vin: units[vin] for vin in sorted(units)}
    return merged


class _Child:
    def __init__(self, shard: Shard, process: asyncio.subprocess.Process) -> None:
        self.shard = shard
        self.process = process
        self.progress: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None

    def terminate(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    async def read(self, on_refused: asyncio.Event) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "progress" in message:
                self.progress = message["progress"]
                if self.progress.get("rejected_by_broker") or self.progress.get("taken_over"):
                    on_refused.set()
            elif "summary" in message:
                self.summary = message["summary"]


async def run_procs(
    args: argparse.Namespace, procs: int, *, out: TextIO, stop: asyncio.Event
) -> int:
    """Run the fleet of ``args`` over ``procs`` child processes until ``stop`` is set (the
    caller sets it on SIGINT and SIGTERM), or they end; print the merged summary."""
    loop = asyncio.get_running_loop()
    quiet = args.json or args.no_progress
    display = ProgressDisplay(
        ProgressDisplay.choose(quiet=quiet, stream=sys.stderr),
        interval_s=args.progress,
        title=f"telematics sim: {args.vehicles:,} units in {procs} processes",
    )
    children = [await _start_child(args, Shard(index, procs)) for index in range(procs)]
    refused = asyncio.Event()
    started = loop.time()
    display.start()
    forwarder = asyncio.create_task(_forward_stop(children, stop, refused))
    shower = asyncio.create_task(_show(display, children, started))
    try:
        await _wait_children(children, refused)
    finally:
        forwarder.cancel()
        shower.cancel()
        await asyncio.gather(forwarder, shower, return_exceptions=True)
        display.stop()
        for child in children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
    return _finish(children, args, out, duration_s=loop.time() - started)


async def _start_child(args: argparse.Namespace, shard: Shard) -> _Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "device_sim",
        *child_argv(args, shard),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        limit=_LINE_LIMIT,
    )
    return _Child(shard, process)


async def _forward_stop(
    children: Sequence[_Child], stop: asyncio.Event, refused: asyncio.Event
) -> None:
    """SIGTERM to every child once ``stop`` is set or a child was refused."""
    stopper = asyncio.create_task(stop.wait())
    refusal = asyncio.create_task(refused.wait())
    try:
        await asyncio.wait({stopper, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        refusal.cancel()
    for child in children:
        child.terminate()


async def _show(display: ProgressDisplay, children: Sequence[_Child], started: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(display.interval_s)
        display.update(
            merge_progress([c.progress for c in children], elapsed_s=loop.time() - started)
        )


async def _wait_children(children: Sequence[_Child], refused: asyncio.Event) -> None:
    """Until every child has ended; cancelled, stop them (SIGTERM, then a grace period)."""

    async def wait_child(child: _Child) -> None:
        await child.read(refused)
        await child.process.wait()

    waiting = asyncio.gather(*(wait_child(c) for c in children))
    try:
        await waiting
    except asyncio.CancelledError:
        for child in children:
            child.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_GRACE_S):
                await asyncio.gather(*(c.process.wait() for c in children))
        raise


def _finish(
    children: Sequence[_Child], args: argparse.Namespace, out: TextIO, *, duration_s: float
) -> int:
    """The merged summary of the children's, reported; the exit status."""
    missing = [str(c.shard) for c in children if c.summary is None]
    if missing:
        codes = ", ".join(f"{c.shard}: {c.process.returncode}" for c in children)
        print(
            f"device_sim: error: shard(s) {', '.join(missing)} ended without a summary "
            f"(exit status {codes})",
            file=sys.stderr,
        )
        return 1
    summaries = [c.summary for c in children if c.summary is not None]
    summary = merge_summaries(
        summaries, duration_s=duration_s, details=args.vehicles <= UNIT_DETAIL_LIMIT
    )
    status = report(summary, args, out)
    if status == 0 and any(c.process.returncode for c in children):
        print("device_sim: error: a shard failed (see above)", file=sys.stderr)
        return 1
    return status
