"""What ``telematics sim`` shows a person: live progress, the closing line, the JSON summary
and why a run failed.

Shared by one process (:mod:`device_sim.fleet`) and the ``--procs`` parent
(:mod:`device_sim.procs`), so that neither imports the other (issue 12,
docs/decisions/0013-architecture-step.md).

Imports: the standard library and rich only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = [
    "LIVE_REFRESH_S",
    "PASSWORD_ENV",
    "ProgressDisplay",
    "closing_line",
    "failure_message",
    "refused_message",
    "report",
    "say",
    "taken_over_message",
]

#: environment variable with the MQTT password (a command-line argument would show in ps)
PASSWORD_ENV: Final = "DEVICE_SIM_MQTT_PASSWORD"


LIVE_REFRESH_S: Final = 0.5


def _progress_line(p: Mapping[str, Any], rate: float) -> str:
    return (
        f"device_sim: {p['elapsed_s']:5.0f} s  {p['connected']}/{p['vehicles']} connected"
        f"  {p['published']} published  {p['acknowledged']} acknowledged"
        f"  {p['buffered']} buffered  {p['errors']} errors  {p.get('reconnects', 0)} reconnects"
        f"  {rate:,.0f} msg/s"
        f"  {p['commands_answered']}/{p['commands_received']} commands answered"
    )


class ProgressDisplay:
    """Live progress on stderr: a rich table on a terminal, plain lines otherwise, or off."""

    def __init__(self, mode: str, *, interval_s: float, title: str) -> None:
        if mode not in {"live", "plain", "off"}:
            raise ValueError(f"mode must be live, plain or off, got {mode!r}")
        self.mode = mode
        #: how often :meth:`update` wants to be called
        self.interval_s = LIVE_REFRESH_S if mode == "live" else interval_s
        self._title = title
        self._live: Live | None = None
        #: (elapsed s, published) at the previous update; the first rate is since the start
        #: (before, the first line said "0 msg/s" after a run's first 30 messages)
        self._last: tuple[float, int] = (0.0, 0)
        self._rate = 0.0

    @staticmethod
    def choose(*, quiet: bool, stream: TextIO) -> str:
        if quiet:
            return "off"
        return "live" if stream.isatty() else "plain"

    def start(self) -> None:
        if self.mode == "live":
            console = Console(stderr=True)
            self._live = Live(console=console, refresh_per_second=2, transient=False)
            self._live.start()

    def update(self, p: Mapping[str, Any]) -> None:
        elapsed, published = float(p["elapsed_s"]), int(p["published"])
        if elapsed > self._last[0]:
            self._rate = (published - self._last[1]) / (elapsed - self._last[0])
        self._last = (elapsed, published)
        if self.mode == "plain":
            print(_progress_line(p, self._rate), file=sys.stderr, flush=True)
        elif self._live is not None:
            self._live.update(self._table(p))

    def _table(self, p: Mapping[str, Any]) -> Table:
        table = Table(title=self._title, title_justify="left", show_header=True)
        for column in (
            "elapsed",
            "connected",
            "published",
            "acknowledged",
            "buffered",
            "errors",
            "reconnects",
            "msg/s",
            "commands answered",
        ):
            table.add_column(column, justify="right")
        table.add_row(
            f"{p['elapsed_s']:.0f} s",
            f"{p['connected']:,}/{p['vehicles']:,}",
            f"{p['published']:,}",
            f"{p['acknowledged']:,}",
            f"{p['buffered']:,}",
            f"{p['errors']:,}",
            f"{p.get('reconnects', 0):,}",
            f"{self._rate:,.1f}",
            f"{p['commands_answered']:,}/{p['commands_received']:,}",
        )
        return table

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def refused_message(
    error: str,
    *,
    credentials: Path | None = None,
    tls: bool = False,
    username: str | None = None,
) -> str:
    """What to tell the user when the broker refused the units: where their login came from,
    so they know what to fix."""
    if credentials is None and username is None and not tls:
        return (
            f"the broker refused the units: {error}. It admits only vehicles that log in "
            "(the broker of telematics up does): give every unit its own login with "
            "--credentials FILE, the unit credentials file that provisioning writes "
            "(telematics vehicle add VIN... --account ACCOUNT --credentials-file FILE; "
            "telematics sim --list-vins prints the VINs of a fleet)"
        )
    if credentials is not None:
        checks = [
            f"the credentials in {credentials} (each VIN's mqtt_username and mqtt_password "
            "as provisioning showed them; every vehicle provisioned with telematics vehicle "
            "add VIN)"
        ]
    elif username is not None:
        checks = [f"--username and ${PASSWORD_ENV}"]
    else:
        checks = []
    if tls:
        checks.append("the client certificates, and --tls-ca (the CA of the broker's certificate)")
    checks.append("that the broker allows these clients (allow_anonymous, ACLs)")
    return f"the broker refused the units: {error}; check {'; '.join(checks)}"


def taken_over_message(error: str, *, credentials: Path | None = None) -> str:
    """What to tell the user when another client took a unit's session over."""
    where = f"the vehicles of {credentials}" if credentials is not None else "these vehicles"
    return (
        f"{error}. Another process is driving {where}: the broker allows one connection per "
        "client id (the VIN), so two simulators with the same vehicles (a second telematics "
        "sim, or the demo of telematics up --demo, which drives the vehicles of "
        "data/secrets/demo-units.json) take each other's connections. Stop the other one, "
        "or run vehicles of your own (telematics sim --vin-prefix ... --list-vins, then "
        "telematics vehicle add ... --credentials-file FILE)"
    )


