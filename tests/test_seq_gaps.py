"""Seq gap detection (issue 10): missing telemetry and event numbers per vehicle, tolerant of
store-and-forward uploads that arrive late, exposed in the vehicle state and as metrics.

The pure range arithmetic (``gateway.core.seqgaps``) against a brute-force model for any
order of arrival; the store on a real SQLite file; the API reading it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import metrics
from gateway.api import ApiSettings
from gateway.core.seqgaps import Gap, SeqRange, advance, inside
from gateway.store import IngestBatch, TelemetryBackend, open_store
from schemas import Event, EventType, Sample
from tests.support.api import admin_client

VIN = "WVWZZZ1JZXW000001"
OTHER = "WVWZZZ1JZXW000002"
T0 = 1_764_230_400_000


# --- the arithmetic -----------------------------------------------------------------------------


class Model:
    """:func:`advance` applied batch after batch, with the gap rows kept as a set, as the
    store keeps them."""

    def __init__(self) -> None:
        self.state: SeqRange | None = None
        self.gaps: set[Gap] = set()
        self.detected = 0

    def receive(self, seqs: list[int]) -> None:
        ordered = sorted(set(seqs))
        span = inside(self.state, ordered)
        known = (
            []
            if span is None
            else [g for g in self.gaps if g.start <= span[1] and g.end >= span[0]]
        )
        step = advance(self.state, ordered, known)
        assert set(step.removed) <= self.gaps
        self.gaps -= set(step.removed)
        assert not set(step.added) & self.gaps
        self.gaps |= set(step.added)
        self.state = step.state
        self.detected += step.detected

    def missing_numbers(self) -> set[int]:
        return {n for g in self.gaps for n in range(g.start, g.end + 1)}


@settings(max_examples=300, deadline=None)
@given(
    numbers=st.sets(st.integers(min_value=0, max_value=200), min_size=1, max_size=80),
    seed=st.integers(min_value=0, max_value=2**32),
    batches=st.integers(min_value=1, max_value=20),
    duplicates=st.integers(min_value=0, max_value=10),
)
def test_missing_is_exactly_what_has_not_arrived_in_any_order(
    numbers: set[int], seed: int, batches: int, duplicates: int
) -> None:
    rng = random.Random(seed)
    arrivals = list(numbers) + rng.choices(sorted(numbers), k=duplicates)  # redeliveries
    rng.shuffle(arrivals)
    model = Model()
    received: set[int] = set()
    for i in range(batches):
        chunk = arrivals[i::batches]
        if not chunk:
            continue
        model.receive(chunk)
        received |= set(chunk)
        assert model.state is not None
        first, last = min(received), max(received)
        expected_missing = set(range(first, last + 1)) - received
        assert (model.state.first, model.state.last) == (first, last)
        assert model.state.missing == len(expected_missing)
        assert model.missing_numbers() == expected_missing
        # gap rows never overlap or touch: one row per run of missing numbers
        ordered = sorted(model.gaps)
        assert all(a.end + 1 < b.start for a, b in pairwise(ordered))


def test_a_contiguous_stream_has_no_gaps_and_needs_no_gap_rows() -> None:
    model = Model()
    for start in range(1, 100, 10):
        model.receive(list(range(start, start + 10)))
    assert model.state == SeqRange(1, 100, 0)
    assert model.gaps == set()
    assert model.detected == 0


def test_a_late_upload_fills_the_gap_it_left() -> None:
    model = Model()
    model.receive([1, 2, 3])
    model.receive([10, 11])  # live samples after a tunnel: 4..9 missing for now
    assert model.state == SeqRange(1, 11, 6)
    assert model.gaps == {Gap(4, 9)}
    model.receive([4, 5, 6, 7, 8])  # the store-and-forward batch, minus one the unit dropped
    assert model.state == SeqRange(1, 11, 1)
    assert model.gaps == {Gap(9, 9)}
    assert model.detected == 6  # cumulative: found missing once, whatever filled it later
    model.receive([5, 6])  # a redelivery changes nothing
    assert model.state == SeqRange(1, 11, 1)


def test_numbers_below_the_first_extend_the_range() -> None:
    model = Model()
    model.receive([100])  # the first live sample overtook the buffered upload
    model.receive([95, 96, 97, 98])
    assert model.state == SeqRange(95, 100, 1)
    assert model.gaps == {Gap(99, 99)}


def test_advance_needs_numbers() -> None:
    with pytest.raises(ValueError, match="at least one"):
        advance(None, [])


# --- the store --------------------------------------------------------------------------------


def samples(vin: str, *seqs: int) -> list[Sample]:
    return [Sample(vin, seq, T0 + seq, {"Vehicle.Speed": 1.0}) for seq in seqs]


def commit(store: TelemetryBackend, *items: Sample | Event) -> None:
    store.commit(
        IngestBatch(
            received_at=T0,
            samples=[i for i in items if isinstance(i, Sample)],
            events=[i for i in items if isinstance(i, Event)],
        )
    )


def missing(store: TelemetryBackend, vin: str) -> tuple[int, int]:
    state = store.vehicle_state(vin, tenure=1)
    assert state is not None
    return state.summary.missing_samples, state.summary.missing_events


def gauges(store: TelemetryBackend) -> dict[tuple[str, str], float]:
    return {
        key: value
        for key, value in store.counters().items()
        if key[0] in (metrics.SEQ_GAPS, metrics.SEQ_MISSING)
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TelemetryBackend]:
    opened = open_store(tmp_path / "telemetry.db")
    yield opened
    opened.close()


def test_store_counts_missing_samples_per_vehicle_and_forgets_filled_gaps(
    store: TelemetryBackend,
) -> None:
    commit(store, *samples(VIN, 1, 2, 3), *samples(OTHER, 1, 2))
    commit(store, *samples(VIN, 7, 8), *samples(OTHER, 3))  # VIN: 4, 5, 6 missing
    assert missing(store, VIN) == (3, 0)
    assert missing(store, OTHER) == (0, 0)
    assert gauges(store) == {
        (metrics.SEQ_GAPS, "telemetry"): 3,
        (metrics.SEQ_MISSING, "telemetry"): 3,
    }
    commit(store, *samples(VIN, 4, 6))  # a late upload brings two of them
    commit(store, *samples(VIN, 4, 6, 8))  # and its redelivery changes nothing
    assert missing(store, VIN) == (1, 0)
    assert gauges(store) == {
        (metrics.SEQ_GAPS, "telemetry"): 3,
        (metrics.SEQ_MISSING, "telemetry"): 1,
    }


def test_store_tracks_event_numbers_separately(store: TelemetryBackend) -> None:
    commit(
        store,
        *samples(VIN, 1, 2),
        Event(VIN, 1, T0, EventType.IGNITION_ON),
        Event(VIN, 4, T0 + 5, EventType.IGNITION_OFF),
    )
    assert missing(store, VIN) == (0, 2)
    assert gauges(store)[(metrics.SEQ_MISSING, "events")] == 2


def test_tracking_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    first = open_store(path)
    commit(first, *samples(VIN, 1, 5))
    first.close()
    again = open_store(path)
    try:
        commit(again, *samples(VIN, 2, 3))
        assert missing(again, VIN) == (1, 0)
    finally:
        again.close()


def test_api_shows_missing_samples_and_the_metrics(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    store = open_store(path)
    try:
        commit(store, *samples(VIN, 10, 11, 15))
    finally:
        store.close()
    with admin_client(ApiSettings(path, clock_ms=lambda: T0)) as api:
        vehicle = api.get(f"/v1/vehicles/{VIN}").json()
        assert (vehicle["missing_samples"], vehicle["missing_events"]) == (3, 0)
        listed = api.get("/v1/vehicles").json()["items"]
        assert listed[0]["missing_samples"] == 3
        text = api.get("/metrics").text
    assert 'telematics_seq_gaps_total{stream="telemetry"} 3.0' in text
    assert 'telematics_seq_missing{stream="telemetry"} 3.0' in text
    assert 'telematics_seq_gaps_total{stream="events"} 0.0' in text


def _vm_steps_of_commit(store: TelemetryBackend, *items: Sample) -> int:
    """SQLite virtual-machine steps (in thousands) the store's connection runs for one
    commit: the work the gateway's one process does for it, counted, not timed."""
    db = store._db  # type: ignore[attr-defined]
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(count, 1000)
    try:
        commit(store, *items)
    finally:
        db.set_progress_handler(None, 0)
    return steps[0]


