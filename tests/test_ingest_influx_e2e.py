"""Ingest end to end on InfluxDB: units publish through a real Mosquitto to real
``telematics gateway --store influxdb://...`` processes and a real ``influxd``; results are
read back from InfluxDB and through the HTTP API.

The two outages the InfluxDB store must survive without losing or duplicating a sample
(docs/decisions/0015-influxdb-store.md): the gateway SIGKILLed mid-stream (the broker
redelivers what was not acknowledged; the index counts it as duplicate), and ``influxd``
stopped mid-stream (the gateway acknowledges what it spooled on local disk and drains it
in order when InfluxDB is back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.store import resolve_store
from tests.support.api import admin_client
from tests.support.gateway_process import GatewayProcess
from tests.support.influxdb import InfluxServer, start_influxd
from tests.support.ingest import (
    now_ms,
    publish_lines,
    sample,
    streams_in_two_halves,
    telemetry,
)
from tests.support.waiting import wait_until

VIN = "WVWZZZ1JZXW000001"


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[InfluxServer]:
    """A server of this test's own: the outage test stops it."""
    server = start_influxd(tmp_path / "influxd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def shipper() -> str:
    """Where the store ships its spool from (``?shipper=``); a test may parametrize it."""
    return "thread"


@pytest.fixture
def start_influx_gateway(
    mosquitto: MosquittoProcess, influxd: InfluxServer, tmp_path: Path, shipper: str
) -> Iterator[Callable[[], GatewayProcess]]:
    url = f"{influxd.store_url('telemetry')}?shipper={shipper}"
    started: list[GatewayProcess] = []

    def start() -> GatewayProcess:
        gateway = GatewayProcess(mosquitto, tmp_path / "data", "gateway-1", ("--store", url))
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()


def _in_influx(server: InfluxServer) -> dict[str, tuple[int, int, int]]:
    """Per VIN: (points, smallest seq, largest seq) in InfluxDB; {} while unreachable."""
    q = 'SELECT count("seq"), min("seq"), max("seq") FROM "telemetry" GROUP BY "vin"'
    try:
        body = httpx.get(
            f"{server.base_url}/query", params={"db": "telemetry", "q": q}, timeout=5
        ).json()
    except httpx.HTTPError:
        return {}
    out = {}
    for series in body["results"][0].get("series", []):
        _, count, low, high = series["values"][0]
        if count is None:  # influxd 1.6 can list a series whose first write it has not applied
            continue
        out[series["tags"]["vin"]] = (int(count), int(low), int(high))
    return out


def _stream(mosquitto: MosquittoProcess, vins: list[str], per_vehicle: int) -> None:
    publishers = [
        publish_lines(mosquitto, telemetry(vin), (sample(vin, s) for s in range(per_vehicle)))
        for vin in vins
    ]
    for p in publishers:
        assert p.wait(120) == 0


def _stored_total(server: InfluxServer) -> int:
    return sum(count for count, _, _ in _in_influx(server).values())


def test_the_api_reads_history_from_influxdb(
    mosquitto: MosquittoProcess,
    influxd: InfluxServer,
    start_influx_gateway: Callable[[], GatewayProcess],
    tmp_path: Path,
) -> None:
    gw = start_influx_gateway()
    _stream(mosquitto, [VIN], 20)
    wait_until(lambda: _stored_total(influxd) == 20, what="20 points in InfluxDB")
    store = resolve_store(influxd.store_url("telemetry"), gw.data_dir)
    with admin_client(ApiSettings(db_path=gw.db_path, store_url=store)) as client:
        assert [v["vin"] for v in client.get("/v1/vehicles").json()["items"]] == [VIN]
        history = client.get(
            f"/v1/vehicles/{VIN}/history",
            params={"signals": "Vehicle.Speed", "start": 0, "end": now_ms() + 60_000},
        ).json()
        assert [p["seq"] for p in history["items"]] == list(range(20))
        metrics_text = client.get("/metrics").text
        assert "telematics_store_spool_samples 0.0" in metrics_text
        assert client.get("/healthz").json()["components"]["telemetry_store"]["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("shipper", ["thread", "process"])
def test_sigkill_mid_stream_then_restart_writes_every_sample_once(
    mosquitto: MosquittoProcess,
    influxd: InfluxServer,
    start_influx_gateway: Callable[[], GatewayProcess],
) -> None:
    vins = [f"WVWZZZ1JZXW1{i:05d}" for i in range(10)]
    per_vehicle = 3000
    total = len(vins) * per_vehicle
    gw = start_influx_gateway()
    with streams_in_two_halves(mosquitto, vins, per_vehicle) as finish_the_stream:
        wait_until(lambda: _stored_total(influxd) >= total // 10, what="a tenth of the stream")
        gw.kill()
        assert _stored_total(influxd) <= total // 2
        finish_the_stream()
    gw.start()
    wait_until(lambda: _stored_total(influxd) == total, timeout=90, what="every sample")
    gw.stop()
    assert _in_influx(influxd) == dict.fromkeys(vins, (per_vehicle, 0, per_vehicle - 1))


@pytest.mark.slow
def test_influxd_stopped_mid_stream_then_restarted_loses_nothing(
    mosquitto: MosquittoProcess,
    influxd: InfluxServer,
    start_influx_gateway: Callable[[], GatewayProcess],
    tmp_path: Path,
) -> None:
    vins = [f"WVWZZZ1JZXW2{i:05d}" for i in range(10)]
    per_vehicle = 3000
    total = len(vins) * per_vehicle
    gw = start_influx_gateway()
    with streams_in_two_halves(mosquitto, vins, per_vehicle) as finish_the_stream:
        wait_until(lambda: _stored_total(influxd) >= total // 10, what="a tenth of the stream")
        influxd.stop()
        # the stream goes on into the spool: the broker's publishers all finish (acknowledged)
        finish_the_stream()
    store = resolve_store(influxd.store_url("telemetry"), gw.data_dir)
    settings = ApiSettings(db_path=gw.db_path, store_url=store)
    with admin_client(settings) as client:
        wait_until(
            lambda: "telematics_store_spool_samples 0.0" not in client.get("/metrics").text,
            what="a spool",
        )
    influxd.start()
    wait_until(lambda: _stored_total(influxd) == total, timeout=90, what="every sample")
    gw.stop()
    assert _in_influx(influxd) == dict.fromkeys(vins, (per_vehicle, 0, per_vehicle - 1))
