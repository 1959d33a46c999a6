"""One simulated in-car unit: a :class:`~device_sim.vehicle.SimulatedVehicle` behind an MQTT 5
connection that behaves like real telematics firmware.

The vehicle model is pure; this module adds the parts of a telematics control unit that a
gateway has to cope with, so the demo and the tests exercise them for real:

Persistent session
    The unit connects with client id = VIN, MQTT 5, Clean Start off and a Session Expiry
    Interval (:attr:`UnitSettings.session_expiry_s`). A cellular unit drops off the network
    all the time; with a persistent session the broker keeps the session state across short
    gaps, and QoS 1 messages that were sent but not yet acknowledged when the link broke are
    sent again (by gmqtt) after the reconnect. The gateway deduplicates on (vin, seq), so a
    message that arrives twice is harmless; one that never arrives is not.

Last Will
    The CONNECT carries a Will: ``{"state": "offline"}`` retained, QoS 1, on
    ``v1/vehicles/{vin}/status``. If the unit vanishes without saying goodbye (power cut,
    crash, coverage loss long enough for the keepalive to expire) the broker publishes it, so
    the retained status never claims "online" for a unit that is gone. After every
    successful connect the unit publishes ``{"state": "online", "ts": ...}`` retained, QoS 1,
    which replaces the Will's message. On a clean stop it publishes ``offline`` (with ``ts``)
    itself and disconnects normally (reason code 0, so the broker discards the Will).

    Cancelling :meth:`SimulatedUnit.run` is treated as a power cut: the unit disconnects with
    reason code 0x04 (*Disconnect with Will Message*, MQTT 5 section 3.14.2.1), which makes the
    broker publish the Will exactly as if the TCP connection had died, but without leaving a
    half-open socket behind in the process (an asyncio transport must be closed, and the
    broker would otherwise only notice after 1.5 keepalives).

Store-and-forward
    Samples are taken every :attr:`UnitSettings.report_interval_s` whether or not the unit
    can send them, because that is what the car does: a tunnel does not stop the clock.
    While the unit is disconnected, or while :meth:`SimulatedUnit.force_offline` simulates a
    coverage gap, samples go into a bounded in-memory buffer; beyond
    :attr:`UnitSettings.buffer_limit` the *oldest* are dropped (and counted), since the
    newest state of a vehicle is worth the most. When the link is back (reconnect, or
    :meth:`SimulatedUnit.restore`), the buffer is uploaded first, oldest first, as batch
    messages of at most :attr:`UnitSettings.batch_max_samples` samples (``encode_batch``),
    each sample with its original ``seq`` and ``ts``; only then do live single-sample
    messages resume. A live sample never overtakes a buffered one: as long as anything is
    buffered, new samples join the end of the buffer.

    Vehicle events (ignition, trouble codes) are held back the same way, in their own bounded
    buffer, and are sent one message each after the samples.

In-flight window
    At most :attr:`UnitSettings.max_inflight` QoS 1 telemetry messages are unacknowledged at
    a time. A broker announces how many it accepts (Receive Maximum; Mosquitto's default is
    20) and gmqtt fails hard when its packet ids run out, so uploading a long buffer must be
    paced by PUBACKs. A slow broker therefore makes samples queue up in the buffer and leave
    as batches, exactly like a gap.

Timing
    Reports are scheduled on the event loop's monotonic clock. Each report advances the
    vehicle by the time that really elapsed since the previous one (``vehicle.step``), then
    stamps the sample with ``vehicle.sim_time_ms``; a late report is not followed by a burst
    of catch-up reports. Status messages carry ``clock_ms()`` (the wall clock by default).

Remote commands
    After every connect the unit subscribes (QoS 1) to its command topic,
    ``v1/vehicles/{vin}/commands`` (``schemas.commands``); with the persistent session the
    broker also queues commands that come while the unit is away, and drops those whose MQTT 5
    message expiry passes first. For each command message the unit does what the contract
    asks of firmware:

    1. decode it (:func:`~schemas.commands.decode_command`); a message that is not a command
       at all is logged, counted (``commands_ignored``) and otherwise ignored, and a repeated
       command id (a QoS 1 redelivery) is counted and not run twice;
    2. answer on the MQTT 5 response topic of the command with its correlation data (falling
       back to ``v1/vehicles/{vin}/commands/result`` and the command id; a response topic
       that is another vehicle's result topic is replaced by the unit's own, because a
       result always carries the unit's VIN);
    3. bring the vehicle up to the present and apply :func:`~schemas.commands.unit_decision`
       with the unit's clock and ``vehicle.is_moving``: wrong VIN, expired, unsupported or bad
       parameters, unsafe while moving are answered ``rejected`` and change nothing; with
       :attr:`UnitSettings.gateway_public_key` also a missing or bad signature
       (``bad_signature``) and a counter at or below the last authentic, current command's
       (``replayed``; the counter is kept in memory);
    4. otherwise answer ``accepted``, wait :attr:`UnitSettings.command_delay_s` (a slow
       actuator), carry the command out on the vehicle and answer ``succeeded``, or
       ``failed`` with the reason when the vehicle refuses
       (:class:`~device_sim.vehicle.CommandRefused`, e.g. charging while being driven).
       ``locate`` and ``request_diagnostics`` send a fresh telemetry sample at once;
       ``set_reporting_interval`` changes :attr:`SimulatedUnit.report_interval_s`.

    Commands run one at a time, in the order they arrive. A unit in a coverage gap
    (:meth:`SimulatedUnit.force_offline`, or disconnected) gets to its commands when the link
    is back, and its answers wait in a buffer until they can be sent; so a command that
    expired meanwhile is rejected, never run. A unit with
    :attr:`UnitSettings.answers_commands` off receives commands (and counts them) but neither
    answers nor runs them, which is what a gateway sees of a hung command handler.

Send-on-change
    With :attr:`UnitSettings.send_on_change` a report carries only what changed, as
    bandwidth-conscious firmware does (:class:`ChangeFilter`): a signal goes out when its
    value changed since it was last sent and that was at least
    :attr:`UnitSettings.min_signal_interval_s` ago (speed and position count as changed only
    beyond a small threshold), and every :attr:`UnitSettings.heartbeat_full_s` the full
    snapshot goes out. A report with nothing to send publishes nothing and uses no ``seq``.
    Off by default: then every report is a full snapshot.

Identity and TLS
    A unit logs in with :attr:`UnitSettings.username` and :attr:`UnitSettings.password` (at
    the gateway's broker: user name = VIN, a password per vehicle from provisioning). With
    :attr:`UnitSettings.tls_ca_file` it connects over TLS and trusts only that CA, as
    firmware that was provisioned with its broker's CA does (never the system's store); with
    :attr:`UnitSettings.tls_cert_file` it also presents a client certificate (CN = VIN), which
    a broker with ``use_identity_as_username`` takes as the user name. A broker certificate
    that does not verify, or a handshake the broker ends with a TLS alert (a client
    certificate it does not accept), is a refusal like a bad password
    (:class:`UnitConnectError`): retrying cannot fix it.

Taken over
    The broker allows one connection per client id: a second client that connects with the
    unit's client id (its VIN), say a second simulator started with the same credentials,
    takes the session over and the broker closes the unit's connection. Reconnecting would
    only take it back and start a fight that neither side wins, so the unit gives up with
    :class:`UnitTakenOver` instead: at once when the broker says why (MQTT 5 DISCONNECT
    reason 0x8E *Session taken over*, Mosquitto 2.0.15 and later), and after
    :data:`_BROKER_CLOSES_ARE_A_TAKEOVER` connections in a row that the broker closed soon
    after accepting them when it does not (Mosquitto 2.0.11 just closes the socket). A
    broker that restarts does not look like that: the reconnect fails while it is down,
    which resets the count, and a connection that lived long is not counted.

Faults
    On every live report (sent at once, not buffered) the unit asks its
    :class:`~device_sim.faults.FaultInjector` (rates: :attr:`UnitSettings.faults`, none by
    default) what the report becomes: the payloads it publishes as they are on the telemetry
    topic, QoS 1, through the in-flight window (malformed JSON, wrong types, out-of-range
    values, unknown signals, another VIN, a duplicate seq, a skewed clock, a burst of extra
    samples), and for ``abrupt_disconnect`` closing the TCP connection without DISCONNECT so
    that the broker publishes the Will; the unit then reconnects with its usual backoff.
    Samples uploaded from the buffer and reports a command asked for are never faulty.
    ``UnitStats.faults`` counts the faults injected per kind.

Counters (:meth:`SimulatedUnit.stats`) count what happened: samples taken, published
(handed to the broker, live or in batches), acknowledged (PUBACKs, counted through the QoS
store gmqtt accepts as ``persistent_storage``), buffered, dropped and still pending; commands
received, ignored, accepted, rejected, succeeded and failed.

Imports: the standard library, gmqtt, ``schemas`` and ``device_sim`` only; never ``gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from device_sim.faults import FaultInjector, FaultRates, Planned
from device_sim.misbehaviour import Routine
from device_sim.vehicle import CommandRefused, SimulatedVehicle
from schemas.commands import (
    CommandMessage,
    CommandResult,
    CommandType,
    InvalidCommand,
    ParamValue,
    ResultReason,
    ResultStatus,
    command_result_topic,
    command_topic,
    decode_command,
    encode_command_result,
    parse_command_result_topic,
    unit_decision,
)
from schemas.payloads import (
    DEFAULT_LIMITS,
    Event,
    Rejection,
    Sample,
    SignalValue,
    Status,
    StatusState,
    encode_batch,
    encode_event,
    encode_sample,
    encode_status,
)
from schemas.signing import load_public_key_pem
from schemas.topics import Channel, InvalidTopicError, topic_for

__all__ = [
    "CHANGE_THRESHOLDS",
    "DEFAULT_BUFFER_LIMIT",
    "DISCONNECT_WITH_WILL",
    "LOCATION_THRESHOLD_M",
    "ChangeFilter",
    "SimulatedUnit",
    "UnitConnectError",
    "UnitSettings",
    "UnitStats",
    "UnitTakenOver",
    "wall_clock_ms",
]

log = logging.getLogger(__name__)

#: MQTT 5 DISCONNECT reason code "Disconnect with Will Message" (section 3.14.2.1)
DISCONNECT_WITH_WILL: Final = 0x04

#: CONNACK refusals worth retrying: the broker is there but cannot take us right now
#: (3: server unavailable in MQTT 3.1.1; MQTT 5: 136 server unavailable, 137 server busy,
#: 151 quota exceeded, 159 connection rate exceeded). Anything else (bad credentials, not
#: authorised, banned, ...) will not fix itself by retrying.
_RETRYABLE_CONNACK: Final = frozenset({3, 136, 137, 151, 159})

#: samples a unit keeps while offline unless told otherwise (almost 3 hours at 1 Hz)
DEFAULT_BUFFER_LIMIT: Final = 10_000

#: after the connection closes during a connect attempt, how long to wait for a CONNACK
#: (a refusal) that may still be on its way through gmqtt
_CONNACK_GRACE_S: Final = 0.5
#: that many such closes in a row on TLS with a client certificate are a refusal (exit 1)
_TLS_CLOSES_ARE_A_REFUSAL: Final = 3

#: a connection that lived at least this long resets the reconnect backoff
_STABLE_CONNECTION_S: Final = 30.0
#: MQTT 5 DISCONNECT reason code "Session taken over" (section 3.14.2.1)
SESSION_TAKEN_OVER: Final = 0x8E
#: that many connections in a row, each closed by the broker within _STABLE_CONNECTION_S
#: of its CONNACK and each followed by a successful reconnect, are a takeover: another
#: client keeps connecting with this client id (a broker that says so sends 0x8E instead)
_BROKER_CLOSES_ARE_A_TAKEOVER: Final = 3

#: command ids remembered to recognise a redelivered command
_SEEN_COMMAND_IDS: Final = 1024
#: refusals after which a command's counter is not spent: it is not authentic, not for this
#: vehicle, too late or already spent
_UNTRUSTED: Final = frozenset(
    {
        ResultReason.BAD_SIGNATURE,
        ResultReason.WRONG_VIN,
        ResultReason.EXPIRED,
        ResultReason.REPLAYED,
    }
)
#: results kept while the unit cannot send (the oldest are dropped beyond it)
_RESULT_BUFFER_LIMIT: Final = 1000
#: longest ``detail`` in a result (the contract's limit)
_DETAIL_MAX: Final = 512

_LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"
_LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"
#: send-on-change: the position counts as changed when it moved more than this, metres
LOCATION_THRESHOLD_M: Final = 5.0
#: send-on-change: the smallest change worth sending, per signal (others: any change)
CHANGE_THRESHOLDS: Final[Mapping[str, float]] = {"Vehicle.Speed": 1.0}
_M_PER_DEG: Final = 111_320.0


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), the clock of the device contract."""
    return time.time_ns() // 1_000_000


