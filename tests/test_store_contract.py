"""The telemetry store contract: what ingest, the API and retention rely on, run against
every backend :func:`gateway.store.open_store` knows.

A new backend adds its name to ``BACKENDS`` and a URL to ``_url``; every test here must
then pass for it unchanged. ``influxdb`` runs against a real ``influxd`` started once per
session (``tests/support/influxdb.py``), each test with a database and a local index of its
own. See docs/decisions/0013-architecture-step.md and 0015-influxdb-store.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import ConfigurationError
from gateway.store import (
    IngestBatch,
    QuarantineEntry,
    StatusChange,
    TelemetryBackend,
    Tenure,
    open_store,
)
from schemas import Event, EventType, Reason, Rejection, Sample, StatusState
from tests.support.influxdb import InfluxServer, influxdb  # noqa: F401 (a fixture)

BACKENDS = ["sqlite", "influxdb"]

VIN_A = "WVWZZZ1JZXW000001"
VIN_B = "WVWZZZ1JZXW000002"
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
T0 = 1_700_000_000_000


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'telemetry.db'}"
    if backend == "influxdb":
        server: InfluxServer = request.getfixturevalue("influxdb")  # started only if used
        return f"{server.new_database_url()}?index={tmp_path / 'index.db'}"
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(str(request.param), tmp_path, request)


@pytest.fixture
def store(url: str) -> Iterator[TelemetryBackend]:
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def reader(store: TelemetryBackend, url: str) -> Iterator[TelemetryBackend]:
    """A second, read-only handle, as the API opens one per request."""
    opened = open_store(url, readonly=True)
    try:
        yield opened
    finally:
        opened.close()


def _samples(vin: str, seqs: range, *, ts0: int = T0) -> list[Sample]:
    return [Sample(vin, seq, ts0 + seq * 1000, {SPEED: float(seq)}) for seq in seqs]


def test_a_batch_is_stored_and_counted(store: TelemetryBackend, reader: TelemetryBackend) -> None:
    result = store.commit(
        IngestBatch(
            received_at=T0 + 60_000,
            samples=_samples(VIN_A, range(1, 6)),
            events=[Event(VIN_A, 1, T0, EventType.IGNITION_ON)],
            seen={VIN_A: T0 + 60_000},
        )
    )
    assert (result.samples_stored, result.sample_duplicates) == (5, 0)
    assert (result.events_stored, result.event_duplicates) == (1, 0)
    assert [v.vin for v in reader.list_vehicles(limit=10)] == [VIN_A]


def test_redelivered_samples_and_events_are_duplicates_by_vin_and_seq(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    store.commit(IngestBatch(received_at=T0, samples=_samples(VIN_A, range(1, 4))))
    again = store.commit(
        IngestBatch(
            received_at=T0 + 1,
            samples=_samples(VIN_A, range(2, 6)),
            events=[Event(VIN_A, 7, T0, EventType.IGNITION_ON)] * 2,
        )
    )
    assert (again.samples_stored, again.sample_duplicates) == (2, 2)
    assert (again.events_stored, again.event_duplicates) == (1, 1)
    # the same seq of another VIN is not a duplicate
    other = store.commit(IngestBatch(received_at=T0 + 2, samples=_samples(VIN_B, range(1, 2))))
    assert other.samples_stored == 1
    points = reader.history(VIN_A, [SPEED], tenure=1, start=0, end=T0 * 2, limit=100)
    assert [p.seq for p in points] == [1, 2, 3, 4, 5]


def test_latest_state_keeps_the_newest_value_by_sample_time(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    store.commit(
        IngestBatch(
            received_at=T0,
            samples=[
                Sample(VIN_A, 2, T0 + 2000, {SPEED: 50.0, SOC: 80.0}),
                Sample(VIN_A, 1, T0 + 1000, {SPEED: 10.0}),
            ],
        )
    )
    # a late store-and-forward sample, older than what is stored, does not overwrite it
    store.commit(
        IngestBatch(received_at=T0 + 5000, samples=[Sample(VIN_A, 3, T0 + 500, {SPEED: 1.0})])
    )
    state = reader.vehicle_state(VIN_A, tenure=1)
    assert state is not None
    assert state.latest == {SPEED: (50.0, T0 + 2000), SOC: (80.0, T0 + 2000)}
    assert reader.vehicle_state(VIN_B, tenure=1) is None


def test_history_is_a_time_range_in_pages(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    store.commit(IngestBatch(received_at=T0, samples=_samples(VIN_A, range(1, 11))))
    start, end = T0 + 3000, T0 + 9000  # seq 3 .. 8 (end excluded)
    first = reader.history(VIN_A, [SPEED], tenure=1, start=start, end=end, limit=4)
    assert [p.seq for p in first] == [3, 4, 5, 6]
    assert first[0].values == {SPEED: 3.0}
    last = first[-1]
    rest = reader.history(
        VIN_A, [SPEED], tenure=1, start=start, end=end, limit=4, after=(last.ts, last.seq)
    )
    assert [p.seq for p in rest] == [7, 8]
    assert reader.history(VIN_A, [SOC], tenure=1, start=0, end=end, limit=4) == []


def test_each_tenure_is_a_vehicle_of_its_own(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    store.commit(IngestBatch(received_at=T0, samples=_samples(VIN_A, range(1, 3))))
    second = Tenure(2, T0 + 100_000)
    result = store.commit(
        IngestBatch(
            received_at=T0 + 200_000,
            samples=_samples(VIN_A, range(1, 3), ts0=T0 + 150_000),
            tenures={VIN_A: second},
        )
    )
    assert result.samples_stored == 2  # the new holder's seq 1, 2 are not duplicates
    one = reader.history(VIN_A, [SPEED], tenure=1, start=0, end=T0 * 2, limit=10)
    two = reader.history(VIN_A, [SPEED], tenure=2, start=0, end=T0 * 2, limit=10)
    assert [p.ts for p in one] == [T0 + 1000, T0 + 2000]
    assert [p.ts for p in two] == [T0 + 151_000, T0 + 152_000]


def test_a_late_sample_of_the_previous_holder_is_filed_under_its_tenure(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    """A sample taken before the current holding period started, delivered late in a batch
    of the new holder, belongs to the period before (``Tenure.of``)."""
    second = Tenure(2, T0 + 100_000)
    store.commit(
        IngestBatch(
            received_at=T0 + 200_000,
            samples=[
                Sample(VIN_A, 1, T0 + 50_000, {SPEED: 1.0}),
                Sample(VIN_A, 2, T0 + 150_000, {SPEED: 2.0}),
            ],
            tenures={VIN_A: second},
        )
    )
    one = reader.history(VIN_A, [SPEED], tenure=1, start=0, end=T0 * 2, limit=10)
    two = reader.history(VIN_A, [SPEED], tenure=2, start=0, end=T0 * 2, limit=10)
    assert [(p.seq, p.ts) for p in one] == [(1, T0 + 50_000)]
    assert [(p.seq, p.ts) for p in two] == [(2, T0 + 150_000)]


def test_status_and_vehicle_counts(store: TelemetryBackend, reader: TelemetryBackend) -> None:
    store.commit(
        IngestBatch(
            received_at=T0,
            statuses=[
                StatusChange(VIN_A, StatusState.ONLINE, T0),
                StatusChange(VIN_B, StatusState.OFFLINE, T0),
            ],
            seen={VIN_A: T0, VIN_B: T0},
        )
    )
    summaries = {v.vin: v for v in reader.list_vehicles(limit=10)}
    assert summaries[VIN_A].online is True
    assert summaries[VIN_B].online is False
    assert reader.vehicle_counts() == (2, 1)
    assert reader.vehicle_counts({VIN_B: 1}) == (1, 0)
    assert [v.vin for v in reader.list_vehicles(limit=1, after=VIN_A)] == [VIN_B]


def test_map_states_read_a_fleet_with_its_newest_map_signals(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    """The live map's first snapshot: each vehicle's holding period, status and newest
    value of the asked signals, in one read (the web dashboard's)."""
    lat, soc = (
        "Vehicle.CurrentLocation.Latitude",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    )
    store.commit(
        IngestBatch(
            received_at=T0,
            samples=[
                Sample(VIN_A, 1, T0, {lat: 48.1, SPEED: 10.0}),
                Sample(VIN_A, 2, T0 + 1000, {lat: 48.2}),
                Sample(VIN_B, 1, T0, {soc: 80.0}),
            ],
            statuses=[StatusChange(VIN_A, StatusState.ONLINE, T0)],
        )
    )
    states = reader.map_states((lat, soc), limit=10)
    assert [(s.vin, s.tenure, s.online) for s in states] == [(VIN_A, 1, True), (VIN_B, 1, None)]
    assert states[0].latest == {lat: (48.2, T0 + 1000)}  # the newest; speed was not asked
    assert states[1].latest == {soc: (80, T0)}
    assert [s.vin for s in reader.map_states((lat,), limit=10, vins={VIN_B: 1})] == [VIN_B]
    assert reader.map_states((lat,), limit=10, vins={VIN_B: 2}) == []
    assert [s.vin for s in reader.map_states((lat,), limit=1)] == [VIN_A]


def _quarantined(n: int, *, at: int, vin: str = VIN_A) -> list[QuarantineEntry]:
    return [
        QuarantineEntry(
            at, "vehicles/x/telemetry", b"{", Rejection(Reason.MALFORMED_JSON, f"bad {i}", vin=vin)
        )
        for i in range(n)
    ]


def test_quarantine_is_kept_newest_first_and_filtered(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    result = store.commit(
        IngestBatch(
            received_at=T0,
            quarantine=[*_quarantined(3, at=T0), *_quarantined(1, at=T0, vin=VIN_B)],
        )
    )
    assert result.quarantined == 4
    page = reader.quarantine(limit=2)
    assert [q.vin for q in page] == [VIN_B, VIN_A]
    assert page[0].reason == Reason.MALFORMED_JSON.value
    assert page[0].payload == b"{"
    assert page[0].payload_size == 1
    older = reader.quarantine(limit=10, before_id=page[-1].id)
    assert len(older) == 2
    assert len(reader.quarantine(limit=10, vin=VIN_A)) == 3
    assert reader.quarantine(limit=10, reason=Reason.OUT_OF_RANGE.value) == []


def test_quarantine_of_some_vehicles_in_their_holding_periods(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    """What a fleet manager reads: entries about their vehicles, in the period they see;
    not another period's, nor those of no known period."""
    entries = [
        QuarantineEntry(T0, "t", b"{", Rejection(Reason.MALFORMED_JSON, "a1", vin=VIN_A), 1),
        QuarantineEntry(T0, "t", b"{", Rejection(Reason.MALFORMED_JSON, "a2", vin=VIN_A), 2),
        QuarantineEntry(T0, "t", b"{", Rejection(Reason.MALFORMED_JSON, "b1", vin=VIN_B), 1),
        QuarantineEntry(T0, "t", b"{", Rejection(Reason.MALFORMED_JSON, "a?", vin=VIN_A)),
    ]
    store.commit(IngestBatch(received_at=T0, quarantine=entries))
    assert [q.detail for q in reader.quarantine(limit=10, vins={VIN_A: 2})] == ["a2"]
    both = reader.quarantine(limit=10, vins={VIN_A: 1, VIN_B: 1})
    assert [q.detail for q in both] == ["b1", "a1"]
    assert reader.quarantine(limit=10, vins={}) == []
    assert len(reader.quarantine(limit=10)) == 4


def test_counters_persist_with_the_data(store: TelemetryBackend, reader: TelemetryBackend) -> None:
    store.commit(IngestBatch(received_at=T0, counters={("telematics_test_total", "x"): 2}))
    store.commit(IngestBatch(received_at=T0, counters={("telematics_test_total", "x"): 3}))
    assert reader.counters()[("telematics_test_total", "x")] == 5


def test_retention_prunes_old_samples_and_quarantine(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    store.commit(
        IngestBatch(
            received_at=T0,
            samples=_samples(VIN_A, range(1, 6)),
            quarantine=_quarantined(3, at=T0),
        )
    )
    store.commit(
        IngestBatch(
            received_at=T0 + 10_000,
            samples=_samples(VIN_A, range(6, 8)),
            quarantine=_quarantined(2, at=T0 + 10_000),
        )
    )
    assert store.prune_samples(received_before=T0 + 1, chunk=3) == 3
    assert store.prune_samples(received_before=T0 + 1, chunk=3) == 2
    assert store.prune_samples(received_before=T0 + 1, chunk=3) == 0
    points = reader.history(VIN_A, [SPEED], tenure=1, start=0, end=T0 * 2, limit=100)
    assert [p.seq for p in points] == [6, 7]
    state = reader.vehicle_state(VIN_A, tenure=1)
    assert state is not None
    assert state.latest[SPEED][0] == 7.0
    assert store.prune_quarantine(received_before=T0 + 1, max_entries=None) == 3
    assert store.prune_quarantine(received_before=None, max_entries=1) == 1
    assert len(reader.quarantine(limit=10)) == 1


def test_seq_gap_rows_go_with_the_samples_they_describe(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    """Security review 5 ("left"): gap rows were never pruned. After retention took the
    samples around them they go, in chunks; the gaps among the samples kept stay and still
    fill, and the counts of missing numbers stay (history)."""
    store.commit(
        IngestBatch(
            received_at=T0,
            samples=_samples(VIN_A, range(1, 8, 2)) + _samples(VIN_B, range(1, 4, 2)),
        )
    )  # gaps: A 2, 4, 6; B 2
    store.commit(IngestBatch(received_at=T0 + 10_000, samples=_samples(VIN_A, range(9, 12, 2))))
    # A 8, 10
    assert store.prune_seq_gaps(chunk=10) == 0  # every gap lies between samples kept
    assert store.prune_samples(received_before=T0 + 1) == 6
    assert [store.prune_seq_gaps(chunk=2) for _ in range(4)] == [2, 2, 1, 0]
    missing = {v.vin: v.missing_samples for v in reader.list_vehicles(limit=10)}
    assert missing == {VIN_A: 5, VIN_B: 1}
    # the kept gap (10) is still known: a late 10 fills it
    store.commit(IngestBatch(received_at=T0 + 20_000, samples=_samples(VIN_A, range(10, 11))))
    missing = {v.vin: v.missing_samples for v in reader.list_vehicles(limit=10)}
    assert missing == {VIN_A: 4, VIN_B: 1}
    assert store.prune_seq_gaps(chunk=10) == 0


def test_a_rarely_sent_signal_is_read_within_the_scan_bound(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    """Security review 5 ("left"): a history read of a signal the vehicle rarely sends
    looked at every sample in the window. A read looks at about ``scan`` samples: a page
    ends early, even empty, with ``resume``; paging on from it finds every point once."""
    samples = [
        Sample(VIN_A, seq, T0 + seq * 1000, {SOC: 50.0, **({SPEED: 1.0} if seq == 45 else {})})
        for seq in range(1, 51)
    ]
    store.commit(IngestBatch(received_at=T0 + 60_000, samples=samples))
    end = T0 * 2
    first = reader.history(VIN_A, [SPEED], tenure=1, start=0, end=end, limit=10, scan=20)
    assert (list(first), first.resume) == ([], (T0 + 20_000, 20))
    found: list[int] = []
    after, reads = first.resume, 1
    while after is not None:
        page = reader.history(
            VIN_A, [SPEED], tenure=1, start=0, end=end, limit=10, scan=20, after=after
        )
        found += [p.seq for p in page]
        after, reads = page.resume, reads + 1
    assert found == [45]
    assert reads == 3
    # a signal in every sample fills its page: no resume
    dense = reader.history(VIN_A, [SOC], tenure=1, start=0, end=end, limit=10, scan=20)
    assert ([p.seq for p in dense], dense.resume) == (list(range(1, 11)), None)
    # within the default bound: everything at once
    whole = reader.history(VIN_A, [SPEED], tenure=1, start=0, end=end, limit=10)
    assert ([p.seq for p in whole], whole.resume) == ([45], None)


def test_a_store_url_of_an_unknown_kind_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"supported are sqlite://"):
        open_store("influx://localhost:8086/telemetry")
    with pytest.raises(ConfigurationError, match=r"expected sqlite:///PATH"):
        open_store("sqlite://relative.db")


def test_a_plain_path_is_the_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    open_store(path).close()
    open_store(str(path)).close()
    assert path.exists()
    open_store(f"sqlite:///{path}", readonly=True).close()


def test_the_log_gives_samples_and_events_by_commit_order_after_a_cursor(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    """The fleet rules worker reads the log by row id: every row once, in commit order,
    whatever the samples' times or seqs; a later commit comes after the cursor."""
    store.commit(IngestBatch(received_at=T0, samples=_samples(VIN_A, range(5, 8))))
    store.commit(
        IngestBatch(
            received_at=T0 + 1,
            samples=_samples(VIN_B, range(1, 3)) + _samples(VIN_A, range(1, 3)),
            events=[Event(VIN_A, 1, T0, EventType.DTC_SET, code="P0420")],
        )
    )
    first = reader.samples_after(0, limit=4)
    assert [(s.vin, s.seq) for s in first] == [(VIN_A, 5), (VIN_A, 6), (VIN_A, 7), (VIN_B, 1)]
    rest = reader.samples_after(first[-1].id, limit=100)
    assert [(s.vin, s.seq) for s in rest] == [(VIN_B, 2), (VIN_A, 1), (VIN_A, 2)]
    assert rest[0].values == {SPEED: 2.0}
    assert (rest[0].tenure, rest[0].received_at, rest[0].ts) == (1, T0 + 1, T0 + 2000)
    store.commit(IngestBatch(received_at=T0 + 2, samples=_samples(VIN_A, range(3, 4))))
    assert [s.seq for s in reader.samples_after(rest[-1].id, limit=100)] == [3]
    (event,) = reader.events_after(0, limit=10)
    assert (event.vin, event.seq, event.type, event.code) == (VIN_A, 1, "dtc_set", "P0420")
    assert reader.events_after(event.id, limit=10) == []
    assert reader.events_after(0, limit=10, vin=VIN_B, tenure=1) == []
    window = reader.vehicle_samples(VIN_A, tenure=1, start=T0 + 2000, end=T0 + 7000, limit=10)
    assert [s.seq for s in window] == [2, 3, 5, 6]


def test_retention_keeps_the_newest_sample_so_ids_are_never_reused(
    store: TelemetryBackend, reader: TelemetryBackend
) -> None:
    store.commit(IngestBatch(received_at=T0, samples=_samples(VIN_A, range(1, 4))))
    assert store.prune_samples(received_before=T0 + 1) == 2
    (kept,) = reader.samples_after(0, limit=10)
    store.commit(IngestBatch(received_at=T0 + 1, samples=_samples(VIN_A, range(4, 5))))
    assert [s.seq for s in reader.samples_after(kept.id, limit=10)] == [4]
