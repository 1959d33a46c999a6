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

Cost (issue 18, decision 0047): the load must cost as little as it can, its CPU is taken
from the product it measures. One schedule per process (a heap of due reports served by
one timer callback, reports due within ``TICK_S`` sent together) instead of a sleeping task
per unit, and each socket an :class:`asyncio.Protocol` that parses its PUBACKs as they
arrive instead of a reader task; a paused generator takes no CPU at all.

``python -m device_sim.fleetload --port 1883 --first 0 --count 5000``; with
``--edge-ports P1,P2`` every unit connects to its VIN's edge broker (decision 0038).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import resource
import sys
import time
from collections.abc import Sequence

from device_sim.loadgen import bench_vin, encode_publish, heartbeat_signals
from schemas import Channel, Sample, SignalValue, encode_sample, topic_for
from schemas.edges import edge_index

__all__ = ["main"]

KEEPALIVE_S = 120
#: a report this much behind its schedule is "late"
LATE_S = 1.0
_PINGREQ = b"\xc0\x00"
#: PUBACK reason code "No matching subscribers" (a success code: the unit does not resend)
_NO_SUBSCRIBERS = 0x10
#: the schedule's timer fires at most this often: reports due within it go out together
TICK_S = 0.01


def _connect_packet(vin: str, password: str, keepalive_s: int = KEEPALIVE_S) -> bytes:
    """MQTT 5 CONNECT: clean start, user name and password, no properties."""
    cid = vin.encode()
    pw = password.encode()
    variable = b"\x00\x04MQTT\x05\xc2" + keepalive_s.to_bytes(2, "big") + b"\x00"
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
        #: published and not acknowledged yet, all units together
        self.inflight = 0


class _Connection(asyncio.Protocol):
    """One unit's socket: parses what the broker sends (CONNACK, PUBACK) as it arrives, in
    the event loop's callback, with no task of its own."""

    def __init__(self, unit: _Unit) -> None:
        self.unit = unit
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < end:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            else:
                break  # the length is not complete yet
            if end - i < length:
                break
            self.unit.packet(buf[pos], bytes(buf[i : i + length]), self)
            pos = i + length
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed before its CONNACK"))
        self.unit.lost(self)


class _Unit:
    """One vehicle: its schedule, its connection, its unacknowledged messages."""

    __slots__ = (
        "conn",
        "driving",
        "fleet",
        "generation",
        "index",
        "inflight",
        "interval_s",
        "last",
        "n",
        "next_mid",
        "period",
        "port",
        "sent_at",
        "seq",
        "topic",
        "vin",
    )

    def __init__(self, index: int, fleet: _Fleet, driving: bool, interval_s: float) -> None:
        self.index = index
        self.vin = bench_vin(index)
        self.topic = topic_for(self.vin, Channel.TELEMETRY).encode()
        self.fleet = fleet
        self.driving = driving
        self.interval_s = interval_s
        self.period = 1.0 if driving else interval_s
        self.seq = fleet.seq_base
        self.n = 0
        self.last: dict[str, SignalValue] = {}
        self.next_mid = 0
        self.inflight: dict[int, bytes] = {}
        self.conn: _Connection | None = None
        #: counts this unit's connections: the schedule drops entries of an earlier one
        self.generation = 0
        #: when this unit last wrote to the broker (event loop time): keepalive
        self.sent_at = 0.0
        ports = fleet.edge_ports
        self.port = ports[edge_index(self.vin, len(ports)) - 1] if ports else fleet.port

    def _mid(self) -> int:
        while True:
            self.next_mid = self.next_mid % 65535 + 1
            if self.next_mid not in self.inflight:
                return self.next_mid

    def report(self) -> bytes:
        """The next report's PUBLISH packet, kept until its PUBACK."""
        signals = heartbeat_signals(self.index, self.n, driving=self.driving)
        if self.driving:  # send-on-change, a full report every heartbeat_min reports
            if self.n % self.fleet.full_every:
                last = self.last
                signals = {k: v for k, v in signals.items() if last.get(k) != v}
            self.last.update(signals)
        self.n += 1
        self.seq += 1
        ts = time.time_ns() // 1_000_000
        mid = self._mid()
        packet = encode_publish(
            self.topic, encode_sample(Sample(self.vin, self.seq, ts, signals)), mid
        )
        self.inflight[mid] = packet
        stats = self.fleet.stats
        stats.values += len(signals)
        stats.inflight += 1
        return packet

    async def connect(self) -> None:
        """Log in (CONNECT, wait for the CONNACK); on success resend what the last
        connection did not get acknowledged."""
        fleet = self.fleet
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(
            lambda: _Connection(self), fleet.host, self.port
        )
        transport.write(_connect_packet(self.vin, fleet.password, fleet.keepalive_s))
        body = await conn.connack
        if len(body) < 2 or body[1] != 0:
            fleet.stats.refused += 1
            transport.close()
            raise ConnectionError(f"{self.vin} refused: {body[1] if len(body) > 1 else None}")
        self.conn = conn
        self.sent_at = loop.time()
        self.generation += 1
        fleet.stats.connected += 1
        if self.inflight:
            transport.write(b"".join(self.inflight.values()))

    def packet(self, kind: int, body: bytes, conn: _Connection) -> None:
        if kind >> 4 == 2:
            if not conn.connack.done():
                conn.connack.set_result(body)
            return
        if kind >> 4 != 4 or len(body) < 2:
            return
        if self.inflight.pop((body[0] << 8) | body[1], None) is not None:  # a PUBACK of ours
            stats = self.fleet.stats
            stats.acked += 1
            stats.inflight -= 1
            if len(body) > 2 and body[2] == _NO_SUBSCRIBERS:
                stats.no_subscribers += 1

    def lost(self, conn: _Connection) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        fleet = self.fleet
        fleet.stats.connected -= 1
        if not fleet.stopping:
            fleet.reconnect_later(self)


