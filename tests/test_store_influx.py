"""What the InfluxDB store adds to the store contract (tests/test_store_contract.py runs
that on it too): values of every kind and awkward text survive the line protocol, a
rewritten point lands on itself, the URL's settings, and the spool: a store outage in the
middle of a stream loses and duplicates nothing, and a full spool refuses commits.

Against a real ``influxd`` (tests/support/influxdb.py); the outage tests run one of their
own, since they stop it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.settings import ApiSettings
from gateway.broker import free_port
from gateway.errors import ConfigurationError, StoreError
from gateway.store import IngestBatch, influx, open_store, packing
from gateway.store import lineprotocol as lp
from gateway.store.influx import InfluxTelemetryStore, parse_influx_url
from schemas import Sample, SignalValue
from tests.support.api import admin_client
from tests.support.influxdb import (  # noqa: F401
    InfluxServer,
    influxdb,
    run_continuous_query_now,
    start_influxd,
)

VIN = "WVWZZZ1JZXW000001"
T0 = 1_700_000_000_000
SPEED = "Vehicle.Speed"
STATE = "Vehicle.LowVoltageSystemState"
DTCS = "Vehicle.Diagnostics.DTCList"
FAN = "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed"


def _open(url: str, tmp_path: Path, **query: object) -> InfluxTelemetryStore:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    store = open_store(f"{url}?index={tmp_path / 'index.db'}{extra}")
    assert isinstance(store, InfluxTelemetryStore)
    return store


@pytest.fixture
def store(influxdb: InfluxServer, tmp_path: Path) -> Iterator[InfluxTelemetryStore]:  # noqa: F811
    opened = _open(influxdb.new_database_url(), tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def _points(store: InfluxTelemetryStore) -> list[int]:
    """The seq of every point InfluxDB holds, in time order, once the spool is empty."""
    assert store.flush(30)
    rows = store._rows('SELECT "seq" FROM "telemetry"')
    return [int(r[1]) for r in rows]


def test_values_of_every_kind_and_awkward_text_survive(store: InfluxTelemetryStore) -> None:
    text = 'a "quoted", spaced=text \\ with a backslash\\'
    signals: dict[str, SignalValue] = {
        SPEED: 12,
        STATE: text,
        DTCS: ["P0001", 'P"2'],
        FAN: 3.0,
        "Vehicle.X y,z": True,
    }
    store.commit(IngestBatch(received_at=T0, samples=[Sample(VIN, 1, T0, signals)]))
    [point] = store.history(VIN, list(signals), tenure=1, start=0, end=T0 + 1, limit=10)
    assert point.values == {**signals, SPEED: 12.0, FAN: 3}
    assert type(point.values[FAN]) is int  # the catalog says uint8


def test_samples_in_the_same_millisecond_stay_apart(store: InfluxTelemetryStore) -> None:
    samples = [Sample(VIN, seq, T0, {SPEED: float(seq)}) for seq in (1, 2, 3)]
    store.commit(IngestBatch(received_at=T0, samples=samples))
    assert _points(store) == [1, 2, 3]


def test_a_point_written_again_lands_on_itself(store: InfluxTelemetryStore) -> None:
    samples = [Sample(VIN, seq, T0 + seq, {SPEED: float(seq)}) for seq in range(1, 6)]
    store.commit(IngestBatch(received_at=T0, samples=samples))
    # a crash after the write and before the watermark: the spool is shipped again
    db = sqlite3.connect(store.settings.index)
    db.execute("UPDATE influx_outbox SET shipped = 0")
    db.commit()
    db.close()
    assert store.spool_depth() == 5
    assert store.flush(10)
    assert _points(store) == [1, 2, 3, 4, 5]


def test_new_samples_ship_from_memory_and_the_rest_is_read_back(
    store: InfluxTelemetryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0033: a batch whose samples are all new goes to InfluxDB as its commit
    encoded it, without reading the index back; a batch with a redelivered sample, and
    what exceeds the memory bound, is read back from the index. Every sample lands once."""
    real, read_back = packing.unpack_any, []

    def counting(stored: bytes | str) -> dict[str, Any]:
        read_back.append(stored)
        return real(stored)

    monkeypatch.setattr(packing, "unpack_any", counting)
    store.commit(_batch(range(1, 101)))
    assert _points(store) == list(range(1, 101))
    assert len(read_back) == 0
    store.commit(_batch(range(91, 151)))  # 91..100 again: duplicates, so no hand-off
    assert _points(store) == list(range(1, 151))
    assert len(read_back) == 50
    shipper = store._shipper
    assert shipper is not None
    one_batch = lp.lines((VIN, 1, s, T0 + s * 10, {SPEED: float(s)}) for s in range(151, 201))
    monkeypatch.setattr(influx, "HANDOFF_MAX_BYTES", len(one_batch) + 10)
    with shipper.lock:  # the shipper waits: the first batch is held, the second too many
        store.commit(_batch(range(151, 201)))
        store.commit(_batch(range(201, 251)))
    assert _points(store) == list(range(1, 251))
    assert len(read_back) == 100