def failure_message(summary: Mapping[str, Any], args: argparse.Namespace) -> str | None:
    """Why a run ended with exit status 1 (the broker refused units, or another client took
    one over), or None if it did not."""
    if summary.get("taken_over"):
        return taken_over_message(str(summary["error"]), credentials=args.credentials)
    if summary.get("rejected_by_broker"):
        return refused_message(
            str(summary["error"]),
            credentials=args.credentials,
            tls=args.tls_ca is not None,
            username=args.username,
        )
    return None


def say(args: argparse.Namespace, message: str) -> None:
    if not args.json and args.shard is None:
        print(f"device_sim: {message}", file=sys.stderr, flush=True)


def closing_line(summary: Mapping[str, Any]) -> str:
    latency = summary.get("latency_ms")
    lat = (
        f"publish->ack p50 {latency['p50']:.1f} ms p99 {latency['p99']:.1f} ms"
        if latency and latency.get("count")
        else "publish->ack latency n/a"
    )
    resources = summary["resources"]
    per_k = resources.get("per_1000_units")
    if per_k:
        usage = (
            f"per 1,000 units {per_k['cpu_percent']:.1f} % CPU, {per_k['max_rss_mb']:.0f} MB RSS"
        )
    else:  # too few units to say anything per 1,000
        usage = f"{resources['cpu_percent']:.1f} % CPU, {resources['max_rss_mb']:.0f} MB RSS"
    return (
        f"done in {summary['duration_s']:.1f} s: {summary['connected_peak']}/"
        f"{summary['vehicles']} connected at peak, {summary['published']:,} published, "
        f"{summary['acknowledged']:,} acknowledged, {summary['rejected_by_broker']} rejected "
        f"by the broker, {summary['commands_answered']} command(s) answered; {lat}; {usage}"
    )


def report(summary: Mapping[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    """The end of a run: the JSON summary on ``out`` with ``--json``, else one line on
    stderr; a failure (refused, taken over) explained on stderr. Returns the exit status."""
    if args.json:
        print(json.dumps(summary, indent=2), file=out, flush=True)
    failure = failure_message(summary, args)
    if failure is not None:
        print(f"device_sim: error: {failure}", file=sys.stderr, flush=True)
        return 1
    say(args, closing_line(summary))
    return 0
