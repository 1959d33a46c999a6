"""A realistic fleet for scale benchmarks: many authenticated units reporting rarely.

:mod:`device_sim.loadgen` publishes as fast as the broker acknowledges; a real fleet is the
other shape (issue 18): very many connections, most of them parked and nearly silent. Each
unit here logs in as its VIN (client id = user name = VIN, password from the environment
variable ``FLEETLOAD_PASSWORD``: the closed broker's per-vehicle credentials), and

* **parked** (all but every ``--driving-every``-th vehicle): a full report of the 28
  signals (:func:`device_sim.loadgen.heartbeat_signals`) every ``--heartbeat-min`` to
  ``--heartbeat-max`` seconds (its own interval, drawn once), first at a random moment
  of its first interval, so the fleet's reports are spread over time;
* **driving**: one report a second with only the signals that changed since its last
  report (send-on-change), a full report every ``--heartbeat-min`` seconds.

Every sample's ``ts`` is its publish time (the benchmark's ingest lag is commit time less
``ts``), its ``seq`` counts from ``--seq-base`` + 1 per vehicle without a hole. QoS 1; a
message counts as acknowledged on its PUBACK; a unit whose connection drops (a broker
restart) reconnects after 1-5 s and sends again what was not acknowledged (the gateway
deduplicates by seq).

Control on stdin, one word a line: ``pause`` (stop publishing, wait for every
acknowledgement, print a ``paused`` line), ``resume``, ``stop`` (as pause, then
disconnect and exit). Figures on stdout, one JSON object a line every ``--stats-every``
seconds and on pause: connected, sent, acked, values, reconnects, refused, late (reports
more than a second behind their schedule: the generator itself overloaded), no_subscribers
(acknowledged with reason 0x10: the broker had no subscriber and dropped it).

``python -m device_sim.fleetload --port 1883 --first 0 --count 5000``; with
``--edge-ports P1,P2`` every unit connects to its VIN's edge broker (decision 0038).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections.abc import Sequence

from device_sim.loadgen import _read_packet, bench_vin, encode_publish, heartbeat_signals
from schemas import Channel, Sample, SignalValue, encode_sample, topic_for
from schemas.edges import edge_index

__all__ = ["main"]

KEEPALIVE_S = 120
#: a report this much behind its schedule is "late"
LATE_S = 1.0
#: PUBACK reason code "No matching subscribers" (a success code: the unit does not resend)
_NO_SUBSCRIBERS = 0x10


def _connect_packet(vin: str, password: str) -> bytes:
    """MQTT 5 CONNECT: clean start, user name and password, no properties."""
    cid = vin.encode()
    pw = password.encode()
    variable = b"\x00\x04MQTT\x05\xc2" + KEEPALIVE_S.to_bytes(2, "big") + b"\x00"
    payload = b"".join(len(x).to_bytes(2, "big") + x for x in (cid, cid, pw))
    body = variable + payload
    length = bytearray()
    n = len(body)
    while True:
        digit, n = n % 128, n // 128
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return b"\x10" + bytes(length) + body


class _Stats:
    def __init__(self) -> None:
        self.connected = self.sent = self.acked = self.values = 0
        self.reconnects = self.refused = self.late = 0
        #: acknowledged with reason 0x10: the broker took it, but nobody subscribed (the
        #: gateway's shared subscription not back yet after a broker restart): dropped
        self.no_subscribers = 0


class _Unit:
    """One vehicle: its schedule, its connection, its unacknowledged messages."""

    def __init__(self, index: int, fleet: _Fleet, driving: bool, interval_s: float) -> None:
        self.index = index
        self.vin = bench_vin(index)
        self.topic = topic_for(self.vin, Channel.TELEMETRY).encode()
        self.fleet = fleet
        self.driving = driving
        self.interval_s = interval_s
        self.seq = fleet.seq_base
        self.n = 0
        self.last: dict[str, SignalValue] = {}
        self.next_mid = 0
        self.inflight: dict[int, bytes] = {}
        self.writer: asyncio.StreamWriter | None = None
        ports = fleet.edge_ports
        self.port = ports[edge_index(self.vin, len(ports)) - 1] if ports else fleet.port

    def _mid(self) -> int:
        while True:
            self.next_mid = self.next_mid % 65535 + 1
            if self.next_mid not in self.inflight:
                return self.next_mid

    def _report(self) -> bytes:
        signals = heartbeat_signals(self.index, self.n, driving=self.driving)
        full = not self.driving or self.n % max(1, int(self.fleet.heartbeat_min)) == 0
        if not full:
            signals = {k: v for k, v in signals.items() if self.last.get(k) != v}
        self.last.update(signals)
        self.n += 1
        self.seq += 1
        ts = time.time_ns() // 1_000_000
        mid = self._mid()
        packet = encode_publish(
            self.topic, encode_sample(Sample(self.vin, self.seq, ts, signals)), mid
        )
        self.inflight[mid] = packet
        self.fleet.stats.values += len(signals)
        return packet

    async def run(self) -> None:
        fleet = self.fleet
        period = 1.0 if self.driving else self.interval_s
        due = time.monotonic() + fleet.rng.uniform(0, period)
        while not fleet.stopping:
            try:
                await self._session(due, period)
                return
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                if self.writer is not None:
                    fleet.stats.connected -= 1
                    self.writer.close()
                    self.writer = None
                fleet.stats.reconnects += 1
                await asyncio.sleep(fleet.rng.uniform(1.0, 5.0))
                due = time.monotonic()

    async def _session(self, due: float, period: float) -> None:
        fleet = self.fleet
        async with fleet.connecting:
            reader, writer = await asyncio.open_connection(fleet.host, self.port)
            writer.write(_connect_packet(self.vin, fleet.password))
            kind, body = await _read_packet(reader)
        if kind >> 4 != 2 or len(body) < 2 or body[1] != 0:
            fleet.stats.refused += 1
            writer.close()
            raise ConnectionError(f"{self.vin} refused: {body[1] if len(body) > 1 else None}")
        self.writer = writer
        fleet.stats.connected += 1
        acks = asyncio.create_task(self._read_acks(reader))
        try:
            if self.inflight:  # what the last connection did not get acknowledged
                writer.write(b"".join(self.inflight.values()))
            while not fleet.stopping:
                if acks.done():
                    acks.result()  # the connection ended: raise its error
                    raise ConnectionError("closed by the broker")
                now = time.monotonic()
                if now < due or fleet.paused.is_set():
                    await asyncio.sleep(max(0.05, min(due - now, 1.0)))
                    continue
                if now - due > LATE_S:
                    fleet.stats.late += 1
                writer.write(self._report())
                fleet.stats.sent += 1
                due += period
                if due < now:  # far behind: do not burst to catch up
                    due = now + period
        finally:
            if fleet.stopping and self.writer is not None:
                await self._drain_acks(acks)
                writer.write(b"\xe0\x00")
                fleet.stats.connected -= 1
                self.writer = None
                writer.close()
            acks.cancel()

    async def _drain_acks(self, acks: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 30
        # a poll with a deadline: the acknowledgements come from the reader task
        while self.inflight and not acks.done() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _read_acks(self, reader: asyncio.StreamReader) -> None:
        stats = self.fleet.stats
        while True:
            kind, body = await _read_packet(reader)
            mid = int.from_bytes(body[:2], "big") if kind >> 4 == 4 and len(body) >= 2 else -1
            if self.inflight.pop(mid, None) is not None:  # a PUBACK of ours
                stats.acked += 1
                if len(body) > 2 and body[2] == _NO_SUBSCRIBERS:
                    stats.no_subscribers += 1


class _Fleet:
    def __init__(self, args: argparse.Namespace, password: str) -> None:
        self.host, self.port, self.password = args.host, args.port, password
        #: the installation's edge brokers (decision 0038): each unit connects to its VIN's
        self.edge_ports: list[int] = [int(p) for p in args.edge_ports.split(",") if p]
        self.seq_base = args.seq_base
        self.heartbeat_min = args.heartbeat_min
        self.rng = random.Random(args.first)
        self.stats = _Stats()
        self.stopping = False
        self.paused = asyncio.Event()
        self.connecting = asyncio.Semaphore(args.connect_parallel)
        self.units = [
            _Unit(
                i,
                self,
                driving=i % args.driving_every == 0,
                interval_s=self.rng.uniform(args.heartbeat_min, args.heartbeat_max),
            )
            for i in range(args.first, args.first + args.count)
        ]

    def line(self, **extra: object) -> str:
        s = self.stats
        figures = {
            "t": round(time.time(), 3),
            "units": len(self.units),
            "connected": s.connected,
            "sent": s.sent,
            "acked": s.acked,
            "values": s.values,
            "reconnects": s.reconnects,
            "refused": s.refused,
            "late": s.late,
            "no_subscribers": s.no_subscribers,
            "inflight": sum(len(u.inflight) for u in self.units),
        }
        return json.dumps({**figures, **extra})


async def _control(fleet: _Fleet, tasks: list[asyncio.Task[None]]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line in ("pause", "stop", ""):
            fleet.paused.set()
            deadline = time.monotonic() + 60
            while any(u.inflight for u in fleet.units) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            print(fleet.line(paused=True), flush=True)
            if line != "pause":
                fleet.stopping = True
                await asyncio.gather(*tasks, return_exceptions=True)
                return
        elif line == "resume":
            fleet.paused.clear()


async def _stats(fleet: _Fleet, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        print(fleet.line(), flush=True)


async def _run(args: argparse.Namespace, password: str) -> None:
    fleet = _Fleet(args, password)
    tasks = [asyncio.create_task(u.run()) for u in fleet.units]
    stats = asyncio.create_task(_stats(fleet, args.stats_every))
    try:
        await _control(fleet, tasks)
    finally:
        stats.cancel()
        print(fleet.line(stopped=True), flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m device_sim.fleetload",
        description="Many authenticated vehicle connections reporting as a real fleet does "
        "(parked units a full report every 30-60 s, every tenth driving at 1 Hz, "
        "send-on-change). Password in FLEETLOAD_PASSWORD; control words on stdin.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument(
        "--edge-ports",
        default="",
        help="the edge brokers' ports, comma-separated, in edge order: each unit connects "
        "to its VIN's edge (schemas.edges.edge_index) instead of --port",
    )
    p.add_argument("--first", type=int, default=0, help="index of the first vehicle (VIN)")
    p.add_argument("--count", type=int, default=1000, help="vehicles in this process")
    p.add_argument("--seq-base", type=int, default=0, help="every vehicle's seq starts after it")
    p.add_argument("--driving-every", type=int, default=10, help="1 in N vehicles drives")
    p.add_argument("--heartbeat-min", type=float, default=30.0)
    p.add_argument("--heartbeat-max", type=float, default=60.0)
    p.add_argument("--connect-parallel", type=int, default=100, help="logins at a time")
    p.add_argument("--stats-every", type=float, default=2.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    password = os.environ.get("FLEETLOAD_PASSWORD", "")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, args.count + 100):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.count + 1000), hard))
    asyncio.run(_run(args, password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