class UnitConnectError(RuntimeError):
    """The broker refused the unit for a reason retrying cannot fix (bad credentials, not
    authorised, banned, ...). Raised out of :meth:`SimulatedUnit.run`."""


class UnitTakenOver(UnitConnectError):
    """Another client connected with the unit's client id (its VIN) and the broker closed
    the unit's connection for it (see "Taken over" in the module docstring): another
    process is running this vehicle. Raised out of :meth:`SimulatedUnit.run`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitSettings:
    """How a unit connects and reports; shared by all units of a fleet, hence immutable.

    Keyword-only: most fields are numbers whose order nobody remembers.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    #: left out of ``repr``: settings may be logged, a password must never be
    password: str | None = field(default=None, repr=False)
    #: PEM file of the CA the broker's certificate must chain to; set: connect over TLS
    #: (``mqtts``), trusting only this CA; None: plain TCP
    tls_ca_file: Path | None = None
    #: PEM client certificate presented to the broker (TLS client authentication)
    tls_cert_file: Path | None = None
    #: its private key; None: the key is in ``tls_cert_file``
    tls_key_file: Path | None = None
    #: MQTT keepalive, seconds: how long the broker waits before it declares the unit gone
    #: (after 1.5 times this) and publishes its Will
    keepalive_s: int = 30
    #: seconds between two samples
    report_interval_s: float = 1.0
    #: re-publish the retained ``online`` status (with a fresh ``ts``) this often, seconds;
    #: None: only after each connect. Off by default because the gateway records every
    #: status message as a status change.
    heartbeat_s: float | None = None
    #: the contract's heartbeat (docs/device-contract.md, section 7): when nothing at all has
    #: gone out for this long (a long reporting interval, send-on-change with nothing new),
    #: re-publish the retained ``online`` status, so the gateway never takes a quiet unit
    #: for a silent (gone) one. The contract requires at most 300 s.
    max_quiet_s: float = 300.0
    #: samples (and, separately, events) kept while offline; the oldest are dropped beyond it
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    #: samples per batch message when uploading the buffer (the gateway accepts up to 1000)
    batch_max_samples: int = 100
    #: how long the broker keeps the session after a disconnect, seconds
    session_expiry_s: int = 3600
    #: MQTT 5 Will Delay Interval, seconds: 0 publishes the Will at once; a few seconds hide
    #: short reconnects from the status topic
    will_delay_s: int = 0
    #: unacknowledged telemetry messages at most; keep it below the broker's Receive Maximum
    max_inflight: int = 10
    #: first wait before a reconnect, seconds; doubles (with jitter) up to reconnect_max_s
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: TCP connect plus CONNACK, seconds
    connect_timeout_s: float = 10.0
    #: on a clean stop, how long to wait for outstanding PUBACKs before disconnecting
    drain_timeout_s: float = 5.0
    #: seconds between ``accepted`` and carrying out a command (and answering ``succeeded``),
    #: to model slow actuators; 0: at once
    command_delay_s: float = 0.0
    #: False: the unit receives commands and counts them but never answers nor runs them (to
    #: exercise the gateway's timeouts)
    answers_commands: bool = True
    #: probability per report of each fault (:mod:`device_sim.faults`); none by default
    faults: FaultRates = FaultRates()  # noqa: RUF009  # frozen, so sharing one is safe
    #: True: a report carries only the signals that changed (see :class:`ChangeFilter`);
    #: False: every report is a full snapshot
    send_on_change: bool = False
    #: send-on-change: a signal is sent at most this often, seconds
    min_signal_interval_s: float = 1.0
    #: send-on-change: a full snapshot this often, seconds
    heartbeat_full_s: float = 30.0
    #: the gateway's Ed25519 public key (PEM), provisioned with the unit's credentials: when
    #: set, every command must be signed with it and carry a counter above the last one taken
    #: (``bad_signature`` / ``replayed`` otherwise); None: commands are not checked
    gateway_public_key: bytes | None = None
    #: True: the vehicle runs the demo's round of misbehaviour once an hour
    #: (:mod:`device_sim.misbehaviour`), so that every fleet rule fires
    misbehave: bool = False

    def __post_init__(self) -> None:
        self._check_connection()
        self._check_timing()
        self._check_limits()
        self._check_behaviour()

    def _check_connection(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ValueError(f"host must be a non-empty name or address, got {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError(
                "a client certificate (tls_cert_file) needs TLS: set tls_ca_file to the CA "
                "of the broker's certificate"
            )
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file (the certificate it belongs to)")
        if not 0 <= self.keepalive_s <= 65535:
            raise ValueError(f"keepalive_s must be 0..65535, got {self.keepalive_s}")

    def _check_timing(self) -> None:
        for name in (
            "report_interval_s",
            "reconnect_min_s",
            "reconnect_max_s",
            "connect_timeout_s",
            "drain_timeout_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if not (math.isfinite(self.max_quiet_s) and 0 < self.max_quiet_s <= 300):
            raise ValueError(f"max_quiet_s must be > 0 and <= 300, got {self.max_quiet_s}")
        if self.heartbeat_s is not None and not (
            math.isfinite(self.heartbeat_s) and self.heartbeat_s > 0
        ):
            raise ValueError(f"heartbeat_s must be None or > 0, got {self.heartbeat_s}")

    def _check_limits(self) -> None:
        if self.buffer_limit < 0:
            raise ValueError(
                f"buffer_limit must be >= 0 (0: no buffering), got {self.buffer_limit}"
            )
        limit = DEFAULT_LIMITS.max_batch_samples
        if not 1 <= self.batch_max_samples <= limit:
            raise ValueError(f"batch_max_samples must be 1..{limit}, got {self.batch_max_samples}")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise ValueError(f"session_expiry_s must be 0..{0xFFFFFFFF}")
        if not 0 <= self.will_delay_s <= 0xFFFFFFFF:
            raise ValueError(f"will_delay_s must be 0..{0xFFFFFFFF}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")

    def _check_behaviour(self) -> None:
        if not (math.isfinite(self.command_delay_s) and self.command_delay_s >= 0):
            raise ValueError(
                f"command_delay_s must be a finite number >= 0, got {self.command_delay_s}"
            )
        if not isinstance(self.faults, FaultRates):
            raise ValueError(f"faults must be FaultRates, got {type(self.faults).__name__}")
        if not (math.isfinite(self.min_signal_interval_s) and self.min_signal_interval_s >= 0):
            raise ValueError(
                "min_signal_interval_s must be a finite number >= 0, "
                f"got {self.min_signal_interval_s}"
            )
        if not (math.isfinite(self.heartbeat_full_s) and self.heartbeat_full_s > 0):
            raise ValueError(
                f"heartbeat_full_s must be a finite number > 0, got {self.heartbeat_full_s}"
            )
        if self.gateway_public_key is not None:
            load_public_key_pem(self.gateway_public_key)  # ValueError if it is not one


@dataclass(frozen=True, slots=True)
class UnitStats:
    """A snapshot of one unit's counters (samples unless the name says otherwise)."""

    vin: str
    #: connected to the broker right now (a forced coverage gap does not change this)
    connected: bool
    #: a coverage gap forced by :meth:`SimulatedUnit.force_offline` is in effect
    forced_offline: bool
    #: samples taken
    samples: int
    #: samples handed to the broker, live or in batches
    published: int
    #: batch messages sent while uploading the buffer
    batches: int
    #: PUBLISH packets sent (samples, batches, events, status)
    messages: int
    #: PUBACKs received (packets, not samples)
    acked: int
    #: samples that went into the store-and-forward buffer
    buffered: int
    #: samples dropped because the buffer was full (the oldest go first)
    dropped: int
    #: samples in the buffer now (lost if the unit stops before it can upload them)
    pending: int
    #: sent but unacknowledged messages thrown away because the broker had lost the session
    #: (it expired, or the broker restarted without persistence)
    lost_in_flight: int
    #: events published, and dropped because their buffer was full
    events: int
    events_dropped: int
    #: successful connects (the first one included)
    connects: int
    #: the seq the next sample will get
    next_seq: int
    #: seconds between two samples now (``set_reporting_interval`` changes it)
    report_interval_s: float
    #: messages received on the command topic (all of them, even the unreadable ones)
    commands_received: int
    #: not a command at all (not JSON, wrong envelope, ...): nothing to answer
    commands_ignored: int
    #: a command id seen before (a QoS 1 redelivery): not run twice
    commands_duplicate: int
    #: answered ``rejected`` (wrong VIN, expired, unsupported, bad parameters, moving)
    commands_rejected: int
    #: answered ``accepted``, then ``succeeded`` or ``failed``
    commands_accepted: int
    commands_succeeded: int
    commands_failed: int
    #: commands with a final answer (rejected, succeeded or failed); a silent unit has none
    commands_answered: int
    #: faults injected, by :class:`~device_sim.faults.FaultKind` value (only those that were)
    faults: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _InflightStore:
    """gmqtt's store of unacknowledged QoS 1/2 packets (``Client(persistent_storage=...)``).

    Same contract as ``gmqtt.storage.PersistentStorage`` (pinned gmqtt 0.8.0): gmqtt pushes
    every QoS > 0 PUBLISH it sends, removes it when the PUBACK comes, replays what is left
    after a reconnect into a present session and clears it when the session is gone. gmqtt
    has no PUBACK callback, so counting removals here is how the unit counts PUBACKs and
    knows how much of its in-flight window is in use.
    """

    def __init__(self, on_ack: Callable[[], None]) -> None:
        self._messages: OrderedDict[int, bytes] = OrderedDict()
        self._empty_waiters: set[asyncio.Future[None]] = set()
        self._on_ack = on_ack
        #: packets thrown away because the broker had no session for them any more
        self.discarded = 0

    # No __len__: gmqtt takes ``persistent_storage or PersistentStorage()``, and an empty
    # store with __len__ would be falsy and silently replaced.
    @property
    def size(self) -> int:
        return len(self._messages)

    def _notify_empty(self) -> None:
        while self._empty_waiters:
            waiter = self._empty_waiters.pop()
            if not waiter.done():
                waiter.set_result(None)

    def push_message(self, mid: int, raw_package: bytes) -> None:
        self._messages[mid] = raw_package

    def remove_message_by_mid(self, mid: int) -> None:
        if self._messages.pop(mid, None) is not None:
            self._on_ack()
            if not self._messages:
                self._notify_empty()

    @property
    def is_empty(self) -> bool:
        return not self._messages

    async def wait_empty(self) -> None:
        if not self._messages:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._empty_waiters.add(waiter)
        try:
            await waiter
        finally:
            self._empty_waiters.discard(waiter)

    def clear(self) -> None:
        if self._messages:
            self.discarded += len(self._messages)
            log.warning(
                "the broker had no session; %d unacknowledged message(s) are lost",
                len(self._messages),
            )
        self._messages.clear()
        self._notify_empty()

    def get_all(self) -> list[tuple[int, bytes]]:
        return list(self._messages.items())


@dataclass(frozen=True, slots=True)
class _Incoming:
    """A decoded command and where to answer it."""

    command: CommandMessage | InvalidCommand
    response_topic: str
    correlation_data: bytes


@dataclass(frozen=True, slots=True)
class _Answer:
    """A result waiting for the link."""

    topic: str
    payload: bytes
    correlation_data: bytes


def _first(properties: Any, name: str) -> object:
    """The first value of an MQTT 5 property as gmqtt passes it (a dict of lists)."""
    if not isinstance(properties, dict):
        return None
    values = properties.get(name)
    if isinstance(values, list | tuple):
        return values[0] if values else None
    return values


@lru_cache(maxsize=8)
def _shared_tls_context(ca: Path) -> ssl.SSLContext:
    """The context of units without a client certificate: one per CA for the whole fleet,
    instead of parsing the CA ten thousand times."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))


def _tls_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and checks the broker's host name, with the
    client certificate if given (then the unit's own: certificates differ per unit)."""
    if cert is None:
        return _shared_tls_context(ca)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), None if key is None else str(key))
    return context


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    """Mark a connect attempt's outcome as seen: one given up on (cancelled, or ended after
    the unit stopped waiting) must not be reported as an unretrieved exception."""
    if not task.cancelled():
        task.exception()


