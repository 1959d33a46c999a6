"""``telematics up``: a private broker, the gateway, the API (and the demo fleet) as child
processes, supervised.

Nothing that dies stays dead, and nothing that keeps dying takes the rest down:

* a part that exits is started again after a capped exponential back-off
  (:class:`RestartPolicy`: 1, 2, 4 ... 60 s; back to 1 s once it has run for a minute).
  Three quick exits in a row make it *crash-looping*: logged as an error and reported in
  ``DATA_DIR/health/supervisor.json``, which ``/healthz`` reads, but it keeps being
  retried and never stops the other parts. An *optional* part (the demo simulator) only
  ever makes the installation "degraded";
* the private broker is kept the same way (:class:`BrokerKeeper`): when it dies (a crash,
  a SIGKILL, a failure right after a reload) its identity files are rendered again from
  the state database and it is started on the same port; the gateways and the command
  service reconnect by themselves. Mosquitto does not save shared subscriptions, so
  before every start the keeper writes the gateways' sessions with theirs into the
  broker's persistence file (:func:`~gateway.broker.persistence.write_subscriptions`),
  which Mosquitto restores before it opens its listeners: what units publish before the
  gateways are back queues in those sessions from the first packet on, instead of
  reaching no subscriber at all (decision 0031). Right after the start it also opens
  those sessions over MQTT (:func:`~gateway.broker.control.prime_sessions`), which is
  all there is for a persistence file in a format it does not know.
  And as a fleet reconnects in a burst after a start, the keeper has the broker save its
  state (SIGUSR1) a few seconds later, long before its first 30-second autosave: a
  crash then finds the units' sessions on disk, so a unit resends what was in flight
  instead of being told its session is gone (MQTT 5 then makes it discard it);
* on Ctrl-C or SIGTERM the parts stop in reverse order: simulator, API, gateways (each
  commits and acknowledges what it holds), then the broker, so nothing that was
  acknowledged is lost and nothing unacknowledged is dropped (it waits in the broker's
  persisted queue for the next start).

The decisions (when to restart, how long to wait, what counts as crash-looping) are pure
functions of the part's history and the clock; processes are the edge.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.broker import BrokerConfig, BrokerError, MosquittoProcess
from gateway.broker.auth import BrokerAuthSync
from gateway.broker.mosquitto import scan_queue_drops
from gateway.broker.persistence import write_subscriptions
from gateway.health import SUPERVISOR_FILE_NAME, write_status_file

__all__ = [
    "BROKER_LOG_MAX_BYTES",
    "BrokerKeeper",
    "Part",
    "RestartPolicy",
    "Supervisor",
    "process_stopped",
]

log = logging.getLogger(__name__)

#: the broker's log file is cut beyond this size (decision 0061): with the previous part
#: kept as ``<log>.1``, a broker's logs take at most about twice this on disk
BROKER_LOG_MAX_BYTES = 64 * 1024 * 1024
#: reads of at most 1 MiB each (``scan_queue_drops``) before a cut: every queue drop in
#: the part that goes is noted, unless it is over 256 MiB behind
_LOG_SCANS_BEFORE_CUT = 256


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to start a part again after it exited.

    The n-th exit in a row waits ``first_delay_s * 2**(n-1)``, at most ``max_delay_s``. An
    exit counts as "in a row" when the part ran less than ``stable_after_s``; a part that
    ran longer starts over at the first delay. From ``crash_loop_after`` exits in a row the
    part is reported as crash-looping.
    """

    first_delay_s: float = 1.0
    max_delay_s: float = 60.0
    stable_after_s: float = 60.0
    crash_loop_after: int = 3

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next start, after ``failures`` exits in a row."""
        return float(min(self.first_delay_s * 2 ** max(failures - 1, 0), self.max_delay_s))

    def failures_after_exit(self, failures: int, ran_s: float) -> int:
        """The count of exits in a row once a part that ran ``ran_s`` seconds exited."""
        return 1 if ran_s >= self.stable_after_s else failures + 1


@dataclass(slots=True)
class _Lifecycle:
    """What the supervisor remembers of one restartable thing, and the pure decisions."""

    policy: RestartPolicy
    started_at: float | None = None
    failures: int = 0
    restarts: int = 0
    last_exit: int | None = None
    next_start_at: float | None = None

    @property
    def crash_looping(self) -> bool:
        return self.failures >= self.policy.crash_loop_after

    def exited(self, code: int | None, now: float) -> float:
        """Record an exit; returns the delay before the next start."""
        ran = 0.0 if self.started_at is None else now - self.started_at
        self.failures = self.policy.failures_after_exit(self.failures, ran)
        self.last_exit = code
        self.started_at = None
        delay = self.policy.delay(self.failures)
        self.next_start_at = now + delay
        return delay

    def due(self, now: float) -> bool:
        return self.next_start_at is not None and now >= self.next_start_at

    def started(self, now: float, *, restart: bool) -> None:
        self.started_at = now
        self.next_start_at = None
        if restart:
            self.restarts += 1

    def state(self, running: bool) -> str:
        if running:
            return "running"
        return "waiting" if self.next_start_at is not None else "stopped"


@dataclass(slots=True)
class Part:
    """One supervised child process. ``before_start`` runs before every start (the demo
    simulator refreshes its unit credentials there); its failure is logged and the part
    started anyway. An ``optional`` part's failure never makes the product unavailable."""

    name: str
    argv: Sequence[str]
    optional: bool = False
    before_start: Callable[[], object] | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    process: subprocess.Popen[bytes] | None = None
    life: _Lifecycle = field(init=False)

    def __post_init__(self) -> None:
        self.life = _Lifecycle(self.policy)

    def start(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.before_start is not None:
            try:
                self.before_start()
            except Exception:
                log.exception("preparing %s failed; starting it anyway", self.name)
        restart = self.process is not None
        self.process = subprocess.Popen(list(self.argv))
        self.life.started(now, restart=restart)
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def check(self, now: float) -> None:
        """Notice an exit and schedule the restart; start it when its time has come."""
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            return
        if self.life.next_start_at is None:
            delay = self.life.exited(p.returncode, now)
            level = logging.ERROR if self.life.crash_looping else logging.WARNING
            log.log(
                level,
                "%s exited with code %s%s; restarting in %.0f s",
                self.name,
                p.returncode,
                f" ({self.life.failures} times in a row: crash-looping)"
                if self.life.crash_looping
                else "",
                delay,
            )
        elif self.life.due(now):
            self.start(now)

    def stop(self, timeout: float) -> None:
        self.life.next_start_at = None
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            p.kill()
            p.wait()

    def status(self, now: float) -> dict[str, Any]:
        p = self.process
        running = p is not None and p.poll() is None
        next_in = None if self.life.next_start_at is None else self.life.next_start_at - now
        return {
            "name": self.name,
            "optional": self.optional,
            "state": self.life.state(running),
            "pid": None if p is None else p.pid,
            "restarts": self.life.restarts,
            "failures_in_a_row": self.life.failures,
            "crash_looping": self.life.crash_looping,
            "last_exit": self.life.last_exit,
            "next_start_in_s": None if next_in is None else round(max(next_in, 0), 1),
        }


class BrokerKeeper:
    """The private broker, kept running.

    Every start (the first, a restart after it died, a restart the identity sync asks for
    after a bulk change) renders the broker's identity files from the state database
    first (:meth:`BrokerAuthSync.render`); if the database cannot be read then, the files
    on disk are used, which the sync and the plugin kept current until then. It also
    writes ``sessions`` (client id -> topic filters: the gateways' and the command
    service's shared subscriptions) into the broker's persistence file, so the broker has
    them before a unit can connect (decision 0031). One re-entrant lock orders the starts
    with the sync's changes.
    """

    POLICY = RestartPolicy(first_delay_s=0.5, max_delay_s=30.0, stable_after_s=60.0)
    #: seconds after a start at which the broker is asked to save its state: the fleet's
    #: reconnect burst is over by then, its first 30-second autosave far off (decision 0008)
    SAVE_AFTER_START_S = (5.0, 15.0)

    def __init__(
        self,
        config: BrokerConfig,
        *,
        sync: Callable[[BrokerKeeper], BrokerAuthSync] | None = None,
        prime: Callable[[MosquittoProcess], None] | None = None,
        policy: RestartPolicy = POLICY,
        sessions: Mapping[str, Sequence[str]] | None = None,
        name: str = "the private broker",
        log_max_bytes: int | None = BROKER_LOG_MAX_BYTES,
    ) -> None:
        """``sessions`` are written into the persistence file before every start
        (:func:`gateway.broker.persistence.write_subscriptions`; nothing without
        persistence). ``prime`` runs right after every start: it opens the same sessions
        over MQTT (:func:`gateway.broker.control.prime_sessions`). ``log_max_bytes``
        bounds the broker's log file (:meth:`MosquittoProcess.cut_log`; None: unbounded)."""
        self.process = MosquittoProcess(config)
        self.log_max_bytes = log_max_bytes
        self.name = name
        self._prime = prime
        self._sessions = dict(sessions or {})
        self.lock = threading.RLock()
        self.life = _Lifecycle(policy)
        self.sync = sync(self) if sync is not None else None
        self._saves_due: list[float] = []
        #: the process was stopped (SIGSTOP, a debugger) at the last check: logged once
        self._was_stopped = False
        #: where the next scan of the broker's log for queue drops starts
        self._log_scanned = 0
        #: times the broker said it started dropping a client's messages (queue full)
        self.queue_drops = 0

    @property
    def url(self) -> str:
        return self.process.url

    def start(self) -> None:
        """The first start: raises :class:`~gateway.broker.BrokerStartError` if it fails."""
        with self.lock:
            self._render()
            self.process.start()
            self._started(time.monotonic(), restart=False)
        log.info("%s at %s (log: %s)", self.name, self.process.url, self.process.log_path)
        if self.sync is not None:
            self.sync.start()

    def restart(self) -> None:
        """Stop cleanly and start again with freshly rendered identities (the sync calls
        this for a change too big to apply to the running broker)."""
        with self.lock:
            self.process.stop()
            self._render()
            self.process.start()
            self._started(time.monotonic(), restart=True)
        log.info("%s restarted at %s", self.name, self.process.url)

    def _started(self, now: float, *, restart: bool) -> None:
        if self._prime is not None:
            try:
                self._prime(self.process)
            except Exception:
                log.warning("cannot open the gateways' sessions on the broker", exc_info=True)
        self.life.started(now, restart=restart)
        self._saves_due = [now + s for s in self.SAVE_AFTER_START_S]
        self._log_scanned = self.process.log_start_offset

    def check(self, now: float) -> None:
        """Restart the broker if it died (after the policy's delay); have it save its state
        when that is due; say (once) when it stops responding or responds again."""
        if self.process.is_running():
            self._note_stopped()
            self._note_queue_drops()
            self._bound_log()
            if self._saves_due and now >= self._saves_due[0]:
                self._saves_due.pop(0)
                self.process.save()
            return
        with self.lock:
            if self.process.is_running():  # restarted by the sync meanwhile
                return
            if self.life.next_start_at is None:
                code = self.process.returncode
                delay = self.life.exited(code, now)
                log.error(
                    "%s exited with code %s; starting it again in %.1f s (log: %s)",
                    self.name,
                    code,
                    delay,
                    self.process.log_path,
                )
                return
            if not self.life.due(now):
                return
            try:
                self._render()
                self.process.start()
            except BrokerError as exc:
                delay = self.life.exited(None, now)
                log.error("%s did not start (%s); retrying in %.1f s", self.name, exc, delay)
                return
            self._started(now, restart=True)
        log.warning("%s is back at %s", self.name, self.process.url)

    def responding(self) -> bool:
        """False while the broker's process is stopped (SIGSTOP, a debugger, a frozen
        cgroup: ``/proc/PID/stat`` state ``T`` or ``t``): it holds its connections and
        answers nothing, so nobody should wait for it (``gateway.health``). A broker that
        is not running is restarted by :meth:`check` and counts as responding (soon)."""
        pid = self.process.pid if self.process.is_running() else None
        return pid is None or not process_stopped(pid)

    def _note_stopped(self) -> None:
        stopped = not self.responding()
        if stopped == self._was_stopped:
            return
        self._was_stopped = stopped
        if stopped:
            log.warning(
                "%s is not responding: its process %s is stopped (SIGSTOP?); provisioning "
                "answers Broker-Applied: false at once for its vehicles, and its units wait, "
                "until it runs again (SIGCONT)",
                self.name,
                self.process.pid,
            )
        else:
            log.warning("%s responds again (process %s runs)", self.name, self.process.pid)

    def _note_queue_drops(self) -> None:
        """Log, as an error, every time the broker says it started dropping what it queues
        for a client (its queue is full; Mosquitto says so once per connection of that
        client): the QoS 1 messages among them were acknowledged to their senders and are
        lost. With the per-vehicle budget (decision 0048) one vehicle
        cannot cause it; many at once, or a gateway down for long, still can."""
        self._log_scanned, clients = scan_queue_drops(self.process.log_path, self._log_scanned)
        for client in clients:
            self.queue_drops += 1
            log.error(
                "%s is DROPPING messages for client %s: its queue is full (max_queued_bytes "
                "%d, max_queued_messages %d); what it drops was acknowledged to the units "
                "and is lost (their missing_samples counts it). Is the gateway down or far "
                "behind, or are many vehicles flooding at once? (decision 0048; log: %s)",
                self.name,
                client,
                self.process.config.max_queued_bytes,
                self.process.config.max_queued_messages,
                self.process.log_path,
            )

    def _bound_log(self) -> None:
        """Keep the broker's log file under ``log_max_bytes`` (security review 9, decision
        0061: a credential's connect loop wrote ~0.5 MB/s into it, nothing bounded it). Every
        queue drop in the part that goes is noted first."""
        limit = self.log_max_bytes
        if limit is None:
            return
        try:
            if self.process.log_path.stat().st_size <= limit:
                return
        except OSError:
            return
        for _ in range(_LOG_SCANS_BEFORE_CUT):
            scanned = self._log_scanned
            self._note_queue_drops()
            if self._log_scanned == scanned:
                break
        moved = self.process.cut_log(limit)
        if moved:
            self._log_scanned = 0
            log.info(
                "%s's log reached %d bytes: moved to %s.1 (replacing the previous one)",
                self.name,
                moved,
                self.process.log_path,
            )

    def _render(self) -> None:
        """What every start needs first: the sessions' subscriptions in the persistence
        file and the identity files."""
        self._write_sessions()
        if self.sync is None:
            return
        try:
            self.sync.render()
        except Exception:
            log.warning(
                "cannot render the broker's identities from the state database; starting "
                "it with the files on disk",
                exc_info=True,
            )

    def _write_sessions(self) -> None:
        config = self.process.config
        if not self._sessions or not config.persistence:
            return
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            added = write_subscriptions(config.persistence_path, self._sessions)
        except (BrokerError, OSError, ValueError):
            log.warning(
                "cannot write the gateways' subscriptions into %s; they are opened right "
                "after the start instead, and units that are back sooner lose messages",
                config.persistence_path,
                exc_info=True,
            )
            return
        if added:
            log.info("%d service subscriptions written into %s", added, config.persistence_path)

    def stop(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        with self.lock:
            self.process.stop()

    def status(self) -> dict[str, Any]:
        running = self.process.is_running()
        return {
            "url": self.process.url,
            "state": self.life.state(running),
            "pid": self.process.pid if running else None,
            "restarts": self.life.restarts,
            "last_exit": self.life.last_exit,
            "crash_looping": self.life.crash_looping,
            # False while the process is stopped: nobody waits for it (gateway.health)
            "responding": self.responding(),
            # times the broker started dropping a client's messages (a full queue)
            "queue_drops": self.queue_drops,
            # the state database's identity version the broker has loaded: `telematics
            # vehicle add` waits for it (gateway.health.broker_has_identities)
            "identities_version": None if self.sync is None else self.sync.synced_version,
        }


def process_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal or a tracer (state ``T`` or ``t`` in
    ``/proc/PID/stat``); False when that cannot be read (gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": the command name may hold spaces and parentheses
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state in (b"T", b"t")


class Supervisor:
    """Runs the parts until a signal arrives."""

    TICK_S = 0.5

    def __init__(
        self,
        parts: Sequence[Part],
        broker: BrokerKeeper | None,
        *,
        edges: Sequence[BrokerKeeper] = (),
        health_dir: Path | None = None,
    ) -> None:
        """``health_dir``: where ``supervisor.json`` is written every tick (see
        :mod:`gateway.health`). ``edges``: unit-facing brokers bridged to ``broker``
        (decision 0038), started after it and stopped before it."""
        self.parts = list(parts)
        self.broker = broker
        self.edges = list(edges)
        self.health_dir = health_dir
        self._stop = threading.Event()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        reporter = threading.Thread(target=self._report_loop, name="supervisor-status", daemon=True)
        try:
            if self.broker is not None:
                self.broker.start()
            for edge in self.edges:
                edge.start()
            reporter.start()
            for part in self.parts:
                part.start()
            while not self._stop.wait(self.TICK_S):
                now = time.monotonic()
                for broker in [self.broker, *self.edges]:
                    if broker is not None:
                        broker.check(now)
                for part in self.parts:
                    part.check(now)
        finally:
            self._stop.set()
            if reporter.is_alive():
                reporter.join()
            self.shutdown()
        return 0

    def _report_loop(self) -> None:
        """Write the status file every tick from a thread of its own, so that it stays
        fresh while the main loop waits (a part's preparation may take seconds)."""
        while True:
            self._report()
            if self._stop.wait(self.TICK_S):
                return

    def _report(self) -> None:
        if self.health_dir is None:
            return
        now = time.monotonic()
        status = {
            "updated_at_ms": time.time_ns() // 1_000_000,
            "pid": os.getpid(),
            "broker": self._broker_status(),
            "parts": [p.status(now) for p in self.parts],
        }
        if self.edges:
            status["edges"] = [e.status() for e in self.edges]
        try:
            write_status_file(self.health_dir / SUPERVISOR_FILE_NAME, status)
        except OSError as exc:
            log.warning("cannot write the supervisor's status file: %s", exc)

    def _broker_status(self) -> dict[str, Any] | None:
        """The private broker's status; with edges, the identity version is the one every
        broker has loaded (what ``telematics vehicle add`` waits for)."""
        if self.broker is None:
            return None
        status = self.broker.status()
        versions = [
            status["identities_version"],
            *(e.status()["identities_version"] for e in self.edges),
        ]
        if self.edges:
            # the core's own, for a wait that needs only the core and one edge (the API's)
            status["own_identities_version"] = status["identities_version"]
            known = [v for v in versions if v is not None]
            status["identities_version"] = min(known) if len(known) == len(versions) else None
        return status

    def shutdown(self) -> None:
        for part in reversed(self.parts):
            part.stop(timeout=15)
        for edge in reversed(self.edges):
            edge.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.health_dir is not None:
            (self.health_dir / SUPERVISOR_FILE_NAME).unlink(missing_ok=True)
        log.info("all parts stopped")


def data_paths(data_dir: Path) -> tuple[Path, Path]:
    """(telemetry database, broker directory) inside the data directory."""
    return data_dir / "telemetry.db", data_dir / "broker"