def test_a_message_costs_the_same_however_many_gaps_its_unit_made(tmp_path: Path) -> None:
    """Security review 5: a vehicle credential sent batches with every other number
    (``{"seq": 1}, {"seq": 3}, ...``, empty ``signals``: 1,000 gaps a 45 kB message), then
    two-sample messages with its first and its last number again (duplicates). Every
    such message made the gateway read every gap between the two numbers and loop over
    them in Python: with 1,000,000 gaps (1,000 messages, 30 s of one unit's traffic) each
    100-byte message cost the gateway's one process 1.2 s of CPU, live, while every
    other vehicle's telemetry waited. The gaps a batch needs are those that hold one of
    its numbers: at most one index seek each."""
    small, large = open_store(tmp_path / "small.db"), open_store(tmp_path / "large.db")
    try:
        cost = {}
        for store, gaps in ((small, 1_000), (large, 100_000)):
            last = 2 * gaps
            commit(store, *(Sample(VIN, seq, T0, {}) for seq in range(0, last + 1, 2)))
            assert missing(store, VIN) == (gaps, 0)
            cost[gaps] = _vm_steps_of_commit(store, *samples(VIN, 0, last))  # duplicates
            assert missing(store, VIN) == (gaps, 0)
            # a late upload still fills the gaps it brings, at either end and in between
            _vm_steps_of_commit(store, *samples(VIN, 1, gaps + 1, last - 1))
            assert missing(store, VIN) == (gaps - 3, 0)
        assert cost[100_000] <= 2 * cost[1_000] + 5, cost
    finally:
        small.close()
        large.close()


@pytest.mark.parametrize("seed", range(6))
def test_the_store_counts_what_has_not_arrived_in_any_order(tmp_path: Path, seed: int) -> None:
    """The store's own gap lookup (the gaps holding a batch's numbers, found by index
    seeks) against the numbers themselves: any order, redeliveries, batches spanning
    gaps and received runs."""
    rng = random.Random(seed)
    numbers = rng.sample(range(300), 150)
    arrivals = numbers + rng.choices(numbers, k=40)
    rng.shuffle(arrivals)
    store = open_store(tmp_path / "telemetry.db")
    try:
        received: set[int] = set()
        while arrivals:
            size = rng.randint(1, 25)
            chunk, arrivals = arrivals[:size], arrivals[size:]
            commit(store, *samples(VIN, *sorted(set(chunk))))
            received |= set(chunk)
            expected = set(range(min(received), max(received) + 1)) - received
            assert missing(store, VIN) == (len(expected), 0)
    finally:
        store.close()