def test_the_url_carries_credentials_token_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEMATICS_INFLUXDB_TOKEN", raising=False)
    s = parse_influx_url("influxdbs://gw:p%40ss@influx.example:8443/fleet?rp=raw&spool_max=9")
    assert (s.base_url, s.database, s.username, s.password) == (
        "https://influx.example:8443",
        "fleet",
        "gw",
        "p@ss",
    )
    assert (s.retention_policy, s.spool_max, s.token) == ("raw", 9, None)
    monkeypatch.setenv("TELEMATICS_INFLUXDB_TOKEN", "t0k")
    assert parse_influx_url("influxdb://h/db").token == "t0k"
    assert parse_influx_url("influxdb://h/db").base_url == "http://h:8086"
    with pytest.raises(ConfigurationError, match="expected influxdb://"):
        parse_influx_url("influxdb://h:8086/")
    with pytest.raises(ConfigurationError, match="unknown InfluxDB store URL parameters: x"):
        parse_influx_url("influxdb://h/db?x=1")


def _batch(seqs: range) -> IngestBatch:
    return IngestBatch(
        received_at=T0, samples=[Sample(VIN, s, T0 + s * 10, {SPEED: float(s)}) for s in seqs]
    )


def test_an_outage_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = start_influxd(tmp_path / "influxd")
    store = _open(server.new_database_url(), tmp_path)
    try:
        for n in range(10):  # 10 batches of 100 while InfluxDB is up
            store.commit(_batch(range(n * 100 + 1, n * 100 + 101)))
        assert store.flush(10)  # in InfluxDB
        server.stop()
        for n in range(10, 25):  # 15 batches while it is down: acknowledged, spooled
            result = store.commit(_batch(range(n * 100 + 1, n * 100 + 101)))
            assert result.samples_stored == 100
        assert store.spool_depth() == 1500
        # a redelivery of spooled and of shipped samples while down: duplicates
        again = store.commit(_batch(range(901, 1101)))
        assert again.sample_duplicates == 200
        server.start()
        for n in range(25, 30):  # the stream goes on as it comes back
            store.commit(_batch(range(n * 100 + 1, n * 100 + 101)))
        assert store.flush(30)
        assert _points(store) == list(range(1, 3001))
    finally:
        store.close()
        server.stop()


def test_a_full_spool_refuses_commits_until_it_drains(tmp_path: Path) -> None:
    server = start_influxd(tmp_path / "influxd")
    store = _open(server.new_database_url(), tmp_path, spool_max=250)
    try:
        server.stop()
        for n in range(3):
            store.commit(_batch(range(n * 100 + 1, n * 100 + 101)))
        with pytest.raises(StoreError, match="spool is full"):
            store.commit(_batch(range(301, 401)))
        server.start()
        deadline = time.monotonic() + 30
        while store.spool_depth() and time.monotonic() < deadline:  # the thread drains it
            time.sleep(0.1)
        assert store.spool_depth() == 0
        store.commit(_batch(range(301, 401)))
        assert _points(store) == list(range(1, 401))
    finally:
        store.close()
        server.stop()


def test_the_urls_user_and_password_authenticate_and_without_them_the_spool_keeps_all(
    tmp_path: Path,
) -> None:
    """Against an ``influxd`` that requires authentication (1.x users; 2.x and 3.x take the
    same basic auth on their v1 API): the URL's user and password (percent-encoded) ship
    the spool; a store without them is refused and keeps every sample spooled."""
    server = InfluxServer(tmp_path / "influxd", auth=True)
    server.start()
    try:
        # a server with authentication on lets the first user be created without any
        created = httpx.post(
            f"{server.base_url}/query",
            data={"q": "CREATE USER gw WITH PASSWORD 'p@ss w:1' WITH ALL PRIVILEGES"},
        )
        assert created.status_code == 200, created.text
        authority = f"127.0.0.1:{server.http_port}/telemetry"
        anonymous = open_store(f"influxdb://{authority}?index={tmp_path / 'anon.db'}")
        assert isinstance(anonymous, InfluxTelemetryStore)
        try:
            anonymous.commit(_batch(range(1, 11)))
            assert not anonymous.flush(2)
            assert anonymous.spool_depth() == 10
        finally:
            anonymous.close()
        store = open_store(f"influxdb://gw:p%40ss%20w%3A1@{authority}?index={tmp_path / 'i.db'}")
        assert isinstance(store, InfluxTelemetryStore)
        try:
            store.commit(_batch(range(1, 11)))
            assert _points(store) == list(range(1, 11))
        finally:
            store.close()
    finally:
        server.stop()