def _closed_reason(client: Any) -> BaseException | None:
    """Why gmqtt's last connection closed, e.g. the TLS alert the broker sent; None if it
    closed normally or the reason cannot be found. gmqtt keeps it only where asyncio's
    stream protocol puts it (the protocol's stream reader), so this reads its attributes
    defensively: a gmqtt without them gives None, and the unit simply retries."""
    protocol = getattr(getattr(client, "_connection", None), "_protocol", None)
    reader = getattr(protocol, "_hard_reader", None)
    exception = getattr(reader, "exception", None)
    found = exception() if callable(exception) else None
    return found if isinstance(found, BaseException) else None


def _is_tls_alert(exc: ssl.SSLError) -> bool:
    """The broker ended the handshake with a TLS alert (``..._ALERT_...``): it refused what
    the unit offered, e.g. its client certificate; a dropped link looks different (EOF,
    reset)."""
    return "ALERT" in (exc.reason or "").upper()


def _is_topic_name(topic: str) -> bool:
    """A topic one may publish to: non-empty, no wildcards, no NUL, at most 65535 bytes."""
    return (
        bool(topic)
        and not any(ch in topic for ch in "+#\0")
        and len(topic.encode("utf-8", errors="replace")) <= 0xFFFF
    )


def _number(params: Mapping[str, ParamValue], name: str) -> float:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandRefused(ResultReason.BAD_PARAMS, f"{name} must be a number, got {value!r}")
    return float(value)


