"""The ingest Batcher, the pipeline's pure core (decision 0001), without a broker or a store:
what each kind of message becomes in the batch, what is quarantined and why, the counters,
tenures, and that :meth:`Batcher.take` hands over one batch and starts the next."""

from __future__ import annotations

import pytest

from gateway import metrics
from gateway.core.batching import (
    Batcher,
    BatchPolicy,
    IngestBatch,
    StatusChange,
    Tenure,
)
from schemas import (
    Channel,
    Event,
    EventType,
    Reason,
    Sample,
    Status,
    StatusState,
    encode_event,
    encode_sample,
    encode_status,
    topic_for,
)

VIN = "WVWZZZ1JZXW000041"
OTHER = "WVWZZZ1JZXW000042"
NOW = 1_764_230_400_000
SPEED = "Vehicle.Speed"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def telemetry(vin: str, seq: int, ts: int = NOW) -> tuple[str, bytes]:
    return topic_for(vin, Channel.TELEMETRY), encode_sample(Sample(vin, seq, ts, {SPEED: 42.0}))


def status(vin: str, state: StatusState) -> tuple[str, bytes]:
    return topic_for(vin, Channel.STATUS), encode_status(Status(state, NOW))


def event(vin: str, seq: int) -> tuple[str, bytes]:
    return topic_for(vin, Channel.EVENTS), encode_event(Event(vin, seq, NOW, EventType.IGNITION_ON))


def test_the_default_policy() -> None:
    assert BatchPolicy() == BatchPolicy(
        max_samples=5000, max_delay_s=0.05, quiet_s=0.002, min_delay_s=0.005, commit_factor=4.0
    )


def test_a_batch_is_due_once_its_input_pauses_but_a_saturated_input_waits_the_delay() -> None:
    """Decision 0063: a light stream is committed when it pauses (2 ms without a message,
    not before 5 ms after the batch's first); a stream that never pauses still fills the
    batch for the whole delay, so saturated ingest keeps its batch sizes."""
    p = BatchPolicy()
    first = 100.0
    # a lone message: due 5 ms after it (the minimum), not 50
    assert p.due_in(first, first, 1, first) == pytest.approx(0.005)
    assert p.due_in(first, first, 1, first + 0.005) <= 0
    # messages keep coming, the latest 1 ms ago: due 2 ms after it
    assert p.due_in(first, first + 0.010, 40, first + 0.011) == pytest.approx(0.001)
    # a message every millisecond up to the delay: due at the delay, not later
    assert p.due_in(first, first + 0.049, 400, first + 0.049) == pytest.approx(0.001)
    assert p.due_in(first, first + 0.050, 400, first + 0.050) <= 0
    # the previous commit took 6 ms: not before 24 ms (commits at most a fifth of the time)
    assert p.due_in(first, first, 1, first, 0.006) == pytest.approx(0.024)
    # ... nor later than the delay when commits are slow
    assert p.due_in(first, first, 1, first, 0.030) == pytest.approx(0.05)
    # full: due at once
    assert p.due_in(first, first, 5000, first) == 0.0
    # off: the delay alone, as before
    off = BatchPolicy(quiet_s=0)
    assert off.due_in(first, first, 1, first) == pytest.approx(0.05)
    # a delay shorter than the minimum is still the bound
    assert BatchPolicy(max_delay_s=0.001).due_in(first, first, 1, first) == pytest.approx(0.001)


def test_an_empty_batch() -> None:
    batch = Batcher(clock_ms=Clock()).take()
    assert isinstance(batch, IngestBatch)
    assert batch.received_at == NOW
    assert [batch.samples, batch.events, batch.statuses, batch.quarantine] == [[], [], [], []]
    assert (batch.seen, batch.counters, batch.tenures) == ({}, {}, {})


def test_samples_events_and_statuses_land_in_their_parts() -> None:
    clock = Clock()
    batcher = Batcher(clock_ms=clock, source="gw-1")
    assert batcher.add(*telemetry(VIN, 1))
    assert batcher.add(*event(VIN, 1))
    clock.now = NOW + 5
    assert batcher.add(*status(VIN, StatusState.ONLINE))
    assert batcher.size == 2  # a sample and an event; a status costs nothing
    assert batcher.messages == 3
    batch = batcher.take()
    assert [(s.vin, s.seq, s.signals) for s in batch.samples] == [(VIN, 1, {SPEED: 42.0})]
    assert [(e.vin, e.seq, e.type) for e in batch.events] == [(VIN, 1, EventType.IGNITION_ON)]
    # the gateway's receive time orders status changes, not the unit's ts
    assert batch.statuses == [StatusChange(VIN, StatusState.ONLINE, NOW + 5, False)]
    assert batch.seen == {VIN: NOW + 5}
    assert batch.quarantine == []
    assert batch.received_at == NOW + 5
    assert batch.counters == {
        (metrics.MESSAGES_RECEIVED, "telemetry"): 1,
        (metrics.MESSAGES_RECEIVED, "events"): 1,
        (metrics.MESSAGES_RECEIVED, "status"): 1,
        (metrics.GATEWAY_MESSAGES, "gw-1"): 3,
    }
    assert batch.tenures == {}  # no lookup: every VIN at the first tenure