def test_a_full_spool_turns_healthz_red_and_shows_on_metrics(tmp_path: Path) -> None:
    """Issue 15: at its bound the spool stops acknowledging, and says so where a monitor
    looks: ``/healthz`` answers 503 naming the full spool, ``/metrics`` has it at its
    limit (InfluxDB unreachable here: nothing listens on the port)."""
    url = f"influxdb://127.0.0.1:{free_port()}/telemetry?index={tmp_path / 'index.db'}"
    store = open_store(f"{url}&spool_max=3")
    try:
        store.commit(_batch(range(1, 4)))
        settings = ApiSettings(db_path=tmp_path / "telemetry.db", store_url=f"{url}&spool_max=3")
        with admin_client(settings) as client:
            r = client.get("/healthz")
            metrics_text = client.get("/metrics").text
    finally:
        store.close()
    assert r.status_code == 503
    component = r.json()["components"]["telemetry_store"]
    assert component["status"] == "unavailable"
    assert "the spool is full (3 samples)" in component["detail"]
    assert "telematics_store_spool_samples 3.0" in metrics_text
    assert "telematics_store_spool_limit_samples 3.0" in metrics_text


def test_two_writers_of_one_index_ship_through_one_lease(
    influxdb: InfluxServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = influxdb.new_database_url()
    first, second = _open(url, tmp_path), _open(url, tmp_path)
    try:
        first.commit(_batch(range(1, 101)))
        assert first.flush(10)
        owner = sqlite3.connect(first.settings.index).execute("SELECT owner FROM influx_lease")
        holder = owner.fetchone()[0]
        second.commit(_batch(range(101, 201)))  # shipped by the lease holder
        assert second.flush(10)
        first.close()  # gives the lease up: the second takes over
        second.commit(_batch(range(201, 301)))
        assert second.flush(10)
        owner = sqlite3.connect(first.settings.index).execute("SELECT owner FROM influx_lease")
        assert owner.fetchone()[0] != holder
        assert _points(second) == list(range(1, 301))
    finally:
        first.close()
        second.close()


def test_a_writer_sets_raw_retention_and_the_one_minute_rollup(
    influxdb: InfluxServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = _open(influxdb.new_database_url(), tmp_path, retention="30d")
    try:
        policies = {r[0]: r[1] for r in store._rows("SHOW RETENTION POLICIES")}
        assert policies == {"autogen": "720h0m0s", "rollup": "0s"}
        [result] = store.http.query("SHOW CONTINUOUS QUERIES")  # one series per database
        mine = [x for x in result["series"] if x["name"] == store.settings.database]
        [(name, statement)] = mine[0]["values"]
        assert name == "telemetry_1m"
        assert 'INTO "rollup".telemetry_1m' in statement or "rollup.telemetry_1m" in statement
        # samples older than the retention: InfluxDB refuses them for good; the spool
        # counts them and moves on instead of retrying forever
        store.commit(_batch(range(1, 7)))
        assert store.flush(10)
        assert store.counters()[("telematics_store_refused_samples_total", "")] == 6
        # the rollup's own continuous query, run now as InfluxDB's scheduler would at
        # the next minute: a mean per minute and series lands in rollup.telemetry_1m.
        # The minute is 20 minutes back, outside the CQ's RESAMPLE FOR 10m window, so
        # InfluxDB's own scheduler cannot roll it up first (CI saw it do so at a minute
        # boundary when the samples sat in the last minute)
        minute = (int(time.time()) // 60 - 20) * 60_000
        recent = [Sample(VIN, s, minute + s, {SPEED: float(s)}) for s in range(11, 17)]
        store.commit(IngestBatch(received_at=minute, samples=recent))
        assert store.flush(10)
        assert not store._rows('SELECT * FROM "rollup"."telemetry_1m"')
        run_continuous_query_now(
            influxdb.base_url, store.settings.database, "telemetry_1m", since="1h"
        )
        [row] = store._rows('SELECT "mean_Vehicle.Speed", "vin" FROM "rollup"."telemetry_1m"')
        assert row == [minute * 1_000_000, 13.5, VIN]
        # a second writer's startup changes nothing (each statement is idempotent)
        _open(influxdb.store_url(store.settings.database), tmp_path / "again").close()
        [result] = store.http.query("SHOW CONTINUOUS QUERIES")
        mine = [x for x in result["series"] if x["name"] == store.settings.database]
        assert [name for name, _ in mine[0]["values"]] == ["telemetry_1m"]
    finally:
        store.close()
    with pytest.raises(ConfigurationError, match="invalid InfluxDB retention"):
        parse_influx_url("influxdb://h/db?retention=30 days")


def test_a_shipper_process_ships_the_spool_and_stops_with_the_store(
    influxdb: InfluxServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``?shipper=process``: a child process ships under the same lease and watermark; it
    stops when the store closes, and one that died is started again at the next commit."""
    store = _open(influxdb.new_database_url(), tmp_path, shipper="process")
    try:
        child = store._child
        assert child is not None
        first = child.process
        store.commit(_batch(range(1, 101)))
        assert _points(store) == list(range(1, 101))
        first.kill()
        first.wait(10)
        store.commit(_batch(range(101, 201)))  # finds it dead: starts another
        assert child.process.pid != first.pid
        assert _points(store) == list(range(1, 201))
    finally:
        store.close()
    assert child.process.returncode == 0  # end of its stdin: it stopped on its own
    with pytest.raises(ConfigurationError, match="invalid InfluxDB shipper"):
        parse_influx_url("influxdb://h/db?shipper=fork")