def _integer(params: Mapping[str, ParamValue], name: str) -> int:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandRefused(ResultReason.BAD_PARAMS, f"{name} must be an integer, got {value!r}")
    return value


class _UnitClient(gmqtt.Client):  # type: ignore[misc]  # gmqtt is untyped
    """A gmqtt client that leaves reconnecting to :class:`SimulatedUnit`.

    gmqtt's own automatic reconnect sleeps a fixed delay and then connects even if
    ``disconnect()`` was called meanwhile, which would leave a stray connection (and a
    second session owner) behind a stopped unit. The unit's loop reconnects instead, with
    backoff, by calling ``connect()`` again on this same client, so the QoS store (and thus
    the replay of unacknowledged messages) carries over.
    """

    async def reconnect(self, delay: bool = False) -> None:
        return None


class ChangeFilter:
    """Send-on-change, as firmware does it (pure: the caller passes the time).

    :meth:`select` returns the signals of a report worth sending: those never sent, and those
    whose value changed since they were last sent, provided that was at least
    ``min_interval_s`` ago. Speed counts as changed when it moved by more than
    :data:`CHANGE_THRESHOLDS` (1 km/h), the position (latitude and longitude, always sent
    together) when it moved more than :data:`LOCATION_THRESHOLD_M`; any other signal on any
    change. Every ``heartbeat_full_s`` (and on the first report, and when asked with
    ``full=True``) the whole snapshot goes out. What is selected counts as sent.
    """

    def __init__(self, min_interval_s: float, heartbeat_full_s: float) -> None:
        self._min_interval_s = min_interval_s
        self._heartbeat_full_s = heartbeat_full_s
        self._last_full = -math.inf
        self._sent: dict[str, tuple[SignalValue, float]] = {}

    def select(
        self, signals: Mapping[str, SignalValue], now: float, *, full: bool = False
    ) -> dict[str, SignalValue]:
        if full or now - self._last_full >= self._heartbeat_full_s:
            self._last_full = now
            out = dict(signals)
        else:
            out = {}
            moved = self._moved(signals)
            for path, value in signals.items():
                last = self._sent.get(path)
                if last is None:
                    out[path] = value
                    continue
                old, at = last
                if now - at < self._min_interval_s:
                    continue
                if path in (_LATITUDE, _LONGITUDE):
                    changed = moved
                elif path in CHANGE_THRESHOLDS:
                    changed = _differs_by(value, old, CHANGE_THRESHOLDS[path])
                else:
                    changed = value != old
                if changed:
                    out[path] = value
            if _LATITUDE in out or _LONGITUDE in out:  # a position is both coordinates
                for path in (_LATITUDE, _LONGITUDE):
                    if path in signals:
                        out[path] = signals[path]
        for path, value in out.items():
            self._sent[path] = (value, now)
        return out

    def _moved(self, signals: Mapping[str, SignalValue]) -> bool:
        old_lat, old_lon = self._sent.get(_LATITUDE), self._sent.get(_LONGITUDE)
        if old_lat is None or old_lon is None:
            return True
        lat, lon = signals.get(_LATITUDE), signals.get(_LONGITUDE)
        was_lat, was_lon = old_lat[0], old_lon[0]
        if not (
            isinstance(lat, float | int)
            and isinstance(lon, float | int)
            and isinstance(was_lat, float | int)
            and isinstance(was_lon, float | int)
        ):
            return (lat, lon) != (was_lat, was_lon)
        north = (lat - was_lat) * _M_PER_DEG
        east = (lon - was_lon) * _M_PER_DEG * math.cos(math.radians(lat))
        return math.hypot(north, east) > LOCATION_THRESHOLD_M


def _differs_by(value: SignalValue, old: SignalValue, threshold: float) -> bool:
    if isinstance(value, int | float) and isinstance(old, int | float):
        return abs(float(value) - float(old)) > threshold
    return value != old


#: commands without parameters that the vehicle carries out itself (SimulatedUnit._apply)
_PLAIN_ACTIONS: Final[Mapping[CommandType, Callable[[SimulatedVehicle], None]]] = {
    CommandType.LOCK: SimulatedVehicle.lock,
    CommandType.UNLOCK: SimulatedVehicle.unlock,
    CommandType.HORN_AND_LIGHTS: SimulatedVehicle.horn_and_lights,
    CommandType.CLIMATE_STOP: SimulatedVehicle.climate_stop,
    CommandType.CHARGING_START: SimulatedVehicle.charging_start,
    CommandType.CHARGING_STOP: SimulatedVehicle.charging_stop,
    CommandType.CLOSE_WINDOWS: SimulatedVehicle.close_windows,
    CommandType.IMMOBILIZE: SimulatedVehicle.immobilize,
    CommandType.RELEASE_IMMOBILIZER: SimulatedVehicle.release_immobilizer,
}


