"""The command service: from a person's request to a vehicle's answer, and back.

It runs in the API process, next to the routes that use it, and owns one MQTT connection
(a persistent session of its own, so results that arrive while it is down wait for it):

* **create**: ask the core's admission (:mod:`gateway.core.admission`: a known type, valid
  parameters, a vehicle that has reported, no unsafe command for a moving vehicle, ``409
  vehicle_moving``), then carry out its answer: store the command (``queued``; an
  ``Idempotency-Key`` returns the earlier command instead of a second one) and dispatch it
  at once unless the vehicle's status says offline;
* **dispatch**: record ``sent`` first, then publish on ``v1/vehicles/{vin}/commands`` with
  QoS 1 and the MQTT 5 properties response topic, correlation data (the command id) and
  message expiry (the time to live left), so neither the broker nor the unit ever hands
  out an expired command;
* **holding periods**: a command belongs to the VIN's holding period (tenure) it was made
  in; the vehicle's state (online, moving, confirming telemetry) is read at that period, the
  repository refuses a period that has ended, and only the current period's queued
  commands are ever dispatched; a revocation cancels the open ones
  (docs/decisions/0009-vehicle-ownership-periods.md);
* **offline vehicles** (decision, docs/decisions/0005-remote-commands.md): the command
  waits *here*, ``queued``, until the vehicle's status says ``online`` (the service has
  its own share of the status topic), or until it expires. Waiting in the unit's broker
  session would also work for units that had connected before, but not for one that never
  did, and the gateway could not tell a waiting command from a lost one;
* **results**: answers on ``v1/vehicles/{vin}/commands/result`` drive the lifecycle
  (:mod:`gateway.core.lifecycle`); an answer for an unknown command id, or one for a
  command of another vehicle, changes nothing and goes to the quarantine
  (:mod:`gateway.core.results`);
* **timers** (every ``tick_s``): ``queued``/``sent`` commands past their expiry become
  ``expired``; ``accepted`` ones without a final answer within ``result_timeout`` become
  ``timed_out``; ``succeeded`` ones are confirmed when fresh telemetry shows the expected
  state, or marked ``unconfirmed`` after ``confirm_window_s``
  (:mod:`gateway.core.confirmation`).

State database calls run on the event loop, not in a thread pool: each is a millisecond or
two, and handing them to threads measured 3-4x slower end to end (GIL hand-offs and
executor wake-ups under load: p50 from request to ``succeeded`` went from ~400 ms to ~105 ms
at 10 concurrent requests).

**signing** (``CommandSettings.signing_key_path``): every command is signed (Ed25519,
:mod:`schemas.signing`) before it is published, with a per-vehicle counter: the command's
``created_at`` in milliseconds, raised to one above the last counter this process sent to
the vehicle if need be (two commands created in the same millisecond, or a queued command
dispatched after a newer one). Milliseconds since the epoch only grow, so no counter table
is needed; a unit refuses a counter at or below the last it took (``replayed``).

Everything it decides is in the state database, so a restart loses nothing: a command sent
before the restart still completes (its result arrives in our persistent session) or
expires correctly after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmqtt import Client as MqttClient
from gmqtt.mqtt.constants import MQTTv50

from gateway import metrics
from gateway.commands.writer import GroupWriter
from gateway.core.admission import (
    Admission,
    UnknownCommandType,
    VehicleMoving,
    VehicleNotFound,
    admit,
    check_request,
)
from gateway.core.batching import FIRST_TENURE, IngestBatch, QuarantineEntry
from gateway.core.clock import wall_clock_ms
from gateway.core.confirmation import CommandTimes, judge_confirmation
from gateway.core.feedback import feedback_messages
from gateway.core.lifecycle import (
    CommandEvent,
    CommandStatus,
    IllegalTransition,
    event_for_result,
    is_repeat,
    late_event,
)
from gateway.core.results import refusal
from gateway.errors import GatewayError, StoreError
from gateway.settings import MqttSettings
from gateway.statedb.commands import CommandRecord, CommandRepository, ConfirmationState
from gateway.statedb.database import WriteScope
from gateway.store import TelemetryBackend, VehicleState, open_store
from gateway.trace import Trace
from schemas import (
    InvalidTopicError,
    Reason,
    Rejection,
    StatusState,
    decode_status,
    parse_topic,
)
from schemas.commands import (
    CommandMessage,
    CommandResult,
    CommandType,
    command_result_subscription_filter,
    command_result_topic,
    command_topic,
    decode_command_result,
    encode_command,
    message_expiry_interval,
    parse_command_result_topic,
    validate_params,
)
from schemas.edges import routed_topic
from schemas.feedback import FeedbackLimiter
from schemas.signing import Ed25519PrivateKey, load_private_key, sign_command

__all__ = [
    "CommandService",
    "CommandSettings",
    "UnknownCommandType",
    "VehicleMoving",
    "VehicleNotFound",
    "subscription_filters",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandSettings:
    state_db_url: str
    #: the broker and the service account (shared with the ingest settings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    client_id: str = "telematics-commands-1"
    share_group: str = "telematics-commands"
    session_expiry_s: int = 7 * 24 * 3600
    #: time to live of a command whose request names none, and the most a request may ask
    default_ttl_s: int = 300
    max_ttl_s: int = 24 * 3600
    #: after ``accepted``, how long the unit has for its final answer
    result_timeout_s: float = 30.0
    #: after ``succeeded``, how long telemetry has to confirm it
    confirm_window_s: float = 120.0
    #: period of the expiry and timeout checks
    tick_s: float = 0.1
    #: period of the confirmation check (it reads the telemetry store)
    confirm_check_s: float = 0.5
    #: PEM Ed25519 private key: sign every command (see the module docstring); None: unsigned
    signing_key_path: Path | None = None
    #: the installation's edge brokers (0: units connect to this broker): commands and
    #: notices are published under their VIN's edge prefix (schemas.edges.routed_topic)
    edge_brokers: int = 0


def subscription_filters(share_group: str) -> list[str]:
    """What the command service subscribes to: every vehicle's results and status, shared
    with the other API processes of the group."""
    return [
        f"$share/{share_group}/{command_result_subscription_filter()}",
        f"$share/{share_group}/v1/vehicles/+/status",
    ]


#: how many published commands' VINs the service remembers (see ``_published_vins``)
PUBLISHED_VINS_KEPT = 50_000


class CommandService:
    """See the module docstring. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        settings: CommandSettings,
        repository: CommandRepository,
        telemetry_db: str | Path,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        trace: Trace | None = None,
    ) -> None:
        self.settings = settings
        #: where the stages only this process sees go (gateway.trace; off by default)
        self.trace = trace or Trace()
        #: every write of a command's lifecycle: off the loop, group-committed (writer.py)
        self.writer = GroupWriter(repository.database, on_commit=self._trace_commit)
        self.repo = repository
        self._telemetry_db = telemetry_db
        self._clock_ms = clock_ms
        self._client: Any = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._changed: dict[str, asyncio.Event] = {}
        self.connected = asyncio.Event()
        self._in_order = asyncio.Lock()
        self._next_confirmation_check = 0
        self._quarantine_store: TelemetryBackend | None = None
        #: the telemetry reader of the requests' admission checks, kept open (event loop)
        self._reader: TelemetryBackend | None = None
        self._signing_key: Ed25519PrivateKey | None = (
            load_private_key(settings.signing_key_path)
            if settings.signing_key_path is not None
            else None
        )
        #: vin -> the last counter this process signed for it
        self._last_counter: dict[str, int] = {}
        #: the per-vehicle bound of feedback notices about refused results
        self._feedback = FeedbackLimiter()
        #: command id -> VIN of the commands this process published, newest last: an
        #: answer is checked against its command's VIN without a database read on the
        #: event loop (a command's VIN never changes; an unknown id is read as before)
        self._published_vins: OrderedDict[str, str] = OrderedDict()

    # --- lifecycle of the service ---------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.writer.start()
        self._quarantine_store = open_store(self._telemetry_db)
        client = MqttClient(
            s.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,  # results are acknowledged once recorded
            session_expiry_interval=s.session_expiry_s,
        )
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        if s.mqtt.username is not None:
            client.set_auth_credentials(s.mqtt.username, s.mqtt.password)
        await client.connect(s.mqtt.host, s.mqtt.port, version=MQTTv50, keepalive=30)
        self._client = client
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            await self._ticker
        if self._client is not None:
            await self._client.disconnect()
        await self.writer.stop()
        if self._quarantine_store is not None:
            self._quarantine_store.close()
        self._close_reader()

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        for topic_filter in subscription_filters(self.settings.share_group):
            client.subscribe(topic_filter, qos=1)
        self.connected.set()
        log.info("command service connected to mqtt://%s:%d", client._host, client._port)

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self.connected.clear()

    # --- requests -------------------------------------------------------------------------

    def _vehicle_state(self, vin: str, tenure: int) -> VehicleState | None:
        """The vehicle's telemetry state for a request's admission, on the event loop:
        two indexed reads through a reader kept open, because opening one per request
        cost more than its reads (SQLite: the connection and its schema; InfluxDB: an
        HTTP client too; decision 0035). A failed read closes it, so the next request
        opens the store again (a database that comes back after a failure is picked
        up, as with a reader per request)."""
        if self._reader is None:
            self._reader = open_store(self._telemetry_db, readonly=True)
        try:
            return self._reader.vehicle_state(vin, tenure=tenure)
        except Exception:
            self._close_reader()
            raise

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    async def create(
        self,
        *,
        vin: str,
        type_: str,
        params: Mapping[str, Any],
        tenure: int = FIRST_TENURE,
        ttl_s: float | None = None,
        idempotency_key: str | None = None,
        requested_by: str | None = None,
        on_created: Callable[[WriteScope, CommandRecord], object] | None = None,
    ) -> tuple[CommandRecord, bool]:
        """Store a command for the VIN's holding period ``tenure`` and dispatch it.
        ``on_created`` runs in the transaction that stores it (the API writes the audit
        entry there). Raises :class:`UnknownCommandType`,
        ``schemas.commands.CommandParamsError``, :class:`VehicleNotFound`,
        :class:`VehicleMoving`, ``IdempotencyConflict`` or ``TenureEnded``. Returns
        (command, created)."""
        request = check_request(type_, params)
        state = self._vehicle_state(vin, tenure)
        admission = admit(
            request,
            vin=vin,
            latest=None if state is None else state.latest,
            online=None if state is None else state.summary.online,
            now_ms=self._clock_ms(),
            ttl_s=ttl_s,
            default_ttl_s=self.settings.default_ttl_s,
            result_timeout_s=self.settings.result_timeout_s,
        )
        now = self._clock_ms()
        # online and connected: stored and recorded sent in one go (one commit to wait for)
        send_now = admission.send_at_once and self._client is not None and self.connected.is_set()
        record, created = await self.writer.write(
            lambda: self._create(
                admission, vin, tenure, idempotency_key, requested_by, on_created, now, send_now
            )
        )
        if created and record.status is CommandStatus.SENT:
            self._wake(record.id)
            return self._publish(record, now), created
        if created and admission.send_at_once:
            record = await self._dispatch(record)
        return record, created

    def _create(
        self,
        admission: Admission,
        vin: str,
        tenure: int,
        idempotency_key: str | None,
        requested_by: str | None,
        on_created: Callable[[WriteScope, CommandRecord], object] | None,
        now: int,
        send_now: bool,
    ) -> tuple[CommandRecord, bool]:
        """The repository's create of an admitted command, and with ``send_now`` its
        ``sent`` right after it in the same transaction (on the writer's thread)."""
        record, created = self.repo.create(
            vin=vin,
            type=admission.type.value,
            params=admission.params,
            now=now,
            ttl_ms=admission.ttl_ms,
            result_timeout_ms=admission.result_timeout_ms,
            tenure=tenure,
            idempotency_key=idempotency_key,
            requested_by=requested_by,
            confirmation=(
                ConfirmationState.PENDING
                if admission.expects_confirmation
                else ConfirmationState.NOT_APPLICABLE
            ),
            on_created=on_created,
            sent_at=now if send_now else None,
        )
        return record, created

    async def cancel(self, command_id: str) -> CommandRecord:
        """Cancel a queued command; raises ``IllegalTransition`` once it has been sent."""
        return await self._apply(command_id, CommandEvent.CANCEL_REQUESTED)

    def now_ms(self) -> int:
        return self._clock_ms()

    def vehicle_states(
        self, vehicles: set[tuple[str, int]]
    ) -> dict[tuple[str, int], VehicleState | None]:
        """The telemetry store's state of each (vin, holding period): what admission reads."""
        return self._vehicle_states(vehicles)

    async def dispatch(self, record: CommandRecord) -> CommandRecord:
        """Send a stored ``queued`` command now (a job's commands: see
        ``gateway.commands.jobs``); a command sent or ended meanwhile is left as it is."""
        if record.status is not CommandStatus.QUEUED:
            return record
        return await self._dispatch(record)

    def changed(self, command_id: str) -> asyncio.Event:
        """An event set (and replaced) whenever this process records a transition of the
        command: what the live stream of a command waits on."""
        event = self._changed.get(command_id)
        if event is None:
            event = self._changed[command_id] = asyncio.Event()
        return event

    # --- dispatch -------------------------------------------------------------------------

    async def _apply(
        self,
        command_id: str,
        event: CommandEvent,
        *,
        reason: str | None = None,
        detail: str | None = None,
        unit_ts: int | None = None,
    ) -> CommandRecord:
        at = self._clock_ms()
        record = await self.writer.write(
            lambda: self.repo.apply(
                command_id, event, at=at, reason=reason, detail=detail, unit_ts=unit_ts
            )
        )
        self._wake(command_id)
        return record

    def _wake(self, command_id: str) -> None:
        waiter = self._changed.pop(command_id, None)
        if waiter is not None:
            waiter.set()

    async def _dispatch(self, record: CommandRecord) -> CommandRecord:
        """Publish a queued command, or expire it if its time is up. Leaves it queued if the
        broker connection is down (it is retried on reconnect)."""
        now = self._clock_ms()
        if now >= record.expires_at:
            return await self._apply(record.id, CommandEvent.TTL_ELAPSED)
        if self._client is None or not self.connected.is_set():
            return record
        # 'sent' is recorded before the publish: a fast unit's 'accepted' must find it sent
        try:
            sent = await self._apply(record.id, CommandEvent.PUBLISHED)
        except IllegalTransition:
            return record  # dispatched meanwhile (status message and request raced)
        return self._publish(sent, now)

    def _publish(self, record: CommandRecord, now: int) -> CommandRecord:
        """Publish a command recorded ``sent`` (the timer expires it if under a second of
        its time to live is left: the unit could not act on it in time)."""
        assert self._client is not None
        message = CommandMessage(
            command_id=record.id,
            vin=record.vin,
            type=CommandType(record.type),
            params=record.params,
            issued_at=now,
            expires_at=record.expires_at,
        )
        expiry_s = message_expiry_interval(message, now_ms=now)
        if expiry_s is None:
            return record
        if self._signing_key is not None:
            message = self._signed(message, record.created_at)
        self._published_vins[record.id] = record.vin
        if len(self._published_vins) > PUBLISHED_VINS_KEPT:
            self._published_vins.popitem(last=False)
        self._client.publish(
            routed_topic(command_topic(record.vin), record.vin, self.settings.edge_brokers),
            encode_command(message),
            qos=1,
            response_topic=command_result_topic(record.vin),
            correlation_data=record.id.encode(),
            message_expiry_interval=expiry_s,
        )
        return record

    def _signed(self, message: CommandMessage, created_at: int) -> CommandMessage:
        """``message`` with its counter and signature (see the module docstring)."""
        assert self._signing_key is not None
        counter = max(created_at, self._last_counter.get(message.vin, -1) + 1)
        self._last_counter[message.vin] = counter
        # the parameters exactly as the unit will decode them (21 -> 21.0 for a float), or
        # the signature would cover other bytes than the unit checks
        params = validate_params(message.type, message.params)
        message = dataclasses.replace(message, params=params, counter=counter)
        return dataclasses.replace(message, signature=sign_command(message, self._signing_key))

    async def _dispatch_queued(self, vin: str | None = None) -> None:
        records = self.repo.queued_for_vehicle(vin) if vin is not None else self.repo.queued()
        for record in records:
            if vin is None:
                state = self._vehicle_state(record.vin, record.tenure)
                if state is not None and state.summary.online is False:
                    continue
            await self._dispatch(record)

    # --- messages from the broker -----------------------------------------------------------

    async def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        # gmqtt runs each message in its own task; the lock (FIFO) keeps them in arrival
        # order, or a fast unit's 'succeeded' could overtake its 'accepted'
        traced = self._trace_result(payload) if self.trace.enabled else None
        # only the hand-over to the writer is in order under the lock: the writer applies
        # in that order, and the answers' commits are grouped (commands/writer.py)
        try:
            async with self._in_order:
                if topic.endswith("/status"):
                    await self._on_status(topic, payload)
                    recorded = None
                else:
                    recorded = await self._on_result(topic, payload, _correlation_data(properties))
            if recorded is not None:
                await recorded
        except (StoreError, GatewayError):
            log.exception("could not record %s; the broker will deliver it again", topic)
            return 0x80  # unspecified error: not acknowledged as processed
        if traced is not None:
            self.trace.mark(traced[0], "recorded", traced[1])
        return 0

    def _trace_commit(self, writes: int, waited_ms: float, took_ms: float) -> None:
        """The trace's "commit" line: one grouped transaction of the writer, its writes,
        its wait for the write lock and its duration (on the writer's thread)."""
        self.trace.mark("-", "commit", f"{writes} {waited_ms:.1f} {took_ms:.1f}")

    def _trace_result(self, payload: bytes) -> tuple[str, str] | None:
        """The trace's "result" stage: when an answer arrived, with its status and the
        unit's clock; (command id, status) for the "recorded" stage after it is recorded
        (a payload that is not a result is left to the quarantine: None)."""
        try:
            answer = json.loads(payload)
            command_id, status = str(answer["command_id"]), str(answer["status"])
            self.trace.mark(command_id, "result", f"{status} {int(answer['ts'])}")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return command_id, status

    async def _on_status(self, topic: str, payload: bytes) -> None:
        try:
            vin = parse_topic(topic).vin
        except InvalidTopicError:
            return  # ingest quarantines it; this is only our copy
        status = decode_status(payload, topic_vin=vin)
        if not isinstance(status, Rejection) and status.state is StatusState.ONLINE:
            await self._dispatch_queued(vin)

    async def _on_result(
        self, topic: str, payload: bytes, correlation: bytes | None
    ) -> Awaitable[None] | None:
        """Judge an answer and hand its transition to the writer; what to await for it to
        be recorded (None: nothing to record)."""
        try:
            vin = parse_command_result_topic(topic)
        except InvalidTopicError as exc:
            await self._quarantine(topic, payload, Rejection(Reason.INVALID_TOPIC, str(exc)))
            return None
        result = decode_command_result(payload, topic_vin=vin)
        if isinstance(result, Rejection):
            await self._quarantine(topic, payload, result)
            return None
        command_vin = self._published_vins.get(result.command_id)
        if command_vin is None:
            record = self.repo.get(result.command_id)
            command_vin = None if record is None else record.vin
        rejection = refusal(result, command_vin=command_vin, topic_vin=vin, correlation=correlation)
        if rejection is not None:
            await self._quarantine(topic, payload, rejection)
            return None
        event, at = event_for_result(result.status), self._clock_ms()
        # a unit sends its final answer right behind its 'accepted': one commit for both
        recorded = self.writer.submit(
            lambda: self._record_answer(result, event, at),
            follows=event is CommandEvent.UNIT_ACCEPTED,
        )
        return self._recorded(recorded, result.command_id)

    async def _recorded(self, recorded: Awaitable[bool], command_id: str) -> None:
        if await recorded:
            self._wake(command_id)

    def _record_answer(self, result: CommandResult, event: CommandEvent, at: int) -> bool:
        """Apply an answer's transition; an answer the lifecycle refuses goes into the
        history as late, unless it repeats one already there (a QoS 1 redelivery). On the
        writer's thread, in the answers' order, so a redelivery sees its first copy's note;
        whether anything was recorded."""
        reason = result.reason.value if result.reason is not None else None
        try:
            self.repo.apply(
                result.command_id, event, at=at, reason=reason, detail=result.detail,
                unit_ts=result.ts,
            )  # fmt: skip
        except IllegalTransition:
            return self._after_the_end(result, at)
        return True

    def _after_the_end(self, result: CommandResult, at: int) -> bool:
        """See :meth:`_record_answer` (in its transaction: the history read sees the notes
        of earlier answers of the same group)."""
        history = [(t.status, t.event) for t in self.repo.transitions(result.command_id)]
        if is_repeat(result.status, history):
            log.debug("repeated %s for command %s", result.status.value, result.command_id)
            return False
        current = history[-1][0].value if history else "?"
        log.warning(
            "late %s from %s for command %s (already %s): recorded in its history",
            result.status.value,
            result.vin,
            result.command_id,
            current,
        )
        words = f": {result.detail}" if result.detail else ""
        detail = (
            f"the unit answered {result.status.value} at {result.ts} (its clock) after the "
            f"command was {current}{words}"
        )[:1024]
        self.repo.note(
            result.command_id,
            late_event(result.status),
            at=at,
            reason=result.reason.value if result.reason is not None else None,
            detail=detail,
        )
        return True

    async def _quarantine(self, topic: str, payload: bytes, rejection: Rejection) -> None:
        log.warning("quarantined a command result on %s: %s", topic, rejection.detail)
        store = self._quarantine_store
        assert store is not None
        # in arrival order: the answers handed to the writer before this one are recorded
        # first (one awaited no-op behind them)
        await self.writer.write(lambda: None)
        now = self._clock_ms()
        batch = IngestBatch(
            received_at=now,
            quarantine=[QuarantineEntry(now, topic, payload, rejection)],
            counters={(metrics.QUARANTINED, rejection.reason.value): 1},
        )
        store.commit(batch)
        if self._client is not None and self.connected.is_set():
            for feedback, notice in feedback_messages(
                batch.quarantine, self._feedback, now, self.settings.edge_brokers
            ):
                self._client.publish(feedback, notice, qos=0)

    # --- timers ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        dispatched_after_connect = False
        while not self._stopping.is_set():
            try:
                if self.connected.is_set() and not dispatched_after_connect:
                    await self._dispatch_queued()
                    dispatched_after_connect = True
                elif not self.connected.is_set():
                    dispatched_after_connect = False
                await self._tick()
            except Exception:
                log.exception("command timers failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.tick_s)

    async def _tick(self) -> None:
        now = self._clock_ms()
        for record in self.repo.due_for_expiry(now):
            with contextlib.suppress(IllegalTransition):
                await self._apply(record.id, CommandEvent.TTL_ELAPSED)
        for record in self.repo.due_for_timeout(now):
            with contextlib.suppress(IllegalTransition):
                await self._apply(record.id, CommandEvent.RESULT_TIMEOUT)
        if now >= self._next_confirmation_check:
            self._next_confirmation_check = now + int(self.settings.confirm_check_s * 1000)
            awaiting = self.repo.awaiting_confirmation()
            # up to one telemetry read per vehicle, on a file ingest writes: not on the loop
            wanted = {(r.vin, r.tenure) for r in awaiting}
            states = await asyncio.to_thread(self._vehicle_states, wanted) if wanted else {}
            # every verdict handed to the writer before waiting for any, so the tick's
            # verdicts share one commit (one fsync) instead of one each in turn (decision
            # 0064); still written in this order, each alone if it fails
            pending = [
                submitted
                for record in awaiting
                if (
                    submitted := self._submit_confirmation(
                        record, states.get((record.vin, record.tenure)), now
                    )
                )
                is not None
            ]
            if pending:
                outcomes = await asyncio.gather(*pending, return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, CommandRecord):
                        self._wake(outcome.id)
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome

    def _vehicle_states(
        self, vehicles: set[tuple[str, int]]
    ) -> dict[tuple[str, int], VehicleState | None]:
        """The telemetry store's state of each (vin, tenure)."""
        reader = open_store(self._telemetry_db, readonly=True)
        try:
            return {(vin, t): reader.vehicle_state(vin, tenure=t) for vin, t in vehicles}
        finally:
            reader.close()

    def _submit_confirmation(
        self, record: CommandRecord, state: VehicleState | None, now: int
    ) -> asyncio.Future[CommandRecord] | None:
        """Judge what telemetry shows of the command and hand its verdict's write to the
        writer (None: no verdict yet)."""
        verdict = judge_confirmation(
            CommandType(record.type),
            record.params,
            CommandTimes(
                created_at=record.created_at,
                sent_at=record.sent_at,
                accepted_at=record.accepted_at,
                finished_at=record.finished_at,
                unit_accepted_at=record.unit_accepted_at,
            ),
            None if state is None else state.latest,
            now_ms=now,
            confirm_window_ms=self.settings.confirm_window_s * 1000,
        )
        if verdict is None:
            return None
        return self.writer.submit(
            lambda: self.repo.set_confirmation(
                record.id,
                confirmation=verdict.confirmation,
                confirmed_at=verdict.confirmed_at,
                at=now,
            )
        )


def _correlation_data(properties: Any) -> bytes | None:
    """The MQTT 5 correlation data of a message as gmqtt passes it (a dict of lists), or
    None (an MQTT 3.1.1 unit has none)."""
    if not isinstance(properties, dict):
        return None
    value = properties.get("correlation_data")
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, str):
        value = value.encode()
    return bytes(value) if isinstance(value, bytes | bytearray) else None