def test_take_starts_a_new_batch() -> None:
    batcher = Batcher(clock_ms=Clock())
    batcher.add(*telemetry(VIN, 1))
    assert len(batcher.take().samples) == 1
    assert batcher.size == 0
    assert batcher.messages == 0
    assert batcher.take().samples == []


def test_a_retained_status_says_nothing_about_when_the_vehicle_was_heard() -> None:
    batcher = Batcher(clock_ms=Clock())
    batcher.add(*status(VIN, StatusState.OFFLINE), retained=True)
    batch = batcher.take()
    assert batch.statuses == [StatusChange(VIN, StatusState.OFFLINE, NOW, True)]
    assert batch.seen == {}


def test_a_deleted_retained_status_is_no_status_and_no_fault() -> None:
    """The broker sync deletes a VIN's retained status when it changes hands or leaves
    (issue 16); subscribers get the empty message, which is neither a status nor a bad
    payload, whether the VIN is provisioned or not (decommissioned)."""
    batcher = Batcher(clock_ms=Clock(), tenure_of={VIN: Tenure(1, 0)}.get)
    assert batcher.add(topic_for(VIN, Channel.STATUS), b"", retained=False)
    assert batcher.add(topic_for(OTHER, Channel.STATUS), b"")
    batch = batcher.take()
    assert (batch.statuses, batch.quarantine, batch.seen) == ([], [], {})


def test_an_unknown_topic_is_quarantined_and_counted_as_invalid() -> None:
    batcher = Batcher(clock_ms=Clock())
    assert batcher.add("v1/cars/x/telemetry", b"{}")
    batch = batcher.take()
    assert [q.rejection.reason for q in batch.quarantine] == [Reason.INVALID_TOPIC]
    assert batch.quarantine[0].payload == b"{}"
    assert batch.counters[metrics.MESSAGES_RECEIVED, "invalid"] == 1
    assert batch.counters[metrics.QUARANTINED, Reason.INVALID_TOPIC.value] == 1


def test_bad_payloads_are_quarantined_with_the_vins_tenure() -> None:
    batcher = Batcher(clock_ms=Clock(), tenure_of={VIN: Tenure(3, 0)}.get)
    topic, _ = telemetry(VIN, 1)
    assert batcher.add(topic, b"not json")
    assert batcher.add(topic_for(VIN, Channel.STATUS), b'{"state": "sleeping"}')
    batch = batcher.take()
    assert len(batch.quarantine) == 2
    assert {q.tenure for q in batch.quarantine} == {3}
    assert all(q.rejection.vin == VIN for q in batch.quarantine)
    assert batch.samples == []
    assert batch.statuses == []
    assert sum(n for (name, _), n in batch.counters.items() if name == metrics.QUARANTINED) == 2


def test_a_vehicle_nobody_provisioned_is_quarantined() -> None:
    batcher = Batcher(clock_ms=Clock(), tenure_of={VIN: Tenure(1, 0)}.get)
    assert batcher.add(*telemetry(OTHER, 1))
    batch = batcher.take()
    assert batch.samples == []
    assert [(q.rejection.reason, q.tenure) for q in batch.quarantine] == [
        (Reason.UNPROVISIONED_VEHICLE, None)
    ]
    assert batch.seen == {}


def test_a_change_of_tenure_waits_for_the_next_batch() -> None:
    tenures = {VIN: Tenure(1, 0)}
    batcher = Batcher(clock_ms=Clock(), tenure_of=tenures.get)
    assert batcher.add(*telemetry(VIN, 1))
    tenures[VIN] = Tenure(2, NOW)
    assert not batcher.add(*telemetry(VIN, 2))
    assert batcher.take().tenures == {VIN: Tenure(1, 0)}
    assert batcher.add(*telemetry(VIN, 2))
    assert batcher.take().tenures == {VIN: Tenure(2, NOW)}


def test_counters_added_later_go_into_the_open_batch() -> None:
    batcher = Batcher(clock_ms=Clock())
    batcher.add_counters(metrics.commit_seconds_counters(0.002))
    batcher.add_counters({(metrics.COMMIT_SECONDS, "count"): 1.0})
    counters = batcher.take().counters
    assert counters[metrics.COMMIT_SECONDS, "count"] == 2.0
    assert counters[metrics.COMMIT_SECONDS, "0.0025"] == 1.0


def test_a_tenure_files_samples_by_their_own_time() -> None:
    tenure = Tenure(2, NOW)
    assert tenure.of(NOW) == 2
    assert tenure.of(NOW - 1) == 1
    assert Tenure(1, NOW).of(NOW - 1) == 1  # never below the first