class SimulatedUnit:
    """The in-car unit of one vehicle; see the module docstring for its behaviour.

    ``vehicle`` is owned by the unit from now on (only :meth:`run` steps it). ``first_seq``
    is the ``seq`` of the first sample; a unit that restarts must start above every seq it
    used before (for instance from the start time in ms), because the gateway drops a
    repeated (vin, seq) as a duplicate. ``clock_ms`` stamps status messages. ``on_sample``,
    if, given, sees every sample as it is taken (before it is sent or buffered, and before a
    fault mangles it). ``fault_injector`` decides the faults of live reports; by default one
    with :attr:`UnitSettings.faults`, seeded from the VIN (:attr:`faults` exposes it, e.g. to
    :meth:`~device_sim.faults.FaultInjector.force` a fault).

    A unit runs once: :meth:`run` until ``stop`` is set.
    """

    def __init__(
        self,
        vehicle: SimulatedVehicle,
        settings: UnitSettings,
        *,
        first_seq: int = 0,
        clock_ms: Callable[[], int] = wall_clock_ms,
        on_sample: Callable[[Sample], None] | None = None,
        fault_injector: FaultInjector | None = None,
    ) -> None:
        if first_seq < 0:
            raise ValueError(f"first_seq must be >= 0, got {first_seq}")
        self._vehicle = vehicle
        self._settings = settings
        self._routine = Routine() if settings.misbehave else None
        self._clock_ms = clock_ms
        self._on_sample = on_sample
        self._vin = vehicle.vin
        self._telemetry_topic = topic_for(self._vin, Channel.TELEMETRY)
        self._events_topic = topic_for(self._vin, Channel.EVENTS)
        self._status_topic = topic_for(self._vin, Channel.STATUS)
        self._command_topic = command_topic(self._vin)
        self._result_topic = command_result_topic(self._vin)
        self._jitter = random.Random(self._vin)  # backoff jitter; never the vehicle's rng
        self._faults = fault_injector or FaultInjector(
            settings.faults, random.Random(f"{self._vin}/faults")
        )
        self._fault_counts: dict[str, int] = {}
        #: encoded telemetry messages (a report, mangled or not, and its burst) waiting for
        #: room in the in-flight window; they go before the buffer
        self._outgoing: deque[bytes] = deque()
        self._change_filter = ChangeFilter(
            settings.min_signal_interval_s, settings.heartbeat_full_s
        )
        self._init_link_state(first_seq)
        self._init_commands()
        self._init_counters()

    def _init_link_state(self, first_seq: int) -> None:
        """Reporting, buffering and the connection: nothing sent, not connected."""
        self._next_seq = first_seq
        #: loop time until which the fault 'silent' keeps the unit from reporting
        self._silent_until = 0.0
        self._buffer: deque[Sample] = deque()
        self._event_buffer: deque[Event] = deque()
        self._store = _InflightStore(self._on_ack)
        self._client: Any = None
        self._ssl: ssl.SSLContext | None = None
        self._connected = False
        self._forced_offline = False
        self._started = False
        #: set whenever something the report loop waits for happens: stop, (re)connect,
        #: disconnect, restore, a PUBACK (room in the window)
        self._wake = asyncio.Event()
        #: set by gmqtt's on_disconnect; the connection loop waits on it
        self._lost = asyncio.Event()
        #: the last connection attempt ended with the connection closed before a CONNACK
        self._closed_before_connack = False
        #: the unit itself closed the current connection (clean stop, fault, power cut)
        self._closing = False
        #: the reason code of the broker's DISCONNECT that ended the last connection, if any
        self._broker_reason: int | None = None
        self._last_status_at = -math.inf
        #: loop time of the last message this unit published (the contract's heartbeat)
        self._last_publish_at = -math.inf
        #: loop time of the last vehicle step, and of the next scheduled report
        self._last_step: float | None = None
        self._next_report = math.inf
        self._report_interval_s = self._settings.report_interval_s

    def _init_commands(self) -> None:
        """Remote commands: none received, none answered."""
        settings = self._settings
        self._subscription = gmqtt.Subscription(self._command_topic, qos=1)
        self._subscribed = False
        self._commands: asyncio.Queue[_Incoming] = asyncio.Queue()
        #: set while results can be sent (connected and not in a forced gap)
        self._link = asyncio.Event()
        self._answers: deque[_Answer] = deque()
        self._seen_ids: OrderedDict[str, None] = OrderedDict()
        self._public_key = (
            load_public_key_pem(settings.gateway_public_key)
            if settings.gateway_public_key is not None
            else None
        )
        #: the counter of the last authentic, current command (in memory only: after a
        #: restart the expiry of the commands still bounds a replay)
        self._last_counter: int | None = None

    def _init_counters(self) -> None:
        self._samples = 0
        self._published = 0
        self._batches = 0
        self._messages = 0
        self._acked = 0
        self._buffered = 0
        self._dropped = 0
        self._events = 0
        self._events_dropped = 0
        self._connects = 0
        self._commands_received = 0
        self._commands_ignored = 0
        self._commands_duplicate = 0
        self._commands_rejected = 0
        self._commands_accepted = 0
        self._commands_succeeded = 0
        self._commands_failed = 0

    # --- public -------------------------------------------------------------------------------

    @property
    def vin(self) -> str:
        return self._vin

    @property
    def vehicle(self) -> SimulatedVehicle:
        return self._vehicle

    @property
    def next_seq(self) -> int:
        """The ``seq`` the unit's next sample gets (every lower one may be used)."""
        return self._next_seq

    @property
    def settings(self) -> UnitSettings:
        return self._settings

    @property
    def connected(self) -> bool:
        """Connected to the broker (CONNACK received, connection not lost)."""
        return self._connected

    @property
    def subscribed(self) -> bool:
        """The broker acknowledged the command subscription on the current connection."""
        return self._subscribed

    @property
    def report_interval_s(self) -> float:
        """Seconds between two samples now (``set_reporting_interval`` changes it)."""
        return self._report_interval_s

    @property
    def faults(self) -> FaultInjector:
        """The unit's fault injector (asked on every live report)."""
        return self._faults

    def force_offline(self) -> None:
        """Simulate a coverage gap: keep taking samples but hold them in the buffer.

        Only the data path is cut: the MQTT connection stays up (so the broker publishes no
        Will), which keeps the gap exactly as long as the caller wants.
        """
        self._forced_offline = True
        self._update_link()
        self._wake.set()

    def restore(self) -> None:
        """End a gap started by :meth:`force_offline`: upload the buffer, then go live."""
        self._forced_offline = False
        self._update_link()
        self._wake.set()

    def stats(self) -> UnitStats:
        return UnitStats(
            vin=self._vin,
            connected=self._connected,
            forced_offline=self._forced_offline,
            samples=self._samples,
            published=self._published,
            batches=self._batches,
            messages=self._messages,
            acked=self._acked,
            buffered=self._buffered,
            dropped=self._dropped,
            pending=len(self._buffer),
            lost_in_flight=self._store.discarded,
            events=self._events,
            events_dropped=self._events_dropped,
            connects=self._connects,
            next_seq=self._next_seq,
            report_interval_s=self._report_interval_s,
            commands_received=self._commands_received,
            commands_ignored=self._commands_ignored,
            commands_duplicate=self._commands_duplicate,
            commands_rejected=self._commands_rejected,
            commands_accepted=self._commands_accepted,
            commands_succeeded=self._commands_succeeded,
            commands_failed=self._commands_failed,
            commands_answered=(
                self._commands_rejected + self._commands_succeeded + self._commands_failed
            ),
            faults=dict(self._fault_counts),
        )

    @property
    def tls(self) -> bool:
        """The unit connects over TLS (``mqtts``)."""
        return self._settings.tls_ca_file is not None

    async def run(self, stop: asyncio.Event) -> UnitStats:
        """Connect, report every ``report_interval_s`` until ``stop`` is set, stop cleanly.

        Connection failures are retried with backoff for as long as it runs (a unit waits
        for coverage; it does not give up), except refusals that retrying cannot fix, which
        raise :class:`UnitConnectError`. A clean stop uploads what it can, publishes the
        retained ``offline`` status and disconnects. Cancelling it is a power cut: the
        broker publishes the Will. Returns the final counters.
        """
        if self._started:
            raise RuntimeError(f"unit {self._vin} has already run; make a new SimulatedUnit")
        self._started = True
        self._ssl = self._tls_context()
        self._client = self._make_client()
        self._last_step = asyncio.get_running_loop().time()
        watcher = asyncio.create_task(self._wake_when(stop), name=f"{self._vin}-stop")
        keeper = asyncio.create_task(self._keep_connected(), name=f"{self._vin}-connection")
        keeper.add_done_callback(lambda _: self._wake.set())
        worker = asyncio.create_task(self._run_commands(), name=f"{self._vin}-commands")
        clean = False
        try:
            await self._report_until(stop, keeper)
            clean = True
        finally:
            for task in (watcher, keeper, worker):
                task.cancel()
            try:
                if clean:
                    await self._stop_cleanly()
            finally:
                # After a clean stop the connection is closed already and this does nothing.
                # Otherwise (an error, a cancellation, even one during the clean stop) the
                # unit vanishes as in a power cut and the broker publishes the Will. It runs
                # before anything else is awaited, and gmqtt closes the transport before its
                # first suspension, so a second cancellation cannot leave a socket open.
                await self._power_cut()
                await asyncio.gather(watcher, keeper, worker, return_exceptions=True)
        return self.stats()

    # --- gmqtt wiring -------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        """The unit's TLS context (None without TLS); built when the unit starts, not when
        the fleet is set up, so ten thousand units do not all load their keys up front."""
        s = self._settings
        if s.tls_ca_file is None:
            return None
        try:
            return _tls_context(s.tls_ca_file, s.tls_cert_file, s.tls_key_file)
        except (OSError, ssl.SSLError) as exc:  # missing, unreadable or not PEM
            files = ", ".join(
                str(p) for p in (s.tls_ca_file, s.tls_cert_file, s.tls_key_file) if p is not None
            )
            raise UnitConnectError(
                f"unit {self._vin} cannot load its TLS files ({files}): {exc}"
            ) from exc

    def _make_client(self) -> Any:
        s = self._settings
        will_properties: dict[str, int] = {}
        if s.will_delay_s:
            will_properties["will_delay_interval"] = s.will_delay_s
        will = gmqtt.Message(
            self._status_topic,
            encode_status(Status(StatusState.OFFLINE)),
            qos=1,
            retain=True,
            **will_properties,
        )
        client = _UnitClient(
            self._vin,
            clean_session=False,
            will_message=will,
            persistent_storage=self._store,
            session_expiry_interval=s.session_expiry_s,
        )
        if getattr(client, "_persistent_storage", self._store) is not self._store:
            raise RuntimeError("gmqtt ignored persistent_storage=; install gmqtt==0.8.0")
        if s.username is not None:
            client.set_auth_credentials(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        self._connected = True
        self._connects += 1
        log.info("%s connected (session present: %s)", self._vin, bool(flags))
        self._publish_status(StatusState.ONLINE)
        # Subscribe after every connect: the session may be gone (expired, or a broker
        # without persistence). gmqtt keeps a list of subscriptions; add ours only once.
        self._subscribed = False
        if self._subscription in client.subscriptions:
            client.resubscribe(self._subscription)
        else:
            client.subscribe(self._subscription)
        self._update_link()
        self._wake.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        # gmqtt passes the DISCONNECT's variable header: a broker's starts with its reason
        # code; the one gmqtt makes up for a closed socket is empty
        if isinstance(packet, bytes | bytearray) and packet:
            self._broker_reason = packet[0]
        self._connected = False
        self._subscribed = False
        self._update_link()
        self._lost.set()
        self._wake.set()

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        granted = list(qos) if isinstance(qos, list | tuple) else [qos]
        if all(isinstance(code, int) and code < 0x80 for code in granted):
            self._subscribed = True
        else:
            log.error("%s: the broker refused the command subscription (%s)", self._vin, qos)

    def _update_link(self) -> None:
        if self._connected and not self._forced_offline:
            self._link.set()
        else:
            self._link.clear()

    def _on_ack(self) -> None:
        self._acked += 1
        self._wake.set()

    def _can_send_now(self) -> bool:
        """Connected, and gmqtt agrees (CONNACK received, transport not closing)."""
        return self._connected and self._client is not None and bool(self._client.is_connected)

    def _can_send(self) -> bool:
        return self._can_send_now() and not self._forced_offline

    def _window_open(self) -> bool:
        return self._store.size < self._settings.max_inflight

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)
        self._messages += 1
        self._last_publish_at = asyncio.get_running_loop().time()

    def _publish_status(self, state: StatusState) -> None:
        self._publish(
            self._status_topic, encode_status(Status(state, self._clock_ms())), retain=True
        )
        self._last_status_at = asyncio.get_running_loop().time()

    # --- connection ---------------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """Connect, wait for the connection to drop, reconnect; forever (until cancelled)."""
        s = self._settings
        loop = asyncio.get_running_loop()
        delay = s.reconnect_min_s
        failures = 0
        closed_after_handshake = 0
        closed_by_broker = 0
        while True:
            self._lost.clear()
            why = await self._connect_once()
            if why is not None:
                closed_by_broker = 0  # the broker is away or busy: not another client
            if why is not None and s.tls_cert_file is not None:
                closed_after_handshake = (
                    closed_after_handshake + 1 if self._closed_before_connack else 0
                )
                if closed_after_handshake >= _TLS_CLOSES_ARE_A_REFUSAL:
                    # With TLS 1.3 the broker checks the client certificate after the
                    # client's side of the handshake is done; its alert often arrives as a
                    # bare reset. A broker that closes every session before the CONNACK,
                    # time after time, does not accept the certificate.
                    raise UnitConnectError(
                        f"{s.host}:{s.port} closed the TLS session of unit {self._vin} right "
                        f"after the handshake {closed_after_handshake} times in a row: it does "
                        f"not accept the unit's client certificate ({s.tls_cert_file})"
                    )
            if why is None:
                failures = 0
                closed_after_handshake = 0
                since = loop.time()
                await self._lost.wait()
                lived = loop.time() - since
                closed_by_broker = self._check_taken_over(lived, closed_by_broker)
                await self._close_quietly()  # e.g. after a DISCONNECT from the broker
                if lived >= _STABLE_CONNECTION_S:
                    delay = s.reconnect_min_s
                why = (
                    f"the broker closed the connection after {lived:.1f} s"
                    if closed_by_broker
                    else "connection lost"
                )
            failures += 1
            wait = delay * self._jitter.uniform(0.8, 1.2)
            # the first failure in a row is news; the retries that follow are not
            log.log(
                logging.WARNING if failures == 1 else logging.INFO,
                "%s: no connection to %s://%s:%d (%s); buffering, retry %d in %.1f s",
                self._vin,
                "mqtts" if self.tls else "mqtt",
                s.host,
                s.port,
                why,
                failures,
                wait,
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, s.reconnect_max_s)

    def _check_taken_over(self, lived_s: float, closed_by_broker: int) -> int:
        """After the connection ended: raise :class:`UnitTakenOver` if another client took
        the session over; else return the new count of short connections in a row that the
        broker closed (0 when this one was closed by the unit or lived long)."""
        reason, self._broker_reason = self._broker_reason, None
        where = f"{'mqtts' if self.tls else 'mqtt'}://{self._settings.host}:{self._settings.port}"
        if reason == SESSION_TAKEN_OVER:
            raise UnitTakenOver(
                f"{where} closed the connection of unit {self._vin}: session taken over "
                "(MQTT reason 0x8E), another client connected with its client id"
            )
        if self._closing or lived_s >= _STABLE_CONNECTION_S:
            return 0
        closed_by_broker += 1
        if closed_by_broker >= _BROKER_CLOSES_ARE_A_TAKEOVER:
            raise UnitTakenOver(
                f"{where} closed the connection of unit {self._vin} {closed_by_broker} times "
                "in a row soon after accepting it, while reconnecting worked every time: "
                "another client keeps connecting with its client id"
            )
        return closed_by_broker

    async def _connect_once(self) -> str | None:
        """One connection attempt: None when connected, else why not (for the log).

        Raises :class:`UnitConnectError` for a refusal that retrying cannot fix.

        gmqtt's ``connect()`` waits for the CONNACK even when the connection is gone, so the
        attempt also ends when the unit sees the connection close: a broker that ends the
        TLS session right after the handshake (a client certificate it does not accept, with
        TLS 1.3) sends no CONNACK, and waiting for it would only delay the verdict; such an
        attempt sets :attr:`_closed_before_connack`.
        """
        s = self._settings
        self._closed_before_connack = False
        self._closing = False
        self._broker_reason = None
        connecting = asyncio.ensure_future(
            self._client.connect(
                s.host,
                s.port,
                ssl=self._ssl if self._ssl is not None else False,
                keepalive=s.keepalive_s,
                version=MQTTv50,
            )
        )
        connecting.add_done_callback(_consume_outcome)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.connect_timeout_s):
                    await asyncio.wait({connecting, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if not connecting.done():
                        # a refusal is a CONNACK followed by the close: let it arrive
                        await asyncio.wait({connecting}, timeout=_CONNACK_GRACE_S)
        finally:
            lost.cancel()
            finished = connecting.done()
            if not finished:
                # wait for the cancelled attempt to unwind, so that a connection it was
                # opening is closed (or known to _close_quietly) before anything else runs
                connecting.cancel()
                await asyncio.wait({connecting}, timeout=_CONNACK_GRACE_S)
        if not finished:
            if self._can_send_now():
                # CONNACK came; gmqtt was still waiting for PUBACKs of replayed messages,
                # which will come (or be replayed again after the next reconnect)
                return None
            reason = _closed_reason(self._client) if self._lost.is_set() else None
            await self._close_quietly()
            if isinstance(reason, ssl.SSLError):
                self._raise_if_tls_refusal(reason)
            if self._lost.is_set():
                self._closed_before_connack = True
                return f"connection closed before CONNACK ({reason or 'no reason given'})"
            return f"no CONNACK within {s.connect_timeout_s:g} s"
        try:
            connecting.result()
        except gmqtt.MQTTConnectError as exc:
            await self._close_quietly()
            if getattr(exc, "_code", None) not in _RETRYABLE_CONNACK:
                raise UnitConnectError(
                    f"{s.host}:{s.port} refused unit {self._vin}: {exc}"
                ) from exc
            return str(exc)
        except ssl.SSLError as exc:
            await self._close_quietly()
            self._raise_if_tls_refusal(exc)
            return str(exc) or type(exc).__name__
        except OSError as exc:
            await self._close_quietly()
            return str(exc) or type(exc).__name__
        return None

    def _raise_if_tls_refusal(self, exc: ssl.SSLError) -> None:
        """Raise :class:`UnitConnectError` if ``exc`` is a TLS failure that retrying cannot
        fix: the broker's certificate does not verify, or the broker ended the handshake
        with an alert (it does not accept the unit's certificate)."""
        s = self._settings
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise UnitConnectError(
                f"{s.host}:{s.port}: the broker's TLS certificate does not verify against "
                f"--tls-ca {s.tls_ca_file} for unit {self._vin} ({exc.verify_message})"
            ) from exc
        if _is_tls_alert(exc):
            raise UnitConnectError(
                f"{s.host}:{s.port} ended the TLS session of unit {self._vin} "
                f"({exc.reason or exc}): it does not accept the unit's client certificate "
                f"({s.tls_cert_file or 'none'}) or its TLS settings"
            ) from exc

    def _has_open_connection(self) -> bool:
        # gmqtt keeps the current connection in a private attribute; reading it avoids
        # sending a DISCONNECT into a socket that is already closed (gmqtt logs a warning).
        connection = getattr(self._client, "_connection", None)
        return connection is not None and not connection.is_closing()

    async def _close_quietly(self, reason_code: int = 0) -> None:
        self._closing = True
        if self._client is not None and self._has_open_connection():
            with contextlib.suppress(OSError):
                await self._client.disconnect(reason_code=reason_code)
        self._connected = False
        self._update_link()

    # --- reporting ----------------------------------------------------------------------------

    async def _wake_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _report_until(self, stop: asyncio.Event, keeper: asyncio.Task[None]) -> None:
        s = self._settings
        loop = asyncio.get_running_loop()
        self._next_report = loop.time() + self._report_interval_s
        while not stop.is_set():
            if keeper.done():
                keeper.result()  # raises UnitConnectError
                raise RuntimeError("the connection loop ended on its own")
            now = loop.time()
            if now >= self._next_report:
                self._report()
                # Fixed rate, but a late report (busy loop) is neither followed by a burst
                # of catch-up reports nor by one that comes right after it.
                interval = self._report_interval_s
                self._next_report = max(self._next_report + interval, now + interval / 2)
            self._flush()
            deadline = self._next_report
            if s.heartbeat_s is not None and self._can_send():
                due = self._last_status_at + s.heartbeat_s
                if now >= due:
                    self._publish_status(StatusState.ONLINE)
                    due = now + s.heartbeat_s
                deadline = min(deadline, due)
            if self._can_send() and now >= self._silent_until:  # hung firmware says nothing
                quiet_due = self._last_publish_at + s.max_quiet_s
                if now >= quiet_due:
                    self._publish_status(StatusState.ONLINE)
                    quiet_due = now + s.max_quiet_s
                deadline = min(deadline, quiet_due)
            await self._wait_wake(deadline)

    async def _wait_wake(self, deadline: float) -> None:
        """Sleep until ``deadline`` (loop time) or until something sets ``_wake``."""
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        self._wake.clear()

    def _advance(self) -> None:
        """Step the vehicle up to now (loop time): before a sample, and before a command."""
        now = asyncio.get_running_loop().time()
        if self._last_step is not None and now > self._last_step:
            self._vehicle.step(now - self._last_step)
        self._last_step = now
        if self._routine is not None:
            for step in self._routine.due(self._vehicle.sim_time_ms / 1000.0):
                log.info("%s misbehaves: %s", self._vin, step.what)
                if step.act is not None:
                    step.act(self._vehicle)
                self._silent_until = max(self._silent_until, now + step.silence_s)

    def _report(self, *, on_demand: bool = False) -> None:
        """Take a sample now; send it at once if nothing is buffered and the window allows.

        With send-on-change, only what changed goes out (a report with nothing to send sends
        nothing and uses no seq). A live report may carry a fault (the injector decides); an
        ``on_demand`` one (a command asked for it) is a full snapshot and never faulty.
        """
        vehicle = self._vehicle
        self._advance()
        if not on_demand and asyncio.get_running_loop().time() < self._silent_until:
            return  # fault 'silent': hung firmware takes no samples (commands still work)
        signals = vehicle.signals()
        if self._settings.send_on_change:
            now = asyncio.get_running_loop().time()
            signals = self._change_filter.select(signals, now, full=on_demand)
        if signals:
            self._sample(Sample(self._vin, self._next_seq, vehicle.sim_time_ms, signals), on_demand)
        for event in vehicle.pending_events():
            if not self._event_buffer and not self._buffer and self._can_send():
                self._publish(self._events_topic, encode_event(event))
                self._events += 1
            else:
                self._hold_event(event)

    def _sample(self, sample: Sample, on_demand: bool) -> None:
        self._samples += 1
        if self._on_sample is not None:
            self._on_sample(sample)
        live = not self._buffer and not self._outgoing and self._can_send() and self._window_open()
        if not live:
            self._next_seq = sample.seq + 1
            self._hold(sample)
            return
        if on_demand:
            planned = Planned(None, (encode_sample(sample),), 1)
        else:
            planned = self._faults.next(sample)
        self._next_seq = sample.seq + planned.seqs_used
        if planned.kind is not None:
            self._fault_counts[planned.kind.value] = (
                self._fault_counts.get(planned.kind.value, 0) + 1
            )
            log.info("%s: injecting %s at seq %d", self._vin, planned.kind.value, sample.seq)
        self._outgoing.extend(planned.payloads)
        self._send_outgoing()
        if planned.disconnect:
            self._drop_connection()
        if planned.silence_s:
            self._silent_until = asyncio.get_running_loop().time() + planned.silence_s

    def _send_outgoing(self) -> None:
        while self._outgoing and self._can_send() and self._window_open():
            self._publish(self._telemetry_topic, self._outgoing.popleft())
            self._published += 1

    def _drop_connection(self) -> None:
        """Fault ``abrupt_disconnect``: close the TCP connection without a DISCONNECT, as a
        lost radio link would; the broker publishes the Will, and the connection loop
        reconnects with its backoff (what was in flight is replayed into the session)."""
        self._closing = True
        connection = getattr(self._client, "_connection", None)
        transport = getattr(connection, "_transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()
        self._on_disconnect(self._client, None)

    def _hold(self, sample: Sample) -> None:
        limit = self._settings.buffer_limit
        if limit == 0:
            self._dropped += 1
            return
        if len(self._buffer) >= limit:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(sample)
        self._buffered += 1

    def _hold_event(self, event: Event) -> None:
        limit = self._settings.buffer_limit
        if limit == 0:
            self._events_dropped += 1
            return
        if len(self._event_buffer) >= limit:
            self._event_buffer.popleft()
            self._events_dropped += 1
        self._event_buffer.append(event)

    def _flush(self) -> None:
        """Upload the buffer, oldest first, as far as the in-flight window allows; then the
        held-back events. Command results waiting for the link go first. Returns at once;
        PUBACKs wake the loop to continue."""
        while self._answers and self._can_send():
            answer = self._answers.popleft()
            self._send_answer(answer.topic, answer.payload, answer.correlation_data)
        self._send_outgoing()
        if self._outgoing:
            return
        batch_max = self._settings.batch_max_samples
        buffer = self._buffer
        while buffer and self._can_send() and self._window_open():
            batch = [buffer.popleft() for _ in range(min(batch_max, len(buffer)))]
            self._publish(self._telemetry_topic, encode_batch(self._vin, batch))
            self._published += len(batch)
            self._batches += 1
        while self._event_buffer and not buffer and self._can_send():
            self._publish(self._events_topic, encode_event(self._event_buffer.popleft()))
            self._events += 1

    # --- remote commands ----------------------------------------------------------------------

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        """gmqtt's callback (the PUBACK has gone already): decode, queue for the worker."""
        if topic != self._command_topic:
            log.warning("%s: unexpected message on %s ignored", self._vin, topic)
            return 0
        self._commands_received += 1
        if not self._settings.answers_commands:
            log.debug("%s: silent unit, command ignored", self._vin)
            return 0
        command = decode_command(payload)
        if isinstance(command, Rejection):
            self._commands_ignored += 1
            log.warning(
                "%s: not a command (%s: %s)", self._vin, command.reason.value, command.detail
            )
            return 0
        if command.command_id in self._seen_ids:
            self._commands_duplicate += 1
            log.info(
                "%s: command %s again (redelivery), not run twice", self._vin, command.command_id
            )
            return 0
        self._seen_ids[command.command_id] = None
        if len(self._seen_ids) > _SEEN_COMMAND_IDS:
            self._seen_ids.popitem(last=False)
        topic_out, correlation = self._reply_route(properties, command.command_id)
        self._commands.put_nowait(_Incoming(command, topic_out, correlation))
        return 0

    def _reply_route(self, properties: Any, command_id: str) -> tuple[str, bytes]:
        """Response topic and correlation data of a command (MQTT 5 request/response), with
        the contract's defaults when the command has none."""
        topic = _first(properties, "response_topic")
        if isinstance(topic, bytes):
            topic = topic.decode("utf-8", errors="replace")
        if not isinstance(topic, str) or not _is_topic_name(topic):
            topic = self._result_topic
        else:
            with contextlib.suppress(InvalidTopicError):
                if parse_command_result_topic(topic) != self._vin:
                    # a result carries this unit's VIN; on another vehicle's result topic the
                    # gateway would refuse it as a VIN mismatch
                    topic = self._result_topic
        correlation = _first(properties, "correlation_data")
        if isinstance(correlation, str):
            correlation = correlation.encode()
        if not isinstance(correlation, bytes | bytearray) or not correlation:
            correlation = command_id.encode()
        return topic, bytes(correlation)

    async def _run_commands(self) -> None:
        """The command worker: one command at a time, in arrival order, with the link up."""
        while True:
            incoming = await self._commands.get()
            await self._link.wait()  # in a coverage gap: after the gap (expiry is checked then)
            try:
                await self._handle(incoming)
            except Exception:  # a bug must not stop the unit from taking further commands
                log.exception("%s: command %s crashed", self._vin, incoming.command.command_id)

    async def _handle(self, incoming: _Incoming) -> None:
        command = incoming.command
        self._advance()  # the vehicle as it is now, not as at the last report
        now = self._clock_ms()
        rejection = unit_decision(
            command,
            vin=self._vin,
            now_ms=now,
            is_moving=self._vehicle.is_moving,
            public_key=self._public_key,
            last_counter=self._last_counter,
        )
        if (
            self._public_key is not None
            and command.counter is not None
            and (rejection is None or rejection.reason not in _UNTRUSTED)
        ):
            # authentic and current: its counter is spent even if the command is refused
            # (an unlock refused while moving must not work when replayed after the stop)
            self._last_counter = command.counter
        if rejection is None and isinstance(command, InvalidCommand):
            # the rule book always refuses these; never run one, whatever it says
            rejection = self._result(
                command.command_id, ResultStatus.REJECTED, now, command.reason, command.detail
            )
        if rejection is not None:
            self._commands_rejected += 1
            log.info(
                "%s: command %s (%s) rejected: %s",
                self._vin,
                command.command_id,
                command.type,
                rejection.reason.value if rejection.reason else "?",
            )
            self._answer(incoming, rejection)
            return
        assert isinstance(command, CommandMessage)
        self._commands_accepted += 1
        self._answer(incoming, self._result(command.command_id, ResultStatus.ACCEPTED, now))
        delay_s = self._settings.command_delay_s
        if delay_s > 0:
            await self._slow_actuator(delay_s, until_ms=now + math.ceil(delay_s * 1000 - 1e-6))
            self._advance()
        try:
            detail = self._apply(command)
        except CommandRefused as exc:
            self._commands_failed += 1
            log.info("%s: command %s failed: %s", self._vin, command.command_id, exc.detail)
            failed = self._result(
                command.command_id, ResultStatus.FAILED, self._clock_ms(), exc.reason, exc.detail
            )
            self._answer(incoming, failed)
            return
        except Exception as exc:  # a bug here: answer, rather than leave the requester waiting
            log.exception("%s: command %s crashed", self._vin, command.command_id)
            self._commands_failed += 1
            crashed = self._result(
                command.command_id,
                ResultStatus.FAILED,
                self._clock_ms(),
                ResultReason.INTERNAL_ERROR,
                f"{type(exc).__name__}: {exc}",
            )
            self._answer(incoming, crashed)
            return
        self._commands_succeeded += 1
        log.info("%s: command %s (%s) succeeded", self._vin, command.command_id, command.type)
        succeeded = self._result(
            command.command_id, ResultStatus.SUCCEEDED, self._clock_ms(), detail=detail
        )
        self._answer(incoming, succeeded)

    async def _slow_actuator(self, delay_s: float, *, until_ms: int) -> None:
        """Wait ``delay_s``; and until the unit's clock (which stamps the results, and is the
        wall clock rather than asyncio's monotonic one) has passed ``until_ms`` too."""
        await asyncio.sleep(delay_s)
        for _ in range(3):  # bounded: a clock that stands still (a test's) cannot hang us
            left_ms = until_ms - self._clock_ms()
            if left_ms <= 0:
                break
            await asyncio.sleep(left_ms / 1000)

    def _apply(self, command: CommandMessage) -> str | None:
        """Carry ``command`` out; return a detail for the ``succeeded`` result, or raise
        :class:`CommandRefused`."""
        vehicle = self._vehicle
        params = command.params
        kind = command.type
        plain = _PLAIN_ACTIONS.get(kind)
        if plain is not None:
            plain(vehicle)
        elif kind is CommandType.LOCATE:
            self._report(on_demand=True)
            return f"position sent in sample {self._next_seq - 1}"
        elif kind is CommandType.CLIMATE_START:
            vehicle.climate_start(_number(params, "target_temperature_c"))
        elif kind is CommandType.CHARGE_LIMIT:
            vehicle.set_charge_limit(_integer(params, "percent"))
        elif kind is CommandType.SPEED_LIMIT:
            kmh = None if params.get("kmh") is None else _integer(params, "kmh")
            vehicle.set_speed_limit(kmh)
        elif kind is CommandType.REQUEST_DIAGNOSTICS:
            codes = vehicle.diagnostics()
            self._report(on_demand=True)
            shown = ", ".join(codes) if codes else "none"
            return f"active trouble codes: {shown} (sample {self._next_seq - 1})"
        elif kind is CommandType.SET_REPORTING_INTERVAL:
            self._set_report_interval(_integer(params, "seconds"))
        else:  # a command type this firmware does not know yet
            raise CommandRefused(ResultReason.UNSUPPORTED, f"{kind.value} is not supported")
        return None

    def _set_report_interval(self, seconds: float) -> None:
        self._report_interval_s = float(seconds)
        now = asyncio.get_running_loop().time()
        self._next_report = min(self._next_report, now + self._report_interval_s)
        self._wake.set()

    def _result(
        self,
        command_id: str,
        status: ResultStatus,
        ts: int,
        reason: ResultReason | None = None,
        detail: str | None = None,
    ) -> CommandResult:
        if detail is not None:
            detail = detail[:_DETAIL_MAX]
        return CommandResult(command_id, self._vin, status, ts, reason, detail)

    def _answer(self, incoming: _Incoming, result: CommandResult) -> None:
        """Send ``result`` now, or keep it until the link is back."""
        payload = encode_command_result(result)
        if self._can_send() and not self._answers:
            self._send_answer(incoming.response_topic, payload, incoming.correlation_data)
            return
        if len(self._answers) >= _RESULT_BUFFER_LIMIT:
            dropped = self._answers.popleft()
            log.warning("%s: result buffer full, dropped one for %s", self._vin, dropped.topic)
        self._answers.append(_Answer(incoming.response_topic, payload, incoming.correlation_data))

    def _send_answer(self, topic: str, payload: bytes, correlation_data: bytes) -> None:
        self._client.publish(topic, payload, qos=1, correlation_data=correlation_data)
        self._messages += 1
        self._last_publish_at = asyncio.get_running_loop().time()

    # --- stopping -----------------------------------------------------------------------------

    async def _stop_cleanly(self) -> None:
        """Upload what the window allows within the drain timeout, publish ``offline``,
        wait for the PUBACKs, disconnect normally (the broker then discards the Will)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.drain_timeout_s
        while True:
            self._flush()
            held = self._buffer or self._event_buffer or self._answers or self._outgoing
            if not held or not self._can_send() or loop.time() >= deadline:
                break
            await self._wait_wake(deadline)
        if self._can_send_now():
            self._publish_status(StatusState.OFFLINE)
            while self._store.size and self._connected and loop.time() < deadline:
                await self._wait_wake(deadline)
        if self._buffer:
            log.warning("%s stopped with %d sample(s) not uploaded", self._vin, len(self._buffer))
        if self._outgoing:
            log.warning(
                "%s stopped with %d telemetry message(s) unsent", self._vin, len(self._outgoing)
            )
        if self._answers:
            log.warning(
                "%s stopped with %d command result(s) unsent", self._vin, len(self._answers)
            )
        await self._close_quietly()

    async def _power_cut(self) -> None:
        """Vanish without a goodbye: the broker publishes the Will (see module docstring)."""
        await self._close_quietly(reason_code=DISCONNECT_WITH_WILL)
