"""The ingest service: subscribes to the device topics and runs the batch-commit-ack loop.

Delivery guarantee: a QoS 1 message is acknowledged (PUBACK) only after everything it
carried is committed to the store. The client runs with ``optimistic_acknowledgement=False``
and :class:`_AckAfterCommit` takes over gmqtt's handling of QoS 1 and 2 PUBLISH packets: each
message goes straight to the batcher (:mod:`gateway.core.batching`) with the acknowledgement
it is owed (its packet id and connection), nothing is sent then, and once its batch has
committed, all of the batch's PUBACKs (PUBRECs for QoS 2) go out in one write per connection
(:func:`_send_acks`). If the process dies first, the broker still holds the messages in our
persistent session (clean start off, a session expiry) and sends them again on reconnect;
(vin, seq) deduplication in the store makes the second copy harmless. QoS 0 messages come
through ``on_message`` and are batched the same way, with nothing to acknowledge.

Feedback: after a commit, each quarantined message, sample or signal of a provisioned vehicle
is announced to its unit on ``v1/vehicles/{vin}/feedback`` (QoS 0, rate-bounded per vehicle;
:mod:`gateway.core.feedback`), because the PUBACK only tells the unit that the broker took
the message.

Scaling out: every gateway process subscribes through the same MQTT 5 shared subscription
(``$share/{group}/...``), so the broker splits the stream between them. Each process needs
its own client id (the persistent session belongs to it).

Why gmqtt and not paho-mqtt or aiomqtt: measured on this machine it receives 2-6x faster
(docs/decisions/0002-mqtt-client.md).

Commits run on the event-loop thread and block it for their duration (milliseconds to tens
of milliseconds). A writer thread was measured slower: SQLite releases the GIL around every
row it steps, and getting it back from a busy event loop costs a switch interval each time,
so 10-sample batches went from 58,000 samples/s inline to 40,000-47,000 with the thread.
While a commit runs, new messages wait in the socket buffer, which is also backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gmqtt import Client as MqttClient
from gmqtt.mqtt.constants import MQTTv50

from gateway import metrics
from gateway.core.batching import (
    Batcher,
    BatchPolicy,
    IngestBatch,
    QuarantineEntry,
    Tenure,
    refuse_after_revocation,
)
from gateway.core.clock import wall_clock_ms
from gateway.core.feedback import feedback_messages
from gateway.errors import ConfigurationError, StoreError
from gateway.settings import MqttSettings
from gateway.store import CommitResult, TelemetryStore
from schemas import DEFAULT_LIMITS, InvalidTopicError, Limits, parse_topic, subscription_filters
from schemas.feedback import FeedbackLimiter

__all__ = ["IngestService", "IngestSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    #: the broker and the service account (shared with the command service's settings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    #: unique per gateway process: the broker keeps this client's session while it is away
    client_id: str = "telematics-gateway-1"
    #: all gateway processes with the same group split the stream between them
    share_group: str = "telematics-gateway"
    #: how long the broker keeps our session (and queues messages) while we are down
    session_expiry_s: int = 7 * 24 * 3600
    #: MQTT 5 Receive Maximum: unacknowledged messages the broker may send us at once
    receive_maximum: int = 20_000
    keepalive_s: int = 30
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    limits: Limits = DEFAULT_LIMITS
    #: pause after a failed commit before trying the same batch again
    retry_backoff_s: float = 1.0
    #: the installation's edge brokers (0: units connect to this broker): feedback notices
    #: are published under their VIN's edge prefix (schemas.edges.routed_topic)
    edge_brokers: int = 0

    def topic_filters(self) -> list[str]:
        return [f"$share/{self.share_group}/{f}" for f in subscription_filters()]


class IngestService:
    """Receives, batches, commits and acknowledges. Run with :meth:`run`."""

    def __init__(
        self,
        settings: IngestSettings,
        store: TelemetryStore,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        on_commit: Callable[[CommitResult], None] | None = None,
        tenure_of: Callable[[str], Tenure | None] | None = None,
        current_tenures: Callable[[], Mapping[str, Tenure]] | None = None,
    ) -> None:
        self.settings = settings
        #: the registry's reload right before a commit (see _current_tenures)
        self._current_tenures_of = current_tenures
        self._store = store
        self._batcher = Batcher(
            clock_ms=clock_ms,
            limits=settings.limits,
            source=settings.client_id,
            tenure_of=tenure_of,
        )
        self._on_commit = on_commit
        self._acks: list[_Ack] = []
        #: messages held back for the next batch: their VIN changed tenure while the open
        #: batch held its earlier messages (see gateway.core.batching)
        self._deferred: list[tuple[str, bytes, _Ack | None, dict[str, Any]]] = []
        self._due = asyncio.Event()
        self._first_at: float | None = None
        #: when the latest message of the open batch came (BatchPolicy.due_in)
        self._last_at = 0.0
        #: what the latest commit took: the next batch waits a multiple of it (BatchPolicy)
        self._last_commit_s = 0.0
        self.connected = asyncio.Event()
        self._stopping = False
        self.commits = 0
        self._clock_ms = clock_ms
        self._client: Any = None
        self._feedback = FeedbackLimiter()

    # --- receiving ----------------------------------------------------------------------

    def _receive(
        self, topic: str, payload: bytes, ack: _Ack | None, properties: dict[str, Any]
    ) -> None:
        """Add one message to the open batch; ``ack`` is sent once the batch commits."""
        retained = bool(properties.get("retain"))
        if self._deferred or not self._batcher.add(topic, payload, retained):
            # after a deferred message, the following ones wait too: arrival order is kept
            self._deferred.append((topic, payload, ack, properties))
            self._due.set()  # commit the open batch now
            return
        if ack is not None:
            self._acks.append(ack)
        self._last_at = time.monotonic()
        if self._first_at is None:
            self._first_at = self._last_at
            self._due.set()  # wake the flusher so it starts the batch timer
        elif self._batcher.size >= self.settings.batch.max_samples:
            self._due.set()

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> None:
        # gmqtt calls this only for QoS 0 (QoS 1 and 2 go through _AckAfterCommit)
        self._receive(topic, payload, None, properties)

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        log.info(
            "connected to mqtt://%s:%s (session present: %s)",
            self.settings.mqtt.host,
            self.settings.mqtt.port,
            bool(flags),
        )
        for topic_filter in self.settings.topic_filters():
            client.subscribe(topic_filter, qos=1)
        self.connected.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("disconnected from the broker; reconnecting")
        self.connected.clear()

    # --- the batch loop ---------------------------------------------------------------

    async def _flush_loop(self, stopping: asyncio.Event) -> None:
        policy = self.settings.batch
        while True:
            if self._first_at is None:
                if stopping.is_set():
                    return
                self._due.clear()
                waiter = asyncio.ensure_future(self._due.wait())
                stop_waiter = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({waiter, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stop_waiter.cancel()
                continue
            remaining = policy.due_in(
                self._first_at,
                self._last_at,
                self._batcher.size,
                time.monotonic(),
                self._last_commit_s,
            )
            if remaining > 0 and not self._deferred and not stopping.is_set():
                self._due.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), remaining)
                continue
            await self._commit_current()

    async def _commit_current(self) -> None:
        batch = refuse_after_revocation(self._current_tenures(self._batcher.take()))
        acks, self._acks, self._first_at = self._acks, [], None
        deferred, self._deferred = self._deferred, []
        for topic, payload, ack, properties in deferred:  # they start the next batch
            self._receive(topic, payload, ack, properties)
        while True:
            started = time.perf_counter()
            try:
                # On the event loop thread, on purpose: see the module docstring.
                result = self._store.commit(batch)
            except StoreError:
                log.exception(
                    "commit of %d samples failed; their messages stay unacknowledged "
                    "in the broker; retrying in %.1f s",
                    len(batch.samples),
                    self.settings.retry_backoff_s,
                )
                await asyncio.sleep(self.settings.retry_backoff_s)
                continue
            break
        self.commits += 1
        self._last_commit_s = time.perf_counter() - started
        # commit latency lands in the next batch's counters (it is known only now)
        self._batcher.add_counters(metrics.commit_seconds_counters(self._last_commit_s))
        _send_acks(acks)
        if batch.quarantine:
            self._send_feedback(batch)
        if self._on_commit is not None:
            self._on_commit(result)

    def _current_tenures(self, batch: IngestBatch) -> IngestBatch:
        """The batch with each VIN's holding period as the state database has it now.

        The registry's map is reloaded every half second; a VIN revoked and claimed by a new
        holder in between would otherwise have the new unit's first samples filed under the
        previous holder. Every message of ``batch`` arrived before this read, so a claim
        made before a message arrived is seen; the store then files each sample by its own
        time against the new period's start (``Tenure.of``). A VIN revoked meanwhile gets
        its ended period with its end, so what its unit stamped after the revocation is
        refused (``refuse_after_revocation``), what it stamped before is kept."""
        if self._current_tenures_of is None or not batch.tenures:
            return batch
        fresh = self._current_tenures_of()
        tenures = {vin: fresh.get(vin, tenure) for vin, tenure in batch.tenures.items()}
        changed = {vin for vin, tenure in tenures.items() if tenure != batch.tenures[vin]}
        if not changed:
            return batch
        quarantine = [_restamped(entry, tenures, changed) for entry in batch.quarantine]
        return dataclasses.replace(batch, tenures=tenures, quarantine=quarantine)

    def _send_feedback(self, batch: IngestBatch) -> None:
        """Tell each unit what of its input was quarantined (``schemas.feedback``), QoS 0,
        after the commit; never at the expense of ingest (a failure is logged)."""
        client = self._client
        if client is None or not self.connected.is_set():
            return
        try:
            for topic, payload in feedback_messages(
                batch.quarantine, self._feedback, self._clock_ms(), self.settings.edge_brokers
            ):
                client.publish(topic, payload, qos=0)
        except Exception:
            log.exception("could not publish feedback notices; the quarantine holds them")

    # --- running ------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, ingest until ``stopping`` is set, then commit what is pending,
        acknowledge it and disconnect."""
        s = self.settings
        client = MqttClient(
            s.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=s.session_expiry_s,
            receive_maximum=s.receive_maximum,
        )
        client.on_message = self._on_message
        _AckAfterCommit.install(client, self._receive)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        if s.mqtt.username is not None:
            client.set_auth_credentials(s.mqtt.username, s.mqtt.password)
        try:
            await client.connect(s.mqtt.host, s.mqtt.port, version=MQTTv50, keepalive=s.keepalive_s)
        except OSError as exc:  # refused, no such host, unreachable: a wrong URL, or it is down
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConfigurationError(
                f"cannot reach the MQTT broker {s.mqtt.url}: {reason}: is it running, and is "
                f"--mqtt-url URL (env TELEMATICS_MQTT_URL) right?"
            ) from exc
        self._client = client
        flusher = asyncio.create_task(self._flush_loop(stopping))
        try:
            await stopping.wait()
            self._stopping = True
            _pause_reading(client)
            await flusher  # commits the batch that was open
            # packets already read are still being dispatched: commit until none are left
            await _yield_to_loop()
            while self._first_at is not None:
                await self._commit_current()
                await _yield_to_loop()
            batch = self._batcher.take()  # only the last commit's latency counters
            if batch.counters:
                self._store.commit(batch)
        finally:
            flusher.cancel()
            await client.disconnect()