class _Fleet:
    """Every unit of this process and the one schedule that sends their reports: a heap of
    (due, unit, connection number) served by one timer callback, instead of a sleeping task
    per unit (issue 18: 5,000 tasks each waking every second cost more CPU than the
    messages; a paused fleet's tasks woke every 50 ms and took a core from the product)."""

    def __init__(self, args: argparse.Namespace, password: str) -> None:
        self.host, self.port, self.password = args.host, args.port, password
        #: the installation's edge brokers (decision 0038): each unit connects to its VIN's
        self.edge_ports: list[int] = [int(p) for p in args.edge_ports.split(",") if p]
        self.seq_base = args.seq_base
        #: a driving unit's every n-th report is a full one
        self.full_every = max(1, int(args.heartbeat_min))
        self.rng = random.Random(args.first)
        self.stats = _Stats()
        self.stopping = False
        self.paused = False
        self.connect_parallel = args.connect_parallel
        self.keepalive_s: int = args.keepalive
        self.units = [
            _Unit(
                i,
                self,
                driving=i % args.driving_every == 0,
                interval_s=self.rng.uniform(args.heartbeat_min, args.heartbeat_max),
            )
            for i in range(args.first, args.first + args.count)
        ]
        #: each unit's first report: at a random moment of its first period
        self._offsets = [self.rng.uniform(0, u.period) for u in self.units]
        self._by_index = {u.index: u for u in self.units}
        self._due: dict[int, float] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_tick = 0.0
        self._queue: asyncio.Queue[_Unit] = asyncio.Queue()

    def start(self) -> list[asyncio.Task[None]]:
        """Queue every unit's login and start the connecting workers and the keepalive."""
        loop = asyncio.get_running_loop()
        loop.call_later(self.keepalive_s / 4, self._keepalive)
        now = loop.time()
        for unit, offset in zip(self.units, self._offsets, strict=True):
            self._due[unit.index] = now + offset
            self._queue.put_nowait(unit)
        return [asyncio.create_task(self._connector()) for _ in range(self.connect_parallel)]

    async def _connector(self) -> None:
        while True:
            unit = await self._queue.get()
            if self.stopping:
                continue
            try:
                await unit.connect()
            except (OSError, ConnectionError):
                self.reconnect_later(unit)
                continue
            self._push(self._due[unit.index], unit)

    def _keepalive(self) -> None:
        """PINGREQ from every unit silent for half its keepalive, as a real unit does: a
        paused generator (the benchmark's accounting can wait minutes) would otherwise be
        disconnected by the broker after 1.5 keepalives of silence and log in again."""
        if self.stopping:
            return
        loop = asyncio.get_running_loop()
        quiet_since = loop.time() - self.keepalive_s / 2
        for unit in self.units:
            conn = unit.conn
            if conn is not None and conn.transport is not None and unit.sent_at < quiet_since:
                conn.transport.write(_PINGREQ)
                unit.sent_at = loop.time()
        loop.call_later(self.keepalive_s / 4, self._keepalive)

    def reconnect_later(self, unit: _Unit) -> None:
        """After 1-5 s log in again; the unit's next report is due at that moment."""
        self.stats.reconnects += 1
        loop = asyncio.get_running_loop()
        loop.call_later(self.rng.uniform(1.0, 5.0), self._requeue, unit)

    def _requeue(self, unit: _Unit) -> None:
        self._due[unit.index] = asyncio.get_running_loop().time()
        self._queue.put_nowait(unit)

    def _push(self, due: float, unit: _Unit) -> None:
        heapq.heappush(self._heap, (due, unit.index, unit.generation))
        self._arm()

    def _arm(self) -> None:
        """Have the timer fire at the earliest due report, at most every ``TICK_S``."""
        if self.paused or self.stopping or not self._heap:
            return
        when = max(self._heap[0][0], self._last_tick + TICK_S)
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._tick)

    def _tick(self) -> None:
        """Send every report that is due, then wait for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = self._last_tick = loop.time()
        heap, stats = self._heap, self.stats
        while heap and heap[0][0] <= now and not self.paused:
            due, index, generation = heapq.heappop(heap)
            unit = self._by_index[index]
            conn = unit.conn
            if conn is None or conn.transport is None or unit.generation != generation:
                continue  # disconnected: its next login puts it back
            if now - due > LATE_S:
                stats.late += 1
            conn.transport.write(unit.report())
            unit.sent_at = now
            stats.sent += 1
            due += unit.period
            if due < now:  # far behind: do not burst to catch up
                due = now + unit.period
            self._due[index] = due
            heapq.heappush(heap, (due, index, generation))
        self._arm()

    def pause(self) -> None:
        self.paused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def resume(self) -> None:
        self.paused = False
        self._arm()

    async def disconnect(self) -> None:
        """Stop: every unit sends DISCONNECT and closes its socket."""
        self.stopping = True
        self.pause()
        for unit in self.units:
            conn = unit.conn
            if conn is not None and conn.transport is not None:
                conn.transport.write(b"\xe0\x00")
                conn.transport.close()
        deadline = time.monotonic() + 10
        while self.stats.connected > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

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
            "inflight": s.inflight,
        }
        return json.dumps({**figures, **extra})


async def _control(fleet: _Fleet) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line in ("pause", "stop", ""):
            fleet.pause()
            deadline = time.monotonic() + 60
            while fleet.stats.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            print(fleet.line(paused=True), flush=True)
            if line != "pause":
                await fleet.disconnect()
                return
        elif line == "resume":
            fleet.resume()


async def _stats(fleet: _Fleet, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        print(fleet.line(), flush=True)


async def _run(args: argparse.Namespace, password: str) -> None:
    fleet = _Fleet(args, password)
    connectors = fleet.start()
    stats = asyncio.create_task(_stats(fleet, args.stats_every))
    try:
        await _control(fleet)
    finally:
        stats.cancel()
        for task in connectors:
            task.cancel()
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
    p.add_argument(
        "--keepalive",
        type=int,
        default=KEEPALIVE_S,
        help=f"MQTT keepalive, seconds (default: {KEEPALIVE_S}); a unit silent for half of "
        "it sends PINGREQ",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="lower this process's CPU priority by this much (0-19, as nice(1)): a benchmark "
        "runs its load below the product it measures",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    password = os.environ.get("FLEETLOAD_PASSWORD", "")
    if args.nice:
        os.nice(args.nice)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, args.count + 100):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.count + 1000), hard))
    asyncio.run(_run(args, password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
