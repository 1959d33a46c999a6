"""Ingest batching, the pipeline's pure core: MQTT messages in, one :class:`IngestBatch` per
commit out (docs/decisions/0001-architecture.md, docs/decisions/0013-architecture-step.md).

:class:`Batcher` knows nothing of MQTT or SQL. The ingest service (``gateway.ingest.service``)
feeds it every received message with :meth:`Batcher.add` and, when a batch is due
(:class:`BatchPolicy`), takes it with :meth:`Batcher.take`, commits it to the telemetry
store, and only then acknowledges the messages. Everything that is wrong with a message
becomes a quarantine entry; nothing raises.

The batch and its parts (:class:`IngestBatch`, :class:`QuarantineEntry`,
:class:`StatusChange`, :class:`Tenure`) are defined here, where they are made; the store's
interface (``gateway.store.base``) takes them as they are.

Ownership: with a ``tenure_of`` lookup (the state database's registry), each batch carries
the current tenure of every VIN in it (the store files each sample by its own time against
it, see ``gateway.store.base``), one per VIN. When a VIN's tenure changes while its batch
is open (revoked and claimed again within one batch delay), :meth:`Batcher.add` refuses
the message (returns False) so the caller commits the open batch first and adds the
message to the next one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from gateway import metrics
from schemas import (
    DEFAULT_LIMITS,
    Channel,
    Event,
    InvalidTopicError,
    Limits,
    ParsedTopic,
    Reason,
    Rejection,
    Sample,
    Status,
    StatusState,
    decode_event,
    decode_status,
    decode_telemetry,
    parse_topic,
)

__all__ = [
    "FIRST_TENURE",
    "BatchPolicy",
    "Batcher",
    "IngestBatch",
    "QuarantineEntry",
    "StatusChange",
    "Tenure",
    "refuse_after_revocation",
]

#: the tenure of data whose batch names none: a VIN's first holding period
FIRST_TENURE = 1


class Tenure(NamedTuple):
    """A VIN's current (or, revoked, its last) holding period: its ``number`` (1, 2, ...),
    when it started (epoch ms, the provisioning), when it ended (``ended_at``: the
    revocation; None while it lasts) and when the one before it ended
    (``previous_ended_at``; None for the first)."""

    number: int
    started_at: int
    ended_at: int | None = None
    previous_ended_at: int | None = None

    def of(self, ts: int) -> int:
        """The tenure a sample or event taken at ``ts`` belongs to: this one, or the one
        before if it was taken before this one started (never below the first)."""
        if ts >= self.started_at or self.number <= FIRST_TENURE:
            return self.number
        return self.number - 1

    def ended_before(self, ts: int) -> int | None:
        """The end (``revoked_at``) of the period that ``of(ts)`` names, if ``ts`` is at or
        after it: a sample or event taken then belongs to no period (its holder had revoked
        the VIN, and nobody held it yet or the next holder's period had not started).
        None: ``ts`` falls inside that period."""
        end = self.ended_at if self.of(ts) == self.number else self.previous_ended_at
        return end if end is not None and ts >= end else None


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Something the gateway refused, kept with its reason, topic and raw payload;
    ``tenure`` is the holding period of the vehicle it concerns, when the gateway knew one
    (None: unprovisioned, or not about one vehicle)."""

    received_at: int
    topic: str
    payload: bytes
    rejection: Rejection
    tenure: int | None = None


@dataclass(frozen=True, slots=True)
class StatusChange:
    vin: str
    state: StatusState
    at: int
    #: delivered by the broker from its retained store when the gateway (re)subscribed, not
    #: sent just now: it tells the vehicle's state, not when it changed or was last heard
    retained: bool = False


@dataclass(frozen=True, slots=True)
class IngestBatch:
    received_at: int
    samples: Sequence[Sample] = ()
    events: Sequence[Event] = ()
    statuses: Sequence[StatusChange] = ()
    quarantine: Sequence[QuarantineEntry] = ()
    #: vin -> receive time of its newest message in this batch
    seen: Mapping[str, int] = field(default_factory=dict)
    #: (counter name, label) -> increment, persisted with the data (see gateway.metrics)
    counters: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: vin -> its current tenure when the batch's messages arrived (absent: FIRST_TENURE);
    #: one per VIN per batch (the batcher starts a new batch when it changes)
    tenures: Mapping[str, Tenure] = field(default_factory=dict)


#: parsed topics kept (two or three per vehicle); the cache is simply emptied when full
_TOPIC_CACHE_SIZE = 200_000


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When a batch is due: ``max_samples`` reached, ``max_delay_s`` since its first message,
    or, sooner, once its input has paused (:meth:`due_in`).

    The delay bounds the publish-to-acknowledge latency; the size bounds the memory and the
    length of one transaction. A unit's messages stay unacknowledged (in flight) until their
    batch commits, so the MQTT Receive Maximum must exceed rate x delay.

    The pause (decision 0063): when no message has come for ``quiet_s``, the batch is due,
    but not before ``min_delay_s`` after its first message nor before ``commit_factor``
    times what the previous commit took: a commit (its fsync: 3-8 ms here, 76 ms at worst)
    blocks the receiving, so at most about 1 / (1 + ``commit_factor``) of the time goes to
    commits however light the input (with 5 ms and no such bound, a 500-samples/s stream
    made 200 commits a second and its p99 grew from ~80 to 95-485 ms). A saturated input
    never pauses, so its batches are as large as before and the ingest rate is the same; a
    lone sample or a light stream is committed (and reaches the rules) within milliseconds
    instead of waiting out the whole delay. ``quiet_s`` 0: no early commit.
    """

    max_samples: int = 5000
    max_delay_s: float = 0.05
    quiet_s: float = 0.002
    min_delay_s: float = 0.005
    commit_factor: float = 4.0

    def due_in(
        self, first_at: float, last_at: float, size: int, now: float, last_commit_s: float = 0.0
    ) -> float:
        """Seconds until an open batch is due (0 or less: now), its first message received
        at ``first_at``, its latest at ``last_at``, ``size`` samples (one clock), the
        previous commit having taken ``last_commit_s``."""
        if size >= self.max_samples:
            return 0.0
        due = first_at + self.max_delay_s
        if self.quiet_s > 0:
            earliest = first_at + max(self.min_delay_s, self.commit_factor * last_commit_s)
            due = min(due, max(earliest, last_at + self.quiet_s))
        return due - now


class Batcher:
    """Accumulates decoded messages into the next batch."""

    def __init__(
        self,
        *,
        clock_ms: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
        source: str = "",
        tenure_of: Callable[[str], Tenure | None] | None = None,
    ) -> None:
        self._clock_ms = clock_ms
        #: a VIN's current tenure, None if it may not send (not provisioned, or revoked);
        #: None instead of a lookup: every VIN may send, at the first tenure
        self._tenure_of = tenure_of
        self._limits = limits
        #: parsed topics: a fleet reuses the same few topics per vehicle all day
        self._topics: dict[str, ParsedTopic] = {}
        #: the gateway's client id, the label of the per-process message counter
        self._source = source
        self._reset()

    def _reset(self) -> None:
        self._samples: list[Sample] = []
        self._events: list[Event] = []
        self._statuses: list[StatusChange] = []
        self._quarantine: list[QuarantineEntry] = []
        self._seen: dict[str, int] = {}
        self._tenures: dict[str, Tenure] = {}
        self._counters: dict[tuple[str, str], float] = {}
        #: messages per channel; folded into the counters by take() (cheaper than a dict
        #: update per message on the hot path)
        self._per_channel: dict[str, int] = {}
        self.messages = 0

    @property
    def size(self) -> int:
        """Rows the batch will write (samples count, everything else is cheap)."""
        return len(self._samples) + len(self._events) + len(self._quarantine)

    def _count(self, name: str, label: str = "", n: float = 1) -> None:
        key = (name, label)
        self._counters[key] = self._counters.get(key, 0) + n

    def add_counters(self, counters: dict[tuple[str, str], float]) -> None:
        for (name, label), n in counters.items():
            self._count(name, label, n)

    def _quarantine_all(
        self,
        topic: str,
        payload: bytes,
        now: int,
        rejections: tuple[Rejection, ...],
        tenure: int | None = None,
    ) -> None:
        for rejection in rejections:
            self._quarantine.append(QuarantineEntry(now, topic, payload, rejection, tenure))
            self._count(metrics.QUARANTINED, rejection.reason.value, rejection.count)

    def add(self, topic: str, payload: bytes, retained: bool = False) -> bool:
        """Decode one message into the current batch. ``retained``: the broker delivered it
        from its retained store at (re)subscription, so it says nothing about when the
        vehicle was last heard (Mosquitto replays every retained status to a gateway each
        time it subscribes, also to a shared subscription). False (and nothing added) when
        the message's VIN has changed tenure since the batch took its first message: commit
        the batch, then add the message again (see the module docstring)."""
        parsed = self._topics.get(topic)
        if parsed is None:
            try:
                parsed = parse_topic(topic)
            except InvalidTopicError as exc:
                self.messages += 1
                self._per_channel["invalid"] = self._per_channel.get("invalid", 0) + 1
                rejection = Rejection(Reason.INVALID_TOPIC, str(exc))
                self._quarantine_all(topic, payload, self._clock_ms(), (rejection,))
                return True
            if len(self._topics) >= _TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = parsed
        vin = parsed.vin
        if parsed.channel is Channel.STATUS and not payload:
            # the broker relaying the deletion of a retained status (the sync clears a VIN's
            # when it changes hands or leaves, issue 16): no status at all, nothing to file
            return True
        if retained and parsed.channel is not Channel.STATUS:
            # a replay from the broker's retained store at (re)subscription, never a live
            # message (those reach a subscriber with the flag cleared, and were filed when
            # they came). Filed again it went under the VIN's current holding period: a
            # unit's retained sample outlived its holder into the next one's (security
            # review 5). A retained status still tells the state (see below).
            return True
        tenure = None
        if self._tenure_of is not None:
            tenure = self._tenure_of(vin)
            if tenure is not None and self._tenures.setdefault(vin, tenure) != tenure:
                return False
        now = self._clock_ms()
        self.messages += 1
        channel = parsed.channel.value
        self._per_channel[channel] = self._per_channel.get(channel, 0) + 1
        if self._tenure_of is not None and tenure is None:
            rejection = Rejection(
                Reason.UNPROVISIONED_VEHICLE,
                f"vehicle {vin} is not provisioned on this gateway or was revoked; provision "
                "it (POST /v1/vehicles or telematics vehicle add) before it sends",
                vin=vin,
            )
            self._quarantine_all(topic, payload, now, (rejection,))
            return True
        if not retained:
            self._seen[vin] = now
        number = None if tenure is None else tenure.number
        if parsed.channel is Channel.TELEMETRY:
            decoded = decode_telemetry(payload, topic_vin=vin, now_ms=now, limits=self._limits)
            self._samples.extend(decoded.samples)
            if decoded.rejections:
                self._quarantine_all(topic, payload, now, decoded.rejections, number)
        elif parsed.channel is Channel.EVENTS:
            event = decode_event(payload, topic_vin=vin, now_ms=now, limits=self._limits)
            if isinstance(event, Rejection):
                self._quarantine_all(topic, payload, now, (event,), number)
            else:
                self._events.append(event)
        else:
            status = decode_status(payload, topic_vin=vin)
            if isinstance(status, Rejection):
                self._quarantine_all(topic, payload, now, (status,), number)
            else:
                self._statuses.append(_status_change(vin, status, now, retained))
        return True

    def take(self) -> IngestBatch:
        """Hand over the current batch and start a new one."""
        for channel, n in self._per_channel.items():
            self._count(metrics.MESSAGES_RECEIVED, channel, n)
        if self.messages:
            self._count(metrics.GATEWAY_MESSAGES, self._source, self.messages)
        batch = IngestBatch(
            received_at=self._clock_ms(),
            samples=self._samples,
            events=self._events,
            statuses=self._statuses,
            quarantine=self._quarantine,
            seen=self._seen,
            counters=self._counters,
            tenures=self._tenures,
        )
        self._reset()
        return batch


def _status_change(vin: str, status: Status, received_at: int, retained: bool) -> StatusChange:
    # The unit's clock may be wrong and a Last Will carries the time it was composed, so
    # the gateway's receive time orders status changes.
    return StatusChange(vin, status.state, received_at, retained)


def refuse_after_revocation(batch: IngestBatch) -> IngestBatch:
    """The batch without the samples and events its VINs' units took after the holding
    period they would be filed in had ended (``Tenure.ended_before``), each of them
    quarantined as ``after_revocation`` under that period's number instead.

    A revoked unit stays connected until the broker drops its login (a fraction of a
    second after the revocation is committed), and the gateway's registry admits it until
    its next reload: what it stamps meanwhile arrives with the old period in the batch. A
    unit's clock behind a new holder's claim stamps samples between two periods. Neither
    belongs to the ended period's holder. What was stamped before the revocation (a
    unit's buffer, delivered late) is kept in the ended period. The unit's own ``ts``
    decides, as it does for the start of a period (docs/decisions/0009); the quarantine
    keeps the sample so an operator can find it (by VIN, reason or period)."""
    ended = {
        vin: tenure
        for vin, tenure in batch.tenures.items()
        if tenure.ended_at is not None or tenure.previous_ended_at is not None
    }
    if not ended:
        return batch
    samples: list[Sample] = []
    events: list[Event] = []
    refused: list[QuarantineEntry] = []
    for sample in batch.samples:
        entry = _after_revocation(batch.received_at, ended, Channel.TELEMETRY, sample)
        if entry is None:
            samples.append(sample)
        else:
            refused.append(entry)
    for event in batch.events:
        entry = _after_revocation(batch.received_at, ended, Channel.EVENTS, event)
        if entry is None:
            events.append(event)
        else:
            refused.append(entry)
    if not refused:
        return batch
    counters = dict(batch.counters)
    key = (metrics.QUARANTINED, Reason.AFTER_REVOCATION.value)
    counters[key] = counters.get(key, 0) + len(refused)
    return replace(
        batch,
        samples=samples,
        events=events,
        quarantine=[*batch.quarantine, *refused],
        counters=counters,
    )


def _after_revocation(
    received_at: int, ended: Mapping[str, Tenure], channel: Channel, item: Sample | Event
) -> QuarantineEntry | None:
    tenure = ended.get(item.vin)
    if tenure is None:
        return None
    end = tenure.ended_before(item.ts)
    if end is None:
        return None
    number = tenure.of(item.ts)
    kind = "sample" if channel is Channel.TELEMETRY else "event"
    rejection = Rejection(
        Reason.AFTER_REVOCATION,
        f"{kind} taken at ts {item.ts}, at or after the end of holding period {number} of "
        f"vehicle {item.vin} (revoked at {end}); it belongs to no holder, so it is not stored",
        vin=item.vin,
        seq=item.seq,
    )
    if isinstance(item, Sample):
        body: dict[str, object] = {
            "vin": item.vin, "seq": item.seq, "ts": item.ts, "signals": dict(item.signals)
        }  # fmt: skip
    else:
        body = {"vin": item.vin, "seq": item.seq, "ts": item.ts, "type": item.type.value}
        if item.code is not None:
            body["code"] = item.code
        if item.detail is not None:
            body["detail"] = item.detail
    payload = json.dumps(body, separators=(",", ":")).encode()
    topic = f"v1/vehicles/{item.vin}/{channel.value}"
    return QuarantineEntry(received_at, topic, payload, rejection, number)