def _restamped(
    entry: QuarantineEntry, tenures: Mapping[str, Tenure], changed: set[str]
) -> QuarantineEntry:
    """A quarantine entry of a VIN whose holding period changed before the commit, filed
    by when it was received against the new period (see IngestService._current_tenures)."""
    if entry.tenure is None:
        return entry
    try:
        vin = parse_topic(entry.topic).vin
    except InvalidTopicError:
        return entry
    if vin not in changed:
        return entry
    return dataclasses.replace(entry, tenure=tenures[vin].of(entry.received_at))


async def _yield_to_loop(turns: int = 3) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def _pause_reading(client: Any) -> None:
    """Stop reading from the broker's socket so no new message arrives while we drain.

    gmqtt has no public call for this; without it, shutdown still loses nothing (messages
    that arrive late are simply not acknowledged and the broker resends them), so a
    missing attribute in another gmqtt version is not an error.
    """
    try:
        client._connection._transport.pause_reading()
    except AttributeError:
        log.debug("gmqtt connection has no transport to pause; draining without pausing")


class _Ack(NamedTuple):
    """The acknowledgement owed for one QoS 1 or 2 message, on the connection it came in."""

    connection: Any
    qos: int
    mid: int


class _AckAfterCommit:
    """Routes gmqtt's QoS 1/2 PUBLISH packets to the batcher; acknowledges after commit.

    gmqtt's own way to delay a PUBACK (an ``async`` on_message awaited per message) costs a
    task per message and a socket write per PUBACK: about a third of the gateway's CPU at
    15,000 messages/s. Instead we take the packet id here, and after the batch commits we
    send all its PUBACKs in one write. This replaces two methods of gmqtt's packet handler
    (pinned to gmqtt 0.8.0; the ingest tests fail if an upgrade breaks it).
    """

    @staticmethod
    def install(
        client: Any, receive: Callable[[str, bytes, _Ack | None, dict[str, Any]], None]
    ) -> None:
        handler = client._package_handler
        for name in ("_handle_qos_1_publish_packet", "_handle_qos_2_publish_packet"):
            if not callable(getattr(handler, name, None)):
                raise ConfigurationError(f"this gmqtt version has no {name}; install gmqtt==0.8.0")

        def on_qos1(mid: int, payload: bytes, topic: str, properties: Any) -> None:
            receive(topic, payload, _Ack(handler.current_connection, 1, mid), properties)

        def on_qos2(mid: int, payload: bytes, topic: str, properties: Any) -> None:
            receive(topic, payload, _Ack(handler.current_connection, 2, mid), properties)

        handler._handle_qos_1_publish_packet = on_qos1
        handler._handle_qos_2_publish_packet = on_qos2


def _send_acks(acks: list[_Ack]) -> None:
    """PUBACK (QoS 1) or PUBREC (QoS 2) every message of a committed batch.

    Acks owed on a connection that has since closed are dropped: the broker resends those
    messages on the new connection, and the store recognises them as duplicates.
    """
    by_connection: dict[int, tuple[Any, bytearray]] = {}
    for ack in acks:
        connection = ack.connection
        if connection is None or connection.is_closing():
            continue
        entry = by_connection.get(id(connection))
        if entry is None:
            entry = by_connection[id(connection)] = (connection, bytearray())
        # fixed header (PUBACK 0x40 / PUBREC 0x50), remaining length 2, packet id; with
        # remaining length 2 the reason code is omitted and means success (MQTT 5 3.4.2.1)
        entry[1].extend((0x40 if ack.qos == 1 else 0x50, 2, ack.mid >> 8, ack.mid & 0xFF))
    for connection, buffer in by_connection.values():
        connection.send_package(bytes(buffer))
